"""Reference images ("baselines") for path and perturbation methods: a constant, a blur, or a tensor.

A blurred copy keeps the image's colours and coarse layout while removing the fine texture the
classifier may rely on, so it is a less out-of-distribution reference than black [ours].
"""
from __future__ import annotations

import math
import numbers
from typing import Union

import torch
import torch.nn.functional as F

from ..errors import InterpError

BaselineSpec = Union[float, str, torch.Tensor]
BASELINE_NAMES = ("zeros", "blur")


def default_blur_sigma(height: int, width: int) -> float:
    """``max(1, min(H, W) / 16)`` pixels (4 for a 64x64 tile) [ours]."""
    return max(1.0, min(height, width) / 16.0)


def gaussian_blur(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` images, radius ``ceil(3 sigma)``, edges replicated.

    ``sigma=None`` uses ``default_blur_sigma``. Replicate padding works for any image size.
    """
    if sigma is None:
        sigma = default_blur_sigma(x.shape[-2], x.shape[-1])
    if sigma <= 0:
        return x.clone()
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def check_baseline(name: str, spec: BaselineSpec, x: torch.Tensor) -> BaselineSpec:
    """Validate a baseline option against the full batch ``x`` ``[B, C, H, W]``.

    Accepted: a number (constant image), ``"zeros"``, ``"blur"`` (each image's own blur), or a
    tensor of shape ``[C, H, W]``, ``[1, C, H, W]`` (shared) or ``[B, C, H, W]`` (one per image).
    """
    if isinstance(spec, bool):
        raise InterpError(f"option {name!r} must be a number, 'zeros', 'blur' or an image tensor; got {spec!r}")
    if isinstance(spec, numbers.Real):
        return float(spec)
    if isinstance(spec, str):
        if spec not in BASELINE_NAMES:
            raise InterpError(f"option {name!r} must be a number, a tensor or one of {', '.join(BASELINE_NAMES)}; "
                              f"got {spec!r}")
        return spec
    if isinstance(spec, torch.Tensor):
        b, c, h, w = x.shape
        t = spec[None] if spec.dim() == 3 else spec
        if t.dim() != 4 or tuple(t.shape[1:]) != (c, h, w) or t.shape[0] not in (1, b):
            raise InterpError(f"option {name!r}: a baseline tensor must have shape [{c}, {h}, {w}], "
                              f"[1, {c}, {h}, {w}] or [{b}, {c}, {h}, {w}]; got {list(spec.shape)}")
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise InterpError(f"option {name!r}: a baseline tensor must be float and finite")
        return t
    raise InterpError(f"option {name!r} must be a number, 'zeros', 'blur' or an image tensor; "
                      f"got {type(spec).__name__}")


def make_baseline(spec: BaselineSpec, x: torch.Tensor, blur_sigma: float | None = None) -> torch.Tensor:
    """The baseline images for a chunk ``x`` as a tensor of ``x``'s shape, device and dtype."""
    if isinstance(spec, str):
        return torch.zeros_like(x) if spec == "zeros" else gaussian_blur(x, blur_sigma)
    if isinstance(spec, torch.Tensor):
        return spec.to(device=x.device, dtype=x.dtype).expand_as(x).contiguous()
    return torch.full_like(x, float(spec))
