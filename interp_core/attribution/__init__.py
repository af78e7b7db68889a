"""Attribution maps ``S(x)`` ``[B, H, W]`` (METHODS.md 1), their normalisation and their display.

``attribute(model, x, method, target=None, **options)`` runs any method of ``METHODS``; the method
modules are imported here in display order, which registers them.
"""
from __future__ import annotations

# Registration, in display order.
from . import gradient, smoothgrad, gradient_shap, guided_backprop, occlusion, gradcam, cam  # noqa: F401
from .api import attribute, predict_and_attribute
from .baselines import gaussian_blur
from .cam import class_activation_map, supports_cam
from .model_state import attribution_state
from .normalize import clip_percentile, normalize_max, percentile
from .overlay import (COLORMAPS, colorbar_image, colorize, display_range, draw_contour, mask_contour, overlay,
                      scale_to_unit, shared_range)
from .registry import IMAGES_PER_PASS, METHODS, MethodInfo, applicable_methods, get_method, list_methods, seed_option

__all__ = [
    "COLORMAPS", "IMAGES_PER_PASS", "METHODS", "MethodInfo", "applicable_methods", "attribute", "attribution_state",
    "class_activation_map", "clip_percentile", "colorbar_image", "colorize", "display_range", "draw_contour",
    "gaussian_blur", "get_method", "list_methods", "mask_contour", "normalize_max", "overlay", "percentile", "predict_and_attribute",
    "scale_to_unit", "seed_option", "shared_range", "supports_cam",
]
