"""Helpers for testing metrics (shipped with the package, Captum style): tiny seeded models, seeded
images, and attribution callables that do not depend on ``interp_core.attribution``."""
from __future__ import annotations

import torch
from torch import nn


def grad_saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``sum_c |d f_target / d x_c|`` with plain autograd: an attribution callable independent of interp_core."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x).gather(1, target.view(-1, 1)).sum()
    (g,) = torch.autograd.grad(out, x)
    return g.abs().sum(1)


def input_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A 'method' that ignores the model: the channel sum of the image."""
    return x.sum(1)


def tiny_cnn(seed: int = 0, classes: int = 3, batchnorm: bool = False) -> nn.Module:
    """conv-relu-conv-relu-GAP-linear with seeded weights (optionally a BatchNorm in between)."""
    g = torch.Generator().manual_seed(seed)
    layers = [nn.Conv2d(3, 4, 3, padding=1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(4, classes)]
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.8)
    return model.eval()


def tiny_linear(seed: int = 0, size: int = 8, classes: int = 2) -> nn.Module:
    """flatten-linear: its gradient saliency does not depend on the input."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, classes))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def images(b: int = 4, size: int = 8, seed: int = 1) -> torch.Tensor:
    """Seeded RGB images ``[b,3,size,size]`` in [0,1]."""
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))
