"""``compare``: a self-contained HTML report across runs on one dataset.

At the top, the verdict: one paragraph per run saying which metrics got better and which worse
against a reference run, with 95% intervals (``interp_core.evaluation.verdict``), and the change table and
chart. Then the metric table (value [95% interval], each metric's better direction), value charts
and deletion/insertion curves (plotly.js embedded once, inline: the file opens with no network),
training curves, and example tiles drawn at random with a fixed seed, each map with its colour
scale (PNG data URIs). Every text is HTML-escaped; no absolute path of this machine is written.
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

from ..attribution import attribute, overlay, seed_option, shared_range
from ..data import open_split
from .._utils.device import pick_device
from ..errors import InterpError
from ..evaluation.evaluate import EvalSettings, cached_evaluate
from ..evaluation import verdict as V
from .figures import METRIC_ORDER, METRIC_TEXT, curves_figure, history_figure, metric_direction, metric_summaries
from .images import colorbar_png_array
from .verdict_figures import CALL_COLORS, change_figure, value_figure
from ..runs import load_run, run_interpolation, write_text

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


def _fmt(result: dict, metric: str) -> str:
    """``0.905 [0.870, 0.933]``: the value and its 95% interval (never ± a per-tile spread)."""
    iv = V.value_interval(result, metric)
    if iv is not None:
        return f"{iv[0]:.4f} [{iv[1]:.4f}, {iv[2]:.4f}]"
    v = result.get(metric)
    return "–" if not v or v.get("mean") is None else f"{v['mean']:.4f}"


def metric_table_html(results: dict[str, dict]) -> str:
    """An HTML table: one row per metric, one column per run (value [95% interval]), plus the direction."""
    runs = list(results)
    head = "".join(f"<th>{html.escape(r)}</th>" for r in runs)
    rows = []
    for m in _metric_rows(results):
        cells = "".join(f"<td>{_fmt(results[r], m)}</td>" for r in runs)
        name = METRIC_TEXT.get(m, (m,))[0]  # readable, as on the Metrics page
        rows.append(f"<tr><th>{html.escape(name)}</th><td class='dir'>{html.escape(_direction(m))}</td>{cells}</tr>")
    return f"<table><thead><tr><th>metric</th><th>direction</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def change_table_html(changes: list[V.Change]) -> str:
    """The change table: run, metric, direction, reference, run, change [95% interval], verdict (coloured)."""
    rows = []
    for c in changes:
        col = CALL_COLORS[c.call]
        rows.append(f"<tr><td>{html.escape(c.run)}</td><th>{html.escape(V.metric_name(c.metric))}</th>"
                    f"<td class='dir'>{html.escape(_direction(c.metric))}</td><td>{c.before:.4f}</td>"
                    f"<td>{c.after:.4f}</td><td>{html.escape(c.text())}</td>"
                    f"<td style='color:{col};font-weight:600'>{html.escape(c.call)}</td><td>{c.n}</td></tr>")
    return ("<table class='changes'><thead><tr><th>model</th><th>metric</th><th>direction</th><th>reference</th>"
            "<th>this model</th><th>change [95% interval]</th><th>verdict</th><th>tiles</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _html_bold(text: str) -> str:
    col = {"Better": CALL_COLORS["better"], "Worse": CALL_COLORS["worse"]}.get(text)
    return f"<b style='color:{col}'>{html.escape(text)}</b>" if col else f"<b>{html.escape(text)}</b>"


def verdict_html(results: dict[str, dict], reference: str) -> tuple[str, list[V.Change]]:
    """The verdict paragraphs (one per run but the reference) and every change, for the report's top."""
    paras, allc = [], []
    for run, res in results.items():
        if run == reference:
            continue
        try:
            ch = V.compare(res, results[reference], run=run, reference_name=reference)
        except Exception as e:  # noqa: BLE001 - a result without per-tile values: say so, keep the report
            paras.append(f"<p>{html.escape(run)}: {html.escape(str(e))}</p>")
            continue
        # escape first, then mark up: verdict_sentence inserts the markup through ``bold``
        paras.append("<p class='verdict'>" + V.verdict_sentence(
            [V.Change(c.metric, html.escape(c.run), html.escape(c.reference), c.before, c.after, c.diff, c.lo, c.hi,
                      c.n, c.higher_is_better) for c in ch], bold=_html_bold) + "</p>")
        allc += ch
    return "".join(paras), allc


def _figures(results: dict[str, dict], histories: dict[str, list[dict]]) -> dict[str, list[go.Figure]]:
    """The report's charts by section, built by the dashboard's own builders (``interp_core.viz.figures``)."""
    runs = list(results)
    bars = []
    for m in _metric_rows(results):
        vals = [V.value_interval(results[r], m) for r in runs]
        if any(v is not None for v in vals):
            bars.append(value_figure(m, runs, [None if v is None else v[:3] for v in vals]))
    curves = {r: results[r].get("details", {}).get("curves") for r in runs}
    have = {r: c for r, c in curves.items() if c}
    faithfulness = []
    if have:
        fractions = next(iter(have.values()))["fractions"]
        faithfulness = [curves_figure(k, fractions, {r: c[k] for r, c in have.items()}) for k in ("deletion", "insertion")]
    return {"bars": bars, "curves": faithfulness, "training": [history_figure("val_accuracy", histories)]}


def example_indices(labels: list[int], n: int = N_EXAMPLES, seed: int = 0) -> list[int]:
    """Up to ``n`` tiles drawn at random (``numpy.random.default_rng(seed)``), spread over the classes in
    turn, sorted: reproducible, and not the first files of each folder."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    pools = {k: list(rng.permutation(v)) for k, v in sorted(by_class.items())}
    out: list[int] = []
    while len(out) < min(n, len(labels)):
        for k in pools:
            if pools[k] and len(out) < n:
                out.append(int(pools[k].pop(0)))
    return sorted(out)


def _display_names(paths: list[Path]) -> list[str]:
    """Run folder names, made unique with their parent folder when two share a name (never absolute)."""
    names = [p.name for p in paths]
    return [n if names.count(n) == 1 else f"{p.parent.name}/{n}" for n, p in zip(names, paths)]


def _resize_for(x: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Images ``x`` resized to a run's input size with its interpolation (unchanged when equal)."""
    size = int(cfg["image_size"])
    if tuple(x.shape[-2:]) == (size, size):
        return x
    mode = run_interpolation(cfg)
    return torch.nn.functional.interpolate(
        x, size=(size, size), mode=mode, **({} if mode == "nearest" else {"align_corners": False, "antialias": True})
    ).clamp(0, 1)


def build_report(runs: list[str | Path], data: str | Path, out: str | Path, *, split: str = "test",
                 attribution: str = "saliency", limit: int | None = 200, device: str = "auto",
                 progress: bool | Callable[[int, int], None] = False, seed: int = 0,
                 reference: str | Path | None = None) -> dict[str, Any]:
    """Evaluate ``runs`` on ``data`` (cached beside each run) and write the HTML report to ``out``.

    ``reference``: the run the others are compared with (one of ``runs``); default: the run the
    others were fine-tuned from (``verdict.default_reference``).
    """
    if not runs:
        raise InterpError("compare needs at least one --runs")
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise InterpError(f"--out must be an .html file (got {out.name!r})")
    dev = pick_device(device)
    t0 = time.time()
    loaded = [load_run(r, dev) for r in runs]
    names = _display_names([lr.path for lr in loaded])
    by_path = {str(lr.path): n for lr, n in zip(loaded, names)}
    ref_path = (str(load_run(reference, torch.device("cpu")).path) if reference is not None else
                V.default_reference({str(lr.path): lr.config for lr in loaded}))
    ref_name = by_path.get(str(ref_path))
    if ref_name is None:
        raise InterpError(f"the reference {reference} is not one of --runs")
    settings = EvalSettings(split=split, attribution=attribution, limit=limit, seed=seed)
    results = {n: cached_evaluate(lr.path, data, settings, device=dev, progress=progress) for n, lr in zip(names, loaded)}
    ds = open_split(data, split, image_size=loaded[0].config["image_size"])
    idx = example_indices(ds.labels, seed=seed)
    x = torch.stack([ds[i]["image"] for i in idx]).to(dev)
    maps, preds = _example_maps(loaded, names, x, attribution, seed)
    grid = _examples_grid(ds, idx, x, names, maps, preds)
    sections = _figures(results, {n: lr.history for n, lr in zip(names, loaded)})
    verdict, changes = verdict_html(results, ref_name)
    doc = _document(data, split, attribution, seed, names, ref_name, results, sections, verdict, changes, len(idx),
                    grid)
    write_text(out, doc)
    by_run: dict[str, list[V.Change]] = {}
    for c in changes:
        by_run.setdefault(c.run, []).append(c)
    return {"out": str(out), "runs": names, "reference": ref_name, "changes": [c.as_row() for c in changes],
            "verdict": [V.verdict_sentence(cs, bold=lambda t: f"**{t}**") for cs in by_run.values()],
            "n_tiles": results[names[0]]["n_tiles"], "seconds": time.time() - t0, "bytes": out.stat().st_size}


def _example_maps(loaded: list[Any], names: list[str], x: torch.Tensor, attribution: str,
                  seed: int) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """Each run's maps of the example tiles ``x`` (at the first run's size) and its probabilities."""
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
    return maps, preds


def _examples_grid(ds: Any, idx: list[int], x: torch.Tensor, names: list[str], maps: dict[str, np.ndarray],
                   preds: dict[str, torch.Tensor]) -> list[str]:
    """The examples table: each tile, every run's overlay with its prediction, a shared colour scale per row."""
    grid = ["<table class='grid'><tr><th>tile</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names)
            + "<th>colour scale</th></tr>"]
    for j, i in enumerate(idx):
        img = ds.read_image(i)
        if img.shape[0] != x.shape[-1]:
            img = (x[j].permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        mask = ds.read_mask(i)
        if mask is not None and mask.shape != img.shape[:2]:
            mask = None
        vmin, vmax = shared_range([maps[n][j] for n in names])
        share = max(abs(vmax), 1e-30)
        cells = [f"<td><img src='{_png_data_uri(img)}'><br>{html.escape(ds.ids[i])}<br>"
                 f"true: {html.escape(ds.classes[ds.labels[i]])}</td>"]
        for n in names:
            p = preds[n][j]
            k = int(p.argmax())
            ov = overlay(img, maps[n][j], vmin=vmin, vmax=vmax, mask=mask)
            cells.append(f"<td><img src='{_png_data_uri(ov)}'><br>pred: {html.escape(ds.classes[k])} "
                         f"({float(p[k]):.2f})</td>")
        bar = colorbar_png_array("jet", vmin / share, vmax / share, length=110, label="share of max")
        cells.append(f"<td><img class='cbar' src='{_png_data_uri(bar)}'></td>")
        grid.append("<tr>" + "".join(cells) + "</tr>")
    grid.append("</table>")
    return grid


def _document(data: str | Path, split: str, attribution: str, seed: int, names: list[str], ref_name: str,
              results: dict[str, dict], sections: dict[str, list[go.Figure]], verdict: str, changes: list[V.Change],
              n_examples: int, grid: list[str]) -> str:
    """The whole HTML page (plotly.js inlined, so it opens offline)."""
    def to_html(figs: list[go.Figure]) -> str:
        return "".join(pio.to_html(f, include_plotlyjs=False, full_html=False) for f in figs)

    css = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px} "
           "table{border-collapse:collapse;margin:1em 0} td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;"
           "font-size:13px} .dir{color:#666} .grid td{text-align:center} .grid img{width:128px;height:128px;"
           "image-rendering:pixelated} .grid img.cbar{width:auto;height:auto;image-rendering:auto}"
           ".verdict{font-size:15px;line-height:1.5;background:#f6f8fa;padding:.6em 1em;border-left:4px solid #888}"
           ".bars{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:8px}")
    top = ""
    if changes:
        top = (f"<h2>Did retraining help? (against {html.escape(ref_name)})</h2>{verdict}<p class='dir'>"
               f"{html.escape(V.verdict_note(len({c.metric for c in changes})))}</p>{change_table_html(changes)}"
               + pio.to_html(change_figure(changes), include_plotlyjs=False, full_html=False))
    elif verdict:
        top = f"<h2>Did retraining help?</h2>{verdict}"
    body = (f"<h1>Explanation report</h1><p>Dataset <b>{html.escape(Path(data).name)}</b>, split "
            f"<b>{html.escape(split)}</b>, attribution <b>{html.escape(attribution)}</b>, "
            f"{results[names[0]]['n_tiles']} tiles per run; models: {html.escape(', '.join(names))}. "
            "Generated by interp_core.</p>" + top +
            f"<h2>Metrics</h2><p class='dir'>Value [95% interval] over the tiles: Wilson for shares of tiles, "
            "bootstrap of the mean otherwise. The consistency metrics use Grad-CAM whatever the method.</p>"
            f"{metric_table_html(results)}<div class='bars'>{to_html(sections['bars'])}</div>"
            f"<h2>Faithfulness curves</h2>{to_html(sections['curves'])}<h2>Training</h2>{to_html(sections['training'])}"
            f"<h2>Examples</h2><p>{n_examples} tiles drawn at random (seed {seed}), spread over the classes. Shared "
            "colour scale per row, as a share of the row's largest value; white outline: the marked evidence.</p>"
            + "".join(grid))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>interp_core report</title><style>{css}</style>"
            f"<script>{get_plotlyjs()}</script></head><body>{body}</body></html>")
