"""Plain-gradient attributions via Captum: Saliency, InputXGradient, IntegratedGradients.

- Saliency (Simonyan et al. 2014): ``|d f_t(x) / d x|``.
- InputXGradient (Shrikumar et al. 2016): ``x * d f_t(x) / d x``.
- IntegratedGradients (Sundararajan et al. 2017):
  ``(x - x') * integral_0^1 d f_t(x' + a (x - x')) / d x da``, the integral by ``n_steps``-point
  quadrature (Gauss-Legendre by default, as Captum), ``x'`` the baseline (black by default).
  ``n_steps`` defaults to 32 rather than Captum's 50 [ours]: the cost is linear in it; raise it
  when the completeness gap ``sum(IG) - (f_t(x) - f_t(x'))`` matters.
"""
from __future__ import annotations

import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from torch import nn

from ._options import blur_sigma, choice, positive_int
from .baselines import check_baseline, make_baseline
from .registry import register_method

IG_INTEGRATION = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def input_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``d f_t(x) / d x`` ``[B, C, H, W]`` for a batch (Captum ``Saliency`` without the absolute value)."""
    return Saliency(model).attribute(x.detach().requires_grad_(), target=target, abs=False)


@register_method("saliency", description="Absolute input gradient of the class score (Simonyan et al. 2014)",
                 signed=False, cost="fast", needs_gradients=True, black_box=True)
def _saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return Saliency(model).attribute(x.detach().requires_grad_(), target=target, abs=True)


@register_method("input_x_gradient", description="Input times input gradient (Shrikumar et al. 2016)",
                 signed=True, cost="fast", needs_gradients=True, black_box=True)
def _input_x_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return InputXGradient(model).attribute(x.detach().requires_grad_(), target=target)


def _prepare_ig(model: nn.Module, x: torch.Tensor, opts: dict) -> dict:
    return {"n_steps": positive_int("n_steps", opts["n_steps"]),
            "integration": choice("integration", opts["integration"], IG_INTEGRATION),
            "baseline": check_baseline("baseline", opts["baseline"], x),
            "blur_sigma": blur_sigma(opts["blur_sigma"])}


@register_method("integrated_gradients",
                 description="Gradients integrated along a straight path from a baseline image "
                             "(Sundararajan et al. 2017)",
                 signed=True, cost="slow", needs_gradients=True, black_box=True,
                 options={"n_steps": 32, "integration": "gausslegendre", "baseline": 0.0, "blur_sigma": None},
                 samples_option="n_steps", per_sample_options=("baseline",), prepare=_prepare_ig)
def _integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, n_steps: int,
                          integration: str, baseline, blur_sigma: float | None) -> torch.Tensor:
    base = make_baseline(baseline, x, blur_sigma)
    return IntegratedGradients(model).attribute(x.detach().requires_grad_(), baselines=base, target=target,
                                                n_steps=n_steps, method=integration)
