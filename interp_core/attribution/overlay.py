"""Heatmap overlays as RGB arrays, shared by the CLI (``explain --out x.png``) and the dashboard.

Values are mapped to colours on a range ``[vmin, vmax]``: by default ``[0, p]`` for a
non-negative map and ``[-p, p]`` for a signed one, ``p`` the ``clip_percentile``-th percentile of
``|a|`` (99 by default, METHODS.md 1), so a few extreme pixels do not wash out the rest. Passing
the same ``vmin``/``vmax`` to several overlays (see ``shared_range``) puts maps of several models
on one colour scale with one colour bar. Colormaps are matplotlib's (only its colormap registry
is used; no figure, no backend).
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

from ..errors import InterpError

ArrayLike = Union[np.ndarray, torch.Tensor]
COLORMAPS = ("jet", "turbo", "viridis", "inferno", "magma", "hot", "gray", "RdBu_r", "bwr", "coolwarm")
"""Suggested colormaps for the UI (any matplotlib name works); the last three are diverging, for signed maps."""


def overlay(image: ArrayLike, attribution: ArrayLike, *, cmap: str = "jet", alpha: float = 0.5,
            clip_percentile: float | None = 99.0, vmin: float | None = None, vmax: float | None = None,
            mask: ArrayLike | None = None, contour_color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """``(1 - alpha) * image + alpha * cmap(scaled attribution)`` as uint8 ``[H, W, 3]``.

    ``image``: a tensor ``[3, H, W]`` or an array ``[H, W, 3]`` (uint8, or float in [0, 1]);
    grayscale ``[H, W]`` also works. ``attribution``: ``[H, W]``. ``vmin``/``vmax`` default to
    ``display_range(attribution, clip_percentile)``; values outside are clipped. A constant map
    (``vmax <= vmin``) gets the colormap's lowest colour everywhere. ``mask``: optional ``[H, W]``
    evidence mask whose outline (``mask_contour``) is drawn in ``contour_color``.
    """
    img = to_rgb_float(image)
    a = _map_to_numpy(attribution, "attribution")
    if a.shape != img.shape[:2]:
        raise InterpError(f"attribution shape {list(a.shape)} does not match the image size {list(img.shape[:2])}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise InterpError(f"alpha must be in [0, 1], got {alpha}")
    lo, hi = display_range(a, clip_percentile)
    lo = lo if vmin is None else float(vmin)
    hi = hi if vmax is None else float(vmax)
    heat = colorize(scale_to_unit(a, lo, hi), cmap)
    out = (1.0 - alpha) * img + alpha * heat
    rgb = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    if mask is not None:
        m = _map_to_numpy(mask, "mask")
        if m.shape != rgb.shape[:2]:
            raise InterpError(f"mask shape {list(m.shape)} does not match the image size {list(rgb.shape[:2])}")
        rgb = draw_contour(rgb, mask_contour(m), contour_color)
    return rgb


def display_range(attribution: ArrayLike, clip_percentile: float | None = 99.0) -> tuple[float, float]:
    """``(0, p)`` for a non-negative map, ``(-p, p)`` for a signed one; ``p`` = percentile of ``|a|`` (max if None)."""
    a = _map_to_numpy(attribution, "attribution", any_shape=True)
    mag = np.abs(a)
    if mag.size == 0:
        return 0.0, 0.0
    if clip_percentile is None:
        p = float(mag.max())
    elif 0.0 < float(clip_percentile) <= 100.0:
        p = float(np.percentile(mag, float(clip_percentile)))
    else:
        raise InterpError(f"clip_percentile must be in (0, 100] or None, got {clip_percentile}")
    return (-p if (a < 0).any() else 0.0), p


def shared_range(attributions: Sequence[ArrayLike], clip_percentile: float | None = 99.0) -> tuple[float, float]:
    """One ``(vmin, vmax)`` for several maps (e.g. models side by side): ``display_range`` of all values pooled."""
    if len(attributions) == 0:
        raise InterpError("shared_range needs at least one map")
    pooled = np.concatenate([_map_to_numpy(a, "attribution", any_shape=True).ravel() for a in attributions])
    return display_range(pooled, clip_percentile)


def scale_to_unit(a: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """``clip((a - vmin) / (vmax - vmin), 0, 1)``; all zeros when ``vmax <= vmin`` (no NaN)."""
    if not (np.isfinite(vmin) and np.isfinite(vmax)):
        raise InterpError(f"vmin and vmax must be finite, got {vmin}, {vmax}")
    if vmax <= vmin:
        return np.zeros_like(a, dtype=np.float64)
    return np.clip((a.astype(np.float64) - vmin) / (vmax - vmin), 0.0, 1.0)


def colorize(t: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """Colours ``[..., 3]`` in [0, 1] of values ``t`` in [0, 1] under the matplotlib colormap ``cmap``."""
    t = np.asarray(t, dtype=np.float64)
    return np.asarray(_colormap(cmap)(t.ravel()))[:, :3].reshape(*t.shape, 3)


def colorbar_image(cmap: str = "jet", height: int = 256, width: int = 16, vertical: bool = True) -> np.ndarray:
    """A colour bar as uint8 ``[height, width, 3]``: high values at the top (vertical) or right (horizontal)."""
    if int(height) < 1 or int(width) < 1:
        raise InterpError(f"colour bar size must be positive, got {height}x{width}")
    if vertical:
        t = np.repeat(np.linspace(1.0, 0.0, int(height))[:, None], int(width), axis=1)
    else:
        t = np.repeat(np.linspace(0.0, 1.0, int(width))[None, :], int(height), axis=0)
    return np.rint(colorize(t, cmap) * 255.0).astype(np.uint8)


def mask_contour(mask: ArrayLike) -> np.ndarray:
    """Boundary pixels ``[H, W]`` (bool) of a mask (nonzero = inside): inside pixels with a 4-neighbour outside.

    The image border does not count as outside, so a mask touching the edge is not framed.
    """
    m = _map_to_numpy(mask, "mask") != 0
    p = np.pad(m, 1, mode="edge")
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~interior


def draw_contour(rgb: np.ndarray, contour: ArrayLike, color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A copy of uint8 ``rgb`` ``[H, W, 3]`` with the ``contour`` pixels set to ``color``."""
    c = _map_to_numpy(contour, "contour").astype(bool)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or c.shape != rgb.shape[:2]:
        raise InterpError(f"contour {list(c.shape)} and image {list(rgb.shape)} do not match")
    out = np.array(rgb, dtype=np.uint8, copy=True)
    out[c] = np.asarray(color, dtype=np.uint8)
    return out


def to_rgb_float(image: ArrayLike) -> np.ndarray:
    """An image as float64 ``[H, W, 3]`` in [0, 1]: tensors are read channels-first, arrays channels-last."""
    is_tensor = isinstance(image, torch.Tensor)
    if not (is_tensor or isinstance(image, np.ndarray)):
        raise InterpError(f"expected an image tensor [3, H, W] or array [H, W, 3], got {type(image).__name__}")
    a = image.detach().cpu().numpy() if is_tensor else np.asarray(image)
    if a.ndim == 3:
        chw = a.shape[0] in (1, 3) and (is_tensor or a.shape[-1] not in (1, 3))
        if chw:
            a = np.moveaxis(a, 0, -1)
        if a.shape[-1] == 1:
            a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise InterpError(f"expected an image tensor [3, H, W] or array [H, W, 3], got shape {list(image.shape)}")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise InterpError(f"expected a uint8 image or a float image in [0, 1], got dtype {a.dtype}")
    if a.size and not (np.isfinite(a).all() and a.min() >= -1e-3 and a.max() <= 1.0 + 1e-3):
        raise InterpError("a float image must hold finite values in [0, 1]; pass uint8 for 0-255 images")
    return np.clip(a.astype(np.float64), 0.0, 1.0)


def _map_to_numpy(a: ArrayLike, what: str, any_shape: bool = False) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().float().numpy()
    elif not isinstance(a, np.ndarray):
        raise InterpError(f"expected the {what} as a tensor or array, got {type(a).__name__}")
    if not any_shape:
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 2:
            raise InterpError(f"expected the {what} as an [H, W] map, got shape {list(a.shape)}")
    if a.dtype == bool:
        a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InterpError(f"the {what} contains NaN or infinite values")
    return a


def _colormap(name: str):
    import matplotlib  # lazy: only the colormap registry is needed, and importing it costs ~0.2 s

    try:
        return matplotlib.colormaps[name]
    except (KeyError, ValueError, TypeError):
        raise InterpError(f"unknown colormap {name!r}; e.g. {', '.join(COLORMAPS)}") from None
