"""Per-image random generators for the stochastic methods (SmoothGrad, GradientShap).

Each image gets its own CPU ``torch.Generator`` seeded from the user's seed and a hash of the
image's pixels. An image's noise, hence its map, is then the same whatever batch it comes in, at
whatever position, in whatever chunking, on whatever device: the map shown for one tile in the
dashboard is the one a batched evaluation computed [ours]. Draws are made on the CPU and moved.
"""
from __future__ import annotations

import hashlib
import numbers
from typing import Any

import torch

from ..errors import InterpError


def as_seed(value: Any) -> int:
    """An int seed from an int, or one drawn from a CPU ``torch.Generator`` (which advances it)."""
    if isinstance(value, torch.Generator):
        if value.device.type != "cpu":
            raise InterpError("option 'seed' must be an int or a CPU torch.Generator")
        return int(torch.randint(0, 2**62, (1,), generator=value))
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InterpError(f"option 'seed' must be an int or a torch.Generator, got {value!r}")
    return int(value)


def image_generators(seed: int, x: torch.Tensor) -> list[torch.Generator]:
    """One generator per image of ``x`` ``[B, ...]``, seeded by ``blake2b(seed, float32 pixels)``."""
    pixels = x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    gens = []
    for img in pixels:
        h = hashlib.blake2b(img.tobytes(), digest_size=8, key=int(seed).to_bytes(8, "little", signed=True))
        g = torch.Generator()
        g.manual_seed(int.from_bytes(h.digest(), "little") & (2**63 - 1))
        gens.append(g)
    return gens
