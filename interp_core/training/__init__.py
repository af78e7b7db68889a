"""Training: the shared loop and the objectives (erm, sgt, scaat, ece)."""
from __future__ import annotations

from .config import DEFAULT_LR_FINETUNE, DEFAULT_LR_SCRATCH, TrainConfig, TrainResult
from .loop import train

__all__ = ["DEFAULT_LR_FINETUNE", "DEFAULT_LR_SCRATCH", "TrainConfig", "TrainResult", "train"]
