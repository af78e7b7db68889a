"""Robustness: how much an explanation changes under small input perturbations (max-sensitivity)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InterpError
from .._utils.device import model_device
from ._inputs import (Method, as_map, check_images, eval_mode, generator_from, resolve_method,
                      resolve_target, work_dtype)
from .base import register_metric

DEFAULT_RADIUS = 8 / 255


@register_metric(
    category="robustness", higher_is_better=False, attribution_form="raw",
    description="largest relative change ||a(x) - a(x+d)|| / ||a(x)|| over random d with |d| <= r",
    reference="Yeh et al. 2019, On the (in)fidelity and sensitivity of explanations",
    requires=("model", "x", "method"), expensive=True,
)
def max_sensitivity(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None = None,
                    method: Method = "saliency", n: int = 10, radius: float = DEFAULT_RADIUS,
                    seed: int | torch.Generator | None = 0, batch_size: int = 64,
                    method_options: dict | None = None) -> torch.Tensor:
    """Max-sensitivity per sample ``[B]``; lower is better (a stable explanation).

    ``MS = max_{i=1..n} ||a(x) - a(clip(x + d_i, 0, 1))||_F / ||a(x)||_F`` with
    ``d_i ~ U[-radius, radius]`` per pixel and channel (an L-inf ball), drawn from a CPU generator
    (``seed`` or a ``torch.Generator``) so results do not depend on the device. The maps are the
    method's own, unnormalised ``[B,H,W]``; the target class is kept fixed at ``target`` (default: the
    prediction on ``x``) for all perturbed copies. NaN where ``||a(x)|| = 0``.
    Defaults [ours]: ``n = 10``, ``radius = 8/255`` (the attack budget used in training); Quantus
    ``MaxSensitivity`` defaults to 200 samples of radius 0.2.
    ``method``: a name for ``interp_core.attribution.attribute`` (with ``method_options``) or a
    callable ``(model, x, target) -> [B,H,W]``. The ``n * B`` perturbed images are explained in
    slices of ``batch_size``. The model is in eval mode meanwhile (its mode is restored).
    """
    check_images(x)
    if n < 1:
        raise InterpError(f"n (number of perturbations) must be at least 1, got {n}")
    if radius < 0:
        raise InterpError(f"radius must be non-negative, got {radius}")
    explain = resolve_method(method, **(method_options or {}))
    device = model_device(model)
    x = x.to(device)
    b = x.shape[0]
    gen = generator_from(seed)
    with eval_mode(model):
        t = resolve_target(model, x, target)
        a0 = as_map(explain(model, x, t), "attribution of x").to(work_dtype(device))
        ref_norm = a0.flatten(1).norm(dim=1)
        worst = torch.zeros(b, dtype=a0.dtype, device=device)
        noise_shape = (n * b, *x.shape[1:])
        d = (torch.rand(noise_shape, generator=gen, dtype=torch.float32) * 2 - 1) * radius
        d = d.to(device=device, dtype=x.dtype)
        xs = (x.repeat(n, 1, 1, 1) + d).clamp(0, 1)   # copy i*b + s perturbs sample s
        ts = t.repeat(n)
        for start in range(0, n * b, batch_size):
            stop = min(start + batch_size, n * b)
            a = as_map(explain(model, xs[start:stop], ts[start:stop]), "attribution of x + d").to(a0.dtype)
            s = torch.arange(start, stop, device=device) % b
            diff = (a - a0[s]).flatten(1).norm(dim=1)
            worst.scatter_reduce_(0, s, diff, "amax")
    ms = worst / torch.where(ref_norm > 0, ref_norm, torch.ones_like(ref_norm))
    return torch.where(ref_norm > 0, ms, torch.full_like(ms, float("nan"))).float()
