"""Whole-slide image files (``.svs``, ``.ndpi``, ``.mrxs``, tiled TIFF, ...) read through OpenSlide.

``OpenSlideReader`` is a ``slide_io.SlideReader`` over one pyramid level of a whole-slide file: its
``size`` and ``read_region`` are in that level's pixels, tiles are read lazily (nothing but the
requested region is decoded), and ``thumbnail`` is built from the lowest-resolution level that
still gives the requested block size, so a tissue mask never reads the full-resolution level
of a pyramidal file.

The OpenSlide handle is opened lazily, once per process: a reader handed to DataLoader workers
(forked or pickled) opens its own handle in each worker instead of sharing the parent's.
``openslide`` is imported only when a whole-slide file is opened, so the rest of the package works
without it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._utils.io import atomic_path
from ..errors import DataError, InterpError
from .reader import ArraySlide, block_mean_thumbnail

#: File suffixes that are tried with OpenSlide (when ``detect_format`` recognises the file).
WSI_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".tif", ".tiff", ".scn", ".vms", ".vmu", ".bif", ".svslide")
#: Relative tolerance when matching a pyramid level's downsample to an integer block size
#: (scanners store downsamples such as 4.0003 for a nominal 4).


def _openslide() -> Any:
    try:
        import openslide
    except ImportError as e:  # the Python package or its shared library is missing
        raise InterpError(f"reading whole-slide files needs openslide-python and openslide-bin "
                          f"(pip install -r requirements.txt): {e}") from None
    return openslide


def detect_format(path: str | Path) -> str | None:
    """OpenSlide's vendor name for ``path`` (e.g. ``"aperio"``, ``"generic-tiff"``), or None if it cannot read it."""
    openslide = _openslide()
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # noqa: BLE001 - any failure means "not a slide OpenSlide reads"
        return None


def is_wsi_path(path: str | Path) -> bool:
    """True when ``path`` has a whole-slide suffix and OpenSlide recognises the file."""
    p = Path(path)
    return p.suffix.lower() in WSI_SUFFIXES and p.is_file() and detect_format(p) is not None


def find_slides(root: str | Path, *, limit: int = 500) -> list[Path]:
    """Files under ``root`` (recursively, hidden folders skipped) with a whole-slide suffix, sorted, at most
    ``limit``; not opened (a listing for a file picker: ``open_slide`` says if one is unreadable)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if p.suffix.lower() in WSI_SUFFIXES and p.is_file():
            found.append(p)
            if len(found) >= limit:
                break
    return found


class OpenSlideReader:
    """A ``SlideReader`` over pyramid level ``level`` of a whole-slide file.

    ``size``: ``(width, height)`` of that level. ``read_region(x, y, w, h)``: uint8 ``[h, w, 3]``
    with ``(x, y)`` in that level's pixels; pixels outside the slide (transparent in OpenSlide)
    are composited onto the slide's background colour (white unless the file says otherwise).
    ``thumbnail(d)``: see its docstring. ``mpp``: microns per pixel at this level, or None.
    """

    def __init__(self, path: str | Path, *, level: int = 0):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such slide file")
        self._handle: Any = None
        self._pid = -1
        h = self._slide()  # open now so a bad file fails here, with its name
        self.vendor = str(h.properties.get("openslide.vendor", detect_format(self.path) or "unknown"))
        self.level_dimensions: list[tuple[int, int]] = [(int(w), int(hh)) for w, hh in h.level_dimensions]
        self.level_downsamples: list[float] = [float(d) for d in h.level_downsamples]
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level < len(self.level_dimensions):
            levels = ", ".join(f"{i} ({w}x{hh})" for i, (w, hh) in enumerate(self.level_dimensions))
            raise InterpError(f"{self.path.name}: no pyramid level {level!r}; the levels are {levels}")
        self.level = int(level)
        self.background = _background_color(h.properties.get("openslide.background-color"))
        self.mpp_base = tuple(_float_or_none(h.properties.get(f"openslide.mpp-{a}")) for a in ("x", "y"))
        self.notes: list[str] = []

    # -- handle ---------------------------------------------------------------------------------
    def _slide(self) -> Any:
        """The OpenSlide handle of this process (reopened after a fork or unpickling)."""
        if self._handle is None or self._pid != os.getpid():
            openslide = _openslide()
            try:
                self._handle = openslide.OpenSlide(str(self.path))
            except openslide.OpenSlideUnsupportedFormatError:
                raise DataError(f"{self.path}: not a whole-slide format OpenSlide can read") from None
            except (openslide.OpenSlideError, OSError) as e:
                raise DataError(f"{self.path}: unreadable slide ({str(e)[:160]})") from None
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, -1
        return state

    def close(self) -> None:
        """Close the OpenSlide handle of this process (it is reopened if the reader is used again)."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle, self._pid = None, -1

    def __enter__(self) -> OpenSlideReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- geometry -------------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the chosen level."""
        return self.level_dimensions[self.level]

    @property
    def downsample(self) -> float:
        """The chosen level's downsample relative to level 0."""
        return self.level_downsamples[self.level]

    @property
    def mpp(self) -> tuple[float | None, float | None]:
        """Microns per pixel ``(x, y)`` at the chosen level (None when the file does not say)."""
        return tuple(None if m is None else m * self.downsample for m in self.mpp_base)  # type: ignore[return-value]

    def info(self) -> dict[str, Any]:
        """A JSON-ready description: file, vendor, levels (size, downsample), chosen level, mpp."""
        return {"file": str(self.path), "vendor": self.vendor, "level": self.level, "size": list(self.size),
                "mpp": list(self.mpp), "levels": [{"size": [w, h], "downsample": d} for (w, h), d
                                                  in zip(self.level_dimensions, self.level_downsamples)]}

    # -- reading --------------------------------------------------------------------------------
    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 ``[h, w, 3]`` of the chosen level at ``(x, y)``; outside the slide is the background colour."""
        return self._read(self.level, x, y, w, h)

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        if w < 1 or h < 1:
            raise InterpError(f"region size must be positive, got {w}x{h}")
        ds = self.level_downsamples[level]
        openslide = _openslide()
        try:
            rgba = np.asarray(self._slide().read_region((int(round(x * ds)), int(round(y * ds))), level,
                                                        (int(w), int(h))))
        except openslide.OpenSlideError as e:
            raise DataError(f"{self.path}: reading a {w}x{h} region at ({x}, {y}) failed ({str(e)[:160]})") from None
        alpha = rgba[..., 3]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgba[..., :3])
        a = alpha[..., None].astype(np.uint16)
        bg = np.asarray(self.background, np.uint16)
        return ((rgba[..., :3].astype(np.uint16) * a + bg * (255 - a) + 127) // 255).astype(np.uint8)

    def thumbnail_level(self, d: int) -> tuple[int, int]:
        """``(level, k)``: the lowest-resolution level whose ``k x k`` blocks match ``d x d`` blocks of the chosen level.

        ``k = d * ds_chosen / ds_level`` must be a positive integer up to scanner jitter (the
        rounding error summed over the slide's blocks under half a pixel); the chosen level itself
        always qualifies with ``k = d`` (``thumbnail`` then resamples a coarser level instead).
        """
        target = d * self.downsample
        W, H = self.size
        blocks = max(-(-W // d), -(-H // d))
        best = (self.level, d)
        for j in range(self.level + 1, len(self.level_downsamples)):
            k = target / self.level_downsamples[j]
            kr = round(k)
            # k must be whole up to scanner jitter: the rounding error summed over the slide's
            # blocks stays under half a pixel of that level, so no thumbnail pixel drifts
            if kr >= 1 and abs(k - kr) * blocks <= 0.5:
                best = (j, int(kr))
        return best

    def thumbnail(self, d: int) -> np.ndarray:
        """uint8 ``[ceil(H/d), ceil(W/d), 3]`` (``H, W`` of the chosen level): ``d x d`` block means.

        Read from ``thumbnail_level(d)``, the lowest-resolution pyramid level that holds whole
        blocks, as ``k x k`` block means of that level, in strips (bounded memory). On a pyramid
        whose levels are themselves block means this equals the block mean of the chosen level up
        to rounding (a grey level or so).
        """
        d = int(d)
        if d < 1:
            raise InterpError(f"downsample must be a positive integer, got {d}")
        W, H = self.size
        level, k = self.thumbnail_level(d)
        out_size = (-(-W // d), -(-H // d))
        target = d * self.downsample
        coarser = [j for j in range(self.level + 1, len(self.level_downsamples))
                   if self.level_downsamples[j] <= target * (1 + 1e-9)]
        if level == self.level and coarser:
            # no level holds whole blocks: resample the lowest-resolution level finer than the
            # thumbnail (as OpenSlide's get_thumbnail does) rather than decode the chosen level
            return self._resampled_thumbnail(coarser[-1], target / self.level_downsamples[coarser[-1]], out_size)
        return block_mean_thumbnail(lambda x, y, w, h: self._read(level, x, y, w, h), out_size, k)

    def _resampled_thumbnail(self, level: int, ratio: float, out_size: tuple[int, int]) -> np.ndarray:
        """Thumbnail ``out_size`` from ``level`` whose pixels are ``ratio`` (> 1, not whole) to a
        thumbnail pixel: the level read whole, padded white to ``out_size * ratio`` so the grid
        lines up with the block grid, and box-filtered (area mean) to ``out_size``."""
        from PIL import Image
        wt, ht = out_size
        pw, ph = math.ceil(wt * ratio), math.ceil(ht * ratio)
        region = self._read(level, 0, 0, pw, ph)
        return np.asarray(Image.fromarray(region).resize((wt, ht), Image.BOX), dtype=np.uint8)


def _float_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _background_color(hexcode: Any) -> tuple[int, int, int]:
    """The slide's ``openslide.background-color`` (``RRGGBB``) as RGB; white when absent or malformed."""
    if isinstance(hexcode, str) and len(hexcode) == 6:
        try:
            return int(hexcode[0:2], 16), int(hexcode[2:4], 16), int(hexcode[4:6], 16)
        except ValueError:
            pass
    return 255, 255, 255


# -- writing ---------------------------------------------------------------------------------------
def pyramid_levels(image: np.ndarray, n_levels: int) -> list[np.ndarray]:
    """``[image, 2x2 block mean of it, ...]``, ``n_levels`` arrays (uint8, rounded; odd edges padded white)."""
    levels = [np.ascontiguousarray(image)]
    for _ in range(1, n_levels):
        prev = levels[-1]
        h, w = prev.shape[:2]
        if min(h, w) < 2:
            break
        levels.append(block_mean_thumbnail(ArraySlide(prev).read_region, (-(-w // 2), -(-h // 2)), 2))
    return levels


def write_pyramid_tiff(path: str | Path, image: np.ndarray, *, n_levels: int = 3, tile: int = 128,
                       mpp: float | None = None) -> Path:
    """Write uint8 RGB ``image`` as a tiled, pyramidal TIFF that OpenSlide reads as ``generic-tiff``.

    Level ``i`` is the ``2^i`` block mean (``pyramid_levels``), each a tiled page of the main IFD
    chain (OpenSlide ignores SubIFDs), level 0 first, the others marked reduced-resolution;
    deflate-compressed with horizontal differencing (lossless, and needs no extra codec
    package). ``mpp``: microns per pixel of level 0, stored as the TIFF resolution in
    centimetres, which OpenSlide reports as ``openslide.mpp-x/y``. Written to a temporary file
    and renamed, so a reader never sees a partial slide. ``tile`` must be a multiple of 16 (TIFF).
    """
    import tifffile
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InterpError(f"write_pyramid_tiff needs a uint8 RGB image [H, W, 3], got {arr.dtype} {list(arr.shape)}")
    if tile < 16 or tile % 16:
        raise InterpError(f"TIFF tiles must be a positive multiple of 16, got {tile}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    res = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as tw:
        for i, level in enumerate(pyramid_levels(arr, n_levels)):
            tw.write(level, tile=(tile, tile), photometric="rgb", compression="zlib", predictor=True,
                     subfiletype=0 if i == 0 else 1, metadata=None, software="interp_core",
                     **(res if i == 0 else {}))
    return path


def write_sample_slide(path: str | Path = "sample_data/slides/ihc.tiff") -> Path:
    """The shipped sample slide: scikit-image's immunohistochemistry image (512x512, offline) as a
    3-level pyramidal TIFF (``write_pyramid_tiff``, 128-pixel tiles). Deterministic."""
    from skimage import data
    img = np.ascontiguousarray(data.immunohistochemistry()[..., :3]).astype(np.uint8)
    return write_pyramid_tiff(path, img, n_levels=3, tile=128)
