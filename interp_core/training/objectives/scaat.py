"""SCAAT: Saliency Constrained Adaptive Adversarial Training (Xu et al. 2023, arXiv:2311.05143).

[paper] Adversarial samples built under the guidance of the saliency map; training on them makes
saliency maps sparser and more faithful without changing the architecture. The paper's full text
was not available: the saliency constraint, the attack, the adaptive budget and their defaults
are the project's reading of the abstract (METHODS.md section 2, marked [ours]) and are options.

One step on a batch ``(x, y)``:

1. ``S = |df_y(x)/dx|`` summed over channels, in eval mode, detached, max-normalised per sample;
2. ``M``: lowest-saliency pixels holding at most ``q`` of the saliency mass, fraction clamped to
   ``[rho_min, rho_max]``, same pixels in every channel (defaults q 0.3, rho 0.3-0.95 [ours]);
3. ``delta``: uniform in ``[-eps, eps]`` on ``M``, then ``K`` steps of projected sign-gradient
   ascent on ``KL(p(x).detach() || p(x + delta))`` with step ``alpha`` (default ``1.25 eps / K``),
   gradient masked by ``M``, ``delta`` in ``[-eps, eps]``, ``x + delta`` in ``[0, 1]``;
4. ``eps`` ramps linearly from 0 over the first ``warmup_epochs``;
5. ``loss = CE(f(x), y) + lambda * KL(p(x) || p(x + delta))``, gradients through both branches
   (``lambda`` default 20 [ours]).

Defaults [ours]: ``lambda = 20``, ``q = 0.3``, ``rho_max = 0.95`` instead of METHODS.md's 2, 0.1
and 0.8, chosen by ``bench/scaat_study.py`` (``docs/results/scaat_study/``): fine-tuning with
METHODS.md's values changed Gini by under +0.01; each of the two levers alone (larger ``lambda``,
larger region) raised Gini, relevance mass and symmetric relevance gain on both synthetic sets,
and together they did so on every seed at equal accuracy.

Modes. Steps 1 and 3 run with the model in eval mode: step 1 because METHODS.md says so, step 3
because in train mode every attack forward would (a) update BatchNorm running statistics with
adversarial batches and (b) couple the samples of the batch through batch statistics, so each
sample's perturbation would depend on the others'. In eval mode the attack is a per-sample
function of the current weights, and the clean logits of step 1's forward pass are exactly the
KL target it needs (``p(x)`` in eval mode), so the attack's target costs no extra forward. The
same choice is made by TRADES (Zhang et al. 2019). Step 5 runs in train mode; how BatchNorm sees
the clean and perturbed halves there is the ``bn_stats`` option (see
:func:`~interp_core.training.saliency_guidance.paired_logits`).

Cost per step with ``K`` attack steps: ``K + 1`` eval-mode forward passes with input-only
backward passes (no weight gradients; BatchNorm folded into the convolutions, channels-last
layout), plus the train-mode forward and backward passes of the clean and the perturbed batch.

``mode = "fast"`` [ours] (``train --objective scaat --mode fast``; docs/fast_modes.md): the
same loss on a perturbation that costs no pass of its own: two train-mode passes (clean and
perturbed) per step, about 2x ERM instead of about 4x. What differs from METHODS.md section 2:

- step 1: ``S`` is the input gradient of the *training* pass: ``|dCE(f(x), y)/dx|`` summed over
  channels (``|x * dCE/dx|`` for ``input_x_gradient``), taken in **train mode** (BatchNorm with
  batch statistics) by the same backward that gives CE's weight gradients
  (:func:`clean_training_pass`), instead of ``|df_y/dx|`` from a separate eval-mode pass.
  ``dCE/dx = sum_c (p_c - [c = y]) df_c/dx``: with two classes this is
  ``(1 - p_y) d(f_y - f_other)/dx``, whose max-normalised map is that of the logit margin;
- step 3: no attack pass. ``delta = clip(u + alpha * sign(dCE/dx), -eps, eps)`` on ``M`` with
  ``u ~ U[-eps, eps]`` (``x + delta`` in ``[0, 1]``; ``alpha`` default ``1.25 eps``): the random
  start and one sign step of METHODS with ``K = 1`` ("fast is better than free", Wong et al.
  2020), the step's gradient being the clean pass's ``dCE/dx`` (at ``x``, train mode) instead of
  ``dKL/dx`` at ``x + u`` in eval mode (:func:`fgsm_from_gradient`). Why that direction:
  ``KL(p(x) || p(x + delta))`` has zero gradient at ``delta = 0``; to second order it is
  ``delta^T F delta / 2`` with the Fisher ``F = J^T (diag(p) - p p^T) J``, which for two classes
  is rank one along ``d(f_1 - f_0)/dx``, i.e. along ``dCE/dx``: the direction the exact
  attack's step estimates. ``steps`` is not used;
- step 5: the KL target ``p(x)`` is detached, so the KL term's gradient flows through the
  perturbed branch only: that is what lets the clean branch's single backward be taken before
  the perturbed pass. ``CE``'s weight gradients from that backward are added to the returned
  loss's gradient (a zero-valued term ``sum_p <p, g_p> - sum_p <p, g_p>.detach()``), so the
  training loop's one ``backward()`` (and its gradient scaler) sees ``CE + lambda * KL`` as usual;
- ``bn_stats`` must be ``separate`` (each half its own batch statistics, running statistics from
  the clean half only, as exact's default); ``eval_precision`` has no eval pass to act on;
- ``kl_batch_fraction`` ``f`` < 1 (fast mode only): the perturbed branch and the KL term cover the
  rows ``sort(randperm(B)[:ceil(f * B)])``, drawn first from the step's seeded generator (an
  unbiased estimate of the batch's mean KL), so the perturbed pass costs that share of a full
  one. Default 1 (the whole batch: no draw): 0.5 met the 2x cost target but kept only 57-77% of
  exact's effect (docs/fast_modes.md, docs/results/fast_modes/scaat_effect.md).
- Single process only (not tested under torchrun).

Tried and rejected (docs/fast_modes.md): carrying each sample's perturbation across epochs
("free" warm start) and stepping it with the perturbed pass's input gradient: under the
training augmentation (flips, rotations) a perturbation found for one orientation is not
adversarial for the next, and the KL term stayed 180-420x below the exact mode's in the first
epoch and 3-12x below in the next two.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...errors import InterpError
from ..saliency_guidance import (
    SaliencyPassOptions,
    adaptive_low_saliency_mask,
    as_eval_input,
    eval_forward_module,
    eval_mode,
    eval_precision,
    kl_divergence,
    normalise_per_sample_max,
    paired_logits,
    step_generator,
    training_saliency,
)
from ..distributed import unwrap_model
from ..saliency_guidance import _running_stats_frozen
from .base import Objective, StepContext, register_objective


def ramped_eps(eps: float, progress: float, warmup_epochs: float) -> float:
    """SCAAT's adaptive budget [ours]: ``eps * min(1, progress / warmup_epochs)``.

    ``progress`` is the fractional epochs the *model* has been trained, counting an ``--init``
    run's epochs (SCAAT passes ``StepContext.model_progress``); ``warmup_epochs = 0`` disables the
    ramp. So a from-scratch run ramps over its first ``warmup_epochs``, while fine-tuning a model
    already trained at least ``warmup_epochs`` epochs attacks at the full budget from its first step.
    """
    if warmup_epochs <= 0:
        return float(eps)
    return float(eps) * min(1.0, max(0.0, progress) / warmup_epochs)


def random_start(x: torch.Tensor, mask: torch.Tensor, eps: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The attack's starting point ``clip(x + delta_0, 0, 1)``, ``delta_0 ~ U[-eps, eps]`` on ``mask``
    (independently per channel), zero elsewhere. ``mask`` is ``[B,1,H,W]``; draws use ``generator``."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    delta = (u.mul_(2).sub_(1)).mul_(eps) * mask.to(torch.float32)
    return (x.float() + delta).clamp_(0, 1)


def saliency_constrained_attack(model: nn.Module, x: torch.Tensor, mask: torch.Tensor,
                                clean_logits: torch.Tensor, eps: float, alpha: float, steps: int,
                                generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
    """SCAAT's adversarial sample ``x + delta`` (detached, float32, in ``[0, 1]``). [ours]

    From :func:`random_start`, ``steps`` iterations of
    ``delta <- clip(delta + alpha * sign(grad_delta KL(p || p(x + delta))) * M, -eps, eps)``
    with ``x + delta`` clipped to ``[0, 1]``, where ``p = softmax(clean_logits)`` is fixed (with a
    ``temperature`` T, both distributions are ``softmax(logits / T)``: see ``kl_temperature``). The
    result equals ``x`` outside ``M`` exactly. The model is run as given (SCAAT calls this in
    eval mode, see the module docstring), through
    :func:`~interp_core.training.saliency_guidance.eval_forward_module` in channels-last layout;
    gradients are taken with respect to the input only, so parameter ``.grad`` is untouched.
    """
    contiguous = x.is_contiguous()
    forward = eval_forward_module(model)
    x = as_eval_input(x.float())
    m = mask.to(torch.float32)
    lower, upper = (x - eps).clamp_(min=0), (x + eps).clamp_(max=1)
    t = float(temperature)
    logp = F.log_softmax(clean_logits.detach().float() / t, dim=1)
    p = logp.exp()
    x_adv = as_eval_input(random_start(x, mask, eps, generator))
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            logq = F.log_softmax(forward(x_adv).float() / t, dim=1)
            kl = (p * (logp - logq)).sum()  # summed: each sample's ascent is its own
            (grad,) = torch.autograd.grad(kl, x_adv)
        with torch.no_grad():
            x_adv = x_adv.detach().addcmul_(grad.sign_(), m, value=alpha)
            x_adv = torch.minimum(torch.maximum(x_adv, lower), upper)
    return x_adv.detach().contiguous() if contiguous else x_adv.detach()


def _help(text: str) -> dict:
    return {"help": text}


SCAAT_MODES = ("exact", "fast")


def loss_input_saliency(grad: torch.Tensor, x: torch.Tensor, method: str = "saliency") -> torch.Tensor:
    """Fast mode's step 1 [ours]: per-sample max-normalised ``sum_c |g_c|`` (``saliency``) or
    ``sum_c |x_c * g_c|`` (``input_x_gradient``), ``[B,H,W]``, from an input gradient ``g`` that
    the training pass already computed (``dCE/dx`` in train mode)."""
    g = grad.detach().float()
    if method == "input_x_gradient":
        g = g * x.detach().float()
    return normalise_per_sample_max(g.abs().sum(1))


def clean_training_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: list[torch.Tensor]
                        ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, ...]]:
    """Fast mode's clean branch: ``(logits, CE, (dCE/dx, dCE/dp for p in params))`` from one
    forward of ``model`` as it is (train mode in training) and one backward, which yields the
    weight gradients ERM's backward would and, for the price of the first layer's input gradient,
    ``dCE/dx``: the saliency source of fast mode's step 1. The graph is freed; ``.grad`` untouched."""
    x_in = x.detach().requires_grad_(True)
    logits = model(x_in)
    ce = F.cross_entropy(logits, y)
    grads = torch.autograd.grad(ce, [x_in, *params], allow_unused=True)
    return logits, ce, grads


def fgsm_from_gradient(x: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor, eps: float, alpha: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Fast mode's adversarial sample [ours] (detached float32): ``x + delta`` on ``mask``, ``x``
    elsewhere, with ``delta = clip(u + alpha * sign(grad), -eps, eps)``, ``u ~ U[-eps, eps]``
    drawn with ``generator``, and ``x + delta`` clipped to ``[0, 1]``: METHODS' random start and
    one projected sign step, the step taken along an input gradient the training pass computed."""
    m = mask.to(torch.float32)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32).mul_(2).sub_(1).mul_(eps)
    delta = (u + alpha * grad.detach().float().sign()).clamp_(-eps, eps)
    return (x.detach().float() + delta * m).clamp_(0, 1)


@register_objective
class SCAAT(Objective):
    """Saliency constrained adaptive adversarial training (METHODS.md section 2)."""

    name = "scaat"
    description = "saliency-constrained adaptive adversarial training (Xu et al. 2023)"

    @dataclass
    class Options(SaliencyPassOptions):
        q: float = field(default=0.30, metadata=_help(
            "[ours] perturbable region = largest set of lowest-saliency pixels holding at most this "
            "share of the sample's saliency mass (0 < q < 1); default 0.3 (METHODS.md: 0.1) from the "
            "SCAAT study, docs/results/scaat_study/"))
        rho_min: float = field(default=0.3, metadata=_help(
            "[ours] smallest fraction of the image the perturbable region may cover"))
        rho_max: float = field(default=0.95, metadata=_help(
            "[ours] largest fraction of the image the perturbable region may cover; default 0.95 "
            "(METHODS.md: 0.8) from the SCAAT study, docs/results/scaat_study/"))
        eps: float = field(default=8 / 255, metadata=_help(
            "[ours] L-inf budget of the adversarial perturbation in [0,1] image units (8/255 = 0.0314)"))
        steps: int = field(default=1, metadata=_help(
            "[ours] METHODS' K: number of projected sign-gradient ascent steps of the attack (>= 1)"))
        alpha: float | None = field(default=None, metadata=_help(
            "[ours] attack step size; default (None) 1.25 * eps / steps with the current "
            "(ramped) eps; a value given is used as is"))
        kl_weight: float = field(default=20.0, metadata=_help(
            "METHODS' lambda: weight of KL(p(x) || p(x + delta)) added to the cross-entropy; [ours] "
            "default 20 (METHODS.md: 2) from the SCAAT study, docs/results/scaat_study/: with q 0.3 and "
            "rho_max 0.95 the only setting tried that raised Gini, relevance mass and symmetric "
            "relevance gain on every seed of both synthetic sets at equal accuracy"))
        kl_temperature: float = field(default=1.0, metadata=_help(
            "[ours] temperature T of the KL term, in the attack and the loss: T^2 * KL(softmax(z/T) || "
            "softmax(z'/T)) as in distillation (Hinton et al. 2015); 1 = METHODS' plain KL. A saturated "
            "model (p(x) almost one-hot) gets next to no gradient from the plain KL; T > 1 compares the "
            "shape of the logits instead"))
        warmup_epochs: float = field(default=1.0, metadata=_help(
            "[ours] adaptive budget: eps ramps linearly from 0 to its target over the model's first "
            "this-many epochs (counting an --init run's epochs, so fine-tuning a trained model "
            "attacks at full budget at once); 0 disables the ramp"))
        mode: str = field(default="exact", metadata={**_help(
            "'exact' = METHODS.md section 2 as written; 'fast' [ours] = saliency and the attack's sign step "
            "both from the training pass's own input gradient dCE/dx (no eval or attack pass), KL target "
            "detached; see docs/fast_modes.md"), "choices": SCAAT_MODES,
            # its measured cost (Train page): interp_core.training.mode_costs, from docs/results/objective_speed.json
        })
        kl_batch_fraction: float = field(default=1.0, metadata=_help(
            "[ours] fast mode only: share of each batch (drawn at random) given a perturbed copy and a KL "
            "term; the KL mean over that subset estimates the full batch's without bias, and the perturbed "
            "pass costs this share of a full one (measured: docs/results/objective_speed.md)"))

        def __post_init__(self) -> None:
            if isinstance(self.alpha, str):
                self.alpha = None if self.alpha.strip().lower() in ("", "none") else float(self.alpha)
            elif self.alpha is not None:
                self.alpha = float(self.alpha)

        def validate(self) -> None:
            """Raise InterpError for values outside their meaningful range."""
            self.validate_saliency_pass("scaat")
            if not 0 < self.q < 1:
                raise InterpError(f"scaat: q must lie in (0, 1), got {self.q}")
            if not 0 <= self.rho_min <= 1 or not 0 <= self.rho_max <= 1:
                raise InterpError(f"scaat: rho_min and rho_max must lie in [0, 1], got {self.rho_min}, {self.rho_max}")
            if self.rho_min > self.rho_max:
                raise InterpError(f"scaat: rho_min ({self.rho_min}) must not exceed rho_max ({self.rho_max})")
            if not 0 <= self.eps <= 1:
                raise InterpError(f"scaat: eps must lie in [0, 1] (image units), got {self.eps}")
            if int(self.steps) != self.steps or self.steps < 1:
                raise InterpError(f"scaat: steps (K) must be an integer >= 1, got {self.steps}")
            if self.alpha is not None and not self.alpha > 0:
                raise InterpError(f"scaat: alpha must be > 0 (or None for 1.25 * eps / K), got {self.alpha}")
            if not self.kl_temperature > 0:
                raise InterpError(f"scaat: kl_temperature must be > 0, got {self.kl_temperature}")
            if not self.kl_weight >= 0:
                raise InterpError(f"scaat: kl_weight (lambda) must be >= 0, got {self.kl_weight}")
            if not self.warmup_epochs >= 0:
                raise InterpError(f"scaat: warmup_epochs must be >= 0, got {self.warmup_epochs}")
            if self.mode not in SCAAT_MODES:
                raise InterpError(f"scaat: mode must be one of {', '.join(SCAAT_MODES)}, got {self.mode!r}")
            if not 0 < self.kl_batch_fraction <= 1:
                raise InterpError(f"scaat: kl_batch_fraction must lie in (0, 1], got {self.kl_batch_fraction}")
            if self.mode != "fast" and self.kl_batch_fraction != 1:
                raise InterpError("scaat: kl_batch_fraction < 1 applies to mode 'fast' only")
            if self.mode == "fast" and self.bn_stats != "separate":
                raise InterpError("scaat: mode 'fast' needs bn_stats 'separate' (the clean pass is taken first)")

    def __init__(self, options: "SCAAT.Options", num_train: int):
        options.validate()
        super().__init__(options, num_train)

    def begin_epoch(self, ctx) -> dict[str, float]:
        if self.options.mode == "fast" and ctx.dist.enabled:
            raise InterpError("scaat: mode 'fast' is not tested under torchrun; run it in a single process")
        return {}

    def current_eps(self, progress: float) -> float:
        """The (ramped) attack budget at ``progress`` fractional epochs."""
        return ramped_eps(self.options.eps, progress, self.options.warmup_epochs)

    def adversarial_input(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1-3 on a batch: ``(x + delta, M)`` with the model in eval mode (restored after).

        ``x + delta`` is detached float32; ``M`` is the bool mask ``[B,1,H,W]``. Both passes run
        on the plain module inside any DistributedDataParallel or ``torch.compile`` wrapper
        (:func:`~interp_core.training.distributed.unwrap_model`): they take input gradients
        only, so no gradient all-reduce must be prepared for them; the loss's train-mode passes
        go through the wrapper, whose single backward all-reduces once per step.
        """
        o = self.options
        steps = int(o.steps)
        alpha = o.alpha if o.alpha is not None else 1.25 * eps / steps
        net = unwrap_model(model)
        with eval_mode(net), eval_precision(x.device, o.eval_precision):
            sal, clean_logits = training_saliency(net, x, y, o.saliency_method, generator)
            mask = adaptive_low_saliency_mask(sal, o.q, o.rho_min, o.rho_max, generator=generator)
            x_adv = saliency_constrained_attack(net, x, mask, clean_logits, eps, alpha, steps, generator,
                                                temperature=o.kl_temperature)
        return x_adv, mask

    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        """``CE(f(x), y) + kl_weight * KL(p(x) || p(x + delta))``; extras: ``ce``, ``kl`` (the KL
        term), ``perturbed_fraction`` (mean share of pixels in ``M``; 0 while nothing is
        perturbed) and ``eps`` (the current budget)."""
        o = self.options
        x, y = batch["image"], batch["label"]
        eps = self.current_eps(ctx.model_progress)
        if eps == 0 or o.kl_weight == 0:
            # Nothing to attack (first step of the ramp, or the KL term is off): x + delta = x,
            # the KL term is identically 0, and the step is plain ERM.
            ce = F.cross_entropy(model(x), y)
            return ce, {"ce": float(ce.detach()), "kl": 0.0, "perturbed_fraction": 0.0, "eps": eps}
        if o.mode == "fast":
            return self._fast_batch_loss(model, batch, ctx, eps)
        x_adv, mask = self.adversarial_input(model, x, y, eps, step_generator(ctx.generator, x.device))
        logits, logits_adv = paired_logits(model, x, x_adv.to(x.dtype), o.bn_stats)
        ce = F.cross_entropy(logits, y)
        t = float(o.kl_temperature)
        kl = kl_divergence(logits / t, logits_adv / t).mean() * (t * t)
        loss = ce + o.kl_weight * kl
        ce_v, kl_v, frac_v = torch.stack([ce.detach().float(), kl.detach(), mask.float().mean()]).tolist()
        return loss, {"ce": ce_v, "kl": kl_v, "perturbed_fraction": frac_v, "eps": eps}

    # -- fast mode [ours] ------------------------------------------------------------------------
    def _fast_batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext, eps: float
                         ) -> tuple[torch.Tensor, dict[str, float]]:
        """One fast-mode step (see the module docstring): the clean train pass and its one backward
        (CE's weight gradients and ``dCE/dx``), ``M`` and ``delta`` from that input gradient, the
        perturbed train pass; the loop's backward of the returned loss does the rest."""
        o = self.options
        x, y = batch["image"], batch["label"]
        net = unwrap_model(model)
        params = [p for p in net.parameters() if p.requires_grad]
        logits, ce, grads = clean_training_pass(net, x, y, params)
        g_x = grads[0]
        if o.kl_batch_fraction < 1:  # the perturbed branch on a random subset of the batch
            k = max(1, math.ceil(o.kl_batch_fraction * len(x)))
            sub = torch.randperm(len(x), generator=ctx.generator)[:k].sort().values.to(x.device)
            x, logits, g_x = x[sub], logits[sub], g_x[sub]
        gen = step_generator(ctx.generator, x.device)
        mask = adaptive_low_saliency_mask(loss_input_saliency(g_x, x, o.saliency_method), o.q, o.rho_min, o.rho_max,
                                          generator=gen)
        alpha = o.alpha if o.alpha is not None else 1.25 * eps
        x_adv = fgsm_from_gradient(x, g_x, mask, eps, alpha, gen)
        bns = [m for m in net.modules() if isinstance(m, _BatchNorm) and m.training]
        with _running_stats_frozen(bns):
            logits_adv = model(x_adv.to(x.dtype))
        t = float(o.kl_temperature)
        kl = kl_divergence(logits.detach() / t, logits_adv / t).mean() * (t * t)
        inject = sum(((p * g.detach()).sum() for p, g in zip(params, grads[1:]) if g is not None),
                     torch.zeros((), device=x.device))
        loss = ce.detach() + o.kl_weight * kl + (inject - inject.detach())
        ce_v, kl_v, frac_v = torch.stack([ce.detach().float(), kl.detach(), mask.float().mean()]).tolist()
        return loss, {"ce": ce_v, "kl": kl_v, "perturbed_fraction": frac_v, "eps": eps}
