"""Class activation maps (Zhou et al. 2016) for GAP + linear heads, computed without gradients.

``CAM_c = ReLU(sum_k w_{c,k} F_k)`` over the last feature map ``F``, bilinearly upsampled to the
input size. For a GAP + linear head, Grad-CAM's channel weights are ``w_{c,k} / (h*w)``, so
Grad-CAM equals CAM up to a positive constant: after max-normalisation they coincide. That is
why the ECE refresh can use this no-grad path. Registered as the ``cam`` attribution method.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InterpError
from .registry import register_method


def supports_cam(model: nn.Module) -> bool:
    """True when the model exposes ``forward_features`` and a linear ``head`` after GAP."""
    return hasattr(model, "forward_features") and isinstance(getattr(model, "head", None), nn.Linear)


@torch.no_grad()
def class_activation_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None,
                         upsample: bool = True, relu: bool = True) -> torch.Tensor:
    """CAM ``[B, H, W]`` (or ``[B, h, w]`` with ``upsample=False``) for ``target`` (default: predicted).

    Does not change the model's mode; run it on a model in eval mode for BatchNorm statistics.
    """
    if not supports_cam(model):
        raise InterpError("CAM needs a model whose head is global-average-pool + linear "
                          "(forward_features + head); use 'gradcam' instead")
    feats = model.forward_features(x)
    if target is None:
        target = model.forward_head(feats).argmax(1)
    return cam_from_features(model, feats, target, size=tuple(x.shape[-2:]) if upsample else None, relu=relu)


def cam_from_features(model: nn.Module, feats: torch.Tensor, target: torch.Tensor,
                      size: tuple[int, int] | None = None, relu: bool = True) -> torch.Tensor:
    """``ReLU(sum_k w_{y,k} F_k)`` in float32 from an existing feature map ``[B, C, h, w]``,
    bilinearly upsampled to ``size`` when given (lets callers that already ran the backbone,
    such as the consistency attack, reuse its features)."""
    w = model.head.weight[target]  # [B, C]
    cam = torch.einsum("bc,bchw->bhw", w.to(feats.dtype), feats).float()
    if relu:
        cam = cam.clamp_min(0)
    if size is not None and cam.shape[-2:] != tuple(size):
        cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return cam


def _check_model(model: nn.Module, opts: dict) -> None:
    if not supports_cam(model):
        raise InterpError("CAM needs a model whose head is global-average-pool + linear "
                          "(forward_features + head); use 'gradcam' instead")


@register_method("cam", description="Class activation map: head weights times the last feature map (Zhou et al. 2016)",
                 signed=False, cost="fast", needs_gradients=False, check_model=_check_model)
def _cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return class_activation_map(model, x, target=target, upsample=True)
