"""The tile source behind the slide viewer (``TileService``): slides admitted through ``SlideRoots``
and overlays registered by id, slide and overlay tiles made on request (``slides.deepzoom``) and
kept in a bounded cache.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InterpError
from .deepzoom import (CACHE_BYTES, DZ_OVERLAP, DZ_TILE, DeepZoomSlide, TileCache, TileMaps, TileRequestError,
                       colorize_rgba, colormap_lut, encode_image, parse_tile_request, render_overlay_tile,
                       sample_tile_maps)
from .roots import SlideRoots


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
