"""An ``explain-slide`` job folder read back as maps: ``assemble`` stitches the pieces found so far
into a ``SlideMaps`` (both normalisations, entropy, each tile's own map); the folder's layout
(``PLAN``, ``PROGRESS``, ``PIECES``, ``piece_name``) and the overlay and colour helpers the writers
share. The job that fills the folder is ``slides.job``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..attribution import colorize, normalize_max, scale_to_unit
from ..errors import InterpError
from ..runs import read_json
from .explain import SlideResult
from .tiles import _stitch

#: Colours of the classes in ``prediction.png`` (matplotlib's tab10), grey-white where no tile was computed.
CLASS_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]

#: The job folder's layout: its plan, its progress file, the folder of its pieces.
PLAN = "plan.json"
PROGRESS = "progress.json"
PIECES = "pieces"


def piece_name(k: int) -> str:
    """File name of piece ``k`` in ``PIECES``."""
    return f"{k:05d}.npz"


def map_downsample(size: tuple[int, int], map_side: int) -> int:
    """``ceil(max(W, H) / map_side)``, at least 1: the downsample giving maps of at most ``map_side`` pixels a side."""
    if map_side < 1:
        raise InterpError(f"map side must be a positive integer, got {map_side}")
    return max(1, -(-max(size) // int(map_side)))



def overlay_nan(rgb: np.ndarray, values: np.ndarray, vmin: float, vmax: float, *, cmap: str = "inferno",
                alpha: float = 0.6) -> np.ndarray:
    """uint8 ``[h, w, 3]``: ``(1 - alpha) * rgb + alpha * cmap((v - vmin) / (vmax - vmin))`` where ``values``
    is finite, ``rgb`` unchanged where it is NaN (pixels no computed tile covers)."""
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    col = colorize(scale_to_unit(np.where(ok, v, vmin), vmin, vmax), cmap) * 255.0
    out = rgb.astype(np.float64)
    out[ok] = (1 - alpha) * out[ok] + alpha * col[ok]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)



@dataclass
class SlideMaps:
    """What a job folder holds so far: ``result`` (a ``SlideResult``; its ``saliency`` per the
    normalisation asked), ``saliency`` both normalisations (``"slide"``, ``"tile"``), ``entropy``
    (per-pixel mean predictive entropy of the tiles covering it, nats), ``tile_saliency`` float
    ``[rows, cols]`` each tile's mean ``|map|`` (raw), ``pieces_done``/``n_pieces``, ``plan``."""

    result: Any
    saliency: dict[str, np.ndarray]
    entropy: np.ndarray
    tile_saliency: np.ndarray
    pieces_done: int
    n_pieces: int
    plan: dict[str, Any]
    tile_cells: np.ndarray | None = None
    tile_maps: np.ndarray | None = None
    slide_scale: float = 1.0

    @property
    def complete(self) -> bool:
        return self.pieces_done == self.n_pieces

    def native_maps(self, normalize: str = "slide") -> np.ndarray:
        """float32 ``[n, m, m]``: each computed tile's own map as computed (``tile_cells`` gives its
        ``(row, col)``), on the same scale as ``saliency[normalize]``: divided by the slide-wide
        divisor of the stitched map (``"slide"``) or by its own maximum ``|value|`` (``"tile"``)."""
        maps = self.tile_maps if self.tile_maps is not None else np.zeros((0, 1, 1), np.float32)
        if normalize == "tile":
            top = np.abs(maps).reshape(len(maps), -1).max(axis=1) if len(maps) else np.zeros(0)
            return (maps / np.where(top > 0, top, 1.0)[:, None, None]).astype(np.float32)
        return (maps / self.slide_scale).astype(np.float32) if self.slide_scale > 0 else maps


def assemble(out: str | Path, *, normalize: str = "slide") -> SlideMaps:
    """Stitch the pieces found in job folder ``out`` (all of them, or those done so far) into maps.

    Overlapping tiles are averaged (``slides.tiles._stitch``); ``"slide"`` normalisation divides the
    stitched raw maps by their maximum ``|value|`` over the slide, ``"tile"`` max-normalises each
    tile's map before stitching (``slide`` module docstring).
    """

    out = Path(out)
    if not (out / PLAN).is_file():
        raise InterpError(f"{out}: no explain-slide results here (no {PLAN})")
    plan = read_json(out / PLAN)
    rows, cols = plan["grid"]
    C = len(plan["classes"])
    thumb = np.asarray(Image.open(out / "thumbnail.png").convert("RGB"))
    tissue_px = np.asarray(Image.open(out / "tissue.png")) > 0
    tissue = np.load(out / "tissue_tiles.npy", allow_pickle=False)
    ht, wt = thumb.shape[:2]
    probs = np.full((rows, cols, C), np.nan, np.float32)
    tile_sal = np.full((rows, cols), np.nan, np.float32)
    acc = {"slide": np.zeros((ht, wt), np.float64), "tile": np.zeros((ht, wt), np.float64)}
    cnt = {"slide": np.zeros((ht, wt), np.float32), "tile": np.zeros((ht, wt), np.float32)}
    done = 0
    all_cells, all_maps = [], []
    T, S, d = int(plan["tile_size"]), int(plan["stride"]), int(plan["downsample"])
    for k in range(int(plan["n_pieces"])):
        f = out / PIECES / piece_name(k)
        if not f.is_file():
            continue
        with np.load(f, allow_pickle=False) as z:
            cells, p, maps = z["cells"], z["probs"], z["maps"]
        idx = [(int(r), int(c)) for r, c in cells]
        mt = torch.from_numpy(maps)
        _stitch(mt, idx, S, T, d, acc["slide"], cnt["slide"])
        _stitch(normalize_max(mt), idx, S, T, d, acc["tile"], cnt["tile"])
        probs[cells[:, 0], cells[:, 1]] = p
        tile_sal[cells[:, 0], cells[:, 1]] = np.abs(maps).reshape(len(maps), -1).mean(1)
        all_cells.append(cells)
        all_maps.append(maps)
        done += 1
    sal = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for key in acc:
            sal[key] = np.where(cnt[key] > 0, acc[key] / np.maximum(cnt[key], 1), np.nan).astype(np.float32)
    finite = sal["slide"][np.isfinite(sal["slide"])]
    top = float(np.abs(finite).max()) if finite.size else 0.0
    if top > 0:
        sal["slide"] /= top
    n_computed = int(np.isfinite(probs[..., 0]).sum())
    res = SlideResult(tile_size=T, stride=S, grid_shape=(rows, cols), probs=probs,
                      saliency=sal["slide"] if normalize != "tile" else sal["tile"], tissue=tissue, downsample=d,
                      classes=list(plan["classes"]), seconds=0.0, n_tiles=rows * cols, n_computed=n_computed,
                      slide_size=tuple(plan["slide_size"]), method=plan["method"], normalize=normalize,
                      input_size=plan["input_size"], thumbnail=thumb, tissue_map=tissue_px)
    if normalize == "none":
        res.saliency = np.where(cnt["slide"] > 0, acc["slide"] / np.maximum(cnt["slide"], 1), np.nan).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        ent = -np.nansum(np.where(probs > 0, probs * np.log(np.maximum(probs, 1e-30)), 0.0), axis=-1)
    ent = np.where(np.isfinite(probs[..., 0]), ent, np.nan).astype(np.float32)
    m = int(plan["tile_map_size"])
    return SlideMaps(result=res, saliency=sal, entropy=res.tile_value_map(ent), tile_saliency=tile_sal,
                     pieces_done=done, n_pieces=int(plan["n_pieces"]), plan=plan,
                     tile_cells=np.concatenate(all_cells) if all_cells else np.zeros((0, 2), np.int32),
                     tile_maps=np.concatenate(all_maps) if all_maps else np.zeros((0, m, m), np.float32),
                     slide_scale=top if top > 0 else 1.0)
