"""Per-sample perturbations carried from one refresh to the next (ECE's ``fast`` mode).

"Adversarial training for free" (Shafahi et al., NeurIPS 2019) keeps the perturbation found in
one pass and continues from it in the next instead of starting a new attack. Here it is kept per
training sample: :class:`PerturbationStore` holds ``delta_i`` ``[C,H,W]`` for every sample ``i``
of the (un-augmented) training set.

- Quantised to int8 in steps of ``scale / 127`` (``scale`` = the target budget ``eps``): one byte
  per pixel and channel (a 64x64 RGB tile: 12 KiB; 1500 tiles: 18 MiB), a rounding error of at
  most ``eps / 254``; values are clamped to ``[-eps_now, eps_now]`` when read, so a
  perturbation stored under a larger budget never exceeds the current one.
- A sample never stored reads as ``U[-eps_now, eps_now]`` (a random start), drawn with the
  given generator.

The store is part of the objective's resumable state (:meth:`state_tensors`).
"""
from __future__ import annotations

import torch

_Q = 127.0


class PerturbationStore:
    """``delta`` per training sample, int8-quantised; CPU-resident."""

    def __init__(self, num_samples: int, scale: float):
        self.num_samples = int(num_samples)
        self.scale = float(scale)
        self.q: torch.Tensor | None = None  # int8 [N,C,H,W], allocated at the first put
        self.seen = torch.zeros(self.num_samples, dtype=torch.bool)

    def get(self, index: torch.Tensor, shape: torch.Size | tuple[int, ...], eps: float,
            generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """``delta`` of the samples ``index``: float32 ``shape`` on ``device``, within
        ``[-eps, eps]``; samples never stored get a uniform random start."""
        idx = index.to("cpu").long()
        delta = torch.rand(tuple(shape), generator=generator, dtype=torch.float32).mul_(2).sub_(1).mul_(float(eps))
        if self.q is not None:
            seen = self.seen[idx]
            if bool(seen.any()):
                delta[seen] = self.q[idx[seen]].float().mul_(self.scale / _Q).clamp_(-float(eps), float(eps))
        return delta.to(device)

    def put(self, index: torch.Tensor, delta: torch.Tensor) -> None:
        """Store ``delta`` for the samples ``index``."""
        idx = index.to("cpu").long()
        d = delta.detach().to("cpu", torch.float32)
        if self.q is None:
            self.q = torch.zeros((self.num_samples, *d.shape[1:]), dtype=torch.int8)
        self.q[idx] = d.mul(_Q / self.scale).round_().clamp_(-_Q, _Q).to(torch.int8) if self.scale > 0 else 0
        self.seen[idx] = True

    # -- resumable state -------------------------------------------------------------------
    def state_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        if self.q is None:
            return {}
        return {f"{prefix}delta_q": self.q.contiguous(), f"{prefix}delta_seen": self.seen.to(torch.uint8).contiguous()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        if f"{prefix}delta_q" in tensors:
            self.q = tensors[f"{prefix}delta_q"].to(torch.int8).clone()
            self.seen = tensors[f"{prefix}delta_seen"].bool().clone()
