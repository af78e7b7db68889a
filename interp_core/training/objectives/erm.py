"""Empirical risk minimisation: plain cross-entropy. The control every other objective is judged against."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Objective, StepContext, register_objective


@register_objective
class ERM(Objective):
    name = "erm"
    description = "plain cross-entropy (the baseline / control)"

    @dataclass
    class Options:
        label_smoothing: float = 0.0

    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["image"])
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.options.label_smoothing)
        return loss, {}
