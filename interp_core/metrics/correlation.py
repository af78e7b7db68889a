"""Per-sample rank and correlation statistics in torch (Spearman as in ``scipy.stats.spearmanr``)."""
from __future__ import annotations

import torch

from ..errors import InterpError


def rankdata(v: torch.Tensor) -> torch.Tensor:
    """Ranks ``1..n`` along the last dimension of ``[B, n]``, ties given their average rank.

    Same as ``scipy.stats.rankdata(method="average")`` applied to each row. Float64 result
    (float32 on MPS).
    """
    if v.ndim != 2:
        raise InterpError(f"rankdata expects a [B, n] tensor, got shape {list(v.shape)}")
    b, n = v.shape
    dt = torch.float32 if v.device.type == "mps" else torch.float64
    sorted_v, order = torch.sort(v, dim=1, stable=True)
    new_group = torch.ones_like(sorted_v, dtype=torch.bool)
    new_group[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    group = torch.cumsum(new_group.long(), dim=1) - 1 + n * torch.arange(b, device=v.device).view(-1, 1)
    pos = torch.arange(n, device=v.device, dtype=dt).expand(b, n).reshape(-1)
    g = group.reshape(-1)
    first = torch.full((b * n,), float(n), device=v.device, dtype=dt).scatter_reduce(0, g, pos, "amin")
    last = torch.full((b * n,), -1.0, device=v.device, dtype=dt).scatter_reduce(0, g, pos, "amax")
    avg_sorted = ((first[g] + last[g]) / 2 + 1).view(b, n)
    ranks = torch.empty_like(avg_sorted)
    ranks.scatter_(1, order, avg_sorted)
    return ranks


def pearson(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per row of two ``[B, n]`` tensors; NaN where a row is constant."""
    if u.shape != v.shape:
        raise InterpError(f"pearson needs equal shapes, got {list(u.shape)} and {list(v.shape)}")
    dt = torch.float32 if u.device.type == "mps" else torch.float64
    u = u.to(dt) - u.to(dt).mean(1, keepdim=True)
    v = v.to(dt) - v.to(dt).mean(1, keepdim=True)
    den = torch.sqrt((u * u).sum(1) * (v * v).sum(1))
    r = (u * v).sum(1) / den
    return torch.where(den > 0, r, torch.full_like(r, float("nan")))


def spearman(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per sample of two maps ``[B, ...]`` (flattened): Pearson of the ranks.

    Ties get average ranks, as ``scipy.stats.spearmanr``; NaN where either map is constant.
    """
    if u.shape != v.shape:
        raise InterpError(f"spearman needs equal shapes, got {list(u.shape)} and {list(v.shape)}")
    return pearson(rankdata(u.flatten(1)), rankdata(v.flatten(1)))
