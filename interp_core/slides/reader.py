"""Slide readers: the ``SlideReader`` protocol, the in-memory ``ArraySlide`` and block-mean thumbnails.

The bottom layer under ``slide`` (tiling, explaining, stitching) and ``wsi`` (OpenSlide files,
pyramid writing): both import from here, neither from the other's internals.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from ..errors import InterpError

#: Value of pixels outside the slide (white glass).
BACKGROUND = 255


# -- readers ---------------------------------------------------------------------------------
@runtime_checkable
class SlideReader(Protocol):
    """A large RGB image read region by region.

    ``size``: ``(width, height)`` in pixels. ``read_region(x, y, w, h)``: uint8 ``[h, w, 3]`` with
    the top-left corner at ``(x, y)``; pixels outside the image are white (255). A reader may also
    offer ``thumbnail(downsample) -> uint8 [ceil(H/d), ceil(W/d), 3]`` (e.g. from a pyramid level);
    ``read_thumbnail`` uses it when present.
    """

    @property
    def size(self) -> tuple[int, int]: ...

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray: ...


class ArraySlide(SlideReader):
    """A ``SlideReader`` over an in-memory uint8 image ``[H, W, 3]`` (not copied)."""

    def __init__(self, array: np.ndarray, *, notes: list[str] | None = None):
        if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            desc = f"{array.dtype} array of shape {list(array.shape)}" if isinstance(array, np.ndarray) \
                else type(array).__name__
            raise InterpError(f"a slide must be an 8-bit RGB image [H, W, 3] (read it with load_rgb); got {desc}")
        if array.shape[0] < 1 or array.shape[1] < 1:
            raise InterpError(f"the slide image is empty ({array.shape[1]}x{array.shape[0]})")
        self.array = array
        self.notes = list(notes or [])

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return int(self.array.shape[1]), int(self.array.shape[0])

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 ``[h, w, 3]`` at ``(x, y)``; the part outside the image is white."""
        if w < 1 or h < 1:
            raise InterpError(f"region size must be positive, got {w}x{h}")
        W, H = self.size
        if x >= 0 and y >= 0 and x + w <= W and y + h <= H:
            return self.array[y:y + h, x:x + w].copy()
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        out = np.full((h, w, 3), BACKGROUND, np.uint8)
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self.array[y0:y1, x0:x1]
        return out



def block_mean_thumbnail(read_region: Callable[[int, int, int, int], np.ndarray], out_size: tuple[int, int],
                         k: int) -> np.ndarray:
    """uint8 ``[ht, wt, 3]`` (``out_size = (wt, ht)``): pixel ``(i, j)`` is the rounded mean of the
    ``k x k`` block of ``read_region`` at ``(j*k, i*k)``.

    Reads horizontal strips of at most about 32 MB of float pixels, so memory stays bounded on
    large slides; ``read_region`` pads past the edge (white), and the padding enters the mean.
    """
    wt, ht = out_size
    rows_per_strip = max(1, (32 << 20) // (wt * k * k * 3 * 4))
    out = np.empty((ht, wt, 3), np.uint8)
    for r0 in range(0, ht, rows_per_strip):
        n = min(rows_per_strip, ht - r0)
        strip = np.asarray(read_region(0, r0 * k, wt * k, n * k)).astype(np.float32)
        out[r0:r0 + n] = np.rint(strip.reshape(n, k, wt, k, 3).mean(axis=(1, 3))).astype(np.uint8)
    return out


def slide_info(reader: Any, path: Path) -> dict[str, Any]:
    """What a result records of the slide it came from: the reader's ``info()`` (a plain image's
    stand-in when it has none) plus the level-0 size."""
    info = reader.info() if hasattr(reader, "info") else {"file": str(path), "vendor": "image", "level": 0,
                                                          "size": list(reader.size), "mpp": [None, None]}
    dims = getattr(reader, "level_dimensions", None)
    info["level0_size"] = list(dims[0]) if dims else list(reader.size)
    return info
