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

Safety (``SlideRoots``): a slide is served only if its real path (symbolic links resolved) lies
under one of the configured roots; ``..`` segments are refused outright, so a dashboard shared
behind a proxy cannot be made to read arbitrary files of its host.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InterpError
from .wsi import _openslide, find_slides

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Environment variable naming extra slide folders (``os.pathsep``-separated).
SLIDES_ENV = "INTERP_SLIDES_DIR"
#: Deep Zoom geometry served to the viewer.
DZ_TILE = 254
DZ_OVERLAP = 1
#: Default bytes kept by a ``TileCache``.
CACHE_BYTES = 96 << 20
#: Overlay colour maps offered (matplotlib names).
COLORMAPS = ("inferno", "viridis", "magma", "plasma", "RdBu_r", "coolwarm", "Greens", "Reds", "gray")


class SlideAccessError(InterpError):
    """A slide path outside the configured slide roots (or otherwise not servable)."""


class TileRequestError(InterpError):
    """A malformed or out-of-range tile request."""


# -- roots -------------------------------------------------------------------------------------
def default_slide_roots() -> list[Path]:
    """``<sample data>/slides`` (``$INTERP_SAMPLE_DATA/slides`` or the repository's ``sample_data/slides``)
    followed by every folder of ``$INTERP_SLIDES_DIR`` (``os.pathsep``-separated)."""
    sample = Path(os.environ.get("INTERP_SAMPLE_DATA", REPO_ROOT / "sample_data")) / "slides"
    extra = [Path(p).expanduser() for p in os.environ.get(SLIDES_ENV, "").split(os.pathsep) if p.strip()]
    return [sample, *extra]


@dataclass(frozen=True)
class SlideRoots:
    """The folders whose slides may be served; ``resolve`` checks a path against them."""

    roots: tuple[Path, ...]

    @classmethod
    def from_env(cls) -> SlideRoots:
        """The default roots (``default_slide_roots``)."""
        return cls(tuple(default_slide_roots()))

    def existing(self) -> list[Path]:
        """The roots that exist, resolved (symbolic links followed)."""
        out = []
        for r in self.roots:
            try:
                rr = Path(r).expanduser().resolve(strict=True)
            except OSError:
                continue
            if rr.is_dir() and rr not in out:
                out.append(rr)
        return out

    def resolve(self, path: str | Path) -> Path:
        """The real path of slide ``path`` if it is a file under one of the roots, else ``SlideAccessError``.

        A relative path is looked up inside each root in turn. Refused, with a message saying why:
        any ``..`` segment; a path whose real location (after following symbolic links) is outside
        every root; a missing file; a folder.
        """
        raw = str(path).strip()
        if not raw:
            raise SlideAccessError("no slide path given")
        if "\x00" in raw:
            raise SlideAccessError("a slide path cannot contain a NUL character")
        p = Path(raw).expanduser()
        if ".." in p.parts or ".." in raw.replace("\\", "/").split("/"):
            raise SlideAccessError(f"{raw}: '..' segments are not allowed in a slide path")
        roots = self.existing()
        if not roots:
            raise SlideAccessError("no slide folder exists (sample_data/slides or $INTERP_SLIDES_DIR)")
        candidates = [p] if p.is_absolute() else [r / p for r in roots]
        for c in candidates:
            try:
                real = c.resolve(strict=True)
            except OSError:
                continue
            if not any(real == r or real.is_relative_to(r) for r in roots):
                raise SlideAccessError(f"{raw}: outside the slide folders ({', '.join(str(r) for r in roots)}); "
                                       f"add its folder to ${SLIDES_ENV} to open it")
            if not real.is_file():
                raise SlideAccessError(f"{raw}: not a file")
            return real
        if p.is_absolute() and not any(p == r or p.is_relative_to(r) for r in roots):
            raise SlideAccessError(f"{raw}: outside the slide folders ({', '.join(str(r) for r in roots)}); "
                                   f"add its folder to ${SLIDES_ENV} to open it")
        raise SlideAccessError(f"{raw}: no such slide file in the slide folders")

    def list_slides(self, limit: int = 500) -> list[Path]:
        """Whole-slide files under the roots (real paths, links out of a root left out)."""
        out: list[Path] = []
        for r in self.existing():
            for p in find_slides(r, limit=limit):
                try:
                    out.append(self.resolve(p))
                except SlideAccessError:
                    continue
        return sorted(set(out))[:limit]


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


# -- service -------------------------------------------------------------------------------------
@dataclass
class Overlay:
    """A map registered for the viewer: ``values`` (one pixel = ``map_scale`` level-0 pixels), colours;
    ``native``: the per-tile maps as computed, drawn instead at levels finer than ``map_scale``."""

    slide_id: str
    values: np.ndarray
    map_scale: float
    vmin: float
    vmax: float
    cmap: str
    native: TileMaps | None = None


class TileService:
    """The tile source behind the viewer: slides and overlays registered by id, tiles made on request.

    ``register_slide(path)`` admits only slides under ``roots`` (``SlideRoots.resolve``) and returns
    an opaque id; tile requests name that id, never a path, so a request cannot reach another
    file. ``handle(parts)`` answers a request path split on ``/`` (``[id, "info.json"]``,
    ``[id, "tiles", level, "COL_ROW.jpeg"]``, ``[id, "overlay", oid, level, "COL_ROW.webp"]``) with
    ``(status, content type, body)``; errors are 4xx with a one-line text message.
    """

    def __init__(self, roots: SlideRoots | None = None, *, cache_bytes: int = CACHE_BYTES, max_overlays: int = 12,
                 tile_size: int = DZ_TILE, overlap: int = DZ_OVERLAP):
        self.roots = roots or SlideRoots.from_env()
        self.tile_size, self.overlap = int(tile_size), int(overlap)
        self.cache = TileCache(cache_bytes)
        self._slides: dict[str, DeepZoomSlide] = {}
        self._overlays: OrderedDict[str, Overlay] = OrderedDict()
        self._max_overlays = int(max_overlays)
        self._lock = threading.Lock()

    def register_slide(self, path: str | Path) -> str:
        """The id of slide ``path`` (opened once); ``SlideAccessError`` outside the roots."""
        real = self.roots.resolve(path)
        st = real.stat()
        sid = hashlib.sha1(f"{real}:{st.st_mtime_ns}:{st.st_size}".encode()).hexdigest()[:16]
        with self._lock:
            if sid not in self._slides:
                self._slides[sid] = DeepZoomSlide(real, tile_size=self.tile_size, overlap=self.overlap)
        return sid

    def slide(self, sid: str) -> DeepZoomSlide:
        """The registered slide ``sid`` or ``TileRequestError``."""
        with self._lock:
            dz = self._slides.get(sid)
        if dz is None:
            raise TileRequestError(f"unknown slide id {str(sid)[:40]!r} (open the slide on the Slide page first)")
        return dz

    def register_overlay(self, sid: str, values: np.ndarray, map_scale: float, *, vmin: float, vmax: float,
                         cmap: str, native: TileMaps | None = None) -> str:
        """The id of a map drawn over slide ``sid`` (the same inputs give the same id); with ``native``,
        levels finer than the map show the per-tile maps at the resolution they were computed."""
        self.slide(sid)
        colormap_lut(cmap)
        v = np.ascontiguousarray(values, dtype=np.float32)
        if v.ndim != 2 or not v.size:
            raise InterpError(f"an overlay must be a 2-D map, got shape {list(v.shape)}")
        h = hashlib.sha1(v.tobytes())
        h.update(f"{sid}:{v.shape}:{map_scale}:{vmin}:{vmax}:{cmap}".encode())
        if native is not None:
            h.update(np.ascontiguousarray(native.maps, np.float32).tobytes())
            h.update(np.ascontiguousarray(native.cells).tobytes())
            h.update(f"{native.tile}:{native.stride}:{native.grid}".encode())
        oid = h.hexdigest()[:16]
        with self._lock:
            self._overlays[oid] = Overlay(sid, v, float(map_scale), float(vmin), float(vmax), cmap, native)
            self._overlays.move_to_end(oid)
            while len(self._overlays) > self._max_overlays:
                self._overlays.popitem(last=False)
        return oid

    def slide_tile(self, sid: str, level: Any, col: Any, row: Any, fmt: str = "jpeg") -> bytes:
        """Encoded slide tile (cached)."""
        level, col, row = parse_tile_request(level, col, row)
        dz = self.slide(sid)
        dz.check(level, col, row)
        key = ("s", sid, level, col, row, fmt)
        data = self.cache.get(key)
        if data is None:
            data = encode_image(dz.tile(level, col, row), fmt)
            self.cache.put(key, data)
        return data

    def overlay_tile(self, sid: str, oid: str, level: Any, col: Any, row: Any) -> bytes:
        """Encoded RGBA overlay tile (lossless WebP, cached)."""
        level, col, row = parse_tile_request(level, col, row)
        dz = self.slide(sid)
        dz.check(level, col, row)
        with self._lock:
            ov = self._overlays.get(oid)
        if ov is None or ov.slide_id != sid:
            raise TileRequestError(f"unknown overlay id {str(oid)[:40]!r} for this slide")
        key = ("o", oid, level, col, row)
        data = self.cache.get(key)
        if data is None:
            scale = dz.level_scale(level)
            if ov.native is not None and scale < ov.map_scale:
                vals = sample_tile_maps(ov.native, dz.tile_region(level, col, row), scale)
                rgba = colorize_rgba(vals, ov.vmin, ov.vmax, ov.cmap)
            else:
                rgba = render_overlay_tile(ov.values, ov.map_scale, dz, level, col, row, vmin=ov.vmin,
                                           vmax=ov.vmax, cmap=ov.cmap)
            data = encode_image(rgba, "webp")
            self.cache.put(key, data)
        return data

    def handle(self, parts: list[str]) -> tuple[int, str, bytes]:
        """``(status, content type, body)`` for a request path split into ``parts`` (see the class docstring)."""
        try:
            if len(parts) == 2 and parts[1] == "info.json":
                return 200, "application/json", json.dumps(self.slide(parts[0]).info()).encode()
            if len(parts) == 4 and parts[1] == "tiles":
                col, row, fmt = _split_tile_name(parts[3], ("jpeg", "png"))
                return 200, f"image/{fmt}", self.slide_tile(parts[0], parts[2], col, row, fmt)
            if len(parts) == 5 and parts[1] == "overlay":
                col, row, _ = _split_tile_name(parts[4], ("webp",))
                return 200, "image/webp", self.overlay_tile(parts[0], parts[2], parts[3], col, row)
            raise TileRequestError("not a tile path: expected ID/info.json, ID/tiles/LEVEL/COL_ROW.jpeg or "
                                   "ID/overlay/OID/LEVEL/COL_ROW.webp")
        except TileRequestError as e:
            status = 404 if str(e).startswith("unknown") else 400
            return status, "text/plain; charset=utf-8", str(e).encode()
        except InterpError as e:
            return 500, "text/plain; charset=utf-8", str(e).encode()


def _split_tile_name(name: str, formats: tuple[str, ...]) -> tuple[str, str, str]:
    """``"COL_ROW.FMT"`` -> ``(col, row, fmt)`` as strings (checked later), or ``TileRequestError``."""
    stem, dot, fmt = name.rpartition(".")
    col, sep, row = stem.partition("_")
    if not dot or not sep or fmt not in formats:
        raise TileRequestError(f"malformed tile name {name[:40]!r}: expected COL_ROW.{'|'.join(formats)}")
    return col, row, fmt
