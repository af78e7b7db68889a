"""Batched inference over a dataset: predictions, confidences and per-class probabilities."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from .._utils.device import autocast


@dataclass
class Predictions:
    """Per-sample outputs, aligned with the dataset's order."""

    probs: torch.Tensor  # [N, C]
    labels: torch.Tensor  # [N]

    @property
    def pred(self) -> torch.Tensor:
        return self.probs.argmax(1)

    @property
    def confidence(self) -> torch.Tensor:
        return self.probs.max(1).values


@torch.no_grad()
def predict_loader(model: nn.Module, loader: DataLoader, device: torch.device) -> Predictions:
    """Softmax probabilities for every item of ``loader`` (eval mode, mode restored)."""
    was = model.training
    model.eval()
    probs, labels = [], []
    try:
        for batch in loader:
            with autocast(device):
                logits = model(batch["image"].to(device))
            probs.append(torch.softmax(logits.float(), 1).cpu())
            labels.append(batch["label"])
    finally:
        model.train(was)
    return Predictions(torch.cat(probs), torch.cat(labels))
