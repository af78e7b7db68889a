"""Background perturbation (METHODS.md section 3, steps 2-3): split an image into foreground and
background from a heatmap, then attack only the background with a masked L-inf PGD.

``background_mask``: ``B = H < tau`` on a max-normalised heatmap ``H``, ``tau`` a number or the
per-sample mean of ``H`` [ours]. ``masked_pgd``: ``K`` steps of projected sign-gradient ascent on
``CE(f(x_hat), y)``::

    x_hat <- clip_{[x - eps, x + eps] n [0, 1]}(x_hat + alpha * sign(grad_x CE) * B)

with ``alpha = 2.5 * eps / K`` by default [ours] (Madry et al. 2018's PGD, masked). Foreground
pixels are copied from ``x`` with ``torch.where``, so they are unchanged to the bit; that is what
keeps the sample's semantics.

Cost: each step is one forward and one input-only backward (``torch.autograd.grad`` on the input,
so no parameter gradient is computed or touched), plus one no-grad forward at the end for the
prediction (and features) of ``x_hat``. Starting at ``delta = 0`` (the default) the first step's
forward *is* the clean forward: its logits and features are returned, and a callable ``mask`` can
be derived from them, which saves the ECE refresh a separate pass for ``H(x)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InterpError
from .._utils.modes import eval_mode  # noqa: F401  (re-exported)

#: A mask ``[B,H,W]``/``[B,1,H,W]`` (nonzero = may be perturbed), or a function of the clean
#: forward pass ``(features [B,C,h,w] or None, logits [B,K]) -> mask``.
MaskLike = Union[torch.Tensor, Callable[[Union[torch.Tensor, None], torch.Tensor], torch.Tensor]]


@dataclass
class PGDResult:
    """Outcome of :func:`masked_pgd`; every tensor is detached.

    ``features_*`` are the last conv feature maps (``model.forward_features``) when the model has
    ``forward_features``/``forward_head``, else None. ``mask`` is the bool ``[B,1,H,W]`` region
    that was allowed to change; ``target`` the classes whose CE was maximised.
    """

    x_adv: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor
    logits_clean: torch.Tensor
    logits_adv: torch.Tensor
    features_clean: torch.Tensor | None
    features_adv: torch.Tensor | None

    @property
    def pred_clean(self) -> torch.Tensor:
        return self.logits_clean.argmax(1)

    @property
    def pred_adv(self) -> torch.Tensor:
        return self.logits_adv.argmax(1)

    @property
    def pred_changed(self) -> torch.Tensor:
        """``[B]`` bool: the predicted class of ``x_adv`` differs from that of ``x``."""
        return self.pred_clean != self.pred_adv


def parse_threshold(threshold: float | str) -> float | str:
    """``tau`` as a float in ``(0, 1]`` or the string ``"mean"``; raises InterpError otherwise.

    Accepts numbers and numeric strings (``"0.5"``), so a CLI/config value can be passed as is.
    """
    if isinstance(threshold, str):
        t = threshold.strip().lower()
        if t == "mean":
            return "mean"
        try:
            threshold = float(t)
        except ValueError:
            raise InterpError(f"threshold must be a number in (0, 1] or 'mean', got {threshold!r}") from None
    tau = float(threshold)
    if not 0.0 < tau <= 1.0:
        raise InterpError(f"threshold must be in (0, 1] (heatmaps are max-normalised) or 'mean', got {tau}")
    return tau


def background_mask(heatmap: torch.Tensor, threshold: float | str = 0.5) -> torch.Tensor:
    """Background ``B = H < tau`` as a bool ``[B,H,W]`` [ours: the threshold rule is the project's choice].

    ``heatmap`` is ``[B,H,W]`` and should be max-normalised to ``[0,1]`` for a numeric ``tau``
    (default 0.5). ``threshold="mean"`` uses each sample's own mean ``tau_i = mean(H_i)``, which
    is scale-free. The comparison is strict, so a constant heatmap has no background under
    ``"mean"``; an all-zero heatmap is all background under a numeric ``tau`` (the model shows no
    evidence for the class anywhere, so nothing is protected).
    """
    if heatmap.ndim != 3:
        raise InterpError(f"heatmap must have shape [B,H,W], got {list(heatmap.shape)}")
    tau = parse_threshold(threshold)
    if tau == "mean":
        # clamp into [min, max] (where the exact mean lies): float rounding must not put a
        # constant map's mean above its value and turn the whole map into background
        mean = heatmap.double().mean(dim=(1, 2), keepdim=True)
        lo, hi = heatmap.amin(dim=(1, 2), keepdim=True).double(), heatmap.amax(dim=(1, 2), keepdim=True).double()
        return heatmap.double() < torch.minimum(torch.maximum(mean, lo), hi)
    return heatmap < tau


def default_step_size(eps: float, steps: int) -> float:
    """``alpha = 2.5 * eps / K`` [ours] (Madry et al.'s rule of thumb): ``K`` steps travel
    ``2.5 eps`` in all, enough to reach the edge of the ``eps``-ball and still move along it."""
    return 2.5 * float(eps) / max(1, int(steps))


def _forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(features, logits)``, features only for models with ``forward_features``/``forward_head``."""
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        feats = model.forward_features(x)
        return feats, model.forward_head(feats)
    return None, model(x)


def _unattacked(x: torch.Tensor, m: torch.Tensor, target: torch.Tensor, feats: torch.Tensor | None,
                logits: torch.Tensor) -> PGDResult:
    """The result when nothing may change (``eps = 0``, ``K = 0`` or an empty mask): ``x_hat = x``."""
    return PGDResult(x_adv=x.clone(), mask=m, target=target, logits_clean=logits, logits_adv=logits,
                     features_clean=feats, features_adv=feats)


def _as_pixel_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Coerce a mask to bool ``[B,1,H,W]`` (same pixels in every channel) matching ``x``."""
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[0] != x.shape[0] or mask.shape[-2:] != x.shape[-2:] or mask.shape[1] not in (1, x.shape[1]):
        raise InterpError(f"mask shape {list(mask.shape)} does not match images {list(x.shape)}; "
                          "expected [B,H,W] or [B,1,H,W]")
    mask = mask != 0
    if mask.shape[1] != 1:
        mask = mask.any(1, keepdim=True)
    return mask.to(x.device)


def _check_attack_args(x: torch.Tensor, target: torch.Tensor | None, eps: float, steps: int, alpha: float | None) -> None:
    if x.ndim != 4:
        raise InterpError(f"images must have shape [B,C,H,W], got {list(x.shape)}")
    if target is not None and (target.ndim != 1 or target.shape[0] != x.shape[0]):
        raise InterpError(f"target must have shape [B]={x.shape[0]}, got {list(target.shape)}")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise InterpError(f"images must be in [0, 1], got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")
    if not 0.0 <= float(eps) <= 1.0:
        raise InterpError(f"eps must be in [0, 1] (images are in [0,1]), got {eps}")
    if int(steps) < 0:
        raise InterpError(f"steps must be >= 0, got {steps}")
    if alpha is not None and float(alpha) <= 0:
        raise InterpError(f"alpha must be > 0, got {alpha}")


def masked_pgd(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None, mask: MaskLike, *,
               eps: float = 8 / 255, steps: int = 3, alpha: float | None = None,
               random_start: bool = False, generator: torch.Generator | None = None) -> PGDResult:
    """Masked L-inf PGD maximising ``CE(f(x_hat), target)``; only ``mask`` pixels change.

    ``x`` is ``[B,C,H,W]`` in ``[0,1]``, ``target`` ``[B]`` (ECE uses the true label; None: the
    class predicted on ``x``, taken from the clean forward pass). ``mask`` is
    a tensor (``[B,H,W]`` or ``[B,1,H,W]``, nonzero = may change, same pixels in every channel) or
    a callable ``(features, logits) -> mask`` evaluated on the clean forward pass, reusing it.
    ``random_start`` [ours, default False]: start at ``delta ~ U[-eps, eps]`` on the mask instead of
    ``delta = 0``; the default is deterministic and lets the first step double as the clean pass.
    ``generator`` seeds the random start (drawn on the CPU).

    Guarantees: foreground equals ``x`` bit for bit, ``|x_hat - x| <= eps`` and ``x_hat`` in
    ``[0,1]``. The model runs in eval mode (the caller's modes are restored) and only input
    gradients are computed (``torch.autograd.grad``), so parameter ``.grad`` is never touched.
    """
    _check_attack_args(x, target, eps, steps, alpha)
    eps, steps = float(eps), int(steps)
    alpha = default_step_size(eps, steps) if alpha is None else float(alpha)
    x = x.detach()
    target = None if target is None else target.to(x.device)
    attack = eps > 0 and steps > 0
    m = None if callable(mask) else _as_pixel_mask(mask, x)
    with eval_mode(model):
        if not attack or random_start or (m is not None and not bool(m.any())):
            with torch.no_grad():
                feats_clean, logits_clean = _forward(model, x)
            if target is None:
                target = logits_clean.argmax(1)
            if m is None:
                m = _as_pixel_mask(mask(feats_clean, logits_clean), x)
            if not attack or not bool(m.any()):
                return _unattacked(x, m, target, feats_clean, logits_clean)
        # else: the first step's forward at delta = 0 is the clean pass (and yields a callable's mask)
        lo, hi = (x - eps).clamp_min(0.0), (x + eps).clamp_max(1.0)
        x_adv = x
        if random_start:
            noise = torch.rand(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
            x_adv = torch.where(m, (x + (2 * noise - 1) * eps).clamp(lo, hi), x)
        for k in range(steps):
            x_in = x_adv.clone().requires_grad_(True)
            with torch.enable_grad():
                feats, logits = _forward(model, x_in)
                if k == 0 and not random_start:  # delta = 0: this forward is the clean pass
                    feats_clean = None if feats is None else feats.detach()
                    logits_clean = logits.detach()
                    if target is None:
                        target = logits_clean.argmax(1)
                    if m is None:
                        m = _as_pixel_mask(mask(feats_clean, logits_clean), x)
                    if not bool(m.any()):
                        return _unattacked(x, m, target, feats_clean, logits_clean)
                loss = F.cross_entropy(logits.float(), target, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x_in)
            x_adv = torch.where(m, (x_adv + alpha * grad.sign()).clamp(lo, hi), x)
        with torch.no_grad():
            feats_adv, logits_adv = _forward(model, x_adv)
    return PGDResult(x_adv=x_adv.detach(), mask=m, target=target, logits_clean=logits_clean, logits_adv=logits_adv,
                     features_clean=feats_clean, features_adv=feats_adv)


def background_attack(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None, heatmap: torch.Tensor, *,
                      threshold: float | str = 0.5, eps: float = 8 / 255, steps: int = 3,
                      alpha: float | None = None, random_start: bool = False,
                      generator: torch.Generator | None = None) -> PGDResult:
    """Attack the background ``heatmap < threshold`` of ``x`` (see :func:`background_mask`,
    :func:`masked_pgd`); ``result.pred_changed`` says whether the prediction changed."""
    return masked_pgd(model, x, target, background_mask(heatmap, threshold), eps=eps, steps=steps,
                      alpha=alpha, random_start=random_start, generator=generator)
