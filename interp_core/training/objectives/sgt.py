"""Saliency Guided Training (Ismail et al., NeurIPS 2021), the reference baseline for SCAAT.

Per batch (METHODS.md section 2, "Reference baseline"): the same saliency as SCAAT's step 1
(eval mode, detached, max-normalised), then the lowest-saliency fraction ``k`` of the pixels is
replaced by values drawn uniformly within each channel's ``[min, max]`` of that image, and the
loss is SCAAT's step 5, ``CE(f(x), y) + lambda * KL(p(x) || p(x_masked))`` with gradients through
both branches. No attack, no adaptive region. The mask covers a pixel in every channel; the
public code's ``train()`` indexes the flattened ``C*H*W`` image with ``H*W`` pixel indices and so
masks only channel 0 of RGB inputs: not copied here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InterpError
from ..saliency_guidance import (
    SaliencyPassOptions,
    eval_mode,
    eval_precision,
    kl_divergence,
    lowest_saliency_mask,
    paired_logits,
    step_generator,
    training_saliency,
)
from ..distributed import unwrap_model
from .base import Objective, StepContext, register_objective

FILL_MODES = ("uniform_channel_range", "channel_mean", "zero")


def fill_low_saliency(x: torch.Tensor, mask: torch.Tensor, fill: str = "uniform_channel_range",
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Copy of ``x`` ``[B,C,H,W]`` with the pixels of ``mask`` ``[B,1,H,W]`` replaced in every channel.

    ``uniform_channel_range`` (SGT's random masking): ``U[min_bc, max_bc]`` with ``min_bc``,
    ``max_bc`` the range of channel ``c`` of image ``b`` (the public code uses the range over all
    channels of the image); ``channel_mean``: that channel's mean; ``zero``: 0 (black, before the
    model's normalisation). Pixels outside the mask are left exactly as they were.
    """
    if fill not in FILL_MODES:
        raise InterpError(f"unknown fill mode {fill!r}; choose one of {', '.join(FILL_MODES)}")
    if fill == "uniform_channel_range":
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32).to(x.dtype)
        values = torch.addcmul(lo, u, hi - lo)
    elif fill == "channel_mean":
        values = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    else:
        values = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(mask.bool(), values, x)


@register_objective
class SGT(Objective):
    """Saliency Guided Training (Ismail et al. 2021): KL between clean and low-saliency-masked input."""

    name = "sgt"
    description = "saliency guided training (Ismail et al. 2021): mask the lowest-saliency pixels, match outputs"

    @dataclass
    class Options(SaliencyPassOptions):
        k: float = field(default=0.5, metadata={
            "help": "fraction of pixels (lowest saliency, all channels) replaced in the masked copy "
                    "(0 < k < 1; 0.5 as in SGT on small images)"})
        fill: str = field(default="uniform_channel_range", metadata={
            "help": "replacement of masked pixels: 'uniform_channel_range' = uniform within each "
                    "channel's [min, max] of that image (SGT), 'channel_mean', 'zero'",
            "choices": FILL_MODES})
        kl_weight: float = field(default=1.0, metadata={
            "help": "METHODS' lambda: weight of KL(p(x) || p(x_masked)) added to the cross-entropy. "
                    "[ours] default 1.0, not SCAAT's 2.0: SGT is the reference baseline, so it keeps "
                    "the value of Ismail et al.'s public code"})

        def validate(self) -> None:
            """Raise InterpError for values outside their meaningful range."""
            self.validate_saliency_pass("sgt")
            if self.fill not in FILL_MODES:
                raise InterpError(f"sgt: fill must be one of {', '.join(FILL_MODES)}, got {self.fill!r}")
            if not 0 < self.k < 1:
                raise InterpError(f"sgt: k must lie in (0, 1), got {self.k}")
            if not self.kl_weight >= 0:
                raise InterpError(f"sgt: kl_weight (lambda) must be >= 0, got {self.kl_weight}")

    def __init__(self, options: "SGT.Options", num_train: int):
        options.validate()
        super().__init__(options, num_train)

    def masked_input(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_masked, mask)``: saliency in eval mode (restored after), the ``k`` lowest-saliency
        pixels replaced per ``fill``; ``mask`` is bool ``[B,1,H,W]``.

        The saliency pass runs on the plain module inside any DistributedDataParallel or
        ``torch.compile`` wrapper (:func:`~interp_core.training.distributed.unwrap_model`): it
        takes input gradients only, so no gradient all-reduce must be prepared for it; the loss's
        train-mode passes go through the wrapper, whose single backward all-reduces once."""
        o = self.options
        net = unwrap_model(model)
        with eval_mode(net), eval_precision(x.device, o.eval_precision):
            sal, _ = training_saliency(net, x, y, o.saliency_method, generator)
        mask = lowest_saliency_mask(sal, o.k, generator=generator)
        return fill_low_saliency(x, mask, o.fill, generator=generator), mask

    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        """``CE(f(x), y) + kl_weight * KL(p(x) || p(x_masked))``; extras: ``ce``, ``kl`` and
        ``perturbed_fraction`` (share of pixels replaced)."""
        o = self.options
        x, y = batch["image"], batch["label"]
        if o.kl_weight == 0:
            ce = F.cross_entropy(model(x), y)
            return ce, {"ce": float(ce.detach()), "kl": 0.0, "perturbed_fraction": 0.0}
        x_masked, mask = self.masked_input(model, x, y, step_generator(ctx.generator, x.device))
        logits, logits_masked = paired_logits(model, x, x_masked, o.bn_stats)
        ce = F.cross_entropy(logits, y)
        kl = kl_divergence(logits, logits_masked).mean()
        loss = ce + o.kl_weight * kl
        ce_v, kl_v, frac_v = torch.stack([ce.detach().float(), kl.detach(), mask.float().mean()]).tolist()
        return loss, {"ce": ce_v, "kl": kl_v, "perturbed_fraction": frac_v}
