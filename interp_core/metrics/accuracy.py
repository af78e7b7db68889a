"""Accuracy, overall and per group (worst-group accuracy for data with spurious-correlation groups)."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import InterpError
from .base import register_metric


def _labels(pred: torch.Tensor) -> torch.Tensor:
    """Predicted labels ``[B]`` from labels ``[B]`` or logits/probabilities ``[B,K]`` (argmax)."""
    if pred.ndim == 2:
        return pred.argmax(1)
    if pred.ndim != 1:
        raise InterpError(f"predictions must be labels [B] or scores [B,K], got shape {list(pred.shape)}")
    return pred


@register_metric(
    category="accuracy", higher_is_better=True, attribution_form="none",
    description="1 if the predicted class equals the label, else 0",
    reference="-", requires=("pred", "y"),
)
def accuracy(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample correctness ``[B]`` as float 0/1; its mean is the accuracy. Higher is better.

    ``pred``: predicted labels ``[B]`` or scores ``[B,K]`` (argmax taken).
    """
    p = _labels(pred)
    if p.shape != y.shape:
        raise InterpError(f"predictions shape {list(p.shape)} and labels shape {list(y.shape)} differ")
    return (p == y.to(p.device)).float()


def group_accuracy(pred: torch.Tensor, y: torch.Tensor, groups: Sequence[str]) -> dict[str, tuple[float, int]]:
    """Accuracy per group: ``{group: (accuracy, n)}``, groups in sorted order.

    ``groups`` holds one group name per sample (e.g. ``"tumour/stamp"``). Higher is better.
    """
    correct = accuracy(pred, y)
    if len(groups) != correct.shape[0]:
        raise InterpError(f"{len(groups)} group labels for {correct.shape[0]} predictions")
    out: dict[str, tuple[float, int]] = {}
    for g in sorted(set(groups)):
        idx = torch.tensor([i for i, gi in enumerate(groups) if gi == g], device=correct.device)
        out[g] = (float(correct[idx].mean()), int(idx.numel()))
    return out


def worst_group_accuracy(pred: torch.Tensor, y: torch.Tensor, groups: Sequence[str]) -> float:
    """``min_g accuracy_g`` over the groups present (NaN when there is no sample). Higher is better."""
    per_group = group_accuracy(pred, y, groups)
    return min((acc for acc, _ in per_group.values()), default=math.nan)
