"""Speed of the Slide page's viewer and of ``explain-slide`` on a large synthetic whole-slide image.

    nice -n 10 python bench/slide_viewer_speed.py [--slide FILE | --size 20480] [--tiles 200] [--limit 2000]

Measured side by side in one process (a shared CPU changes absolute numbers; the ratios are the
stable part), through ``interp_core.slides.tile_service.TileService`` as the tile route calls it (no HTTP):

- time to first view: a cold service opens the slide and makes every Deep Zoom tile of the level a
  1024-pixel-wide viewer shows first (plus the levels above it), against reading the same pixels
  from the file's nearest pyramid level with OpenSlide (bare read), interleaved, median of 3;
- tile latency p50/p90: ``--tiles`` random tiles (cold cache) of the four deepest Deep Zoom levels,
  slide alone (JPEG) and slide + overlay (the overlay tile of the same coordinates, lossless WebP),
  against a bare 256x256 OpenSlide read at level 0 made right after each;
- ``explain-slide`` tiles per second at level 0 (``--limit`` tissue tiles, saliency, baseline run, the
  whole command) against reading the same tiles alone (``slides.tiles.SlideTiles``), the forward pass alone
  and forward + saliency on tiles already in memory; 3 interleaved rounds, medians.

Writes ``docs/results/slide_speed.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from interp_core.slides.roots import SlideRoots  # noqa: E402
from interp_core.slides.tile_service import TileService  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "sample_data/runs/synthetic-he/baseline-erm"


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q))


def first_view(slide: Path, width: int = 1024, repeats: int = 3) -> dict:
    """Median over ``repeats`` of (cold service: open + every tile of the first levels) and, right after
    each, the bare OpenSlide read of the same level's pixels (interleaved: the load is shared)."""
    import openslide
    views, bares = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        svc = TileService(SlideRoots((slide.parent,)))
        sid = svc.register_slide(slide)
        dz = svc.slide(sid)
        level = max(lv for lv in range(dz.max_level + 1) if dz.dz.level_dimensions[lv][0] <= width)
        n = 0
        for lv in range(level + 1):
            cols, rows = dz.dz.level_tiles[lv]
            for r in range(rows):
                for c in range(cols):
                    svc.slide_tile(sid, lv, c, r)
                    n += 1
        views.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        s = openslide.OpenSlide(str(slide))
        w, h = dz.dz.level_dimensions[level]
        fl = s.get_best_level_for_downsample(dz.size[0] / w)
        fw, fh = s.level_dimensions[fl]
        for y in range(0, fh, 1024):
            for x in range(0, fw, 1024):
                s.read_region((int(x * s.level_downsamples[fl]), int(y * s.level_downsamples[fl])), fl,
                              (min(1024, fw - x), min(1024, fh - y)))
        bares.append(time.perf_counter() - t0)
        s.close()
        dz.close()
    return {"seconds": float(np.median(views)), "tiles": n, "level": level, "level_size": [w, h],
            "bare_read_seconds": float(np.median(bares)), "file_level": fl, "repeats": repeats,
            "ratio_median": float(np.median(np.asarray(views) / np.asarray(bares)))}


def tile_latency(slide: Path, n: int, seed: int = 0) -> dict:
    import openslide
    rng = random.Random(seed)
    svc = TileService(SlideRoots((slide.parent,)), cache_bytes=1)  # nothing cached: every request is made
    sid = svc.register_slide(slide)
    dz = svc.slide(sid)
    # an overlay like the page's: a saliency-sized map (1/ceil(side/4096) of level 0)
    d = -(-max(dz.size) // 4096)
    vals = np.random.default_rng(seed).random((-(-dz.size[1] // d), -(-dz.size[0] // d))).astype(np.float32)
    oid = svc.register_overlay(sid, vals, float(d), vmin=0.0, vmax=1.0, cmap="inferno")
    coords = []
    for _ in range(n):
        lv = dz.max_level - rng.randrange(4)
        cols, rows = dz.dz.level_tiles[lv]
        coords.append((lv, rng.randrange(cols), rng.randrange(rows)))
    alone, overlay, ov_only, bare = [], [], [], []
    s = openslide.OpenSlide(str(slide))
    for lv, c, r in coords:  # interleaved, so the three see the same load
        t0 = time.perf_counter()
        svc.slide_tile(sid, lv, c, r)
        t1 = time.perf_counter()
        svc.overlay_tile(sid, oid, lv, c, r)
        t2 = time.perf_counter()
        x, y = rng.randrange(dz.size[0] - 256), rng.randrange(dz.size[1] - 256)
        s.read_region((x, y), 0, (256, 256))
        t3 = time.perf_counter()
        alone.append(t1 - t0)
        ov_only.append(t2 - t1)
        overlay.append(t2 - t0)
        bare.append(t3 - t2)
    return {"n": n, "levels": [dz.max_level - 3, dz.max_level],
            "slide_ms": {"p50": pct(alone, 50), "p90": pct(alone, 90)},
            "slide_plus_overlay_ms": {"p50": pct(overlay, 50), "p90": pct(overlay, 90)},
            "overlay_only_ms": {"p50": pct(ov_only, 50), "p90": pct(ov_only, 90)},
            "bare_read_256_ms": {"p50": pct(bare, 50), "p90": pct(bare, 90)}}


def explain_rates(slide: Path, limit: int, out: Path, rounds: int = 3) -> dict:
    """``rounds`` times, interleaved: ``explain-slide`` on ``limit`` tissue tiles (a fresh folder; the
    command's default 1024-pixel maps), then the same tiles read alone, the forward pass alone and
    forward + saliency on the tiles in memory. Medians of the rates and of the per-round ratios."""
    import shutil

    from interp_core.attribution import attribute, attribution_state
    from interp_core.runs import load_run
    from interp_core.slides.explain import grid_shape, read_thumbnail, tile_tissue_fraction, tissue_mask
    from interp_core.slides.job import explain_slide_file
    from interp_core.slides.maps import map_downsample
    from interp_core.slides.tiles import SlideTiles
    from interp_core.slides.wsi import OpenSlideReader
    reader = OpenSlideReader(slide)
    d = map_downsample(reader.size, 1024)
    tissue = tile_tissue_fraction(tissue_mask(read_thumbnail(reader, d)), grid_shape(reader.size, 64, 64), 64, 64,
                                  d) >= 0.1
    cells = np.argwhere(tissue)[:limit]
    n = len(cells)
    run = load_run(RUN, torch.device("cpu"))
    rates: dict[str, list[float]] = {"explain": [], "read": [], "forward": [], "forward_saliency": []}
    for k in range(rounds):
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        explain_slide_file(RUN, slide, out, method="saliency", limit_tiles=limit, batch_size=128, device="cpu")
        rates["explain"].append(n / (time.perf_counter() - t0))  # the whole command: open, tiles, maps, GeoJSON
        ds = SlideTiles(reader, cells, 64, 64)
        t0 = time.perf_counter()
        tiles = torch.stack([ds[i][0] for i in range(len(ds))])
        rates["read"].append(n / (time.perf_counter() - t0))
        x_all = tiles.permute(0, 3, 1, 2).float().div(255.0)
        t0 = time.perf_counter()
        with attribution_state(run.model), torch.no_grad():
            for b in range(0, n, 128):
                run.model(x_all[b:b + 128])
        rates["forward"].append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        with attribution_state(run.model):
            for b in range(0, n, 128):
                x = x_all[b:b + 128]
                with torch.no_grad():
                    tgt = run.model(x).argmax(1)
                attribute(run.model, x, "saliency", tgt)
        rates["forward_saliency"].append(n / (time.perf_counter() - t0))
    e = np.asarray(rates["explain"])
    return {"tiles": n, "rounds": rounds, "explain_slide_tiles_per_s": float(np.median(e)),
            "read_tiles_per_s": float(np.median(rates["read"])),
            "forward_tiles_per_s": float(np.median(rates["forward"])),
            "forward_saliency_tiles_per_s": float(np.median(rates["forward_saliency"])),
            "ratio_read": float(np.median(e / np.asarray(rates["read"]))),
            "ratio_forward": float(np.median(e / np.asarray(rates["forward"]))),
            "ratio_forward_saliency": float(np.median(e / np.asarray(rates["forward_saliency"]))),
            "rates": rates}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slide", default=None, help="a slide (default: generate or reuse a --size synthetic one)")
    p.add_argument("--size", type=int, default=20480)
    p.add_argument("--tiles", type=int, default=200)
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--out", default=str(REPO / "bench/out/slides"))
    p.add_argument("--results", default=str(REPO / "docs/results/slide_speed"))
    a = p.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    slide = Path(a.slide) if a.slide else out / f"synthetic-he-{a.size}-s0.tiff"
    if not slide.is_file():
        from interp_core.data.synthetic_wsi import write_synthetic_wsi
        write_synthetic_wsi(slide, width=a.size, height=a.size, seed=0, bank=128, mask_downsample=4)
    res = {"slide": slide.name, "load_average": os.getloadavg()[0]}
    res["first_view"] = first_view(slide)
    print(json.dumps(res["first_view"]), flush=True)
    res["tile_latency"] = tile_latency(slide, a.tiles)
    print(json.dumps(res["tile_latency"]), flush=True)
    res["explain"] = explain_rates(slide, a.limit, out / f"{slide.stem}-speed")
    print(json.dumps(res["explain"]), flush=True)
    res["load_average_end"] = os.getloadavg()[0]
    import openslide
    W, H = openslide.OpenSlide(str(slide)).dimensions
    fv, tl, ex = res["first_view"], res["tile_latency"], res["explain"]
    lines = [f"# Slide viewer and explain-slide speed ({W:,} x {H:,} px synthetic H&E, JPEG pyramidal TIFF)", "",
             f"Generated by `bench/slide_viewer_speed.py` on a shared 2-core CPU, one torch thread (load average "
             f"{res['load_average']:.1f} at start, {res['load_average_end']:.1f} at end); in-process through "
             "`TileService` (the tile route adds HTTP on top).", "",
             "| measure | value | reference (bare) | ratio |", "|---|---|---|---|",
             f"| time to first view ({fv['tiles']} Deep Zoom tiles, levels 0..{fv['level']}; median of "
             f"{fv['repeats']}) | {fv['seconds']:.2f} s | "
             f"{fv['bare_read_seconds']:.2f} s OpenSlide read of level {fv['file_level']} | "
             f"{fv['ratio_median']:.1f}x |"]
    b = tl["bare_read_256_ms"]
    for key, label in (("slide_ms", "viewer tile, slide alone"), ("slide_plus_overlay_ms", "viewer tile + overlay tile")):
        for q in ("p50", "p90"):
            lines.append(f"| {label}, {q} (n={tl['n']}, cold) | {tl[key][q]:.1f} ms | {b[q]:.1f} ms 256x256 read at "
                         f"level 0 | {tl[key][q] / b[q]:.1f}x |")
    lines.append(f"| explain-slide at level 0 ({ex['tiles']:,} tiles, saliency, whole command; median of "
                 f"{ex['rounds']} interleaved rounds) | {ex['explain_slide_tiles_per_s']:.0f} tiles/s | "
                 f"{ex['read_tiles_per_s']:.0f} tiles/s read alone | {ex['ratio_read']:.2f}x |")
    lines.append(f"| | | {ex['forward_tiles_per_s']:.0f} tiles/s forward alone | {ex['ratio_forward']:.2f}x |")
    lines.append(f"| | | {ex['forward_saliency_tiles_per_s']:.0f} tiles/s forward + saliency in memory | "
                 f"{ex['ratio_forward_saliency']:.2f}x |")
    r = Path(a.results)
    r.parent.mkdir(parents=True, exist_ok=True)
    r.with_suffix(".json").write_text(json.dumps(res, indent=2))
    r.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
