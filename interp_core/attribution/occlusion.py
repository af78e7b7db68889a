"""Occlusion (Zeiler & Fergus 2014) via Captum ``Occlusion``: the score drop when a window is masked.

A ``window`` square (all colour channels) slides with ``stride``; each position is replaced by the
baseline and ``f_t(x) - f_t(x_occluded)`` is credited to every pixel in the window; a pixel's
value is the mean over the windows covering it. Positive: the region supports the class.
One forward pass per window position, so the cost grows as ``(H / stride) * (W / stride)``.

Defaults [ours]: ``window = max(1, min(H, W) // 8)`` (8 on a 64x64 tile),
``stride = max(1, window // 2)`` (half-overlapping windows, 15 x 15 = 225 positions on 64x64),
``baseline = "blur"``: each window is replaced by the same window of the image's own Gaussian blur
(as the deletion metric does), a neutral value for tissue; a black window (``0.0``) on pink tissue
looks like a nucleus to a pathology model. The Explore and Metrics pages, the CLI and the report all
use this one default.
"""
from __future__ import annotations

import torch
from captum.attr import Occlusion
from torch import nn

from ..errors import InterpError
from ._options import blur_sigma, int_pair
from .baselines import check_baseline, make_baseline
from .registry import IMAGES_PER_PASS, register_method


def default_window(height: int, width: int) -> tuple[int, int]:
    """``max(1, min(H, W) // 8)`` for both sides [ours]."""
    side = max(1, min(height, width) // 8)
    return side, side


def _prepare(model: nn.Module, x: torch.Tensor, opts: dict) -> dict:
    h, w = x.shape[-2:]
    window = default_window(h, w) if opts["window"] is None else int_pair("window", opts["window"])
    stride = (max(1, window[0] // 2), max(1, window[1] // 2)) if opts["stride"] is None \
        else int_pair("stride", opts["stride"])
    if window[0] > h or window[1] > w:
        raise InterpError(f"option 'window' {window} is larger than the image ({h}, {w})")
    if stride[0] > window[0] or stride[1] > window[1]:
        raise InterpError(f"option 'stride' {stride} must not exceed the window {window}, or pixels are skipped")
    return {"window": window, "stride": stride, "baseline": check_baseline("baseline", opts["baseline"], x),
            "blur_sigma": blur_sigma(opts["blur_sigma"])}


@register_method("occlusion",
                 description="Drop of the class score when a sliding window is replaced by the blurred image "
                             "(Zeiler & Fergus 2014)",
                 signed=True, cost="slow", needs_gradients=False, black_box=True,
                 options={"window": None, "stride": None, "baseline": "blur", "blur_sigma": None},
                 per_sample_options=("baseline",), prepare=_prepare)
def _occlusion(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, window: tuple[int, int],
               stride: tuple[int, int], baseline, blur_sigma: float | None) -> torch.Tensor:
    c = x.shape[1]
    base = make_baseline(baseline, x, blur_sigma)
    with torch.no_grad():
        attr = Occlusion(model).attribute(x.detach(), sliding_window_shapes=(c, *window), strides=(c, *stride),
                                          baselines=base, target=target,
                                          perturbations_per_eval=max(1, IMAGES_PER_PASS // x.shape[0]))
    return attr[:, 0]  # the window spans all channels, so every channel holds the same value
