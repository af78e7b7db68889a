"""Similarity of two attribution maps per sample (METHODS.md section 3, step 4): cosine (the
default), Pearson correlation and top-k IoU, each ``[B, ...] x [B, ...] -> [B]``, with a stated
rule for degenerate (all-zero or constant) maps."""
from __future__ import annotations

import math

import torch

from ..errors import InterpError

SIMILARITIES = ("cosine", "pearson", "topk_iou")


def _flat_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape or a.ndim < 2:
        raise InterpError(f"maps to compare must have the same shape [B,...], got {list(a.shape)} and {list(b.shape)}")
    return a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()


def _degenerate_rule(score: torch.Tensor, deg_a: torch.Tensor, deg_b: torch.Tensor) -> torch.Tensor:
    """1 where both maps are degenerate, 0 where exactly one is, ``score`` elsewhere."""
    score = torch.where(deg_a | deg_b, torch.zeros_like(score), score)
    return torch.where(deg_a & deg_b, torch.ones_like(score), score)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample ``<a,b> / (|a| |b|)`` over flattened maps ``[B,...] -> [B]``.

    In ``[0,1]`` for non-negative maps. All-zero maps: 1 if both are zero, 0 if one is [ours].
    """
    a, b = _flat_pair(a, b)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    score = (a * b).sum(1) / (na * nb).clamp_min(torch.finfo(torch.float64).tiny)
    return _degenerate_rule(score.clamp(-1.0, 1.0), na == 0, nb == 0).float()


def pearson_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample Pearson correlation ``cov(a,b) / (std(a) std(b))`` over flattened maps, ``[B]``.

    In ``[-1,1]``. Constant maps (``max == min``, where the correlation is undefined): 1 if both
    are constant, 0 if one is [ours].
    """
    a, b = _flat_pair(a, b)
    const_a = a.amax(1) == a.amin(1)
    const_b = b.amax(1) == b.amin(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    denom = (a.norm(dim=1) * b.norm(dim=1)).clamp_min(torch.finfo(torch.float64).tiny)
    score = ((a * b).sum(1) / denom).clamp(-1.0, 1.0)
    return _degenerate_rule(score, const_a, const_b).float()


def topk_iou(a: torch.Tensor, b: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """Per-sample IoU of the top-``k`` pixel sets, ``k = ceil(fraction * n)``, ``[B]`` in ``[0,1]``.

    The top set is every pixel at least as large as the ``k``-th largest value, so ties are all
    in or all out (deterministic and symmetric; a constant map's top set is the whole map).
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise InterpError(f"topk fraction must be in (0, 1], got {fraction}")
    a, b = _flat_pair(a, b)
    k = max(1, math.ceil(float(fraction) * a.shape[1]))
    top_a = a >= a.topk(k, dim=1).values[:, -1:]
    top_b = b >= b.topk(k, dim=1).values[:, -1:]
    inter = (top_a & top_b).sum(1).double()
    union = (top_a | top_b).sum(1).double()
    return (inter / union).float()


def map_similarity(a: torch.Tensor, b: torch.Tensor, method: str = "cosine", topk_fraction: float = 0.1) -> torch.Tensor:
    """Dispatch to :func:`cosine_similarity`, :func:`pearson_similarity` or :func:`topk_iou` by name."""
    if method == "cosine":
        return cosine_similarity(a, b)
    if method == "pearson":
        return pearson_similarity(a, b)
    if method == "topk_iou":
        return topk_iou(a, b, topk_fraction)
    raise InterpError(f"unknown similarity {method!r}; choose one of {', '.join(SIMILARITIES)}")
