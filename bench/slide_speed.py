"""Tiles per second of ``explain_slide`` for smallcnn on the bundled immunohistochemistry image.

    python bench/slide_speed.py [--repeats 3] [--threads N] [--device cpu]

The full 512x512 ``skimage.data.immunohistochemistry()`` image at tile 64 (stride 64: 64 tiles;
stride 32: 225 tiles), every tile computed (no background skipping, so each method sees the
same tiles), with a predict-only pass (``cam``, no gradients) and the gradient methods, measured
side by side in one run. Prints the median over ``--repeats`` of whole-call wall time (reading,
thumbnail, tissue mask and stitching included) and the machine's load average, since a shared
CPU changes absolute numbers a lot; the ratios between methods are the stable part.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from skimage import data  # noqa: E402

from interp_core._utils.device import pick_device  # noqa: E402
from interp_core.models import create_model  # noqa: E402
from interp_core.slides.explain import ArraySlide, explain_slide  # noqa: E402

METHODS = ("cam", "saliency", "gradcam")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = pick_device(a.device)
    model = create_model("smallcnn", 2).to(device).eval()
    slide = ArraySlide(data.immunohistochemistry())
    print(f"image {slide.size[0]}x{slide.size[1]}, smallcnn, device {device}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    explain_slide(model, slide, tile_size=64, method="saliency", skip_background=False)  # warm-up
    print(f"{'stride':>6} {'tiles':>5} {'method':>9} {'seconds':>8} {'tiles/s':>8}")
    for stride in (64, 32):
        for method in METHODS:
            times, n = [], 0
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                res = explain_slide(model, slide, tile_size=64, stride=stride, method=method,
                                    skip_background=False, batch_size=a.batch_size)
                times.append(time.perf_counter() - t0)
                n = res.n_computed
            med = statistics.median(times)
            print(f"{stride:>6} {n:>5} {method:>9} {med:>8.2f} {n / med:>8.1f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
