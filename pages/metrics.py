"""Metrics: dataset-level accuracy and explanation quality across runs (cached on disk beside each run)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from interp_core.viz import figures, verdict_figures
from interp_core.evaluation import verdict as V
from interp_core.attribution import METHODS
from interp_core.evaluation.evaluate import EvalSettings, evaluate_with_stored_maps, partial_progress
from interp_core.runs import read_history
from interp_core import catalog
from interp_core.evaluation import tile_analysis as compute
from ui import cache, shell, sidebar, text, widgets
from ui import verdict as uiv
from ui import state as S
from ui.errors import guard

shell.leave_legacy_pages_mode()

st.title("Metrics across models")
st.markdown("Did retraining help, by how much, and where did it get worse? Each model is compared tile by "
            "tile with a reference model (by default the one the others were retrained from), with 95% intervals. "
            "Every number is computed once and stored beside the model, so coming back is instant, and work "
            "interrupted midway resumes with what was already finished.")
sel = sidebar.selection()
sidebar.require_runs(sel, dataset=True)

c1, c2, c3, c4 = st.columns(4)
reference = uiv.reference_picker(S.Metrics.REFERENCE, sel.runs, container=c4)
split = widgets.split_picker(S.Metrics.SPLIT, sel.dataset.path, container=c1)
S.init(S.Metrics.METHOD, "saliency")
method = c2.selectbox("Attribution method", list(METHODS), key=S.Metrics.METHOD,
                      help="The saliency maps the explanation metrics are computed on.", **S.KEEP)
S.init(S.Metrics.LIMIT, widgets.split_size(sel.dataset.path, split))
limit = int(c3.number_input("Tiles (N of the split, each class in turn)", 1, 100_000, step=10, key=S.Metrics.LIMIT,
                            help="All tiles of the split by default. Fewer is faster; the N tiles are taken in "
                                 "turn from each class, so every class is represented.", **S.KEEP))
limit = min(limit, widgets.split_size(sel.dataset.path, split))  # one cache entry for "all tiles"
settings = EvalSettings(split=split, attribution=method, limit=limit)
if method in compute.METHOD_NOTES:  # e.g. occlusion's baseline: the same setting as on Explore
    st.caption(f":material/info: {compute.METHOD_NOTES[method]}")
data = str(sel.dataset.path)

results: dict[str, dict] = {}
missing = []
started: list[str] = []  # metrics interrupted midway, resumed by the next computation
store_maps = True  # maps are written beside the run as they are computed: an interrupted computation resumes
for entry in sel.runs:
    maps = cache.stored_maps(entry, data, settings)
    found = cache.cached_eval_result(entry, data, settings, maps=maps[1]) if maps else None
    if found is None:
        found = cache.cached_eval_result(entry, data, settings)
    if found is None:
        missing.append(entry)
        part = partial_progress(entry.key, data, settings, maps[1] if maps else None)
        if part is not None:
            started.append(f"{entry.label} ({part[0]} of {part[1]} tiles)")
    else:
        results[entry.label] = found

if missing:
    slow = " This method is slow: expect minutes." if METHODS[method].cost == "slow" else ""
    slow += (" Each model's saliency maps and results are saved as soon as they are computed: if you close the "
             "page midway, coming back resumes where it stopped.")
    st.info(f"Not computed yet for {', '.join(e.label for e in missing)} with these settings.{slow}",
            icon=":material/hourglass_empty:")
    if started:
        st.info("Metrics scored earlier are kept and will be reused: " + ", ".join(started)
                + ". Computing continues with the remaining tiles.", icon=":material/restore:")
go = bool(missing) and st.button(f"Compute for {len(missing)} model(s)", type="primary", key=S.Metrics.COMPUTE,
                                 icon=":material/calculate:")
notes = []
if go:
    bar = st.progress(0.0, text="Starting...")
    for n, entry in enumerate(missing):
        with guard(f"evaluating {entry.label}"):
            def report(phase: str, done: int, total: int, n: int = n, label: str = entry.label) -> None:
                part = done / total if total else 1.0
                part = (0.5 * part if phase == "maps" else 0.5 + 0.5 * part) if store_maps else part
                what = "saliency maps" if phase == "maps" else "metrics"
                bar.progress(min(1.0, (n + part) / len(missing)), text=f"{label}: {what} {done}/{total} tiles "
                             f"(model {n + 1} of {len(missing)})")

            results[entry.label], use = evaluate_with_stored_maps(
                entry.key, data, settings, device=cache.device(sel.device), store=store_maps, progress=report)
            if use.note:
                notes.append(f"{entry.label}: {use.note}")
    bar.empty()
    if len(results) == len(sel.runs) and not notes:
        st.rerun()  # redraw from the disk cache, without the "not computed" note
for note in notes:
    st.caption(f":material/info: {note}")
if not results:  # the info box above says what to do
    st.stop()

reused = [run for run, res in results.items() if (res.get("details") or {}).get("attribution_maps")]
if reused:
    st.caption(":material/recycling: Saliency maps computed earlier were reused for " + ", ".join(reused) + ".")

# -- the verdict -----------------------------------------------------------------------------------
ref_label = reference.label if reference is not None else None
if ref_label in results and len(results) > 1:
    uiv.show_verdict(results, ref_label, key="metrics.verdict",
                     what=f"{next(iter(results.values()))['n_tiles']} {split} tiles, {method} maps")
elif reference is not None and ref_label not in results:
    st.info(f"Compute the reference ({reference.label}) to see what changed.", icon=":material/compare_arrows:")
elif reference is not None:
    st.info("Compute the other models to see what changed against the reference.", icon=":material/compare_arrows:")

# -- the table -----------------------------------------------------------------------------------
st.subheader("Values")
summaries = {run: figures.metric_summaries(res) for run, res in results.items()}
names = list(dict.fromkeys(k for s in summaries.values() for k in s))
undefined = [k for k in names if all((s.get(k) or {}).get("mean") is None for s in summaries.values())]
names = [k for k in names if k not in undefined]
intervals = {run: {k: V.value_interval(res, k) for k in names} for run, res in results.items()}
arrow = {True: "↑ higher", False: "↓ lower", None: ""}


def _cell(run: str, k: str) -> str:
    iv = intervals[run].get(k)
    if iv is not None:
        return f"{iv[0]:.3f} [{iv[1]:.3f}, {iv[2]:.3f}]"
    m = (summaries[run].get(k) or {}).get("mean")
    return "–" if m is None else f"{m:.3f}"


table = pd.DataFrame([{"metric": figures.METRIC_TEXT.get(k, (k,))[0], "better": arrow[figures.metric_direction(k)],
                       **{run: _cell(run, k) for run in results}} for k in names])
st.dataframe(table, hide_index=True, height=35 * (len(table) + 1) + 3,  # every metric visible, no inner scroll
             column_config={"metric": st.column_config.TextColumn(width="medium")})
st.caption("Value [95% interval] over the tiles: a Wilson interval for shares of tiles (accuracy, pointing game, "
           "attack flip rate), a bootstrap interval of the mean otherwise. The interval says how precisely the "
           "tiles pin the value down; it is not the spread of the tiles. Localisation metrics appear only when "
           "the dataset has evidence masks. The consistency metrics always use Grad-CAM heatmaps, whatever the "
           "attribution method chosen."
           + (f" Not defined on these tiles (e.g. no marked evidence among them): "
              f"{', '.join(figures.METRIC_TEXT.get(k, (k,))[0] for k in undefined)}." if undefined else ""))

with st.expander("What the metrics mean"):
    st.markdown("\n".join(f"- **{figures.METRIC_TEXT.get(k, (k,))[0]}**: {text.METRIC_HELP[k]}"
                           for k in names if k in text.METRIC_HELP))

# -- value charts ----------------------------------------------------------------------------------
st.subheader("Side by side")
cols = st.columns(3)
for j, k in enumerate(names):
    runs = list(summaries)
    vals = [(iv[0], iv[1], iv[2]) if (iv := intervals[r].get(k)) else None for r in runs]
    cols[j % 3].plotly_chart(verdict_figures.value_figure(k, runs, vals), key=f"metrics.bar.{k}")

# -- curves ----------------------------------------------------------------------------------------
curves = {run: res["details"]["curves"] for run, res in results.items() if res.get("details", {}).get("curves")}
if curves:
    st.subheader("Deletion and insertion curves")
    fr = next(iter(curves.values()))["fractions"]
    c1, c2 = st.columns(2)
    c1.plotly_chart(figures.curves_figure("deletion", fr, {r: c["deletion"] for r, c in curves.items()}),
                    key="metrics.deletion")
    c2.plotly_chart(figures.curves_figure("insertion", fr, {r: c["insertion"] for r, c in curves.items()}),
                    key="metrics.insertion")

# -- groups ------------------------------------------------------------------------------------------
groups = {run: res["details"]["group_accuracy"] for run, res in results.items()
          if res.get("details", {}).get("group_accuracy")}
per_class = {run: res["details"]["per_class_accuracy"] for run, res in results.items()
             if res.get("details", {}).get("per_class_accuracy")}
same = bool(groups) and all(verdict_figures.same_partition(per_class.get(r, {}), groups[r]) for r in groups)
c1, c2 = st.columns(2)
if per_class:
    c1.plotly_chart(figures.group_accuracy_figure(per_class, title="Accuracy per class (higher is better)"),
                    key="metrics.classes")
if groups and not same:
    c2.plotly_chart(figures.group_accuracy_figure(groups), key="metrics.groups")
elif same:
    c2.info("The groups of this dataset are its classes, so accuracy per group equals accuracy per class "
            "(shown once).")
else:
    c2.info("This dataset has no groups (`groups.csv`), so accuracy per group is not shown.")

# -- training curves ---------------------------------------------------------------------------------
st.subheader("Training curves")
histories = {e.label: read_history(e.path) for e in sel.runs}
histories = {k: v for k, v in histories.items() if v}
if not histories:
    st.info("No training history (`history.jsonl`) was found for these models.")
else:
    offsets = {e.label: catalog.parent_epochs(e, sel.all_runs) for e in sel.runs}
    cols = st.columns(3)
    for j, key in enumerate(("val_accuracy", "train_loss", "val_loss")):
        cols[j].plotly_chart(figures.history_figure(key, histories, offsets=offsets), key=f"metrics.history.{key}")
    if any(offsets.values()):
        st.caption("A retrained model's curve continues after the epochs of the model it started from.")
