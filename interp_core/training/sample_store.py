"""Per-sample perturbations carried across epochs (the ``fast`` modes of SCAAT and ECE).

"Adversarial training for free" (Shafahi et al., NeurIPS 2019) keeps the perturbation found in
one pass and continues from it in the next instead of starting a new attack. Here it is kept per
training sample, so each visit of a sample continues its own attack:
:class:`PerturbationStore` holds ``delta_i`` ``[C,H,W]`` for every training sample ``i``.

- Stored in the sample's *canonical* frame (the image as read, before the training
  augmentation): a batch carries its augmentation code (``batch["aug"]``, see
  :func:`interp_core.data.dataset.dihedral`), and :meth:`PerturbationStore.get` /
  :meth:`PerturbationStore.put` map between frames, so a perturbation stays on the pixels it was
  found for when the next epoch flips or rotates the tile.
- Quantised to int8 in steps of ``scale / 127`` (``scale`` = the target budget ``eps``): one byte
  per pixel and channel (a 64x64 RGB tile: 12 KiB; 1500 tiles: 18 MiB), a rounding error of at
  most ``eps / 254``; values are clamped to ``[-eps_now, eps_now]`` when read, so a
  perturbation carried from a step with a larger budget never exceeds the current one.
- A sample never stored starts at ``U[-eps_now, eps_now]`` (METHODS.md section 2 step 3's random
  start), drawn with the step's generator.

The store is part of the objective's resumable state (:meth:`state_tensors`).
"""
from __future__ import annotations

import torch

from ..data.dataset import dihedral, dihedral_inverse

_Q = 127.0


class PerturbationStore:
    """``delta`` per training sample, int8-quantised, in the canonical frame; CPU-resident."""

    def __init__(self, num_samples: int, scale: float):
        self.num_samples = int(num_samples)
        self.scale = float(scale)
        self.q: torch.Tensor | None = None  # int8 [N,C,H,W], allocated at the first put
        self.seen = torch.zeros(self.num_samples, dtype=torch.bool)

    # -- frames ----------------------------------------------------------------------------
    @staticmethod
    def _map(t: torch.Tensor, aug: torch.Tensor | None, inverse: bool) -> torch.Tensor:
        """Apply (or undo) each row's dihedral transform; rows grouped by code (at most 8 ops)."""
        if aug is None:
            return t
        aug = aug.to("cpu").long()
        out = torch.empty_like(t)
        for code in aug.unique().tolist():
            rows = (aug == code).nonzero().flatten().to(t.device)
            f = dihedral_inverse if inverse else dihedral
            out[rows] = f(t[rows], int(code))
        return out

    # -- read / write ------------------------------------------------------------------------
    def get(self, index: torch.Tensor, shape: torch.Size, eps: float, aug: torch.Tensor | None = None,
            generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """``delta`` of the samples ``index`` in the batch's frame, float32 ``shape`` on ``device``,
        within ``[-eps, eps]``; samples never stored get a uniform random start."""
        idx = index.to("cpu").long()
        u = torch.rand(tuple(shape), generator=generator, dtype=torch.float32)
        delta = u.mul_(2).sub_(1).mul_(float(eps))
        if self.q is not None:
            seen = self.seen[idx]
            if bool(seen.any()):
                stored = self.q[idx[seen]].float().mul_(self.scale / _Q).clamp_(-float(eps), float(eps))
                delta[seen] = self._map(stored, None if aug is None else aug.cpu()[seen], inverse=False)
        return delta.to(device)

    def put(self, index: torch.Tensor, delta: torch.Tensor, aug: torch.Tensor | None = None) -> None:
        """Store ``delta`` (batch frame) for the samples ``index``."""
        idx = index.to("cpu").long()
        d = self._map(delta.detach().to("cpu", torch.float32), None if aug is None else aug.cpu(), inverse=True)
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
