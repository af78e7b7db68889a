"""Dataset-level summary of per-sample metric values, as the CLI writes it into ``metrics.json``."""
from __future__ import annotations

import math

import torch


def summarise(values: torch.Tensor) -> dict[str, float | int | None]:
    """``{"mean", "std", "n"}`` of a per-sample tensor ``[B]``, ignoring NaN (undefined samples).

    ``n`` counts the non-NaN values; ``std`` is the population standard deviation (``ddof = 0``,
    so 0.0 for a single value). ``mean`` and ``std`` are None when ``n = 0`` (or when an infinite
    value makes them non-finite), so the result is valid JSON, which has no NaN or infinity.
    """
    v = torch.as_tensor(values).detach().flatten().double().cpu()
    v = v[~torch.isnan(v)]
    n = int(v.numel())
    mean = float(v.mean()) if n else None
    std = float(v.std(correction=0)) if n else None
    if mean is not None and not math.isfinite(mean):
        mean = None
    if std is not None and not math.isfinite(std):
        std = None
    return {"mean": mean, "std": std, "n": n}
