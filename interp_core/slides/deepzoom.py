"""Deep-zoom tiles of whole-slide files and of the maps drawn over them, for a browser viewer.

A viewer (OpenSeadragon) asks for tile ``(level, col, row)`` of a Deep Zoom pyramid: level
``max_level`` is the slide at full resolution (level 0 of the file), every level above halves
it, tiles are ``tile_size`` pixels plus ``overlap`` pixels shared with each neighbour
(Microsoft's Deep Zoom layout, as ``openslide.deepzoom.DeepZoomGenerator`` produces it). Tiles
are made when asked, from the pyramid level of the file closest to the requested scale, and kept
in a bounded in-memory cache (``TileCache``): nothing is rendered in advance.

Overlay tiles (``render_overlay_tile``) cover the same region as the slide tile of the same
``(level, col, row)``; each pixel is the map value at the pixel's centre (nearest neighbour, so
a map is shown at the resolution it was computed and never smoothed), coloured with a matplotlib
colour map between ``vmin`` and ``vmax``, transparent where the map is NaN (no computed tile).

Safety (``slides.roots.SlideRoots``, through ``slides.tile_service.TileService``, which serves these
tiles by id): a slide is served only if its real path (symbolic links resolved) lies
under one of the configured roots; ``..`` segments are refused outright, so a dashboard shared
behind a proxy cannot be made to read arbitrary files of its host.
"""
from __future__ import annotations

import functools
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InterpError
from .wsi import _openslide

#: Deep Zoom geometry served to the viewer.
DZ_TILE = 254
DZ_OVERLAP = 1
#: Default bytes kept by a ``TileCache``.
CACHE_BYTES = 96 << 20
#: Overlay colour maps offered (matplotlib names).
COLORMAPS = ("inferno", "viridis", "magma", "plasma", "RdBu_r", "coolwarm", "Greens", "Reds", "gray")


class TileRequestError(InterpError):
    """A malformed or out-of-range tile request."""


# -- tile coordinates --------------------------------------------------------------------------
def parse_tile_request(level: Any, col: Any, row: Any) -> tuple[int, int, int]:
    """``(level, col, row)`` as non-negative ints, or ``TileRequestError`` (strings of digits only)."""
    out = []
    for name, v in (("level", level), ("column", col), ("row", row)):
        if isinstance(v, bool):
            raise TileRequestError(f"tile {name} must be a non-negative integer, got {v!r}")
        if isinstance(v, (int, np.integer)):
            iv = int(v)
        elif isinstance(v, str) and v.isascii() and v.isdigit() and len(v) <= 9:
            iv = int(v)
        else:
            raise TileRequestError(f"tile {name} must be a non-negative integer, got {str(v)[:40]!r}")
        if iv < 0:
            raise TileRequestError(f"tile {name} must be a non-negative integer, got {iv}")
        out.append(iv)
    return out[0], out[1], out[2]


class DeepZoomSlide:
    """Deep Zoom tiles of one OpenSlide-readable file (``openslide.deepzoom.DeepZoomGenerator``).

    ``info()`` is what the viewer needs (size, levels, tile size, overlap, microns per pixel);
    ``tile(level, col, row)`` is an RGB ``PIL.Image``; ``tile_region(level, col, row)`` the
    ``(x, y, w, h)`` it covers in that Deep Zoom level's pixels. Thread-safe (one lock around
    OpenSlide calls).
    """

    def __init__(self, path: str | Path, *, tile_size: int = DZ_TILE, overlap: int = DZ_OVERLAP):
        openslide = _openslide()
        from openslide.deepzoom import DeepZoomGenerator
        self.path = Path(path)
        try:
            self._slide = openslide.open_slide(str(self.path))
        except Exception as e:  # noqa: BLE001 - any failure: not a readable slide
            raise InterpError(f"{self.path.name}: not a slide OpenSlide can read ({str(e)[:120]})") from None
        self.dz = DeepZoomGenerator(self._slide, tile_size=tile_size, overlap=overlap, limit_bounds=False)
        self.tile_size, self.overlap = int(tile_size), int(overlap)
        self._lock = threading.Lock()
        props = self._slide.properties
        mpp = props.get("openslide.mpp-x")
        try:
            self.mpp = float(mpp) if mpp is not None and float(mpp) > 0 else None
        except ValueError:
            self.mpp = None
        self.size = tuple(int(v) for v in self._slide.dimensions)

    @property
    def max_level(self) -> int:
        """The full-resolution Deep Zoom level."""
        return int(self.dz.level_count) - 1

    def info(self) -> dict[str, Any]:
        """JSON for the viewer: ``width``, ``height``, ``tile_size``, ``overlap``, ``max_level``, ``mpp``."""
        return {"width": self.size[0], "height": self.size[1], "tile_size": self.tile_size, "overlap": self.overlap,
                "max_level": self.max_level, "mpp": self.mpp, "name": self.path.name}

    def check(self, level: int, col: int, row: int) -> None:
        """``TileRequestError`` unless ``(level, col, row)`` names a tile of this pyramid."""
        if not 0 <= level <= self.max_level:
            raise TileRequestError(f"no Deep Zoom level {level}; levels are 0..{self.max_level}")
        cols, rows = self.dz.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise TileRequestError(f"no tile ({col}, {row}) at level {level}; it has {cols}x{rows} tiles")

    def tile_region(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """``(x, y, w, h)`` in level ``level``'s pixels of tile ``(col, row)``, overlap included."""
        self.check(level, col, row)
        lw, lh = self.dz.level_dimensions[level]
        t, o = self.tile_size, self.overlap
        x0 = col * t - (o if col > 0 else 0)
        y0 = row * t - (o if row > 0 else 0)
        x1 = min(lw, (col + 1) * t + o)
        y1 = min(lh, (row + 1) * t + o)
        return x0, y0, x1 - x0, y1 - y0

    def level_scale(self, level: int) -> float:
        """Level-0 pixels per pixel of Deep Zoom level ``level``."""
        return float(self.dz.level_dimensions[-1][0]) / float(self.dz.level_dimensions[level][0]) \
            if self.dz.level_dimensions[level][0] else 1.0

    def tile(self, level: int, col: int, row: int) -> Any:
        """Tile ``(col, row)`` of Deep Zoom level ``level`` as an RGB ``PIL.Image``."""
        self.check(level, col, row)
        with self._lock:
            img = self.dz.get_tile(level, (col, row))
        return img.convert("RGB")

    def close(self) -> None:
        """Close the OpenSlide handle."""
        self._slide.close()


def encode_image(img: Any, fmt: str = "jpeg", quality: int = 85) -> bytes:
    """``img`` (PIL image or uint8 array) encoded as JPEG, PNG or lossless WebP bytes."""
    from PIL import Image
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    elif fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    elif fmt == "webp":  # lossless: exact colours and alpha, about twice as fast as PNG and half the size
        img.save(buf, format="WEBP", lossless=True, method=0)
    else:
        raise TileRequestError(f"tile format must be jpeg, png or webp, got {fmt!r}")
    return buf.getvalue()


class TileCache:
    """A thread-safe LRU cache of encoded tiles bounded in bytes (``max_bytes``)."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Any, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Any) -> bytes | None:
        with self._lock:
            v = self._items.get(key)
            if v is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return v

    def put(self, key: Any, value: bytes) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._items[key] = value
            self._bytes += len(value)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, v = self._items.popitem(last=False)
                self._bytes -= len(v)

    def __len__(self) -> int:
        return len(self._items)


# -- overlays ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def colormap_lut(name: str) -> np.ndarray:
    """uint8 ``[256, 3]`` lookup table of matplotlib colour map ``name`` (cached; do not modify it)."""
    if name not in COLORMAPS:
        raise TileRequestError(f"unknown colour map {name!r}; choose one of {', '.join(COLORMAPS)}")
    from matplotlib import colormaps
    return (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def sample_map(values: np.ndarray, map_scale: float, region: tuple[int, int, int, int], scale: float) -> np.ndarray:
    """float ``[h, w]``: ``values`` (a map whose pixel is ``map_scale`` level-0 pixels) sampled at the
    centres of the pixels of ``region = (x, y, w, h)`` of a level with ``scale`` level-0 pixels per
    pixel (nearest neighbour; NaN outside the map)."""
    x, y, w, h = region
    mh, mw = values.shape
    cx = ((np.arange(w) + x + 0.5) * scale / map_scale).astype(np.int64)
    cy = ((np.arange(h) + y + 0.5) * scale / map_scale).astype(np.int64)
    okx, oky = (cx >= 0) & (cx < mw), (cy >= 0) & (cy < mh)
    out = np.full((h, w), np.nan, np.float32)
    if okx.any() and oky.any():
        out[np.ix_(oky, okx)] = values[np.ix_(cy[oky], cx[okx])]
    return out


def colorize_rgba(values: np.ndarray, vmin: float, vmax: float, cmap: str) -> np.ndarray:
    """uint8 ``[h, w, 4]``: colour map of ``(v - vmin) / (vmax - vmin)`` clipped to [0, 1]; alpha 0 at NaN."""
    lut = colormap_lut(cmap)
    ok = np.isfinite(values)
    span = float(vmax) - float(vmin)
    t = np.clip((np.where(ok, values, vmin) - vmin) / (span if span > 0 else 1.0), 0.0, 1.0)
    rgba = np.zeros(values.shape + (4,), np.uint8)
    rgba[..., :3] = lut[np.rint(t * 255).astype(np.int64)]
    rgba[..., 3] = np.where(ok, 255, 0)
    return rgba


def render_overlay_tile(values: np.ndarray, map_scale: float, dz: DeepZoomSlide, level: int, col: int, row: int,
                        *, vmin: float, vmax: float, cmap: str) -> np.ndarray:
    """uint8 RGBA tile over slide tile ``(level, col, row)`` of ``dz`` (same size and region) showing
    ``values`` (see ``sample_map``, ``colorize_rgba``)."""
    region = dz.tile_region(level, col, row)
    return colorize_rgba(sample_map(values, map_scale, region, dz.level_scale(level)), vmin, vmax, cmap)


@dataclass
class TileMaps:
    """Per-tile maps as computed: ``maps`` float ``[n, m, m]`` of the grid tiles ``cells`` ``[n, 2]``
    (row, col); grid tile ``(r, c)`` covers level-0 pixels ``[c*stride, c*stride + tile)`` x
    ``[r*stride, r*stride + tile)`` (``tile``, ``stride`` in level-0 pixels)."""

    cells: np.ndarray
    maps: np.ndarray
    tile: float
    stride: float
    grid: tuple[int, int]

    def __post_init__(self) -> None:
        self.index = np.full(self.grid, -1, np.int64)
        if len(self.cells):
            self.index[self.cells[:, 0], self.cells[:, 1]] = np.arange(len(self.cells))


def sample_tile_maps(tm: TileMaps, region: tuple[int, int, int, int], scale: float) -> np.ndarray:
    """float ``[h, w]``: the per-tile maps at the centres of the pixels of ``region`` (a level with
    ``scale`` level-0 pixels per pixel): each tile map is stretched over its footprint (nearest
    neighbour, so each map pixel shows as computed); where tiles overlap their values are averaged;
    NaN where no computed tile covers."""
    x, y, w, h = region
    X = (np.arange(w) + x + 0.5) * scale
    Y = (np.arange(h) + y + 0.5) * scale
    rows, cols = tm.grid
    m = tm.maps.shape[-1]
    acc = np.zeros((h, w), np.float64)
    cnt = np.zeros((h, w), np.int32)
    reach = int(np.ceil(tm.tile / tm.stride))
    r0, c0 = np.floor(Y / tm.stride).astype(np.int64), np.floor(X / tm.stride).astype(np.int64)
    for kr in range(reach):
        r = r0 - kr
        ly = Y - r * tm.stride
        okr = (r >= 0) & (r < rows) & (ly < tm.tile)
        iy = np.clip((ly / tm.tile * m).astype(np.int64), 0, m - 1)
        for kc in range(reach):
            c = c0 - kc
            lx = X - c * tm.stride
            okc = (c >= 0) & (c < cols) & (lx < tm.tile)
            ix = np.clip((lx / tm.tile * m).astype(np.int64), 0, m - 1)
            idx = np.full((h, w), -1, np.int64)
            if okr.any() and okc.any():
                sub = tm.index[np.ix_(np.clip(r, 0, rows - 1), np.clip(c, 0, cols - 1))]
                idx = np.where(okr[:, None] & okc[None, :], sub, -1)
            ok = idx >= 0
            if ok.any():
                vals = tm.maps[idx[ok], np.broadcast_to(iy[:, None], (h, w))[ok], np.broadcast_to(ix[None, :], (h, w))[ok]]
                acc[ok] += vals
                cnt[ok] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan).astype(np.float32)
