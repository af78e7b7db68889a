"""Grad-CAM (Selvaraju et al. 2017) via Captum ``LayerGradCam``, upsampled to the input size.

``GradCAM_t = ReLU(sum_k a_k F_k)``, ``a_k = mean_{i,j} d f_t / d F_k[i, j]``, on the last
convolutional feature map ``F`` (``model.cam_layer``, or the ``layer`` option), then bilinear
upsampling (``LayerAttribution.interpolate``, ``align_corners=False``) to ``[H, W]``. For a
GAP + linear head ``a_k = w_{t,k} / (h w)``, so Grad-CAM is CAM divided by ``h w``.
"""
from __future__ import annotations

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from ..errors import InterpError
from .registry import register_method


def target_layer(model: nn.Module, layer: nn.Module | None = None) -> nn.Module:
    """``layer`` if given, else ``model.cam_layer``; an ``InterpError`` when neither is a module."""
    if layer is None:
        layer = getattr(model, "cam_layer", None)
        if not isinstance(layer, nn.Module):
            raise InterpError("Grad-CAM needs the model's last conv layer: the model has no 'cam_layer'; "
                              "pass layer=<module>")
        return layer
    if not isinstance(layer, nn.Module) or not any(m is layer for m in model.modules()):
        raise InterpError("option 'layer' must be a submodule of the model")
    return layer


def _check_model(model: nn.Module, opts: dict) -> None:
    target_layer(model, opts.get("layer"))


@register_method("gradcam", description="Class-weighted last conv feature map, upsampled (Selvaraju et al. 2017)",
                 signed=False, cost="fast", needs_gradients=True, options={"layer": None}, check_model=_check_model)
def _gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, layer: nn.Module | None) -> torch.Tensor:
    cam = LayerGradCam(model, target_layer(model, layer)).attribute(x.detach().requires_grad_(), target=target,
                                                                    relu_attributions=True)
    if not isinstance(cam, torch.Tensor) or cam.dim() != 4:
        raise InterpError("Grad-CAM needs a layer whose output is a [B, C, h, w] feature map")
    return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
