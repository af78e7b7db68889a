"""Slide-level localisation of a baseline, a same-budget control and its SCAAT retrain, per training
seed, on generated synthetic H&E whole-slide images with known lesions.

    nice -n 10 python bench/slide_localisation.py [--size 6144] [--seeds 0 1 2] [--sample-every K] [--map-side N]
        [--study DIR --train-seeds 0 1 2 --control control --scaat l20-q0.3-rho0.95 | --triple LABEL=B,C,S ...]
        [--shard i/n] [--out bench/out/slides]

Runs: per training seed a triple (baseline, control, SCAAT); by default the SCAAT study's layout
``DIR/seed<k>/{a-erm, control, l20-q0.3-rho0.95}`` (baseline = ERM 8 epochs; control = baseline + 3
ERM epochs; SCAAT = baseline + 3 SCAAT epochs at the shipped defaults), or ``--triple`` per seed.
For each slide seed a slide of ``--size`` x ``--size`` pixels is generated
(``interp_core.data.synthetic_wsi``, 0.5 um/px, JPEG pyramidal TIFF) and explained at level 0 by
each run with ``explain-slide`` (``slide_job.explain_slide_file``: 64-pixel tiles = the runs' input,
stride 64, saliency, tile maps kept at 16x16, maps at 1/ceil(size/map_side), ``--map-side`` 4096).
``--sample-every K`` (for slides too large to explain whole) computes a systematic sample: only the
grid tiles whose row and column are both multiples of K (one tile in K*K, ``explain_slide_file
(sample_every=K)``); every metric below is then taken over the sampled tiles only (AUROC over the
sampled tissue tiles; saliency masses and their uniform references over the sampled tiles' area, the
other map pixels being NaN). Reported per slide and run:

- ``auroc``: AUROC of the per-tile tumour probability against the tile's ground truth (the tile
  is a lesion cell of the generator: its tumour tile), over the computed tissue tiles;
- ``mass_region``: share of the stitched |saliency| (slide-wide normalisation) that falls inside
  the lesion cells, and ``area_region`` the share of the computed area they cover (what a
  saliency spread evenly would score);
- ``mass_evidence``: share of |saliency| inside the pixel evidence mask (the tumour tiles' own
  lesion masks: the abnormal nuclei), with ``area_evidence`` its uniform reference.

A training seed's value is the mean over slides; SCAAT - control is paired per training seed and
summarised as mean ± sd over training seeds. Results are reused from disk (the jobs are resumable;
``--shard i/n`` lets two processes share the jobs, then a call without it collects them). Writes
``docs/results/slide_localisation.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from interp_core.data.synthetic_wsi import write_synthetic_wsi  # noqa: E402
from interp_core.slides.job import explain_slide_file  # noqa: E402
from interp_core.slides.maps import assemble  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARMS = ("baseline", "control", "scaat")
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


def cached_evaluate(job: Path, slide: Path) -> dict:
    """``evaluate``, kept in ``job/localisation.json`` for the job's summary (a rerun reads it back)."""
    cache = job / "localisation.json"
    stamp = (job / "summary.json").stat().st_mtime_ns
    if cache.is_file():
        got = json.loads(cache.read_text())
        if got.get("summary_mtime_ns") == stamp:
            return got["result"]
    r = evaluate(job, slide)
    cache.write_text(json.dumps({"summary_mtime_ns": stamp, "result": r}))
    return r


def parse_triple(text: str) -> tuple[str, dict[str, Path]]:
    """``LABEL=BASE,CONTROL,SCAAT`` (run folders) -> (label, {"baseline": ..., "control": ..., "scaat": ...})."""
    label, _, rest = text.partition("=")
    parts = [x for x in rest.split(",") if x]
    if not label or len(parts) != 3:
        raise SystemExit(f"--triple {text!r}: expected LABEL=BASELINE,CONTROL,SCAAT")
    return label, dict(zip(ARMS, (Path(x) for x in parts)))


def study_triples(root: Path, seeds: list[int], control: str, scaat: str) -> list[tuple[str, dict[str, Path]]]:
    """The SCAAT study's layout: ``root/seed<k>/{a-erm, <control>, <scaat>}`` per training seed."""
    return [(f"seed{k}", {"baseline": root / f"seed{k}/a-erm", "control": root / f"seed{k}/{control}",
                          "scaat": root / f"seed{k}/{scaat}"}) for k in seeds]


def mean_sd(x: np.ndarray) -> str:
    return f"{x.mean():.3f} ± {x.std(ddof=1):.3f}" if len(x) > 1 else f"{x.mean():.3f}"


METRICS = (("auroc", None, "tile AUROC, p(tumor) vs lesion"),
           ("mass_region", "area_region", "saliency mass in lesion cells"),
           ("mass_evidence", "area_evidence", "saliency mass on lesion nuclei"))


def summarise(rows: list[dict], labels: list[str], slides: list[int]) -> dict[str, Any]:
    """Per training seed: each arm's metric averaged over the slides, and SCAAT - control (and
    SCAAT - baseline, control - baseline) per training seed; then mean ± sd over training seeds."""
    out: dict[str, Any] = {}
    for key, ref, _ in METRICS:
        per = {arm: np.array([np.mean([r[key] for r in rows if r["train"] == lab and r["arm"] == arm])
                              for lab in labels]) for arm in ARMS}
        d: dict[str, Any] = {arm: per[arm].tolist() for arm in ARMS}
        d["scaat_minus_control"] = (per["scaat"] - per["control"]).tolist()
        d["scaat_minus_baseline"] = (per["scaat"] - per["baseline"]).tolist()
        d["control_minus_baseline"] = (per["control"] - per["baseline"]).tolist()
        # the same difference per (training seed, slide), to show it is not one slide's doing
        d["scaat_minus_control_per_slide"] = [[
            next(r[key] for r in rows if r["train"] == lab and r["arm"] == "scaat" and r["slide_seed"] == s) -
            next(r[key] for r in rows if r["train"] == lab and r["arm"] == "control" and r["slide_seed"] == s)
            for s in slides] for lab in labels]
        if ref:
            d["uniform"] = float(np.mean([r[ref] for r in rows if r["arm"] == "baseline"]))
        out[key] = d
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=6144)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="slide (generator) seeds")
    p.add_argument("--study", default=str(REPO / "bench/out/scaat_runs/synthetic-he"),
                   help="folder with seed<k>/{a-erm,CONTROL,SCAAT} run folders (the SCAAT study's layout)")
    p.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--control", default="control")
    p.add_argument("--scaat", default="l20-q0.3-rho0.95")
    p.add_argument("--triple", action="append", default=[], metavar="LABEL=BASELINE,CONTROL,SCAAT",
                   help="run triples instead of --study (repeat once per training seed)")
    p.add_argument("--shard", default="0/1", help="i/n: compute only every n-th job (a second process "
                   "can take another shard); a final call without --shard reuses them all from disk")
    p.add_argument("--sample-every", type=int, default=1, help="K: explain only the tiles whose grid row and "
                   "column are multiples of K (a systematic sample, one tile in K*K)")
    p.add_argument("--map-side", type=int, default=4096, help="longest side of the stitched maps (map pixel = "
                   "ceil(size / map_side) slide pixels)")
    p.add_argument("--out", default=str(REPO / "bench/out/slides"))
    p.add_argument("--results", default=str(REPO / "docs/results/slide_localisation"))
    a = p.parse_args()
    triples = [parse_triple(t) for t in a.triple] if a.triple else \
        study_triples(Path(a.study), a.train_seeds, a.control, a.scaat)
    shard, nshard = (int(x) for x in a.shard.split("/"))
    out = Path(a.out)
    t_all = time.perf_counter()
    slides = {}
    for seed in a.seeds:
        slide = out / f"synthetic-he-{a.size}-s{seed}.tiff"
        if not slide.is_file():
            t = time.perf_counter()
            meta = write_synthetic_wsi(slide, width=a.size, height=a.size, seed=seed, bank=128, mask_downsample=4)
            print(f"slide {seed}: wrote {slide.name} ({meta['size']}, {meta['lesions']} lesions) in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
        slides[seed] = slide
    rows, k = [], -1
    for label, runs in triples:
        for seed, slide in slides.items():
            for arm in ARMS:
                k += 1
                job = out / (f"{slide.stem}-{label}-{arm}" + (f"-every{a.sample_every}" if a.sample_every > 1 else ""))
                if nshard > 1 and k % nshard != shard:
                    continue
                t = time.perf_counter()
                if (job / "summary.json").is_file() and (job / "localisation.json").is_file():
                    s = json.loads((job / "summary.json").read_text())  # done and evaluated: nothing to check
                else:
                    s = explain_slide_file(runs[arm], slide, job, method="saliency", map_side=a.map_side,
                                           tile_map_size=16, batch_size=128, device="cpu",
                                           sample_every=a.sample_every)
                r = {"train": label, "slide_seed": seed, "arm": arm, **cached_evaluate(job, slide),
                     "tiles_per_second": s["timings"]["tiles_per_second"], "reused": bool(s.get("reused"))}
                rows.append(r)
                print(f"{label} slide {seed} {arm}: {time.perf_counter() - t:.0f} s  " +
                      ", ".join(f"{k_} {v:.4f}" if isinstance(v, float) else f"{k_} {v}" for k_, v in r.items()),
                      flush=True)
    if nshard > 1:
        print(f"shard {shard}/{nshard} done in {time.perf_counter() - t_all:.0f} s", flush=True)
        return 0
    labels = [lab for lab, _ in triples]
    summ = summarise(rows, labels, list(slides))
    res = Path(a.results)
    res.parent.mkdir(parents=True, exist_ok=True)
    runs_rel = {lab: {arm: _rel(p_) for arm, p_ in runs.items()} for lab, runs in triples}
    res.with_suffix(".json").write_text(json.dumps({"size": a.size, "slide_seeds": a.seeds, "runs": runs_rel,
                                                    "sample_every": a.sample_every, "map_side": a.map_side,
                                                    "summary": summ, "rows": rows}, indent=2))
    res.with_suffix(".md").write_text(report(a, labels, list(slides), summ, rows))
    print(res.with_suffix(".md").read_text())
    return 0


def _rel(p_: Path) -> str:
    try:
        return str(Path(p_).resolve().relative_to(REPO))
    except ValueError:
        return Path(p_).name


def report(a: argparse.Namespace, labels: list[str], slides: list[int], summ: dict, rows: list[dict]) -> str:
    n = len(labels)
    k = a.sample_every
    what = (f"{len(slides)} synthetic H&E slide{'s' if len(slides) > 1 else ''} of {a.size:,} x {a.size:,} px"
            + (f", a systematic sample of one tile in {k * k}: grid rows and columns that are multiples of {k}"
               if k > 1 else ""))
    sample = ("" if k <= 1 else
              f"Tiles: a systematic sample, not the whole slide: only the grid tiles whose row and column are "
              f"both multiples of {k} (level-0 tiles at x, y = multiples of {64 * k} px; one tile in {k * k}) "
              f"are explained. AUROC is over the sampled tissue tiles; the saliency masses and the *uniform* "
              f"column are over the sampled tiles' area only (the other map pixels are not computed). ")
    lines = [f"# Slide-level localisation: SCAAT vs a same-budget control, {n} training seeds ({what})", "",
             sample +
             "Generated by `bench/slide_localisation.py " + " ".join(
                 f"{x}" for x in sys.argv[1:]) + "`. Per training seed, three runs of the SCAAT study: "
             f"*baseline* (ERM, 8 epochs), *control* (baseline + 3 ERM epochs: the same budget as SCAAT) and "
             f"*SCAAT* (baseline + 3 SCAAT epochs, `{a.scaat}`: the shipped defaults). Each run explains each "
             "slide at level 0 (64-px tiles, stride 64, saliency, slide-wide normalisation; map pixel "
             f"{-(-a.size // a.map_side)} px). A training seed's "
             "value is the mean over the slides; the table shows mean ± sd over training seeds and the paired "
             "difference per training seed. AUROC: per-tile p(tumor) against the generator's lesion cells. "
             "Mass: share of the stitched |saliency| inside the lesion cells, or inside the abnormal-nuclei "
             "evidence mask; *uniform* is the share of the computed area they cover (a flat map's score).", "",
             "| metric | baseline | control | SCAAT | SCAAT - control (per training seed) | "
             "SCAAT - control, mean ± sd | uniform |", "|---|---|---|---|---|---|---|"]
    for key, ref, name in METRICS:
        d = summ[key]
        diff = np.array(d["scaat_minus_control"])
        uni = f"{d['uniform']:.3f}" if ref else "-"
        sd = diff.std(ddof=1) if n > 1 else 0.0
        lines.append(f"| {name} | {mean_sd(np.array(d['baseline']))} | {mean_sd(np.array(d['control']))} | "
                     f"{mean_sd(np.array(d['scaat']))} | {', '.join(f'{v:+.4f}' for v in diff)} | "
                     f"{diff.mean():+.4f} ± {sd:.4f} | {uni} |")
    lines += ["", "Other differences (per training seed):", "", "| metric | SCAAT - baseline | control - baseline |",
              "|---|---|---|"]
    for key, _, name in METRICS:
        d = summ[key]
        lines.append(f"| {name} | {', '.join(f'{v:+.4f}' for v in d['scaat_minus_baseline'])} | "
                     f"{', '.join(f'{v:+.4f}' for v in d['control_minus_baseline'])} |")
    lines += ["", "SCAAT - control per training seed (rows) and slide (columns):", "",
              "| metric | training seed | " + " | ".join(f"slide {s}" for s in slides) + " |",
              "|---|---|" + "---|" * len(slides)]
    for key, _, name in METRICS:
        for lab, vals in zip(labels, summ[key]["scaat_minus_control_per_slide"]):
            lines.append(f"| {name} | {lab} | " + " | ".join(f"{v:+.4f}" for v in vals) + " |")
    lines += ["", "Per run and slide:", "", "| training seed | slide | arm | tiles | lesion tiles | AUROC | mass region | "
              "area region | mass evidence | area evidence |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['train']} | {r['slide_seed']} | {r['arm']} | {r['tiles']:,} | {r['lesion_tiles']:,} | "
                     f"{r['auroc']:.4f} | {r['mass_region']:.4f} | {r['area_region']:.3f} | {r['mass_evidence']:.4f} | "
                     f"{r['area_evidence']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
