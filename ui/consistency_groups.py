"""Consistency page section: an ECE run's per-tile consistency by group (``class|look``) and how
well low consistency flags the bias-conflicting (minority-group) training tiles (issue 13).

Self-contained: ``render(run)`` is called once by ``pages/consistency.py``; the numbers come from
:func:`interp_core.metrics.bias.consistency_groups`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from ui.errors import guard

EXPLAIN = ("ECE gives more weight to the tiles whose explanation changes most under a background attack. "
           "If that is to remove a bias, the low-consistency tiles should be the ones that contradict it: the "
           "**minority groups**, whose look (or mark) is not the one their class has in most training tiles. "
           "The **AUROC** says how well `1 - consistency` picks those tiles out: 0.5 is chance, 1 perfect.")


@st.cache_data(show_spinner=False, max_entries=16)
def _groups(run_dir: str, data: str, mtime: float) -> dict[str, Any] | None:
    from interp_core.metrics.bias import consistency_groups
    return consistency_groups(run_dir, data)


def group_box_figure(consistency: np.ndarray, groups: list[str | None], aligned: dict[int, str], *,
                     title: str, height: int = 320) -> Any:
    """Box plots of consistency per group; minority (bias-conflicting) groups in orange."""
    import plotly.graph_objects as go
    fig = go.Figure()
    aligned_names = set(aligned.values())
    for g in sorted({g for g in groups if g is not None}):
        vals = np.array([c for c, gi in zip(consistency, groups) if gi == g], dtype=float)
        minority = g not in aligned_names
        fig.add_trace(go.Box(y=vals, name=f"{g} ({'minority' if minority else 'majority'}, n={len(vals)})",
                             boxpoints="all" if len(vals) <= 60 else "outliers", jitter=0.4, pointpos=0,
                             marker=dict(size=3), marker_color="#d9822b" if minority else "#3f6e8c",
                             line=dict(width=1)))
    fig.update_yaxes(title_text="explanation consistency, 0-1")
    fig.update_layout(title=title, height=height, showlegend=False, margin=dict(l=40, r=10, t=40, b=40))
    return fig


def auroc_figure(per_refresh: list[dict], *, height: int = 260) -> Any:
    """AUROC of ``1 - E`` for the minority groups, per refresh, with the chance line."""
    import plotly.graph_objects as go
    x = [r["refresh_epoch"] for r in per_refresh]
    fig = go.Figure(go.Scatter(x=x, y=[r["auroc_1_minus_E"] for r in per_refresh], mode="lines+markers",
                               name="AUROC", line=dict(color="#d9822b")))
    fig.add_hline(y=0.5, line_dash="dot", annotation_text="chance")
    fig.update_yaxes(title_text="AUROC", range=[0, 1])
    fig.update_xaxes(title_text="refresh (epoch it weighted)", tickmode="array", tickvals=x)
    fig.update_layout(title="Does low consistency flag the minority groups?", height=height,
                      margin=dict(l=40, r=10, t=40, b=40))
    return fig


def render(run: Any) -> None:
    """The per-group section for ``run`` (a catalog entry with ``path`` and ``data_path``); says
    why when it cannot be shown (no groups marking a look, dataset not here)."""
    st.subheader("Consistency by group")
    data_path: Path | None = getattr(run, "data_path", None)
    if data_path is None or not Path(data_path).is_dir():
        st.info("The dataset this model was trained on is not available here, so its groups are unknown.")
        return
    with guard("reading the groups"):
        npz = Path(run.path) / "consistency.npz"
        res = _groups(str(run.path), str(data_path), npz.stat().st_mtime)
        if res is None:
            st.info("This dataset's groups do not mark a look or mark (groups.csv with class|look, several per "
                    "class), so there are no minority groups to compare.")
            return
        st.caption(EXPLAIN)
        per = res["per_refresh"]
        epochs = res["refresh_epochs"]
        pick = st.select_slider("Refresh", options=list(range(len(epochs))), value=len(epochs) - 1,
                                format_func=lambda i: f"epoch {epochs[i]}", key="consistency.groups.refresh")
        c1, c2 = st.columns([3, 2])
        c1.plotly_chart(group_box_figure(res["consistency"][pick], res["groups"], res["aligned"],
                                         title=f"Consistency per group, refresh of epoch {epochs[pick]}"),
                        key="consistency.groups.box")
        c2.metric("AUROC of 1 - consistency for the minority groups", f"{per[pick]['auroc_1_minus_E']:.3f}",
                  help="Probability that a random minority-group tile has lower consistency than a random "
                       "majority-group tile (0.5: chance). Higher means ECE's weights track the bias.")
        within = per[pick].get("auroc_within_class") or {}
        names = {k: g.split("|")[0] for k, g in res["aligned"].items()}
        if within:
            c2.caption("Within each class: " + ", ".join(
                f"{names.get(k, k)} {v:.2f}" for k, v in sorted(within.items())) +
                " (does `1 - consistency` separate a class's minority from its majority?)")
        c2.metric("Mean consistency, minority / majority",
                  f"{per[pick]['E_mean_minority']:.3f} / {per[pick]['E_mean_aligned']:.3f}")
        if "weight_mean_minority" in per[pick]:
            c2.metric("Mean ECE weight, minority / majority",
                      f"{per[pick]['weight_mean_minority']:.2f} / {per[pick]['weight_mean_aligned']:.2f}")
        if len(per) > 1:
            st.plotly_chart(auroc_figure(per), key="consistency.groups.auroc")
