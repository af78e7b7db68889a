"""GradientShap (Lundberg & Lee 2017; Captum's formulation): expected gradients over a baseline distribution.

For each of ``n_samples`` draws per image: a baseline ``b`` from the distribution, ``a ~ U(0, 1)``,
``x~ = x + e`` with ``e ~ N(0, stdevs^2)``; the map is the mean of
``(x~ - b) * d f_t(b + a (x~ - b)) / d x``. Same maths as Captum ``GradientShap``; the draws are
made here from per-image seeded generators (``seeding.image_generators``; Captum uses the global
NumPy/torch RNGs), so an image's map depends on the seed and the image only.

Default baseline distribution [ours]: ``("zeros", "blur")``, i.e. a black image and the image's
own Gaussian blur, each drawn with probability 1/2; a tensor ``[K, C, H, W]`` gives a shared
distribution of ``K`` reference images instead (Captum's form). ``n_samples=16`` (Captum: 5) for
less variance; ``stdevs=0`` as in Captum.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InterpError
from ._options import blur_sigma, nonnegative_float, positive_int
from .baselines import BASELINE_NAMES, make_baseline
from .gradient import input_gradients
from .registry import register_method
from .seeding import as_seed, image_generators


def sample_draws(generators: list[torch.Generator], n_samples: int, n_baselines: int,
                 shape: tuple[int, ...], stdevs: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image, from its generator, in order: baseline indices, path coefficients ``a``, noise.

    Returns ``(index [B, n], alpha [B, n], noise [B * n, *shape])`` on the CPU, ``B = len(generators)``.
    """
    idx, alpha, noise = [], [], []
    for generator in generators:
        idx.append(torch.randint(0, n_baselines, (n_samples,), generator=generator))
        alpha.append(torch.rand(n_samples, generator=generator))
        if stdevs > 0.0:
            noise.append(torch.randn((n_samples, *shape), generator=generator) * stdevs)
        else:
            noise.append(torch.zeros((n_samples, *shape)))
    return torch.stack(idx), torch.stack(alpha), torch.cat(noise)


def _check_baselines(spec, x: torch.Tensor):
    if isinstance(spec, torch.Tensor):
        c, h, w = x.shape[1:]
        t = spec[None] if spec.dim() == 3 else spec
        if t.dim() != 4 or tuple(t.shape[1:]) != (c, h, w) or t.shape[0] < 1:
            raise InterpError(f"option 'baselines': a tensor must be a distribution [K, {c}, {h}, {w}]; "
                              f"got {list(spec.shape)}")
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise InterpError("option 'baselines': the tensor must be float and finite")
        return t
    names = (spec,) if isinstance(spec, str) else spec
    if not isinstance(names, (tuple, list)) or not names or any(n not in BASELINE_NAMES for n in names):
        raise InterpError(f"option 'baselines' must be a tensor [K, C, H, W] or a non-empty list of "
                          f"{', '.join(BASELINE_NAMES)}; got {spec!r}")
    return tuple(names)


def _prepare(model: nn.Module, x: torch.Tensor, opts: dict) -> dict:
    return {"n_samples": positive_int("n_samples", opts["n_samples"]),
            "stdevs": nonnegative_float("stdevs", opts["stdevs"]),
            "baselines": _check_baselines(opts["baselines"], x),
            "blur_sigma": blur_sigma(opts["blur_sigma"]),
            "seed": as_seed(opts["seed"])}


@register_method("gradient_shap",
                 description="Expected gradients between random baselines (black, blurred) and the image "
                             "(Lundberg & Lee 2017)",
                 signed=True, cost="medium", needs_gradients=True, black_box=True,
                 options={"n_samples": 16, "stdevs": 0.0, "baselines": ("zeros", "blur"), "blur_sigma": None,
                          "seed": 0},
                 samples_option="n_samples", prepare=_prepare)
def _gradient_shap(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, n_samples: int, stdevs: float,
                   baselines, blur_sigma: float | None, seed: int) -> torch.Tensor:
    b, shape = x.shape[0], tuple(x.shape[1:])
    if isinstance(baselines, torch.Tensor):
        pool = baselines.to(device=x.device, dtype=x.dtype)[None].expand(b, *baselines.shape)
    else:
        pool = torch.stack([make_baseline(name, x, blur_sigma) for name in baselines], dim=1)  # [b, K, C, H, W]
    idx, alpha, noise = sample_draws(image_generators(seed, x), n_samples, pool.shape[1], shape, stdevs)
    rows = torch.arange(b, device=x.device)[:, None]
    base = pool[rows, idx.to(x.device)].reshape(b * n_samples, *shape)
    noisy = x.repeat_interleave(n_samples, dim=0) + noise.to(device=x.device, dtype=x.dtype)
    a = alpha.to(device=x.device, dtype=x.dtype).view(-1, *([1] * len(shape)))
    scaled = a * noisy + (1.0 - a) * base
    grads = input_gradients(model, scaled, target.repeat_interleave(n_samples))
    return (grads * (noisy - base)).view(b, n_samples, *shape).mean(1)
