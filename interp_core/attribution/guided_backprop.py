"""Guided backpropagation (Springenberg et al. 2015) via Captum ``GuidedBackprop``.

The input gradient with every ReLU's backward replaced by ``(input > 0) * max(grad, 0)``: only
positive signals flow back. Captum hooks each ``nn.ReLU`` module, so ReLUs must be modules, not
``F.relu`` calls (true of the registered models). torchvision's ``BasicBlock`` calls one inplace
ReLU module twice; with captum 0.9 / torch 2.14 the hooks handle that correctly (Captum's
forward pre-hook clones the ReLU input, and each call registers its own tensor hooks), which the
tests check against an independent implementation on ``resnet18``.
"""
from __future__ import annotations

import warnings

import torch
from captum.attr import GuidedBackprop
from torch import nn

from .registry import register_method


@register_method("guided_backprop",
                 description="Input gradient passing only positive signals back through ReLUs "
                             "(Springenberg et al. 2015)",
                 signed=True, cost="fast", needs_gradients=True)
def _guided_backprop(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        return GuidedBackprop(model).attribute(x.detach().requires_grad_(), target=target)
