"""Training: the shared loop and the objectives (erm, sgt, scaat, ece)."""
from __future__ import annotations

from .loop import DEFAULT_LR_FINETUNE, DEFAULT_LR_SCRATCH, TrainConfig, TrainResult, train

__all__ = ["DEFAULT_LR_FINETUNE", "DEFAULT_LR_SCRATCH", "TrainConfig", "TrainResult", "train"]
