"""Slide-level maps: a large image tiled into the model's input size, per-tile prediction and
attribution stitched into maps over the whole image.

A slide is anything with ``size -> (W, H)`` and ``read_region(x, y, w, h) -> uint8 [h, w, 3]``
(``slide_io.SlideReader``, re-exported here). ``ArraySlide`` wraps an in-memory image (PNG, JPEG, uploads: ``open_slide``
reads one through ``load_rgb``); ``wsi.OpenSlideReader`` reads one pyramid level of a whole-slide
file (``.svs``, ``.ndpi``, ``.mrxs``, tiled TIFF, ...) lazily through OpenSlide, and ``open_slide``
picks it for the files OpenSlide recognises.

``explain_slide`` streams the tiles: a ``torch.utils.data.DataLoader`` over the tissue tiles
(``slides.tiles.SlideTiles``, raster order; ``workers`` processes read tiles in parallel, each opening its own
file handle) delivers ``batch_size`` tiles at a time; they are predicted and attributed, and each
tile's map is added into the output accumulators, so peak memory is the batches in flight plus the
output maps (at ``1/downsample`` of the slide side). Choices, all [ours]:

- Grid: tile ``(r, c)`` has its top-left corner at ``(c * stride, r * stride)``; there are
  ``1 + ceil(max(0, W - tile) / stride)`` columns (rows likewise), so the grid covers the whole
  image. Edge tiles that reach past the image, and the single tile of an image smaller than a
  tile, are padded with white (255): white is the glass around tissue on a bright-field slide,
  which is also what OpenSlide returns outside a slide. Padding is cropped away when stitching.
- Background: a tile whose footprint holds less than ``min_tissue`` of tissue (``tissue_mask`` on
  the thumbnail; padding counts as background) is skipped when ``skip_background``: its ``probs``
  are NaN and it adds nothing to the saliency map.
- Stitching: each tile's map ``[T, T]`` is area-averaged into its footprint at ``1/downsample``
  resolution; where tiles overlap (``stride < tile``) the maps are averaged; pixels no computed
  tile covers are NaN (drawn transparent).
- Normalisation (``normalize``): ``"slide"`` (default) stitches the raw maps and divides the
  result by its maximum ``|value|``, one scale for the whole slide, so tiles the model is more
  sensitive in stand out; ``"tile"`` max-normalises every tile first (each tile's own pattern,
  no comparison between tiles); ``"none"`` keeps raw values.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
from torch import nn

from . import wsi
from ..attribution import get_method, normalize_max
from ..data.image_io import load_rgb
from .._utils.validation import positive_int, workers_count
from ..errors import InterpError
from .reader import BACKGROUND, ArraySlide, SlideReader, block_mean_thumbnail  # noqa: F401  (re-exported)
from .tiles import _footprint, _num_classes, _placed_model, _stitch, explain_tiles

#: Refuse grids with more tiles than this (a stride of 1 on a large image is a mistake, not a job).
MAX_TILES = 200_000
NORMALIZATIONS = ("slide", "tile", "none")
TISSUE_METHODS = ("otsu_saturation",)


def open_slide(source: str | Path | bytes | BinaryIO, *, name: str | None = None, level: int = 0) -> SlideReader:
    """A slide from a file or an upload.

    A path with a whole-slide suffix (``wsi.WSI_SUFFIXES``: ``.svs``, ``.ndpi``, ``.mrxs``,
    ``.tif``/``.tiff``, ...) that OpenSlide recognises opens lazily as a ``wsi.OpenSlideReader`` at
    pyramid ``level``. Anything else (PNG, JPEG, a plain TIFF, uploaded bytes) is read whole with
    ``load_rgb`` (size limits, any mode -> RGB) into an ``ArraySlide``, which has one level only. A
    whole-slide suffix OpenSlide does not recognise is an error unless it is a TIFF (plain TIFFs
    are ordinary images).
    """
    if isinstance(source, (str, Path)):
        p = Path(source)
        suffix = p.suffix.lower()
        if suffix in wsi.WSI_SUFFIXES and p.is_file():
            if wsi.detect_format(p) is not None:
                return wsi.OpenSlideReader(p, level=level)
            if suffix not in (".tif", ".tiff"):
                raise InterpError(f"{p}: not a whole-slide file OpenSlide can read (unsupported or damaged {suffix})")
    if level != 0:
        raise InterpError(f"{name or source if isinstance(source, (str, Path)) else 'the upload'}: a plain image has "
                          f"only pyramid level 0, got level {level}")
    img = load_rgb(source, name=name)
    return ArraySlide(img.array, notes=img.notes)


def _slide_size(slide: SlideReader) -> tuple[int, int]:
    try:
        w, h = slide.size
    except (AttributeError, TypeError, ValueError):
        raise InterpError("a slide needs a size (width, height) and read_region(x, y, w, h)") from None
    if int(w) < 1 or int(h) < 1:
        raise InterpError(f"the slide is empty ({w}x{h})")
    return int(w), int(h)


def read_thumbnail(slide: SlideReader, downsample: int) -> np.ndarray:
    """uint8 ``[ceil(H/d), ceil(W/d), 3]``: each pixel the mean of a ``d x d`` block of the slide.

    Uses the reader's own ``thumbnail(d)`` when it has one; otherwise reads horizontal strips of
    at most about 32 MB of float pixels, so memory stays bounded on large slides. Blocks past the
    right/bottom edge are averaged with the white padding.
    """
    d = positive_int(downsample, "downsample")
    own = getattr(slide, "thumbnail", None)
    if callable(own):
        return np.asarray(own(d), dtype=np.uint8)
    W, H = _slide_size(slide)
    if d == 1:
        return np.ascontiguousarray(slide.read_region(0, 0, W, H))
    return block_mean_thumbnail(slide.read_region, (-(-W // d), -(-H // d)), d)


# -- tissue ----------------------------------------------------------------------------------
def tissue_mask(thumbnail: np.ndarray, *, method: str = "otsu_saturation", min_threshold: float = 0.02,
                max_threshold: float = 0.08) -> np.ndarray:
    """Bool ``[h, w]``: True where a (thumbnail) image shows tissue rather than glass.

    ``otsu_saturation``: ``S = (max - min) / max`` of each RGB pixel (HSV saturation, ``rgb2hsv``);
    tissue is ``S > t`` with ``t = clip(otsu(S), min_threshold, max_threshold)``
    (``skimage.filters.threshold_otsu``). Glass is grey-white (S near 0); stained tissue is
    coloured. The clipping is [ours]: on a crop that is mostly tissue, Otsu separates two kinds
    of tissue instead of tissue from glass (on the shipped immunohistochemistry image it lands at
    0.26, between brown DAB and pale blue stroma, and calls the stroma background), while glass
    stays below about 0.04; the floor keeps noise in an all-white image from counting as tissue.
    A constant image (all glass, or a flat colour) uses ``t = min_threshold``.
    """
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu
    if method not in TISSUE_METHODS:
        raise InterpError(f"unknown tissue method {method!r}; choose one of {', '.join(TISSUE_METHODS)}")
    arr = np.asarray(thumbnail)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InterpError(f"tissue_mask needs an RGB image [h, w, 3], got shape {list(arr.shape)}")
    if not 0 <= min_threshold <= max_threshold <= 1:
        raise InterpError("tissue thresholds must satisfy 0 <= min_threshold <= max_threshold <= 1")
    sat = rgb2hsv(arr)[..., 1]
    if float(sat.max()) - float(sat.min()) < 1e-6:
        t = min_threshold
    else:
        t = float(np.clip(threshold_otsu(sat), min_threshold, max_threshold))
    return sat > t


# -- grid ------------------------------------------------------------------------------------
def grid_shape(size: tuple[int, int], tile_size: int, stride: int) -> tuple[int, int]:
    """``(rows, cols)`` of the tile grid covering an image of ``size = (W, H)`` (see module docstring)."""
    w, h = size
    return 1 + -(-max(0, h - tile_size) // stride), 1 + -(-max(0, w - tile_size) // stride)


def tile_tissue_fraction(mask: np.ndarray, grid: tuple[int, int], tile_size: int,
                         stride: int, downsample: int) -> np.ndarray:
    """float ``[rows, cols]``: the share of each tile's footprint that ``mask`` (at ``1/downsample``) marks.

    The footprint of the tile at ``(x, y)`` is thumbnail pixels ``[y//d, ceil((y+T)/d))`` x
    ``[x//d, ceil((x+T)/d))``; the part outside the thumbnail counts as background. Summed-area
    table, so O(1) per tile.
    """
    d = downsample
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.int64), 0), 1)
    rows, cols = grid
    ys = np.arange(rows) * stride
    xs = np.arange(cols) * stride
    fy0, fy1 = ys // d, -(-(ys + tile_size) // d)
    fx0, fx1 = xs // d, -(-(xs + tile_size) // d)
    cy0, cy1 = np.minimum(fy0, mask.shape[0]), np.minimum(fy1, mask.shape[0])
    cx0, cx1 = np.minimum(fx0, mask.shape[1]), np.minimum(fx1, mask.shape[1])
    total = (sat[cy1][:, cx1] - sat[cy0][:, cx1] - sat[cy1][:, cx0] + sat[cy0][:, cx0]).astype(np.float64)
    area = np.outer(fy1 - fy0, fx1 - fx0).astype(np.float64)
    return total / area


# -- result ----------------------------------------------------------------------------------
@dataclass
class SlideResult:
    """Per-tile predictions and the stitched attribution map of one slide.

    ``probs``: float32 ``[rows, cols, C]`` softmax probabilities, NaN for skipped tiles.
    ``saliency``: float32 ``[ceil(H/d), ceil(W/d)]`` stitched map, NaN where no computed tile
    covers. ``tissue``: bool ``[rows, cols]``, tiles with at least ``min_tissue`` tissue.
    ``thumbnail``: uint8 ``[ceil(H/d), ceil(W/d), 3]``, the slide at the saliency map's resolution
    (to draw the maps over). ``tissue_map``: bool, the thumbnail's pixel-level tissue mask. Tile ``(r, c)`` covers slide pixels
    ``[c*stride, c*stride + tile_size) x [r*stride, r*stride + tile_size)``.
    """

    tile_size: int
    stride: int
    grid_shape: tuple[int, int]
    probs: np.ndarray
    saliency: np.ndarray
    tissue: np.ndarray
    downsample: int
    classes: list[str]
    seconds: float
    n_tiles: int
    n_computed: int
    slide_size: tuple[int, int] = (0, 0)
    method: str = ""
    normalize: str = "slide"
    input_size: int | None = None
    thumbnail: np.ndarray | None = field(default=None, repr=False)
    tissue_map: np.ndarray | None = field(default=None, repr=False)

    @property
    def pred(self) -> np.ndarray:
        """int ``[rows, cols]``: predicted class per tile, -1 for skipped tiles."""
        computed = ~np.isnan(self.probs[..., 0])
        out = np.full(self.grid_shape, -1, np.int64)
        if computed.any():
            out[computed] = np.nanargmax(self.probs[computed], axis=-1)
        return out

    @property
    def tiles_per_second(self) -> float:
        """Computed tiles per second of wall time (whole call, reading and stitching included)."""
        return self.n_computed / self.seconds if self.seconds > 0 else float("nan")

    def prob_map(self, class_index: int) -> np.ndarray:
        """float32 ``[ceil(H/d), ceil(W/d)]``: probability of ``class_index`` drawn at the saliency
        map's resolution (each pixel the mean over the computed tiles covering it, NaN elsewhere),
        so it overlays the thumbnail like ``saliency``."""
        if not 0 <= int(class_index) < self.probs.shape[-1]:
            raise InterpError(f"class index {class_index} out of range 0..{self.probs.shape[-1] - 1}")
        return self.tile_value_map(self.probs[..., class_index])

    def tile_value_map(self, values: np.ndarray) -> np.ndarray:
        """float32 ``[ceil(H/d), ceil(W/d)]``: per-tile ``values`` ``[rows, cols]`` drawn at the saliency map's
        resolution; where tiles overlap (stride < tile) the values of the computed tiles covering a
        pixel are averaged; NaN where no computed tile covers."""
        ht, wt = self.saliency.shape
        acc = np.zeros((ht, wt), np.float64)
        cnt = np.zeros((ht, wt), np.int32)
        d = self.downsample
        for r, c in zip(*np.nonzero(~np.isnan(self.probs[..., 0]))):
            fy0, fy1 = _footprint(int(r) * self.stride, self.tile_size, d)
            fx0, fx1 = _footprint(int(c) * self.stride, self.tile_size, d)
            acc[fy0:fy1, fx0:fx1] += values[r, c]
            cnt[fy0:fy1, fx0:fx1] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan).astype(np.float32)

    def tile_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """``(x, y, w, h)`` of tile ``(row, col)`` in slide pixels (may reach past the slide edge)."""
        return col * self.stride, row * self.stride, self.tile_size, self.tile_size


def explain_slide(model: nn.Module, slide: SlideReader, *, tile_size: int, stride: int | None = None,
                  method: str = "saliency", target: int | None = None, batch_size: int = 64, downsample: int = 4,
                  skip_background: bool = True, device: Any = None,
                  progress: Callable[[int, int], None] | None = None, classes: list[str] | None = None,
                  input_size: int | None = None, normalize: str = "slide", min_tissue: float = 0.1,
                  method_options: dict[str, Any] | None = None, max_tiles: int = MAX_TILES,
                  workers: int = 0, limit: int | None = None, interpolation: str = "bilinear") -> SlideResult:
    """Tile ``slide``, predict and attribute every tile, stitch the maps (see the module docstring).

    ``interpolation`` (bilinear, bicubic, nearest): how tiles are resized to ``input_size``.

    ``tile_size``: tile side in slide pixels (the model's input size, unless ``input_size`` is
    given: then each tile is resized to ``input_size`` for the model, e.g. a model trained on
    64-pixel crops shrunk to 32, and its map is resized back). ``stride``: step between tiles
    (default ``tile_size``; at most ``tile_size`` so every pixel is covered). ``target``: the class
    to explain in every tile; ``None`` explains each tile's predicted class. ``method`` and
    ``method_options``: as ``interp_core.attribution.attribute``. ``downsample``: the saliency
    map has ``1/downsample`` of the slide's side. ``progress(done, total)``: called with 0 first
    and ``total = n_tiles`` last; skipped tiles count as done when the walk passes them.
    ``device``: None = the model's device; another device works on a copy of the model.
    Runs the model in eval mode (per batch, via ``attribution_state``; the caller's mode is kept).
    ``workers``: DataLoader worker processes reading tiles (0 = read in this process); useful when
    decoding a compressed whole-slide file is the bottleneck. ``limit``: compute only the first
    ``limit`` tiles to do (raster order), a quick look at a large slide; the rest count as skipped.
    """
    t0 = time.perf_counter()
    tile_size, stride, d, batch_size, workers, input_size, limit = _checked_options(
        tile_size, stride, downsample, batch_size, workers, input_size, limit, normalize, min_tissue, method)
    W, H = _slide_size(slide)
    rows, cols = grid_shape((W, H), tile_size, stride)
    n_tiles = rows * cols
    if n_tiles > max_tiles:
        raise InterpError(f"{W}x{H} pixels at tile {tile_size}, stride {stride} is {n_tiles:,} tiles, more than "
                          f"{max_tiles:,}; use a larger stride or tile")

    work, dev = _placed_model(model, device)
    n_cls = _num_classes(work, input_size or tile_size, dev)
    class_names = _class_names(classes, target, n_cls)
    thumb, tissue_px, tissue, todo = _tiles_to_do(slide, (rows, cols), tile_size, stride, d, min_tissue,
                                                  skip_background, limit)
    ht, wt = thumb.shape[:2]

    probs = np.full((rows, cols, n_cls), np.nan, np.float32)
    acc = np.zeros((ht, wt), np.float64)
    cnt = np.zeros((ht, wt), np.float32)
    if progress is not None:
        progress(0, n_tiles)
    n_done, reported = 0, 0
    for idx, p_np, maps in explain_tiles(work, slide, np.argwhere(todo), stride=stride, tile_size=tile_size,
                                         method=method, target=target, batch_size=batch_size,
                                         input_size=input_size, method_options=method_options,
                                         workers=int(workers), device=dev, interpolation=interpolation):
        if normalize == "tile":
            maps = normalize_max(maps)
        _stitch(maps, idx, stride, tile_size, d, acc, cnt)
        for k, (r, c) in enumerate(idx):
            probs[r, c] = p_np[k]
        n_done += len(idx)
        if progress is not None:
            r, c = idx[-1]
            reported = r * cols + c + 1
            progress(reported, n_tiles)
    if progress is not None and reported != n_tiles:
        progress(n_tiles, n_tiles)

    sal = _stitched_saliency(acc, cnt, normalize, n_done)
    return SlideResult(tile_size=tile_size, stride=stride, grid_shape=(rows, cols), probs=probs, saliency=sal,
                       tissue=tissue, downsample=d, classes=class_names, seconds=time.perf_counter() - t0,
                       n_tiles=n_tiles, n_computed=n_done, slide_size=(W, H), method=method,
                       normalize=normalize, input_size=input_size, thumbnail=thumb, tissue_map=tissue_px)


def _checked_options(tile_size: int, stride: int | None, downsample: int, batch_size: int, workers: int,
                     input_size: int | None, limit: int | None, normalize: str, min_tissue: float,
                     method: str) -> tuple[int, int, int, int, int, int | None, int | None]:
    """``explain_slide``'s options checked: ``(tile_size, stride, downsample, batch_size, workers,
    input_size, limit)`` as positive ints (stride defaulting to the tile size)."""
    tile_size = positive_int(tile_size, "tile_size")
    stride = tile_size if stride is None else positive_int(stride, "stride")
    if stride > tile_size:
        raise InterpError(f"stride ({stride}) must not exceed tile_size ({tile_size}): the tiles would leave gaps")
    d = positive_int(downsample, "downsample")
    batch_size = positive_int(batch_size, "batch_size")
    workers = workers_count(workers)
    if input_size is not None:
        input_size = positive_int(input_size, "input_size")
    if limit is not None:
        limit = positive_int(limit, "limit")
    if normalize not in NORMALIZATIONS:
        raise InterpError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    if not 0.0 <= float(min_tissue) <= 1.0:
        raise InterpError(f"min_tissue must be in [0, 1], got {min_tissue}")
    get_method(method)
    return tile_size, stride, d, batch_size, workers, input_size, limit


def _class_names(classes: list[str] | None, target: int | None, n_cls: int) -> list[str]:
    """The class names (``"0"``, ``"1"``, ... when not given), checked against the model's ``n_cls``
    classes, and ``target`` checked to be one of them (or None)."""
    class_names = list(classes) if classes is not None else [str(i) for i in range(n_cls)]
    if len(class_names) != n_cls:
        raise InterpError(f"{len(class_names)} class names given for a model with {n_cls} classes")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, np.integer))
                               or not 0 <= target < n_cls):
        raise InterpError(f"target must be a class index in 0..{n_cls - 1} or None (predicted), got {target!r}")
    return class_names


def _tiles_to_do(slide: SlideReader, grid: tuple[int, int], tile_size: int, stride: int, d: int, min_tissue: float,
                 skip_background: bool, limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(thumbnail, tissue mask of its pixels, tissue tiles, tiles to compute)``: every tile, or the
    tissue tiles when ``skip_background``; only the first ``limit`` of them (raster order)."""
    thumb = read_thumbnail(slide, d)
    tissue_px = tissue_mask(thumb)
    frac = tile_tissue_fraction(tissue_px, grid, tile_size, stride, d)
    tissue = frac >= float(min_tissue)
    todo = tissue.copy() if skip_background else np.ones_like(tissue)
    if limit is not None and int(todo.sum()) > limit:
        flat = todo.reshape(-1)
        flat[np.flatnonzero(flat)[limit:]] = False
    return thumb, tissue_px, tissue, todo


def _stitched_saliency(acc: np.ndarray, cnt: np.ndarray, normalize: str, n_done: int) -> np.ndarray:
    """The stitched map (mean of the tiles covering each pixel, NaN where none), divided by its maximum
    ``|value|`` for ``"slide"`` normalisation."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sal = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan).astype(np.float32)
    if normalize == "slide" and n_done:
        top = float(np.nanmax(np.abs(sal)))
        if math.isfinite(top) and top > 0:
            sal /= top
    return sal
