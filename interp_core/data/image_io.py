"""Safe image reading: every image enters the project through ``load_rgb``.

Size limits are checked from the header before any pixel is decoded (decompression bombs),
unusual modes (16-bit, float, palette, RGBA, grayscale) are converted to 8-bit RGB, EXIF rotation
is applied, and every failure becomes a one-line ``DataError`` naming the file.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

#: Largest image accepted, in pixels (about 16k x 16k). Larger files are refused before decoding.
MAX_PIXELS = 16384 * 16384
#: Smallest side accepted.
MIN_SIDE = 1

Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL raises DecompressionBombError above 2x this


@dataclass
class LoadedImage:
    """An 8-bit RGB image ``[H, W, 3]`` plus notes on any conversion applied (shown to the user)."""

    array: np.ndarray
    notes: list[str] = field(default_factory=list)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale integer or float data of any range to uint8 (16-bit by its dtype range, float by min/max)."""
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        hi = info.max if arr.max(initial=0) > 255 else 255
        return np.clip(arr.astype(np.float64) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
    if lo >= 0.0 and hi <= 1.0:
        return (arr * 255.0 + 0.5).astype(np.uint8)
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return ((arr - lo) / (hi - lo) * 255.0 + 0.5).astype(np.uint8)


def _rgb_from_pil(img: Image.Image, notes: list[str]) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        notes.append(f"{mode} image: transparency flattened onto white")
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"), dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        notes.append(f"{mode} ({arr.dtype}) image converted to 8-bit grayscale RGB")
        g = _to_uint8(arr)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in ("L", "1"):
        notes.append("grayscale image replicated to 3 channels")
    elif mode != "P":
        notes.append(f"{mode} image converted to RGB")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _from_tiff_array(source: Path | bytes, notes: list[str]) -> np.ndarray | None:
    """Multi-channel 16-bit/float TIFFs that PIL cannot open: read with tifffile when available."""
    try:
        import tifffile
    except ImportError:  # pragma: no cover
        return None
    try:
        arr = tifffile.imread(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception:
        return None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        return None
    if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
        raise DataError(f"image is {arr.shape[1]}x{arr.shape[0]} pixels, more than the limit of {MAX_PIXELS:,}")
    notes.append(f"TIFF {arr.dtype} image converted to 8-bit RGB")
    arr = _to_uint8(arr[..., :3])
    return np.repeat(arr, 3, axis=2) if arr.shape[-1] == 1 else arr


def load_rgb(source: str | Path | bytes | BinaryIO, *, name: str | None = None,
             max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read an image file or bytes as 8-bit RGB ``[H, W, 3]``; raise ``DataError`` on anything bad."""
    label = name or (str(source) if isinstance(source, (str, Path)) else "uploaded image")
    raw: Path | bytes
    if isinstance(source, (str, Path)):
        raw = Path(source)
        if not raw.is_file():
            raise DataError(f"{label}: no such image file")
        if raw.stat().st_size == 0:
            raise DataError(f"{label}: the file is empty (0 bytes)")
    else:
        raw = source if isinstance(source, bytes) else source.read()
        if len(raw) == 0:
            raise DataError(f"{label}: the file is empty (0 bytes)")
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(raw if isinstance(raw, Path) else io.BytesIO(raw))
            w, h = img.size
            if w * h > max_pixels:
                raise DataError(f"{label}: image is {w}x{h} pixels, more than the limit of {max_pixels:,}")
            if min(w, h) < MIN_SIDE:
                raise DataError(f"{label}: image has an empty side ({w}x{h})")
            img = ImageOps.exif_transpose(img)
            if img.size != (w, h):
                notes.append("EXIF orientation applied")
            img.load()
            arr = _rgb_from_pil(img, notes)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{label}: refused, too many pixels ({e})") from None
    except UnidentifiedImageError:
        arr = _from_tiff_array(raw, notes)
        if arr is None:
            raise DataError(f"{label}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError) as e:
        raise DataError(f"{label}: corrupt or truncated image ({type(e).__name__}: {str(e)[:120]})") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"{label}: unexpected decoded shape {arr.shape}")
    return LoadedImage(np.array(arr, dtype=np.uint8, order="C", copy=True), notes)


def load_mask(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask PNG as bool ``[H, W]`` (nonzero = evidence); check its size against the image."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise DataError(f"{path}: mask is {w}x{h} pixels, more than the limit")
            arr = np.asarray(img.convert("L") if img.mode not in ("L", "1", "I", "I;16", "F") else img)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: unreadable mask ({type(e).__name__})") from None
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if expected_hw is not None and tuple(arr.shape[:2]) != tuple(expected_hw):
        raise DataError(f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} but its image is "
                        f"{expected_hw[1]}x{expected_hw[0]}")
    return arr != 0
