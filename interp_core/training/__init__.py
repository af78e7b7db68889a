"""Training: the shared loop and the objectives (erm, sgt, scaat, ece)."""
from __future__ import annotations

from .loop import TrainConfig, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
