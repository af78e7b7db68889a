"""Figures for the dashboard and reports: plotly charts (no Streamlit here).

Every chart states its units and which direction is better, so a reader does not have to guess.
Plotly figures are returned unrendered (``plotly.graph_objects.Figure``). The composed PNGs are in
``viz.images``, the charts of changes against a reference run in ``viz.verdict_figures``.
"""
from __future__ import annotations

import base64
import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InterpError
from ..metrics import METRICS
from .images import as_rgb_u8, png_bytes

#: Colours of runs, in order (colour-blind friendly, Okabe-Ito).
RUN_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")

#: Units and plain-language names of the metrics the dashboard shows (direction comes from METRICS).
METRIC_TEXT: dict[str, tuple[str, str]] = {
    "accuracy": ("Accuracy", "share of tiles classified correctly, 0-1"),
    "worst_group_accuracy": ("Worst-group accuracy", "accuracy of the weakest group, 0-1"),
    "agree_accuracy": ("Agree accuracy", "accuracy on tiles whose look agrees with their class, 0-1"),
    "disagree_accuracy": ("Disagree accuracy", "accuracy on tiles whose look contradicts their class, 0-1"),
    "agree_disagree_gap": ("Agree-disagree gap", "agree minus disagree accuracy"),
    "sparseness": ("Sparseness (Gini)", "Gini index of the map, 0-1"),
    "complexity": ("Complexity (entropy)", "entropy of the map, nats"),
    "deletion_auc": ("Deletion AUC", "area under the probability curve, 0-1"),
    "insertion_auc": ("Insertion AUC", "area under the probability curve, 0-1"),
    "symmetric_relevance_gain": ("Symmetric relevance gain", "least- minus most-relevant-first deletion AUC, -1 to 1"),
    "pointing_game": ("Pointing game", "share of tiles whose peak lies in the marked region, 0-1"),
    "relevance_mass_accuracy": ("Relevance mass", "share of the map inside the marked region, 0-1"),
    "relevance_rank_accuracy": ("Relevance rank", "share of the top pixels inside the marked region, 0-1"),
    "artifact_mass": ("Artifact mass", "share of the map on the pen mark, 0-1"),
    "explanation_consistency": ("Explanation consistency", "similarity of Grad-CAM heatmaps before/after attack, "
                                "0-1 (always Grad-CAM, whatever the method chosen)"),
    "attack_flip_rate": ("Attack flip rate", "share of tiles whose answer the background attack flipped, 0-1 "
                         "(attack guided by Grad-CAM, whatever the method chosen)"),
    "max_sensitivity": ("Max-sensitivity", "relative change of the map, ratio"),
    "model_randomisation": ("Model randomisation", "Spearman correlation, -1 to 1"),
}

#: Metrics computed on Grad-CAM heatmaps whatever attribution method is chosen (their charts say so).
GRADCAM_METRICS = ("explanation_consistency", "attack_flip_rate")

#: Direction of metrics that are not in ``interp_core.metrics.METRICS``.
EXTRA_DIRECTION = {"worst_group_accuracy": True, "explanation_consistency": True, "attack_flip_rate": False,
                   "agree_accuracy": True, "disagree_accuracy": True, "agree_disagree_gap": False}

#: Display order of metrics in tables and charts.
METRIC_ORDER = ("accuracy", "worst_group_accuracy", "agree_accuracy", "disagree_accuracy", "agree_disagree_gap",
                "sparseness", "complexity", "deletion_auc", "insertion_auc", "symmetric_relevance_gain",
                "pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy", "artifact_mass",
                "explanation_consistency", "attack_flip_rate", "max_sensitivity", "model_randomisation")


def metric_summaries(result: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The ``{"mean", "std", "n"}`` entries of an ``evaluate`` result, in display order."""
    found = {k: v for k, v in result.items() if isinstance(v, Mapping) and "mean" in v and "n" in v}
    order = {k: i for i, k in enumerate(METRIC_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def metric_direction(name: str) -> bool | None:
    """True if higher is better, False if lower is better, None if unknown."""
    if name in METRICS:
        return METRICS[name].higher_is_better
    return EXTRA_DIRECTION.get(name)


def metric_title(name: str) -> str:
    """``"Deletion AUC (lower is better)"``-style title of a metric."""
    pretty = METRIC_TEXT.get(name, (name.replace("_", " ").capitalize(), ""))[0]
    d = metric_direction(name)
    return pretty if d is None else f"{pretty} ({'higher' if d else 'lower'} is better)"


def metric_unit(name: str) -> str:
    """The unit and range of a metric in plain words, e.g. ``area under the probability curve, 0-1``."""
    return METRIC_TEXT.get(name, ("", ""))[1]


def _layout(fig: Any, title: str | None, height: int, *, subtitle: str = "", **kw: Any) -> Any:
    """Common look: title (and a smaller unit line) at the top, the legend under the plot."""
    text = title if not subtitle else f"{title}<br><span style='font-size:11px;color:#666'>{subtitle}</span>"
    legend = kw.get("showlegend", True)
    fig.update_layout(title=dict(text=text, font=dict(size=14)) if title else None, height=height,
                      margin=dict(l=10, r=10, t=(58 if subtitle else 40) if title else 10, b=10),
                      template="plotly_white",
                      legend=dict(orientation="h", yanchor="top", y=-0.3, xanchor="left", x=0), **kw)
    if legend:
        fig.update_layout(height=height + 30)
    return fig


def short_labels(labels: Sequence[str]) -> list[str]:
    """Drop a prefix all labels share up to a ``" / "`` (e.g. ``synthetic-he / ``), keeping them unique."""
    labels = list(labels)
    if len(labels) < 2:
        return labels
    parts = [s.split(" / ", 1) for s in labels]
    same_prefix = all(len(p) == 2 for p in parts) and len({p[0] for p in parts}) == 1
    if same_prefix and len({p[1] for p in parts}) == len(labels):
        return [p[1] for p in parts]
    return labels


# -- per-tile ----------------------------------------------------------------------------------
def probability_figure(classes: Sequence[str], probs: Sequence[float], *, height: int = 140,
                       title: str | None = None) -> Any:
    """Horizontal bars of class probabilities (0-1), the predicted class highlighted."""
    import plotly.graph_objects as go
    p = [float(v) for v in probs]
    top = int(np.argmax(p)) if p else -1
    colors = ["#7b3f8c" if i == top else "#c9b3d1" for i in range(len(p))]
    fig = go.Figure(go.Bar(x=p, y=list(classes), orientation="h", marker_color=colors,
                           text=[f"{v:.0%}" for v in p], textposition="auto",
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_xaxes(range=[0, 1], title_text="probability", tickformat=".0%")
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, height, showlegend=False)


# -- dataset-level charts ----------------------------------------------------------------------------
def metric_bar_figure(metric: str, runs: Sequence[str], means: Sequence[float | None],
                      stds: Sequence[float | None] | None = None, *, height: int = 260) -> Any:
    """One bar per run (mean, with the standard deviation over tiles as an error bar)."""
    import plotly.graph_objects as go
    y = [None if m is None else float(m) for m in means]
    err = None if stds is None else [0.0 if s is None else float(s) for s in stds]
    colors = [RUN_COLORS[i % len(RUN_COLORS)] for i in range(len(runs))]
    fig = go.Figure(go.Bar(x=short_labels(runs), y=y, marker_color=colors,
                           error_y=dict(type="data", array=err, visible=err is not None, thickness=1,
                                        color="#444444"),
                           text=[("n/a" if v is None else f"{v:.3f}") for v in y], textposition="inside",
                           insidetextanchor="start", textfont=dict(color="white"),
                           hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    if metric_unit(metric).endswith("0-1"):
        fig.update_yaxes(range=[0, 1.15])
    return _layout(fig, metric_title(metric), height, subtitle=metric_unit(metric), showlegend=False)


def curves_figure(kind: str, fractions: Sequence[float], curves: Mapping[str, Sequence[float]], *,
                  height: int = 320) -> Any:
    """Deletion or insertion curves (mean over tiles) of several runs."""
    import plotly.graph_objects as go
    if kind not in ("deletion", "insertion"):
        raise InterpError(f"unknown curve kind {kind!r}")
    fig = go.Figure()
    x = [100.0 * float(f) for f in fractions]
    for i, (name, c) in enumerate(zip(short_labels(list(curves)), curves.values())):
        fig.add_trace(go.Scatter(x=x, y=[float(v) for v in c], mode="lines", name=name,
                                 line=dict(color=RUN_COLORS[i % len(RUN_COLORS)], width=2)))
    verb = "removed (most relevant first)" if kind == "deletion" else "put back (most relevant first)"
    fig.update_xaxes(title_text=f"pixels {verb}, %", range=[0, 100])
    fig.update_yaxes(title_text="probability of the explained class", range=[0, 1.02])
    better = "a fast drop (lower area) is better" if kind == "deletion" else "a fast rise (higher area) is better"
    return _layout(fig, f"{kind.capitalize()} curve: {better}", height)


HISTORY_KEYS: dict[str, tuple[str, str, bool | None]] = {
    "train_loss": ("Training loss", "loss, nats", False),
    "val_loss": ("Validation loss", "cross-entropy, nats", False),
    "val_accuracy": ("Validation accuracy", "share correct, 0-1", True),
    "consistency_mean": ("Mean explanation consistency (ECE refreshes)", "cosine similarity, 0-1", True),
}


def history_figure(key: str, histories: Mapping[str, Sequence[Mapping[str, Any]]], *, height: int = 280,
                   live: bool = False, offsets: Mapping[str, int] | None = None) -> Any:
    """One line per run of a ``history.jsonl`` field against the epoch.

    ``offsets``: epochs to add to a run's own epoch numbers, e.g. a fine-tuned run drawn after the
    epochs of the run it started from.
    """
    import plotly.graph_objects as go
    title, unit, better = HISTORY_KEYS.get(key, (key.replace("_", " ").capitalize(), "", None))
    fig = go.Figure()
    last = 1
    first = top = None
    y_top = 0.0
    offsets = offsets or {}
    for i, (full, name, hist) in enumerate(zip(histories, short_labels(list(histories)), histories.values())):
        shift = int(offsets.get(full, 0))
        pts = [(h["epoch"] + shift, h.get(key)) for h in hist
               if h.get(key) is not None and isinstance(h.get("epoch"), (int, float))]
        if not pts:
            continue
        last = max(last, max(int(p[0]) for p in pts))
        lo_e, hi_e = min(int(p[0]) for p in pts), max(int(p[0]) for p in pts)
        y_top = max([y_top, *(float(p[1]) for p in pts if math.isfinite(float(p[1])))])
        first, top = (lo_e, hi_e) if first is None else (min(first, lo_e), max(top, hi_e))
        # one point is drawn as a point (a line needs two), large enough to see
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts],
                                 mode="lines+markers" if len(pts) > 1 else "markers", name=name,
                                 marker=dict(size=7 if len(pts) > 1 else 11),
                                 line=dict(color=RUN_COLORS[i % len(RUN_COLORS)])))
    fig.update_xaxes(title_text="epoch", dtick=max(1, math.ceil(last / 10)), rangemode="tozero" if live else None)
    if first is not None and top - first < 2:  # one or two epochs: a sensible axis of whole epochs around them
        fig.update_xaxes(range=[first - 1, top + 1], dtick=1)
        if not unit.endswith("0-1"):  # a loss axis from 0 with room above the points, not around a lone point
            fig.update_yaxes(range=[0, 1.25 * y_top if y_top > 0 else 1])
    fig.update_yaxes(title_text=unit)
    if unit.endswith("0-1"):
        fig.update_yaxes(range=[0, 1.05])
    if better is not None:
        title = f"{title} ({'higher' if better else 'lower'} is better)"
    return _layout(fig, title, height)


def group_accuracy_figure(per_run: Mapping[str, Mapping[str, Mapping[str, Any]]], *, title: str = "",
                          height: int = 300) -> Any:
    """Grouped bars: accuracy of each group (x) for each run (colour), with the tile count in the hover."""
    import plotly.graph_objects as go
    groups = sorted({g for d in per_run.values() for g in d})
    fig = go.Figure()
    for i, (name, d) in enumerate(zip(short_labels(list(per_run)), per_run.values())):
        ys = [(d.get(g) or {}).get("mean") for g in groups]
        fig.add_trace(go.Bar(x=groups, y=ys, name=name, marker_color=RUN_COLORS[i % len(RUN_COLORS)],
                             text=["n/a" if v is None else f"{v:.3f}" for v in ys], textposition="outside",
                             textfont=dict(size=12), cliponaxis=False,
                             customdata=[(d.get(g) or {}).get("n") for g in groups],
                             hovertemplate="%{x}: %{y:.3f} (n=%{customdata})<extra>" + name + "</extra>"))
    fig.update_yaxes(title_text="accuracy, share correct 0-1", range=[0, 1.12])
    fig.update_layout(barmode="group", uniformtext=dict(minsize=10, mode="show"))
    return _layout(fig, title or "Accuracy per group (higher is better)", height)


def consistency_distribution_figure(refresh_epochs: Sequence[int], consistency: np.ndarray, *,
                                    height: int = 300) -> Any:
    """Box plots of per-sample consistency at each ECE refresh, on an axis zoomed to the bulk of the
    values: from ``max(min, Q1 - 3 IQR)`` (far outliers, e.g. a few tiles at 0, would squash boxes
    at 0.9-1.0) to the maximum; the tiles below the axis are counted in the subtitle."""
    import plotly.graph_objects as go
    fig = go.Figure()
    for e, row in zip(refresh_epochs, np.asarray(consistency)):
        fig.add_trace(go.Box(y=row.astype(float), name=f"epoch {int(e) + 1}", boxpoints="outliers",
                             marker_color="#7b3f8c", line=dict(width=1)))
    c = np.asarray(consistency, np.float64)
    finite = c[np.isfinite(c)]
    lo, hi = 0.0, 1.0
    if finite.size:
        q1, q3 = np.percentile(finite, [25, 75])
        lo, hi = max(float(finite.min()), float(q1 - 3 * (q3 - q1))), float(finite.max())
    pad = max(0.05 * (hi - lo), 0.002)
    below = finite[finite < lo - pad]
    # the axis spans the data (not 0-1), so a distribution at 0.98-1.0 shows its spread
    fig.update_yaxes(title_text="consistency (cosine)", range=[lo - pad, hi + pad])
    fig.update_xaxes(title_text="refresh (start of epoch)")
    sub = "Grad-CAM heatmaps, whatever the method chosen; axis zoomed to the data"
    if below.size:
        sub += f"; {below.size} tile value(s) below the axis (lowest {below.min():.2f})"
    return _layout(fig, "Per-tile consistency over training (higher is better)", height, subtitle=sub,
                   showlegend=False)


def slide_figure(image: np.ndarray, heat: np.ndarray, *, title: str, zmin: float, zmax: float,
                 colorscale: str = "Inferno", opacity: float = 0.5, colorbar_title: str = "",
                 height: int = 520, hover: str = "value") -> Any:
    """A zoomable slide: the RGB image with a semi-transparent heatmap stretched over it.

    ``heat`` may be coarser than ``image`` (e.g. one value per tile); it is drawn over the
    same extent. NaN cells are transparent.
    """
    import plotly.graph_objects as go
    img = as_rgb_u8(image)
    h, w = img.shape[:2]
    hh, hw = heat.shape
    fig = go.Figure()
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode("ascii")
    fig.add_trace(go.Image(source=uri, hoverinfo="skip"))
    dx, dy = w / hw, h / hh
    z = np.where(np.isfinite(heat), heat, None).tolist() if np.isnan(heat).any() else heat.tolist()
    fig.add_trace(go.Heatmap(z=z, x0=dx / 2 - 0.5, dx=dx, y0=dy / 2 - 0.5, dy=dy, zmin=zmin, zmax=zmax,
                             colorscale=colorscale, opacity=opacity, hoverongaps=False,
                             colorbar=dict(title=dict(text=colorbar_title, side="right"), thickness=12),
                             hovertemplate=f"{hover}: %{{z:.3f}}<extra></extra>"))
    fig.update_xaxes(visible=False, range=[-0.5, w - 0.5], constrain="domain")
    fig.update_yaxes(visible=False, range=[h - 0.5, -0.5], scaleanchor="x", constrain="domain")
    return _layout(fig, title, height, dragmode="zoom")


def finite_range(arrays: Sequence[np.ndarray], symmetric: bool = False) -> tuple[float, float]:
    """``(min, max)`` over the finite values of several arrays (``(0, 1)`` when there are none)."""
    vals = [a[np.isfinite(a)] for a in arrays]
    vals = [v for v in vals if v.size]
    if not vals:
        return 0.0, 1.0
    lo = float(min(v.min() for v in vals))
    hi = float(max(v.max() for v in vals))
    if symmetric:
        m = max(abs(lo), abs(hi))
        return -m, m
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return lo, lo + 1.0
    return lo, hi


# -- clickable grids (gallery thumbnails, the tiles of a large upload) --------------------------------
def clickable_grid_figure(image: np.ndarray, grid: tuple[int, int], cell: float, *, labels: Sequence[str],
                          selected: int | None = None, pitch: float | None = None, height: int | None = None,
                          lines: bool = False, title: str | None = None) -> Any:
    """``image`` with one invisible, clickable point per grid cell (``customdata`` = the cell's number,
    row-major), so a click on a cell selects it (Streamlit ``on_select``); the ``selected`` cell is
    framed. ``pitch``: distance between cell origins (``cell`` plus any gap); ``lines`` draws the grid
    (the tiles of an upload)."""

    import plotly.graph_objects as go
    img = as_rgb_u8(image)
    h, w = img.shape[:2]
    rows, cols = grid
    pitch = pitch or cell
    xs, ys, ids = [], [], []
    for k in range(min(len(labels), rows * cols)):
        r, c = divmod(k, cols)
        xs.append(c * pitch + cell / 2)
        ys.append(r * pitch + cell / 2)
        ids.append(k)
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode("ascii")
    fig = go.Figure(go.Image(source=uri, hoverinfo="skip"))
    # several invisible points per cell so a click anywhere in it lands on one
    sub = [(-0.3, -0.3), (0.3, -0.3), (0.0, 0.0), (-0.3, 0.3), (0.3, 0.3)]
    fig.add_trace(go.Scatter(
        x=[x + dx * cell for x in xs for dx, _ in sub], y=[y + dy * cell for y in ys for _, dy in sub],
        customdata=[k for k in ids for _ in sub], text=[labels[k] for k in ids for _ in sub], mode="markers",
        marker=dict(size=max(8.0, 0.45 * cell), color="rgba(0,0,0,0.01)", symbol="square"),
        hovertemplate="%{text}<extra>click to show</extra>", showlegend=False))
    shapes = []
    if lines:
        for c in range(1, cols):
            shapes.append(dict(type="line", x0=c * pitch - 0.5, x1=c * pitch - 0.5, y0=-0.5, y1=h - 0.5,
                               line=dict(color="rgba(0,0,0,0.6)", width=1)))
        for r in range(1, rows):
            shapes.append(dict(type="line", y0=r * pitch - 0.5, y1=r * pitch - 0.5, x0=-0.5, x1=w - 0.5,
                               line=dict(color="rgba(0,0,0,0.6)", width=1)))
    if selected is not None and 0 <= selected < len(ids):
        r, c = divmod(selected, cols)
        shapes.append(dict(type="rect", x0=c * pitch - 1.5, x1=c * pitch + cell + 0.5, y0=r * pitch - 1.5,
                           y1=r * pitch + cell + 0.5, line=dict(color="#7b3f8c", width=3)))
    fig.update_layout(shapes=shapes, clickmode="event+select", dragmode=False)
    fig.update_xaxes(visible=False, range=[-0.5, w - 0.5], constrain="domain")
    fig.update_yaxes(visible=False, range=[h - 0.5, -0.5], scaleanchor="x", constrain="domain")
    return _layout(fig, title, height or int(140 * max(1, rows)), showlegend=False)


def clicked_cell(event: Any) -> int | None:
    """The cell number a Streamlit plotly selection event points at (the first selected point), or None."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for p in points or []:
        cd = p.get("customdata")
        if isinstance(cd, (list, tuple)):
            cd = cd[0] if cd else None
        if cd is not None:
            return int(cd)
    return None
