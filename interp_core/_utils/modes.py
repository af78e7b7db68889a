"""Temporarily switching a model's train/eval mode without losing per-module modes."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every sub-module in eval mode, then restore each one's own previous mode.

    Restoring per module (not a blanket ``model.train()``) keeps deliberately frozen parts,
    e.g. a BatchNorm kept in eval mode during fine-tuning, as the caller left them.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was_training in modes:
            m.training = was_training
