"""Charts of the changes against a reference run (``interp_core.evaluation.verdict``): paired changes
with their intervals and calls (``change_figure``), each run's value with its interval
(``value_figure``); plotly figures returned unrendered, in the look of ``viz.figures``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..errors import InterpError
from .figures import GRADCAM_METRICS, RUN_COLORS, _layout, metric_title, metric_unit, short_labels

#: Colours of the verdict calls: worse in red, better in green, no clear change in grey.
CALL_COLORS = {"better": "#1a7f37", "worse": "#d62728", "no clear change": "#6e7781", "changed": "#0072B2"}


def _nice_span(lo: float, hi: float) -> tuple[float, float]:
    """An axis range around ``[lo, hi]`` that always includes 0, padded by 15% (at least a small width)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    pad = max(0.15 * (hi - lo), 1e-6)
    return lo - pad, hi + pad


def change_figure(changes: Sequence[Any], *, runs: Sequence[str] | None = None, row_height: int = 30) -> Any:
    """Dot-and-interval plot of paired changes (``interp_core.evaluation.verdict.Change``) around 0.

    One panel per metric, each with its own x axis scaled to that metric's changes (a shared axis
    would let entropy in nats squash the 0-1 metrics); one row per run; the dot is the mean paired
    change, the bar its 95% interval, coloured by the call (worse in red), and the call and numbers
    are written in a column to the right of the panel.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    metrics = list(dict.fromkeys(c.metric for c in changes))
    if not metrics:
        raise InterpError("no changes to draw")
    runs = list(runs or dict.fromkeys(c.run for c in changes))
    n_rows = [max(1, sum(1 for c in changes if c.metric == m)) for m in metrics]
    gap = 64  # pixels between panels: the panel's tick labels and the next one's title
    plot_h = sum(row_height * n + 16 for n in n_rows)
    height = plot_h + gap * (len(metrics) - 1) + 70
    fig = make_subplots(rows=len(metrics), cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.01,
                        row_heights=[row_height * n + 16 for n in n_rows],
                        vertical_spacing=gap / (height - 70) if len(metrics) > 1 else 0.0,
                        subplot_titles=[t for m in metrics for t in (
                            metric_title(m) + (" · always Grad-CAM, whatever the method chosen"
                                               if m in GRADCAM_METRICS else ""), "")])
    for i, m in enumerate(metrics, start=1):
        cs = sorted((c for c in changes if c.metric == m), key=lambda c: runs.index(c.run) if c.run in runs else 99)
        for c in cs:
            col = CALL_COLORS[c.call]
            fig.add_trace(go.Scatter(
                x=[c.diff], y=[c.run], mode="markers", marker=dict(color=col, size=10),
                error_x=dict(type="data", symmetric=False, array=[c.hi - c.diff], arrayminus=[c.diff - c.lo],
                             color=col, thickness=2.5, width=5),
                hovertemplate=(f"{c.run} - {c.reference}<br>{metric_title(m)}<br>change {c.text(4)}<br>"
                               f"{c.before:.4f} -> {c.after:.4f} on {c.n} tiles<extra></extra>"),
                showlegend=False), row=i, col=1)
            fig.add_trace(go.Scatter(x=[0], y=[c.run], mode="text", text=[f"<b>{c.call}</b>  {c.text()}"],
                                     textposition="middle right", textfont=dict(color=col, size=12),
                                     hoverinfo="skip", showlegend=False), row=i, col=2)
        a, b = _nice_span(min(c.lo for c in cs), max(c.hi for c in cs))
        fig.update_xaxes(range=[a, b], zeroline=True, zerolinecolor="#222", zerolinewidth=1.5, row=i, col=1,
                         tickformat=".3~f", nticks=7)
        fig.update_xaxes(visible=False, range=[0, 1], row=i, col=2)
        for col_ in (1, 2):
            fig.update_yaxes(categoryorder="array", categoryarray=list(reversed([c.run for c in cs])), row=i,
                             col=col_, showticklabels=col_ == 1, showgrid=col_ == 1, range=[-0.6, len(cs) - 0.4])
    for ann in fig.layout.annotations:
        ann.update(x=0, xanchor="left", font=dict(size=12, color="#333"))
    fig.update_layout(height=height, template="plotly_white", margin=dict(l=10, r=10, t=60, b=10),
                      title=dict(text=f"Change against {changes[0].reference} (this model - reference; dot: mean "
                                      "paired change, bar: 95% interval; left of 0 = lower)", font=dict(size=14)))
    return fig


def value_figure(metric: str, runs: Sequence[str], values: Sequence[tuple[float, float, float] | None], *,
                 height: int = 240) -> Any:
    """One dot per run with its 95% interval (``(mean, lo, hi)``), on an axis scaled to the values,
    each labelled with its value; replaces bars from 0 whose differences of 0.01 look identical."""
    import plotly.graph_objects as go
    names = short_labels(list(runs))
    fig = go.Figure()
    have = [v for v in values if v is not None]
    left = min((v[1] for v in have), default=0.0)
    right = max((v[2] for v in have), default=1.0)
    for i, (name, v) in enumerate(zip(names, values)):
        if v is None:
            continue
        m, lo, hi = v
        where = (m - left) / (right - left) if right > left else 0.5  # a label near an edge extends inwards
        position = "top left" if where > 0.7 else "top right" if where < 0.3 else "top center"
        fig.add_trace(go.Scatter(x=[m], y=[name], mode="markers+text", marker=dict(color=RUN_COLORS[i % len(
            RUN_COLORS)], size=11), error_x=dict(type="data", symmetric=False, array=[hi - m], arrayminus=[m - lo],
                                                 thickness=2, width=6, color=RUN_COLORS[i % len(RUN_COLORS)]),
            text=[f"{m:.3f} [{lo:.3f}, {hi:.3f}]"], textposition=position, textfont=dict(size=12), cliponaxis=False,
            hovertemplate=f"{name}: %{{x:.4f}} (95% interval {lo:.4f} to {hi:.4f})<extra></extra>",
            showlegend=False))
    if have:
        lo = min(v[1] for v in have)
        hi = max(v[2] for v in have)
        pad = max(0.25 * (hi - lo), 1e-3)
        fig.update_xaxes(range=[lo - pad, hi + pad])
    fig.update_yaxes(categoryorder="array", categoryarray=list(reversed(names)), range=[-0.5, len(names) - 0.15])
    unit = metric_unit(metric)
    if len(unit) > 50 and " (" in unit:  # a long unit goes on two lines rather than being cut
        unit = unit.replace(" (", "<br>(", 1)
    subtitle = unit + "<br>dot: value, bar: 95% interval"
    fig = _layout(fig, metric_title(metric), height + 22 * max(0, len(runs) - 3), subtitle=subtitle,
                  showlegend=False)
    fig.update_layout(margin=dict(t=34 + 15 * subtitle.count("<br>") + 15))
    return fig


def same_partition(a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]) -> bool:
    """True when two accuracy breakdowns (e.g. per class and per group) hold the same numbers, i.e.
    the groups are the classes: then one chart is enough."""
    key = lambda d: sorted((round(float(v.get("mean") or 0.0), 9), int(v.get("n") or 0)) for v in d.values())  # noqa: E731
    return len(a) == len(b) and key(a) == key(b)
