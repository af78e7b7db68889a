"""``compare``: a self-contained HTML report across runs on one dataset.

The metric table (with each metric's better direction), plotly bar charts and deletion/insertion
curves (plotly.js embedded once, inline: the file opens with no network), training curves, and a
grid of example overlays per run (PNG data URIs). Every text is HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs
import torch
from PIL import Image

from .attribution import attribute, overlay, seed_option, shared_range
from .data import open_split
from .device import pick_device
from .errors import InterpError
from .evaluate import EvalSettings, cached_evaluate, stratified_subset
from .figures import (METRIC_ORDER, curves_figure, history_figure, metric_bar_figure, metric_direction,
                      metric_summaries)
from .runs import load_run

N_EXAMPLES = 6


def _png_data_uri(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _metric_rows(results: dict[str, dict]) -> list[str]:
    """Every metric any run reports, in the dashboard's display order."""
    names: list[str] = []
    for r in results.values():
        names += [k for k in metric_summaries(r) if k not in names]
    order = {k: i for i, k in enumerate(METRIC_ORDER)}
    return sorted(names, key=lambda k: (order.get(k, len(order)), k))


def _direction(name: str) -> str:
    d = metric_direction(name)
    return "" if d is None else ("higher is better" if d else "lower is better")


def _fmt(v: dict | None) -> str:
    if not v or v.get("mean") is None:
        return "–"
    std = v.get("std")
    return f"{v['mean']:.4f}" + (f" ± {std:.4f}" if std is not None and v.get("n", 0) > 1 else "")


def metric_table_html(results: dict[str, dict]) -> str:
    """An HTML table: one row per metric, one column per run (mean ± std), plus the direction."""
    runs = list(results)
    head = "".join(f"<th>{html.escape(r)}</th>" for r in runs)
    rows = []
    for m in _metric_rows(results):
        cells = "".join(f"<td>{_fmt(results[r].get(m))}</td>" for r in runs)
        rows.append(f"<tr><th>{html.escape(m)}</th><td class='dir'>{html.escape(_direction(m))}</td>{cells}</tr>")
    return f"<table><thead><tr><th>metric</th><th>direction</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _figures(results: dict[str, dict], histories: dict[str, list[dict]]) -> dict[str, list[go.Figure]]:
    """The report's charts by section, built by the dashboard's own builders (``interp_core.figures``)."""
    runs = list(results)
    bars = [metric_bar_figure(m, runs, [(results[r].get(m) or {}).get("mean") for r in runs],
                              [(results[r].get(m) or {}).get("std") for r in runs])
            for m in _metric_rows(results)]
    curves = {r: results[r].get("details", {}).get("curves") for r in runs}
    have = {r: c for r, c in curves.items() if c}
    faithfulness = []
    if have:
        fractions = next(iter(have.values()))["fractions"]
        faithfulness = [curves_figure(k, fractions, {r: c[k] for r, c in have.items()}) for k in ("deletion", "insertion")]
    return {"bars": bars, "curves": faithfulness, "training": [history_figure("val_accuracy", histories)]}


def example_indices(labels: list[int], n: int = N_EXAMPLES) -> list[int]:
    """Up to ``n`` tiles spread over the classes (round-robin, first tiles of each class)."""
    return stratified_subset(labels, min(n, len(labels)))


def _resize_for(x: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Images ``x`` resized to a run's input size with its interpolation (unchanged when equal)."""
    from .runs import run_interpolation
    size = int(cfg["image_size"])
    if tuple(x.shape[-2:]) == (size, size):
        return x
    mode = run_interpolation(cfg)
    return torch.nn.functional.interpolate(
        x, size=(size, size), mode=mode, **({} if mode == "nearest" else {"align_corners": False, "antialias": True})
    ).clamp(0, 1)


def build_report(runs: list[str | Path], data: str | Path, out: str | Path, *, split: str = "test",
                 attribution: str = "saliency", limit: int | None = 200, device: str = "auto",
                 progress: bool | Callable[[int, int], None] = False, seed: int = 0) -> dict[str, Any]:
    """Evaluate ``runs`` on ``data`` (cached beside each run) and write the HTML report to ``out``."""
    if not runs:
        raise InterpError("compare needs at least one --runs")
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise InterpError(f"--out must be an .html file (got {out.name!r})")
    dev = pick_device(device)
    t0 = time.time()
    loaded = [load_run(r, dev) for r in runs]
    names = [lr.name if [x.name for x in loaded].count(lr.name) == 1 else str(lr.path) for lr in loaded]
    settings = EvalSettings(split=split, attribution=attribution, limit=limit, seed=seed)
    results = {n: cached_evaluate(lr.path, data, settings, device=dev, progress=progress) for n, lr in zip(names, loaded)}
    ds = open_split(data, split, image_size=loaded[0].config["image_size"])
    idx = example_indices(ds.labels)
    x = torch.stack([ds[i]["image"] for i in idx]).to(dev)
    maps, preds = {}, {}
    for n, lr in zip(names, loaded):  # each run at its own input size; maps shown at the first run's
        xr = _resize_for(x, lr.config)
        a = attribute(lr.model, xr, attribution, **seed_option(attribution, seed))
        if a.shape[-2:] != x.shape[-2:]:
            a = torch.nn.functional.interpolate(a[:, None], size=tuple(x.shape[-2:]), mode="bilinear",
                                                align_corners=False)[:, 0]
        maps[n] = a.cpu().numpy()
        with torch.no_grad():
            preds[n] = torch.softmax(lr.model(xr), 1).cpu()
    grid = ["<table class='grid'><tr><th>tile</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"]
    for j, i in enumerate(idx):
        img = ds.read_image(i)
        if img.shape[0] != x.shape[-1]:
            img = (x[j].permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        mask = ds.read_mask(i)
        if mask is not None and mask.shape != img.shape[:2]:
            mask = None
        vmin, vmax = shared_range([maps[n][j] for n in names])
        cells = [f"<td><img src='{_png_data_uri(img)}'><br>{html.escape(ds.ids[i])}<br>"
                 f"true: {html.escape(ds.classes[ds.labels[i]])}</td>"]
        for n in names:
            p = preds[n][j]
            k = int(p.argmax())
            ov = overlay(img, maps[n][j], vmin=vmin, vmax=vmax, mask=mask)
            cells.append(f"<td><img src='{_png_data_uri(ov)}'><br>pred: {html.escape(ds.classes[k])} "
                         f"({float(p[k]):.2f})</td>")
        grid.append("<tr>" + "".join(cells) + "</tr>")
    grid.append("</table>")
    sections = _figures(results, {n: lr.history for n, lr in zip(names, loaded)})

    def to_html(figs: list[go.Figure]) -> str:
        return "".join(pio.to_html(f, include_plotlyjs=False, full_html=False) for f in figs)

    css = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222} table{border-collapse:collapse;margin:1em 0}"
           "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;font-size:13px} .dir{color:#666}"
           ".grid td{text-align:center} .grid img{width:128px;height:128px;image-rendering:pixelated}"
           ".bars{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:8px}")
    body = (f"<h1>Explanation report</h1><p>Dataset <code>{html.escape(str(data))}</code>, split "
            f"<b>{html.escape(split)}</b>, attribution <b>{html.escape(attribution)}</b>, "
            f"{results[names[0]]['n_tiles']} tiles per run. Generated by interp_core.</p>"
            f"<h2>Metrics</h2>{metric_table_html(results)}<div class='bars'>{to_html(sections['bars'])}</div>"
            f"<h2>Faithfulness curves</h2>{to_html(sections['curves'])}<h2>Training</h2>{to_html(sections['training'])}"
            "<h2>Examples</h2><p>Shared colour scale per row; "
            "white outline: ground-truth evidence mask.</p>" + "".join(grid))
    doc = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>interp_core report</title><style>{css}</style><script>{get_plotlyjs()}</script></head><body>{body}</body></html>"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc, encoding="utf-8")
    return {"out": str(out), "runs": names, "n_tiles": results[names[0]]["n_tiles"], "seconds": time.time() - t0,
            "bytes": out.stat().st_size}
