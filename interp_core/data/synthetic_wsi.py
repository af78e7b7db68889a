"""A synthetic H&E whole-slide image with known lesions: a JPEG-compressed pyramidal TIFF that
OpenSlide reads (``generic-tiff``, with microns per pixel), its lesion mask and a lesion GeoJSON.

Layout [ours]: the slide is a grid of ``cell``-pixel cells (64, the synthetic-he tile size). A
tissue section is a smooth random blob (Gaussian-filtered noise under an elliptical envelope,
thresholded) on white glass; a few elliptical lesions are placed inside it. Every tissue cell
shows an H&E tile of ``synthetic_he.render_he_tile``: a ``tumor`` tile in lesion cells, a
``normal`` one elsewhere. Tiles come from a bank of ``bank`` rendered tiles per class, each
placed with a random flip/rotation (8 variants), so a 20,000-pixel slide renders in seconds
rather than the hours of 100,000 fresh tiles; tile borders show as seams.

Ground truth written beside the slide:

- ``NAME.lesion_cells.png``: one pixel per cell, white = a lesion cell (a tumor tile there);
- ``NAME.lesion_mask.png``: level-0 pixel mask (or ``1/mask_downsample`` of it), white = lesion evidence (the union of the tumor
  tiles' own lesion masks: the enlarged, irregular nuclei and the region around them);
- ``NAME.lesions.geojson``: one Feature per connected lesion, a ``MultiPolygon`` of its cells in
  level-0 pixels, ``classification.name = "Tumor"`` (QuPath imports it as annotations);
- ``NAME.json``: size, cell, mpp, seed, counts.

The TIFF is written tile by tile (each pyramid level rendered from the cell layout and
block-averaged), so memory stays bounded for a large slide.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from scipy import ndimage

from .._utils.io import atomic_path
from ..errors import InterpError
from .synthetic_he import render_he_tile

GLASS = 244  # grey level of the empty glass


@dataclass
class SlideLayout:
    """Cell grid of a synthetic slide: ``kind`` int8 ``[gh, gw]`` (-1 glass, 0 normal, 1 tumor),
    ``variant`` int ``[gh, gw]`` (bank index * 8 + dihedral transform)."""

    kind: np.ndarray
    variant: np.ndarray
    cell: int

    @property
    def size(self) -> tuple[int, int]:
        gh, gw = self.kind.shape
        return gw * self.cell, gh * self.cell


def _dihedral(a: np.ndarray, t: int) -> np.ndarray:
    a = np.rot90(a, t % 4)
    return a[:, ::-1] if t >= 4 else a


def make_layout(rng: np.random.Generator, grid: tuple[int, int], *, cell: int, n_lesions: int, bank: int) -> SlideLayout:
    """Tissue blob and lesions on a ``grid = (gh, gw)`` cell grid (see module docstring)."""
    gh, gw = grid
    yy, xx = np.mgrid[0:gh, 0:gw]
    cy, cx = gh / 2, gw / 2
    env = 1.0 - (((yy - cy) / (0.46 * gh)) ** 2 + ((xx - cx) / (0.46 * gw)) ** 2)
    noise = ndimage.gaussian_filter(rng.standard_normal((gh, gw)), sigma=max(gh, gw) / 12)
    noise /= np.abs(noise).max() + 1e-9
    tissue = env + 0.6 * noise > 0.25
    tissue = ndimage.binary_opening(tissue, iterations=1)
    lesion = np.zeros((gh, gw), bool)
    ys, xs = np.nonzero(ndimage.binary_erosion(tissue, iterations=3) if tissue.sum() > 50 else tissue)
    if not len(ys):
        raise InterpError(f"a {gw}x{gh}-cell slide is too small for lesions")
    side = min(gh, gw)
    for _ in range(n_lesions):
        k = rng.integers(len(ys))
        ry, rx = rng.uniform(0.04, 0.10, 2) * side + 1.0
        ang = rng.uniform(0, np.pi)
        dy, dx = yy - ys[k], xx - xs[k]
        u = dx * np.cos(ang) + dy * np.sin(ang)
        v = -dx * np.sin(ang) + dy * np.cos(ang)
        lesion |= (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    lesion &= tissue
    kind = np.where(tissue, lesion.astype(np.int8), np.int8(-1)).astype(np.int8)
    variant = rng.integers(0, bank * 8, size=(gh, gw))
    return SlideLayout(kind=kind, variant=variant, cell=cell)


class TileBank:
    """``bank`` rendered normal and tumor tiles (``render_he_tile``) with their lesion masks."""

    def __init__(self, rng: np.random.Generator, bank: int, cell: int):
        self.images = np.empty((2, bank, cell, cell, 3), np.uint8)
        self.masks = np.zeros((2, bank, cell, cell), bool)
        for i in range(bank):
            for k in (0, 1):
                t = render_he_tile(rng, cell, tumor=bool(k))
                self.images[k, i], self.masks[k, i] = t.image, t.lesion

    def tile(self, kind: int, variant: int) -> tuple[np.ndarray, np.ndarray]:
        b, t = divmod(int(variant), 8)
        return _dihedral(self.images[kind, b], t), _dihedral(self.masks[kind, b], t)


def render_region(layout: SlideLayout, bank: TileBank, x: int, y: int, w: int, h: int,
                  *, mask: bool = False) -> np.ndarray:
    """Level-0 pixels ``[y, y+h) x [x, x+w)``: uint8 RGB, or the bool lesion mask with ``mask=True``."""
    c = layout.cell
    out = np.full((h, w), False) if mask else np.full((h, w, 3), GLASS, np.uint8)
    gh, gw = layout.kind.shape
    for gy in range(max(0, y // c), min(gh, -(-(y + h) // c))):
        for gx in range(max(0, x // c), min(gw, -(-(x + w) // c))):
            k = int(layout.kind[gy, gx])
            if k < 0 or (mask and k == 0):
                continue
            img, m = bank.tile(k, layout.variant[gy, gx])
            src = m if mask else img
            x0, y0 = gx * c, gy * c
            ax0, ay0 = max(x, x0), max(y, y0)
            ax1, ay1 = min(x + w, x0 + c), min(y + h, y0 + c)
            out[ay0 - y:ay1 - y, ax0 - x:ax1 - x] = src[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0]
    return out


def _level_tiles(layout: SlideLayout, bank: TileBank, level: int, tile: int) -> Iterator[np.ndarray]:
    """Tiles (raster order) of pyramid level ``level``: ``2^level`` block means of level 0 (white past the edge)."""
    W, H = layout.size
    f = 2 ** level
    lw, lh = -(-W // f), -(-H // f)
    for ty in range(0, lh, tile):
        for tx in range(0, lw, tile):
            region = render_region(layout, bank, tx * f, ty * f, tile * f, tile * f)
            if f > 1:
                region = np.rint(region.reshape(tile, f, tile, f, 3).astype(np.float32).mean(axis=(1, 3)))
                region = region.astype(np.uint8)
            yield region


def write_synthetic_wsi(path: str | Path, *, width: int, height: int, seed: int = 0, cell: int = 64,
                        mpp: float = 0.5, n_lesions: int | None = None, bank: int = 64, quality: int = 85,
                        tile: int = 256, n_levels: int | None = None, mask_downsample: int = 1) -> dict[str, Any]:
    """Write the synthetic slide ``path`` (``.tiff``) and its ground truth beside it; return the metadata.

    ``width``/``height`` are rounded down to whole cells. ``n_lesions``: default one per 6,000,000
    pixels, at least 2. ``n_levels``: default until the smallest level is under 1,024 pixels.
    ``mask_downsample``: the lesion mask PNG has ``1/mask_downsample`` of the slide's side (a pixel
    is lesion when at least half of its block is), to keep it small on a very large slide.
    Deterministic in ``seed``.
    """
    import tifffile
    from PIL import Image
    try:
        import imagecodecs  # noqa: F401  (tifffile's JPEG codec)
    except ImportError as e:
        raise InterpError(f"writing a JPEG-compressed TIFF needs imagecodecs (pip install -r requirements.txt): {e}") \
            from None
    path = Path(path)
    gw, gh = int(width) // cell, int(height) // cell
    if gw < 8 or gh < 8:
        raise InterpError(f"a synthetic slide needs at least {8 * cell}x{8 * cell} pixels, got {width}x{height}")
    if tile % 16:
        raise InterpError(f"TIFF tiles must be a multiple of 16, got {tile}")
    rng = np.random.default_rng(seed)
    n_lesions = max(2, (gw * gh * cell * cell) // 6_000_000) if n_lesions is None else int(n_lesions)
    bank_ = TileBank(rng, bank, cell)
    layout = make_layout(rng, (gh, gw), cell=cell, n_lesions=n_lesions, bank=bank)
    W, H = layout.size
    if n_levels is None:
        n_levels = 1
        while max(W, H) / 2 ** (n_levels - 1) > 1024:
            n_levels += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    res = (1e4 / mpp, 1e4 / mpp)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=W * H * 3 > 2 ** 31) as tw:
        for lvl in range(n_levels):
            f = 2 ** lvl
            shape = (-(-H // f), -(-W // f), 3)
            tw.write(_level_tiles(layout, bank_, lvl, tile), shape=shape, dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb", compression="jpeg", compressionargs={"level": quality},
                     subfiletype=0 if lvl == 0 else 1, metadata=None, software="interp_core",
                     **({"resolution": res, "resolutionunit": "CENTIMETER"} if lvl == 0 else {}))
    stem = path.with_suffix("")
    lesion_cells = layout.kind == 1
    Image.fromarray(lesion_cells.astype(np.uint8) * 255).save(f"{stem}.lesion_cells.png")
    k = int(mask_downsample)
    if k < 1 or cell % k:
        raise InterpError(f"mask_downsample must divide the cell size {cell}, got {mask_downsample}")
    mask = np.zeros((H // k, W // k), bool)
    lesion_px = 0
    step = 16 * cell
    for y0 in range(0, H, step):
        strip = render_region(layout, bank_, 0, y0, W, min(step, H - y0), mask=True)
        lesion_px += int(strip.sum())
        mask[y0 // k:(y0 + strip.shape[0]) // k] = strip.reshape(strip.shape[0] // k, k, W // k, k).mean(axis=(1, 3)) >= 0.5
    Image.fromarray(mask).save(f"{stem}.lesion_mask.png", optimize=True)
    Path(f"{stem}.lesions.geojson").write_text(json.dumps(lesions_geojson(lesion_cells, cell)))
    meta = {"slide": path.name, "size": [W, H], "cell": cell, "mpp": mpp, "seed": seed, "levels": n_levels,
            "lesions": int(ndimage.label(lesion_cells)[1]), "tissue_cells": int((layout.kind >= 0).sum()),
            "lesion_cells": int(lesion_cells.sum()), "lesion_pixels": lesion_px, "mask_downsample": k, "jpeg_quality": quality,
            "bank": bank, "files": {"lesion_cells": f"{stem.name}.lesion_cells.png",
                                    "lesion_mask": f"{stem.name}.lesion_mask.png",
                                    "lesions": f"{stem.name}.lesions.geojson"}}
    Path(f"{stem}.json").write_text(json.dumps(meta, indent=2))
    return meta


def lesions_geojson(lesion_cells: np.ndarray, cell: int) -> dict[str, Any]:
    """A FeatureCollection: one ``MultiPolygon`` (its cells' squares, level-0 pixels) per connected lesion."""
    labels, n = ndimage.label(lesion_cells)
    feats = []
    for i in range(1, n + 1):
        polys = []
        for gy, gx in zip(*np.nonzero(labels == i)):
            x0, y0 = int(gx) * cell, int(gy) * cell
            polys.append([[[x0, y0], [x0 + cell, y0], [x0 + cell, y0 + cell], [x0, y0 + cell], [x0, y0]]])
        feats.append({"type": "Feature", "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"interp-core/lesion/{i}")),
                      "geometry": {"type": "MultiPolygon", "coordinates": polys},
                      "properties": {"objectType": "annotation",
                                     "classification": {"name": "Tumor", "color": [200, 0, 0]}}})
    return {"type": "FeatureCollection", "features": feats}


def write_sample_wsi(path: str | Path = "sample_data/slides/synthetic-he.tiff") -> dict[str, Any]:
    """The shipped synthetic slide: 2,560 x 1,920 pixels (40 x 30 cells), seed 0, 0.5 um/px, about 1 MB."""
    return write_synthetic_wsi(path, width=2560, height=1920, seed=0, n_lesions=4, bank=48)
