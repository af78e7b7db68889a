"""Per-sample normalisation of attribution maps (METHODS.md 1): max-normalisation and percentile clipping.

Both work on a batch ``[B, ...]`` (``[B, H, W]`` maps, or ``[B, N]`` flattened ones): the first
dimension is the sample, statistics are taken over all the others. A metric that uses them says so.
"""
from __future__ import annotations

import torch

from ..errors import InterpError


def normalize_max(a: torch.Tensor) -> torch.Tensor:
    """``a / max|a|`` per sample: non-negative maps land in ``[0, 1]`` (signed ones in ``[-1, 1]``).

    An all-zero map stays zero (no NaN); a constant positive map becomes all ones.
    """
    _check_batched(a)
    scale = a.detach().abs().flatten(1).amax(1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return a / scale.view(-1, *([1] * (a.dim() - 1)))


def clip_percentile(a: torch.Tensor, q: float = 99.0) -> torch.Tensor:
    """Clip each sample's values to ``[-p, p]``, ``p`` the ``q``-th percentile of ``|a|`` in that sample.

    For non-negative maps this caps the top ``100 - q`` % of values, so a few extreme pixels do
    not wash out the display. Percentiles interpolate linearly (as ``numpy.percentile``).
    """
    _check_batched(a)
    if not 0.0 < float(q) <= 100.0:
        raise InterpError(f"percentile q must be in (0, 100], got {q}")
    p = percentile(a.detach().abs(), q).to(a.dtype).view(-1, *([1] * (a.dim() - 1)))
    return torch.minimum(torch.maximum(a, -p), p)


def percentile(a: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-th percentile ``[B]`` of each sample of ``a`` ``[B, ...]``, linear interpolation.

    Same values as ``numpy.percentile(..., method="linear")``; computed by sorting, so unlike
    ``torch.quantile`` there is no limit on the tensor size.
    """
    flat = a.flatten(1).float().sort(dim=1).values
    n = flat.shape[1]
    pos = (float(q) / 100.0) * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    return flat[:, lo] + (flat[:, hi] - flat[:, lo]) * (pos - lo)


def _check_batched(a: torch.Tensor) -> None:
    if not isinstance(a, torch.Tensor) or a.dim() < 2:
        shape = list(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
        raise InterpError(f"expected a batch of maps [B, H, W], got {shape}")
