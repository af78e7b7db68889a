"""Baseline images that perturbation metrics put in place of "removed" pixels."""
from __future__ import annotations

from typing import Union

import torch

from ..errors import InterpError
from ..attribution.baselines import gaussian_blur  # noqa: F401  (one blur for the whole project)

Baseline = Union[str, float, torch.Tensor]
BASELINES = ("blur", "zero", "mean")
DEFAULT_BLUR_SIGMA = 5.0


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
