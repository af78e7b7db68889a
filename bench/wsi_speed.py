"""Tiles per second of ``explain_slide`` through OpenSlide (a pyramidal tiled TIFF) against the same
pixels in memory (``ArraySlide``), side by side in one run.

    OMP_NUM_THREADS=1 python bench/wsi_speed.py [--side 2048] [--repeats 3] [--workers 0 2]

The slide is scikit-image's immunohistochemistry image tiled ``side/512`` times in each direction
(default 2048x2048), written once as a 3-level deflate TIFF (``wsi.write_pyramid_tiff``, 256-pixel
TIFF tiles) in a temporary folder. smallcnn (2 classes, random weights) at tile 64, every tile
computed (no background skipping), batch 64. Rows: reading only (the DataLoader walk of
``explain_slide``'s tiles, no model), then ``cam`` (predict only) and ``saliency``. Prints the
median over ``--repeats`` of whole-call wall time and the load average (a shared CPU moves
absolute numbers; the ratios are the stable part).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from skimage import data  # noqa: E402

from interp_core.models import create_model  # noqa: E402
from interp_core.slides.explain import ArraySlide, explain_slide, grid_shape  # noqa: E402
from interp_core.slides.tiles import _tile_batches  # noqa: E402
from interp_core.slides.wsi import OpenSlideReader, write_pyramid_tiff  # noqa: E402

TILE = 64


def read_only(slide, workers: int, batch: int) -> int:
    """Walk every tile through the same DataLoader as explain_slide, without a model; tiles read."""
    todo = np.ones(grid_shape(slide.size, TILE, TILE), bool)
    return sum(len(idx) for idx, _ in _tile_batches(slide, todo, TILE, TILE, batch, workers))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=2048, help="slide side in pixels (a multiple of 512)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[0], help="DataLoader workers to compare")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = create_model("smallcnn", 2).eval()
    ihc = np.ascontiguousarray(data.immunohistochemistry()[..., :3])
    k = max(1, a.side // 512)
    image = np.tile(ihc, (k, k, 1))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = write_pyramid_tiff(Path(tmp) / "bench.tiff", image, n_levels=3, tile=256)
        t_write = time.perf_counter() - t0
        readers = {"array": ArraySlide(image), "openslide": OpenSlideReader(path)}
        n = int(np.prod(grid_shape(readers["array"].size, TILE, TILE)))
        print(f"slide {image.shape[1]}x{image.shape[0]} ({n} tiles of {TILE}), TIFF {path.stat().st_size / 1e6:.1f} MB "
              f"written in {t_write:.1f} s; smallcnn, {torch.get_num_threads()} threads, "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        explain_slide(model, readers["array"], tile_size=TILE, method="cam", skip_background=False)  # warm-up
        print(f"{'reader':>9} {'workers':>7} {'work':>9} {'seconds':>8} {'tiles/s':>8}")
        for work in ("read", "cam", "saliency"):
            for name, slide in readers.items():
                for workers in a.workers:
                    times = []
                    for _ in range(a.repeats):
                        t0 = time.perf_counter()
                        if work == "read":
                            done = read_only(slide, workers, a.batch_size)
                        else:
                            done = explain_slide(model, slide, tile_size=TILE, method=work, skip_background=False,
                                                 batch_size=a.batch_size, downsample=8, workers=workers).n_computed
                        times.append(time.perf_counter() - t0)
                    med = statistics.median(times)
                    print(f"{name:>9} {workers:>7} {work:>9} {med:>8.2f} {done / med:>8.1f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
