"""Grad-CAM (Selvaraju et al. 2017) via Captum ``LayerGradCam``, upsampled to the input size.

``GradCAM_t = ReLU(sum_k a_k F_k)``, ``a_k = mean_{i,j} d f_t / d F_k[i, j]``, on the last
convolutional feature map ``F`` (``model.cam_layer``, or the ``layer`` option), then bilinear
upsampling (``LayerAttribution.interpolate``, ``align_corners=False``) to ``[H, W]``. For a
GAP + linear head ``a_k = w_{t,k} / (h w)``, so Grad-CAM is CAM divided by ``h w``.

Models with a ``cam_reshape`` method (timm/torchvision models, :mod:`interp_core.models.zoo`):
the layer's output and its gradient are both passed through it first (a ViT's tokens on the
patch grid, class and register tokens dropped; Swin's ``[B, H, W, C]`` permuted), as
pytorch-grad-cam's ``reshape_transform`` does, then the same formula. ``layer`` may be a module
or a name as in ``named_modules()`` (of the timm/torchvision network for those models).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from ..errors import InterpError
from .registry import register_method


def target_layer(model: nn.Module, layer: nn.Module | str | None = None) -> nn.Module:
    """``layer`` if given (a module, or its name), else ``model.cam_layer``; an ``InterpError``
    when neither is a module of the model."""
    if isinstance(layer, str):
        if hasattr(model, "resolve_layer"):
            return model.resolve_layer(layer)
        modules = dict(model.named_modules())
        if layer not in modules:
            raise InterpError(f"no module {layer!r} in the model (names as in named_modules())")
        return modules[layer]
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
def _gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, layer: nn.Module | str | None) -> torch.Tensor:
    if callable(getattr(model, "cam_reshape", None)):
        cam = grad_cam_reshaped(model, x, target, target_layer(model, layer), model.cam_reshape)
        return LayerAttribution.interpolate(cam[:, None], tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    cam = LayerGradCam(model, target_layer(model, layer)).attribute(x.detach().requires_grad_(), target=target,
                                                                    relu_attributions=True)
    if not isinstance(cam, torch.Tensor) or cam.dim() != 4:
        raise InterpError("Grad-CAM needs a layer whose output is a [B, C, h, w] feature map")
    return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]


def grad_cam_reshaped(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: nn.Module,
                      reshape: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``ReLU(sum_k a_k R(A)_k)``, ``a_k = mean_{i,j} R(dA)_k[i, j]`` at the layer's resolution
    ``[B, h, w]``, where ``A`` is ``layer``'s output, ``dA = d sum_b f_{t_b}(x_b) / dA`` and ``R``
    is ``reshape`` (to ``[B, C, h, w]``). Only the activation's gradient is computed
    (``torch.autograd.grad``), never a parameter's."""
    store: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        store.append(out[0] if isinstance(out, (tuple, list)) else out)

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))
            if not store:
                raise InterpError("the Grad-CAM layer was not called in the forward pass; choose another layer")
            act = store[-1]
            score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
            (grad,) = torch.autograd.grad(score, act)
    finally:
        handle.remove()
    a, g = reshape(act.detach()).float(), reshape(grad).float()
    weights = g.mean(dim=(2, 3), keepdim=True)
    return (weights * a).sum(1).clamp_min(0)
