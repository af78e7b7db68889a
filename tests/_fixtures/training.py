"""Small seeded inputs for the objectives' step tests (SCAAT exact and fast modes)."""
from __future__ import annotations

import torch

from interp_core.training.objectives.base import StepContext


def step_batch(n: int = 8, size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded batch whose first and last two rows sit at 0 and 1, so the attack's [0, 1] clip binds."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    x[:, :, :2] = 0.0  # pixels at the bounds, so the [0,1] clip binds
    x[:, :, -2:] = 1.0
    return {"image": x, "label": torch.randint(0, 2, (n,), generator=g), "index": torch.arange(n)}


def step_context(seed: int = 0, epoch: int = 3, step: int = 0) -> StepContext:
    """A CPU step context past the warm-up, with its own seeded generator."""
    return StepContext(epoch=epoch, step=step, steps_per_epoch=10, device=torch.device("cpu"),
                       generator=torch.Generator().manual_seed(seed))
