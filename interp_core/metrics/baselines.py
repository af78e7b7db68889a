"""Baseline images that perturbation metrics put in place of "removed" pixels."""
from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F

from ..errors import InterpError

Baseline = Union[str, float, torch.Tensor]
BASELINES = ("blur", "zero", "mean")
DEFAULT_BLUR_SIGMA = 5.0


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B,C,H,W]`` images, kernel radius ``ceil(3 sigma)``.

    Borders are replicated (not reflected) so any image size works, even one smaller than the
    kernel. ``sigma <= 0`` returns ``x`` unchanged.
    """
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def make_baseline(x: torch.Tensor, baseline: Baseline = "blur", blur_sigma: float = DEFAULT_BLUR_SIGMA) -> torch.Tensor:
    """The baseline image ``[B,C,H,W]`` for images ``x``.

    ``"blur"``: ``x`` blurred with a Gaussian of ``blur_sigma`` pixels (default 5 px, the project's
    choice for 64x64 tiles [ours]; Petsiuk et al. used a blur too). ``"zero"``: black.
    ``"mean"``: each image's per-channel mean colour. A number: that constant. A tensor: broadcast
    to ``x``'s shape (e.g. ``[C,H,W]``, ``[C,1,1]`` or ``[B,C,H,W]``).
    """
    if isinstance(baseline, str):
        if baseline == "blur":
            return gaussian_blur(x, float(blur_sigma))
        if baseline == "zero":
            return torch.zeros_like(x)
        if baseline == "mean":
            return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
        raise InterpError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}, a number or a tensor")
    if isinstance(baseline, (int, float)):
        return torch.full_like(x, float(baseline))
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.to(device=x.device, dtype=x.dtype), x.shape).clone()
        except RuntimeError as e:
            shape = list(baseline.shape)
            raise InterpError(f"baseline tensor of shape {shape} cannot be broadcast to images {list(x.shape)}") from e
    raise InterpError(f"baseline must be one of {', '.join(BASELINES)}, a number or a tensor, "
                      f"got {type(baseline).__name__}")
