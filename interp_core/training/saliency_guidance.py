"""Training-time saliency and low-saliency masks, shared by SCAAT and Saliency Guided Training.

Both objectives (METHODS.md section 2) run the same pipeline on every batch:

1. a saliency map ``S = |df_y/dx|`` (or ``|x * df_y/dx|``) summed over channels, computed with the
   model in eval mode, detached and max-normalised per sample (:func:`training_saliency`);
2. a mask of the lowest-saliency pixels, the same pixels in every channel
   (:func:`adaptive_low_saliency_mask` for SCAAT, :func:`lowest_saliency_mask` for SGT);
3. a second view of the batch changed only on that mask, and a loss
   ``CE(f(x), y) + lambda * KL(p(x) || p(x'))`` with gradients through both branches
   (:func:`paired_logits`, :func:`kl_divergence`).

Everything here is batched: masks come from one sort, one cumulative sum and one scatter over the
whole batch, never a Python loop over samples. None of it touches parameter ``.grad``: input
gradients are taken with ``torch.autograd.grad`` with respect to the input only.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import InterpError
from .._utils.modes import eval_mode  # noqa: F401  (re-exported)
from ..attribution.normalize import normalize_max
from ..models.folding import as_eval_input, eval_forward_module  # noqa: F401  (re-exported)

SALIENCY_METHODS = ("saliency", "input_x_gradient", "smoothgrad", "gradcam", "mean_saliency_gradcam")
#: SmoothGrad inside training [ours]: few noisy copies (each costs a forward and an input backward)
TRAINING_SMOOTHGRAD_SAMPLES = 4
TRAINING_SMOOTHGRAD_STDEV = 0.15
BN_STATS_MODES = ("separate", "clean", "joint")
EVAL_PRECISIONS = ("inherit", "bfloat16")


# -- options shared by SCAAT and SGT -----------------------------------------------------------------
@dataclass
class SaliencyPassOptions:
    """The options of the pipeline both objectives share (base of ``SCAAT.Options`` and
    ``SGT.Options``): which saliency, how BatchNorm sees the two halves of the paired loss, and the
    precision of the eval-mode passes."""

    saliency_method: str = field(default="saliency", metadata={
        "help": "training-time saliency S: 'saliency' = |grad| summed over channels (METHODS' default), "
                "'input_x_gradient' = |x * grad| summed over channels; [ours]: 'smoothgrad' = |grad| averaged "
                "over 4 copies with Gaussian noise (sd 0.15), 'gradcam' = Grad-CAM of the model's cam_layer "
                "upsampled bilinearly, 'mean_saliency_gradcam' = mean of the max-normalised gradient and "
                "Grad-CAM maps (one pass)",
        "choices": SALIENCY_METHODS})
    bn_stats: str = field(default="separate", metadata={
        "help": "(engineering choice, not in METHODS) BatchNorm statistics in the loss's clean and changed "
                "passes: 'separate' = each half its own (running statistics from the clean half only), "
                "'clean' = both halves normalised with the clean half's, 'joint' = one pass, statistics "
                "over both",
        "choices": BN_STATS_MODES})
    eval_precision: str = field(default="inherit", metadata={
        "help": "(engineering choice, not in METHODS) precision of the eval-mode passes (saliency; SCAAT's "
                "attack): 'inherit' = the loop's (float32 on CPU), 'bfloat16' = bfloat16 autocast (about 2x "
                "faster on recent CPUs; saliency a few percent off float32)",
        "choices": EVAL_PRECISIONS})

    def validate_saliency_pass(self, objective: str) -> None:
        """Raise InterpError naming ``objective`` when a shared option is not one of its choices."""
        for name, choices in (("saliency_method", SALIENCY_METHODS), ("eval_precision", EVAL_PRECISIONS),
                              ("bn_stats", BN_STATS_MODES)):
            value = getattr(self, name)
            if value not in choices:
                raise InterpError(f"{objective}: {name} must be one of {', '.join(choices)}, got {value!r}")


# -- modes, precision and randomness ----------------------------------------------------------------
def eval_precision(device: torch.device | str, precision: str = "inherit") -> contextlib.AbstractContextManager:
    """Precision of the eval-mode saliency and attack passes. [ours]

    ``inherit``: whatever the caller runs under (float32 on CPUs; the training loop's autocast on
    CUDA). ``bfloat16``: bfloat16 autocast on CPU or CUDA, about twice as fast on CPUs with
    AVX512-BF16/AMX, at the price of saliency values a few percent off float32 (measured ~8%
    relative L2 on a small CNN), so masks differ at their margins.
    """
    if precision not in EVAL_PRECISIONS:
        raise InterpError(f"unknown eval precision {precision!r}; choose one of {', '.join(EVAL_PRECISIONS)}")
    device = torch.device(device)
    if precision == "inherit" or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def step_generator(generator: torch.Generator, device: torch.device | str) -> torch.Generator:
    """A generator usable on ``device``: ``generator`` itself on the CPU, else a device generator
    seeded from one draw of ``generator`` (so a seeded run stays reproducible on CUDA too)."""
    device = torch.device(device)
    if device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _fraction_to_count(fraction: float, n: int) -> int:
    """``round(fraction * n)`` with halves rounded up, so clamps are monotone in the fraction."""
    return int(math.floor(fraction * n + 0.5))


# -- 1. saliency -----------------------------------------------------------------------------------
def training_saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                      method: str = "saliency", generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample max-normalised saliency ``S`` ``[B,H,W]`` and the clean logits ``[B,C]``.

    ``saliency``: ``S = sum_c |df_y/dx_c|``; ``input_x_gradient``: ``S = sum_c |x_c * df_y/dx_c|``,
    where ``f_y`` is the logit of ``target``. Each map is divided by its maximum (an all-zero map
    stays zero). The model is run as given: callers use :func:`eval_mode` (METHODS.md: saliency
    is taken in eval mode), through :func:`eval_forward_module` (BatchNorm folded, same
    function). Gradients are taken with ``torch.autograd.grad`` with respect to the input only,
    so no parameter ``.grad`` is created or changed and weight gradients are not even computed.
    The logits come from the same forward pass and are returned detached, so SCAAT uses them as
    the attack's KL target without another forward pass.

    The project's additions [ours] (the region's saliency as a study factor, issue 12):
    ``smoothgrad``: ``S = mean_k sum_c |df_y/dx_c (x + e_k)|`` over ``TRAINING_SMOOTHGRAD_SAMPLES``
    copies, ``e_k ~ N(0, 0.15^2)`` drawn with ``generator`` (one more clean forward for the logits);
    ``gradcam``: ``ReLU(sum_k mean_ij(df_y/dA_k) A_k)`` on the output ``A`` of ``model.cam_layer``,
    bilinearly upsampled to ``[H,W]`` (``align_corners=False``, as Captum's), on the unfolded model
    (hooks do not fire inside folded Conv/BatchNorm pairs); ``mean_saliency_gradcam``: the mean of
    the max-normalised gradient map and Grad-CAM map, from the same single backward pass.
    """
    if method not in SALIENCY_METHODS:
        raise InterpError(f"unknown saliency method {method!r}; choose one of {', '.join(SALIENCY_METHODS)}")
    if method in ("gradcam", "mean_saliency_gradcam"):
        return _cam_saliency(model, x, target, with_gradient=method == "mean_saliency_gradcam")
    if method == "smoothgrad":
        return _smoothgrad_saliency(model, x, target, generator)
    x_in = as_eval_input(x).requires_grad_(True)
    with torch.enable_grad():
        logits = eval_forward_module(model)(x_in)
        score = logits.gather(1, target.view(-1, 1)).float().sum()
        (grad,) = torch.autograd.grad(score, x_in)
    grad = grad.float()
    if method == "input_x_gradient":
        grad = grad * x.float()
    sal = grad.abs().sum(1)
    return normalise_per_sample_max(sal), logits.detach().float()


def _smoothgrad_saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                         generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``training_saliency(..., "smoothgrad")`` [ours]: see there."""
    forward = eval_forward_module(model)
    n = TRAINING_SMOOTHGRAD_SAMPLES
    with torch.no_grad():
        logits = forward(as_eval_input(x)).detach().float()
    noise = torch.randn((n, *x.shape), generator=generator, device=x.device, dtype=torch.float32)
    noisy = as_eval_input((x.float().unsqueeze(0) + noise * TRAINING_SMOOTHGRAD_STDEV).flatten(0, 1).to(x.dtype))
    noisy.requires_grad_(True)
    with torch.enable_grad():
        score = forward(noisy).gather(1, target.repeat(n).view(-1, 1)).float().sum()
        (grad,) = torch.autograd.grad(score, noisy)
    sal = grad.float().abs().sum(1).view(n, *x.shape[:1], *x.shape[2:]).mean(0)
    return normalise_per_sample_max(sal), logits


def _cam_saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                  with_gradient: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``training_saliency(..., "gradcam" | "mean_saliency_gradcam")`` [ours]: see there."""
    layer = getattr(model, "cam_layer", None)
    if not isinstance(layer, nn.Module):
        raise InterpError("saliency_method 'gradcam' needs a model with a 'cam_layer' (its last conv block)")
    feats: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: feats.append(o))
    x_in = x.detach().clone().requires_grad_(with_gradient)
    try:
        with torch.enable_grad():
            logits = model(x_in)
            score = logits.gather(1, target.view(-1, 1)).float().sum()
            inputs = [feats[-1]] + ([x_in] if with_gradient else [])
            grads = torch.autograd.grad(score, inputs)
    finally:
        handle.remove()
    a, g = feats[-1].detach().float(), grads[0].float()
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    sal = normalise_per_sample_max(cam)
    if with_gradient:
        sal = normalise_per_sample_max((sal + normalise_per_sample_max(grads[1].float().abs().sum(1))) / 2)
    return sal, logits.detach().float()


normalise_per_sample_max = normalize_max  # S_i / max(S_i); all-zero maps stay zero


# -- 2. low-saliency masks ---------------------------------------------------------------------------
def sort_pixels_by_saliency(saliency: torch.Tensor, generator: torch.Generator | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel order ascending by saliency: ``(order [B,n], sorted values [B,n])``, ``n = H*W``.

    Ties (typically an all-zero or partly zero map) are broken at random with ``generator``, so a
    flat map does not always select the top rows of the image; without a generator, ties go by
    raster index. One int64 sort: the non-negative float32 bit pattern (monotone in the value)
    in the high 32 bits, the tie-break key in the low 32 bits.
    """
    flat = saliency.detach().flatten(1).float().abs()  # abs() also turns -0.0 into +0.0
    b, n = flat.shape
    bits = flat.view(torch.int32).to(torch.int64) << 32
    if generator is None:
        tie = torch.arange(n, device=flat.device, dtype=torch.int64).expand(b, n)
    else:
        tie = torch.randint(0, 2**31, (b, n), generator=generator, device=flat.device, dtype=torch.int64)
    order = torch.argsort(bits | tie, dim=1)
    return order, flat.gather(1, order)


def mask_from_order(order: torch.Tensor, counts: torch.Tensor, spatial: tuple[int, int]) -> torch.Tensor:
    """Boolean mask ``[B,1,H,W]`` holding the first ``counts[i]`` pixels of ``order[i]``."""
    b, n = order.shape
    keep_sorted = torch.arange(n, device=order.device).unsqueeze(0) < counts.view(-1, 1)
    mask = torch.empty((b, n), dtype=torch.bool, device=order.device).scatter_(1, order, keep_sorted)
    return mask.view(b, 1, *spatial)


def adaptive_mask_counts(sorted_saliency: torch.Tensor, q: float, rho_min: float, rho_max: float) -> torch.Tensor:
    """Number of pixels in SCAAT's perturbable region per sample, ``[B]`` long. [ours]

    With ``s`` sorted ascending and ``c_m = s_1 + ... + s_m``: ``m* = max{m : c_m <= q * c_n}``
    (the largest low-saliency prefix holding at most a fraction ``q`` of the saliency mass), then
    clamped to ``[round(rho_min * n), round(rho_max * n)]``. A sparse map leaves most pixels
    under the threshold (large region), a diffuse one few (small region). An all-zero map has
    ``c_m = 0 <= 0`` for every ``m``, so ``m* = n`` and the clamp gives ``rho_max``: no pixel is
    known to matter, so the largest allowed region may be perturbed.
    """
    n = sorted_saliency.shape[1]
    csum = sorted_saliency.double().cumsum(1)
    threshold = q * csum[:, -1:]
    m = (csum <= threshold).sum(1)  # csum is non-decreasing, so this is the largest valid prefix
    return m.clamp(_fraction_to_count(rho_min, n), _fraction_to_count(rho_max, n))


def adaptive_low_saliency_mask(saliency: torch.Tensor, q: float = 0.10, rho_min: float = 0.3,
                               rho_max: float = 0.8, generator: torch.Generator | None = None) -> torch.Tensor:
    """SCAAT's saliency constraint ``M`` ``[B,1,H,W]`` (bool): the low-saliency pixels. [ours]

    The lowest-saliency pixels whose cumulative mass is at most ``q`` of the sample's total,
    with the region's fraction of the image clamped to ``[rho_min, rho_max]``
    (:func:`adaptive_mask_counts`); the same pixels in every channel. ``saliency`` is ``[B,H,W]``
    and non-negative; ties are broken at random with ``generator``.
    """
    order, sorted_sal = sort_pixels_by_saliency(saliency, generator)
    counts = adaptive_mask_counts(sorted_sal, q, rho_min, rho_max)
    return mask_from_order(order, counts, tuple(saliency.shape[-2:]))


def lowest_saliency_mask(saliency: torch.Tensor, fraction: float,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """SGT's mask ``[B,1,H,W]`` (bool): the ``round(fraction * H * W)`` lowest-saliency pixels of
    each sample, the same pixels in every channel; ties broken at random with ``generator``."""
    order, _ = sort_pixels_by_saliency(saliency, generator)
    b, n = order.shape
    counts = torch.full((b,), _fraction_to_count(fraction, n), dtype=torch.long, device=order.device)
    return mask_from_order(order, counts, tuple(saliency.shape[-2:]))


# -- 3. the paired loss ----------------------------------------------------------------------------
def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(p || q) = sum_c p_c (log p_c - log q_c)`` with ``p = softmax(logits_p)``,
    ``q = softmax(logits_q)``; ``[B]``, in float32 (log-space, stable), differentiable in both."""
    logp = F.log_softmax(logits_p.float(), dim=1)
    logq = F.log_softmax(logits_q.float(), dim=1)
    return (logp.exp() * (logp - logq)).sum(1)


def paired_logits(model: nn.Module, x: torch.Tensor, x_other: torch.Tensor,
                  bn_stats: str = "separate") -> tuple[torch.Tensor, torch.Tensor]:
    """Train-mode logits of the clean batch ``x`` and of its changed copy ``x_other``, both with
    graphs, for ``CE(f(x), y) + lambda * KL(p(x) || p(x_other))``.

    How BatchNorm layers in train mode treat the two halves is the project's choice (``bn_stats``):

    - ``separate`` (default): each half is normalised with its own batch statistics, as in
      Ismail et al.'s public code; the clean branch is exactly ERM's. Running statistics are
      updated from the clean half only (the public code also feeds them the masked batch), so
      the eval-mode model never sees the statistics of perturbed inputs.
    - ``clean``: both halves normalised with the clean half's batch statistics (gradients flow
      through them); running statistics from the clean half. The clean branch is exactly ERM's
      and the KL term measures only what the change does to each sample, not a shift of batch
      statistics. Costs a little more (statistics recorded per layer, an unfused BatchNorm).
    - ``joint``: one pass over ``cat([x, x_other])`` with ordinary BatchNorm: statistics and
      running statistics mix both halves, so the clean branch differs slightly from ERM's.

    When no BatchNorm is in train mode the three modes are the same function, and the halves are
    always batched into one pass (fewer, larger kernels).
    """
    if bn_stats not in BN_STATS_MODES:
        raise InterpError(f"unknown bn_stats mode {bn_stats!r}; choose one of {', '.join(BN_STATS_MODES)}")
    n = x.shape[0]
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training]
    if bn_stats == "joint" or not bns:
        logits = model(torch.cat([x, x_other.to(x.dtype)]))
        return logits[:n], logits[n:]
    if bn_stats == "separate":
        logits = model(x)
        with _running_stats_frozen(bns):
            return logits, model(x_other.to(x.dtype))
    with _record_batch_stats(bns) as stats:
        logits = model(x)
    with _normalise_with(bns, stats):
        return logits, model(x_other.to(x.dtype))


@contextlib.contextmanager
def _running_stats_frozen(bns: list[_BatchNorm]) -> Iterator[None]:
    """Within the block ``bns`` update throw-away copies of their running statistics (and batch
    counters); the originals are put back untouched on exit. Swapping the tensors instead of
    copying values back keeps the originals at the version autograd saved them at."""
    names = ("running_mean", "running_var", "num_batches_tracked")
    saved = [(m, {k: getattr(m, k) for k in names if getattr(m, k, None) is not None}) for m in bns]
    for m, bufs in saved:
        for k, t in bufs.items():
            setattr(m, k, t.clone())
    try:
        yield
    finally:
        for m, bufs in saved:
            for k, t in bufs.items():
                setattr(m, k, t)


def _reduce_dims(t: torch.Tensor) -> list[int]:
    return [0, *range(2, t.dim())]


@contextlib.contextmanager
def _record_batch_stats(bns: list[_BatchNorm]) -> Iterator[dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Record, per BatchNorm call, the differentiable biased batch ``(mean, var)`` of its input."""
    stats: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def hook(mod: nn.Module, args: tuple) -> None:
        var, mean = torch.var_mean(args[0].float(), dim=_reduce_dims(args[0]), unbiased=False)
        stats.setdefault(mod, []).append((mean, var))

    handles = [m.register_forward_pre_hook(hook) for m in bns]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _normalise_with(bns: list[_BatchNorm], stats: dict) -> Iterator[None]:
    """Within the block each BatchNorm in ``bns`` normalises with the recorded statistics (in call
    order) instead of its input's, and leaves its running statistics alone. Implemented by
    temporarily overriding the layers' ``forward``; restored on exit even after an exception."""
    patched: list[tuple[nn.Module, object]] = []
    for m in bns:
        patched.append((m, m.__dict__.get("forward")))
        m.forward = _GivenStatsForward(m, list(stats.get(m, [])))
    try:
        yield
    finally:
        for m, previous in patched:
            if previous is None:
                del m.forward
            else:
                m.forward = previous


class _GivenStatsForward:
    """``y = (x - mu) / sqrt(var + eps) * weight + bias`` with recorded ``(mu, var)``; differentiable
    in ``mu`` and ``var`` (so gradients reach the clean half that produced them)."""

    def __init__(self, bn: _BatchNorm, stats: list[tuple[torch.Tensor, torch.Tensor]]):
        self.bn, self.stats = bn, stats

    def __call__(self, inp: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if not self.stats:
            raise RuntimeError("BatchNorm called more often on the changed half than on the clean half")
        mean, var = self.stats.pop(0)
        scale = torch.rsqrt(var + bn.eps)
        if bn.affine:
            scale = scale * bn.weight.float()
        shift = -mean * scale
        if bn.affine:
            shift = shift + bn.bias.float()
        shape = [1, -1] + [1] * (inp.dim() - 2)
        return torch.addcmul(shift.to(inp.dtype).view(shape), inp, scale.to(inp.dtype).view(shape))
