"""Drawing the verdict (``interp_core.evaluation.verdict``) with Streamlit: the reference picker, one paragraph per
run, the change table and the dot-and-interval chart. Pages call :func:`reference_picker` and
:func:`show_verdict`; every number comes from the core."""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
import streamlit as st

from interp_core.viz import figures, verdict_figures
from interp_core.evaluation import verdict as V
from interp_core.errors import InterpError

from interp_core import catalog
from . import state as S

_MD_CALL = {"Better": ":green[**Better**]", "Worse": ":red[**Worse**]", "Changed": ":blue[**Changed**]"}


def md_bold(text: str) -> str:
    """Markdown for the verdict paragraph: better in green, worse in red, run names bold."""
    return _MD_CALL.get(text, f"**{text}**")


def reference_picker(key: str, runs: list[catalog.RunEntry], container: Any = st) -> catalog.RunEntry | None:
    """A select box of the run to compare the others with; default: the run the others started from."""
    if len(runs) < 2:
        return None
    keys = [r.key for r in runs]
    default = V.default_reference({r.key: r.config for r in runs}) or keys[0]
    if st.session_state.get(key) not in keys:
        st.session_state[key] = default
    label = {r.key: r.label for r in runs}
    chosen = container.selectbox("Compare against (reference)", keys, key=key, format_func=lambda k: label[k],
                                 help="Every other model's change is measured against this one, tile by tile. "
                                      "Default: the model the others were retrained from.", **S.KEEP)
    return next(r for r in runs if r.key == chosen)


def changes_against(results: Mapping[str, dict], reference: str, *, seed: int = 0) -> dict[str, list[V.Change]]:
    """``{run label: changes}`` of every run in ``results`` (label -> evaluate result) but the reference."""
    out: dict[str, list[V.Change]] = {}
    for run, res in results.items():
        if run == reference or reference not in results:
            continue
        try:
            out[run] = V.compare(res, results[reference], run=_short(run), reference_name=_short(reference),
                                 seed=seed)
        except InterpError as e:
            st.warning(f"{run}: {e}", icon=":material/warning:")
    return out


def _short(label: str) -> str:
    return label.split(" / ", 1)[-1]


def change_table(changes: list[V.Change]) -> pd.DataFrame:
    """One row per (run, metric): direction, before, after, change [95% interval], verdict."""
    arrow = {True: "↑ higher is better", False: "↓ lower is better", None: ""}
    return pd.DataFrame([{"model": c.run, "metric": figures.METRIC_TEXT.get(c.metric, (c.metric,))[0],
                          "better is": arrow[c.higher_is_better], "reference": f"{c.before:.4f}",
                          "this model": f"{c.after:.4f}", "change [95% interval]": c.text(),
                          "verdict": c.call, "tiles": c.n} for c in changes])


def _style_calls(df: pd.DataFrame):
    colour = {k: f"color: {v}; font-weight: 600" for k, v in verdict_figures.CALL_COLORS.items()}
    return df.style.map(lambda v: colour.get(v, ""), subset=["verdict"])


def show_verdict(results: Mapping[str, dict], reference: str, *, key: str, what: str) -> dict[str, list[V.Change]]:
    """The "Did retraining help?" section: a paragraph per run, the chart and the table."""
    st.subheader("Did retraining help?")
    per_run = changes_against(results, reference)
    if not per_run:
        st.info("Choose at least two models to compare them.", icon=":material/compare_arrows:")
        return per_run
    for changes in per_run.values():
        if changes:
            st.markdown(V.verdict_sentence(changes, bold=md_bold))
    allc = [c for cs in per_run.values() for c in cs]
    if not allc:
        return per_run
    st.caption(f"Paired per tile ({what}): each metric's change is `this model - reference` on the same tiles. "
               + V.verdict_note(len({c.metric for c in allc})))
    st.plotly_chart(verdict_figures.change_figure(allc), key=f"{key}.chart")
    table = change_table(allc)
    st.dataframe(_style_calls(table), hide_index=True, key=f"{key}.table", height=min(35 * (len(table) + 1) + 3, 900),
                 column_config={"change [95% interval]": st.column_config.TextColumn(width="medium")})
    return per_run
