"""Slide-level localisation of the shipped synthetic-he baseline and its SCAAT retrain on generated
synthetic H&E whole-slide images with known lesions.

    nice -n 10 python bench/slide_localisation.py [--size 12288] [--seeds 0 1 2] [--out bench/out/slides]

For each seed a slide of ``--size`` x ``--size`` pixels is generated (``interp_core.data.synthetic_wsi``,
0.5 um/px, JPEG pyramidal TIFF) and explained at level 0 by each run with ``explain-slide``
(``slide_job.explain_slide_file``: 64-pixel tiles = the runs' input, stride 64, saliency, tile
maps kept at 16x16, maps at 1/ceil(size/4096)). Reported per slide and run:

- ``auroc``: AUROC of the per-tile tumour probability against the tile's ground truth (the tile
  is a lesion cell of the generator: its tumour tile), over the computed tissue tiles;
- ``mass_region``: share of the stitched |saliency| (slide-wide normalisation) that falls inside
  the lesion cells, and ``area_region`` the share of the computed area they cover (what a
  saliency spread evenly would score);
- ``mass_evidence``: share of |saliency| inside the pixel evidence mask (the tumour tiles' own
  lesion masks: the abnormal nuclei), with ``area_evidence`` its uniform reference.

Results are reused from disk (the jobs are resumable). Writes ``docs/results/slide_localisation.json``
and ``.md`` (mean and spread over seeds, and the SCAAT - baseline difference per seed).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from interp_core.data.synthetic_wsi import write_synthetic_wsi  # noqa: E402
from interp_core.slides.job import assemble, explain_slide_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUNS = {"baseline": REPO / "sample_data/runs/synthetic-he/baseline-erm", "scaat": REPO / "sample_data/runs/synthetic-he/scaat"}
Image.MAX_IMAGE_PIXELS = None


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUROC (ties counted half)."""
    from scipy.stats import rankdata
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def block_fraction(mask: np.ndarray, px: float, shape: tuple[int, int], d: float, n: int = 4) -> np.ndarray:
    """Share of each map pixel (``d`` level-0 pixels a side) that ``mask`` (one pixel = ``px`` level-0
    pixels) marks, estimated from ``n x n`` sample points per map pixel (nearest mask pixel)."""
    h, w = shape
    off = (np.arange(n) + 0.5) / n
    ys = np.minimum(((np.arange(h)[:, None] + off[None, :]) * d / px).astype(np.int64).ravel(), mask.shape[0] - 1)
    xs = np.minimum(((np.arange(w)[:, None] + off[None, :]) * d / px).astype(np.int64).ravel(), mask.shape[1] - 1)
    out = np.zeros((h, w), np.float64)
    for k in range(n):  # one sample row offset at a time keeps memory at one map-sized array
        sub = mask[ys[k::n]][:, xs].reshape(h, w, n).sum(axis=2, dtype=np.uint8) / n
        out += sub / n
    return out


def evaluate(out: Path, slide: Path) -> dict:
    m = assemble(out, normalize="slide")
    res, plan = m.result, m.plan
    stem = slide.with_suffix("")
    meta = json.loads(Path(f"{stem}.json").read_text())
    cells = np.asarray(Image.open(f"{stem}.lesion_cells.png")) > 0
    computed = np.isfinite(res.probs[..., 0])
    rows, cols = res.probs.shape[:2]
    truth = np.zeros((rows, cols), bool)
    truth[:cells.shape[0], :cells.shape[1]] = cells[:rows, :cols]
    ti = res.classes.index("tumor")
    a = auroc(res.probs[..., ti][computed], truth[computed])
    sal = np.abs(res.saliency.astype(np.float64))
    ok = np.isfinite(sal)
    d = plan["downsample"]
    frac_region = block_fraction(cells, meta["cell"], sal.shape, d)
    ev = np.asarray(Image.open(f"{stem}.lesion_mask.png")) > 0
    frac_ev = block_fraction(ev, meta["mask_downsample"], sal.shape, d)
    tot = sal[ok].sum()
    return {"auroc": a, "tiles": int(computed.sum()), "lesion_tiles": int(truth[computed].sum()),
            "mass_region": float((sal[ok] * frac_region[ok]).sum() / tot),
            "area_region": float(frac_region[ok].mean()),
            "mass_evidence": float((sal[ok] * frac_ev[ok]).sum() / tot),
            "area_evidence": float(frac_ev[ok].mean()), "map_downsample": d}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=12288)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=str(REPO / "bench/out/slides"))
    p.add_argument("--results", default=str(REPO / "docs/results/slide_localisation"))
    a = p.parse_args()
    out = Path(a.out)
    rows = []
    for seed in a.seeds:
        slide = out / f"synthetic-he-{a.size}-s{seed}.tiff"
        if not slide.is_file():
            t = time.perf_counter()
            meta = write_synthetic_wsi(slide, width=a.size, height=a.size, seed=seed, bank=128, mask_downsample=4)
            print(f"seed {seed}: wrote {slide.name} ({meta['size']}, {meta['lesions']} lesions) in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
        for name, run in RUNS.items():
            job = out / f"{slide.stem}-{name}"
            t = time.perf_counter()
            s = explain_slide_file(run, slide, job, method="saliency", map_side=4096, tile_map_size=16,
                                   batch_size=128, device="cpu")
            r = {"seed": seed, "run": name, **evaluate(job, slide),
                 "tiles_per_second": s["timings"]["tiles_per_second"]}
            rows.append(r)
            print(f"seed {seed} {name}: {time.perf_counter() - t:.0f} s  " +
                  ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()), flush=True)
    res = Path(a.results)
    res.parent.mkdir(parents=True, exist_ok=True)
    res.with_suffix(".json").write_text(json.dumps({"size": a.size, "seeds": a.seeds, "rows": rows}, indent=2))
    lines = [f"# Slide-level localisation on synthetic H&E slides ({a.size:,} x {a.size:,} px, seeds "
             f"{', '.join(map(str, a.seeds))})", "",
             "Generated by `bench/slide_localisation.py`. Runs: the shipped `synthetic-he/baseline-erm` and its "
             "SCAAT retrain `synthetic-he/scaat` (one training seed each); spread = over slides (generator seeds). "
             "AUROC: per-tile p(tumor) vs the tile's lesion label. Mass: share of the stitched |saliency| "
             "(slide-wide normalisation) inside the lesion cells (region) or inside the abnormal-nuclei evidence "
             "mask; 'uniform' is the share of the computed area they cover.", "",
             "| metric | baseline | SCAAT | SCAAT - baseline (per slide) | uniform |", "|---|---|---|---|---|"]
    for key, ref in (("auroc", None), ("mass_region", "area_region"), ("mass_evidence", "area_evidence")):
        b = np.array([r[key] for r in rows if r["run"] == "baseline"])
        s = np.array([r[key] for r in rows if r["run"] == "scaat"])
        u = np.array([r[ref] for r in rows if r["run"] == "baseline"]) if ref else None

        def fmt(x: np.ndarray) -> str:
            return f"{x.mean():.3f} ± {x.std(ddof=1):.3f}" if len(x) > 1 else f"{x.mean():.3f}"
        lines.append(f"| {key} | {fmt(b)} | {fmt(s)} | {', '.join(f'{v:+.3f}' for v in s - b)} | "
                     f"{fmt(u) if u is not None else '-'} |")
    lines += ["", "Per slide and run:", "", "| seed | run | tiles | lesion tiles | AUROC | mass region | area region | "
              "mass evidence | area evidence |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['run']} | {r['tiles']:,} | {r['lesion_tiles']:,} | {r['auroc']:.3f} | "
                     f"{r['mass_region']:.3f} | {r['area_region']:.3f} | {r['mass_evidence']:.3f} | "
                     f"{r['area_evidence']:.3f} |")
    res.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
