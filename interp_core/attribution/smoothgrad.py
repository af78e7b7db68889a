"""SmoothGrad (Smilkov et al. 2017): saliency averaged over noisy copies of the image.

``S(x) = 1/n sum_k |d f_t(x + e_k) / d x|``, ``e_k ~ N(0, stdevs^2)`` per pixel and channel.
This is Captum's ``NoiseTunnel(Saliency)`` with ``nt_type="smoothgrad"``; the noise is drawn here
rather than inside Captum (which uses the global RNG) so that it comes from per-image seeded
generators (``seeding.image_generators``): an image's map depends on the seed and the image
only, not on the batch it was computed in. Gradients come from Captum ``Saliency``.

Defaults [ours]: ``n_samples=16``; ``stdevs=0.15``, i.e. 15% of the [0, 1] image range (Smilkov
et al. recommend 10-20%; Captum's default of 1.0 assumes standardised inputs).
"""
from __future__ import annotations

import torch
from captum.attr import Saliency
from torch import nn

from ._options import nonnegative_float, positive_int
from .registry import register_method
from .seeding import as_seed, image_generators


def sample_noise(generators: list[torch.Generator], n_samples: int, shape: tuple[int, ...],
                 stdevs: float) -> torch.Tensor:
    """Gaussian noise ``[len(generators) * n_samples, *shape]`` on the CPU, image-major, one generator per image."""
    if stdevs == 0.0:
        return torch.zeros((len(generators) * n_samples, *shape))
    return torch.cat([torch.randn((n_samples, *shape), generator=g) for g in generators]) * stdevs


def _prepare(model: nn.Module, x: torch.Tensor, opts: dict) -> dict:
    return {"n_samples": positive_int("n_samples", opts["n_samples"]),
            "stdevs": nonnegative_float("stdevs", opts["stdevs"]),
            "seed": as_seed(opts["seed"])}


@register_method("smoothgrad",
                 description="Saliency averaged over Gaussian-noised copies of the image (Smilkov et al. 2017)",
                 signed=False, cost="medium", needs_gradients=True, black_box=True,
                 options={"n_samples": 16, "stdevs": 0.15, "seed": 0}, samples_option="n_samples", prepare=_prepare)
def _smoothgrad(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, n_samples: int, stdevs: float,
                seed: int) -> torch.Tensor:
    b = x.shape[0]
    noise = sample_noise(image_generators(seed, x), n_samples, tuple(x.shape[1:]), stdevs)
    noise = noise.to(device=x.device, dtype=x.dtype)
    noisy = (x.repeat_interleave(n_samples, dim=0) + noise).requires_grad_()
    grads = Saliency(model).attribute(noisy, target=target.repeat_interleave(n_samples), abs=True)
    return grads.view(b, n_samples, *x.shape[1:]).mean(1)
