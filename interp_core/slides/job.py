"""``explain-slide``: one slide file explained by a run, written to a folder of maps and a summary.

``explain_slide_file(run, slide, out)`` opens the slide (``slide.open_slide``: a whole-slide file
through OpenSlide at a pyramid level, or a plain image), runs ``slide.explain_slide`` and writes::

    OUT/thumbnail.png          the slide at the maps' resolution (1/downsample of the level's side)
    OUT/tissue.png             the tissue mask at that resolution (white = tissue)
    OUT/saliency.png|.npy      stitched saliency: overlay on the thumbnail; float32 [h, w], NaN = not computed
    OUT/probability_<class>.png  per-tile probability of each class drawn over the thumbnail
    OUT/probs.npy              float32 [rows, cols, C] per tile, NaN for skipped tiles
    OUT/prediction.png|.npy    predicted class per tile (int [rows, cols], -1 = skipped; PNG in class colours)
    OUT/saliency_slide.npy, saliency_tile.npy  both normalisations (slide-wide max; each tile's own max)
    OUT/entropy.npy            predictive entropy per pixel (mean over the tiles covering it), NaN = not computed
    OUT/tiles.geojson          one polygon per computed tile in level-0 pixels (QuPath import), see tiles_geojson
    OUT/plan.json, progress.json, pieces/NNNNN.npz, tissue_tiles.npy   the resumable job's state
    OUT/summary.json           slide, level, grid, tile counts, class counts, timings, run identity (written last)

The map resolution is chosen so that the longer side has at most ``map_side`` pixels [ours].
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from .deepzoom import TileMaps, colormap_lut
from ..attribution import colorize, display_range, get_method, normalize_max, scale_to_unit, seed_option
from .._utils.device import pick_device
from ..errors import InterpError
from .._utils.io import atomic_write
from .._utils.locking import folder_lock, folder_locked
from .._utils.validation import positive_int
from ..runs import load_run, run_identity, read_json, run_interpolation, write_json
from .explain import (MAX_TILES, NORMALIZATIONS, SlideResult, _placed_model, _resample, _stitch,
                    explain_tiles, grid_shape, open_slide, read_thumbnail, tile_tissue_fraction, tissue_mask)

#: Colours of the classes in ``prediction.png`` (matplotlib's tab10), grey-white where no tile was computed.
CLASS_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


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


#: Tissue tiles per resumable piece of an ``explain-slide`` job.
PIECE_TILES = 512
PLAN = "plan.json"
PROGRESS = "progress.json"
PIECES = "pieces"
GEOJSON = "tiles.geojson"
#: Bump when the meaning of a piece changes (old pieces are then recomputed).
PLAN_VERSION = 1


def explain_slide_file(run: str | Path, slide: str | Path, out: str | Path, *, level: int = 0,
                       tile_size: int | None = None, stride: int | None = None, method: str = "saliency",
                       batch_size: int = 64, min_tissue: float = 0.1, device: str = "auto",
                       limit_tiles: int | None = None, map_side: int = 1024, workers: int = 0,
                       normalize: str = "slide", seed: int = 0, piece_tiles: int = PIECE_TILES,
                       tile_map_size: int | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       cam_layer: str | None = None, sample_every: int = 1) -> dict[str, Any]:
    """Explain ``slide`` with ``run`` tile by tile and write the maps, ``tiles.geojson`` and ``summary.json`` to ``out``.

    Resumable: the tissue tiles (raster order) are cut into pieces of ``piece_tiles``; each
    piece's probabilities and tile maps go to ``out/pieces/NNNNN.npz`` as soon as it is done, and
    a call on a folder holding pieces of the same plan (same run weights, slide file, level,
    grid, method, tissue threshold, limit) computes only the missing ones; another plan starts
    over; a folder already complete with the same plan is returned as it is (its summary, with
    ``"reused": True``). ``out/plan.json`` is written first, ``out/progress.json`` after each piece and
    ``summary.json`` last (its presence means the folder is complete). One job per folder at a
    time (``_utils.locking.folder_lock``; ``job_running`` tells whether one holds it).

    ``tile_size``: tile side in pixels of the chosen ``level`` (default: the run's input size;
    another size is resized to the run's input for the model). ``tile_map_size``: side at which
    each tile's map is kept (default: the model's input side, i.e. as computed; smaller saves disk
    on very large slides). ``progress(done, total)``: tissue tiles computed (pieces found on disk
    count as done). ``cam_layer``: Grad-CAM's module name (see ``runs.load_run``). Other options as
    ``slide.explain_slide``. ``sample_every``: compute only the grid tiles ``(r, c)`` with ``r`` and
    ``c`` both multiples of it (a systematic sample, one tile in ``sample_every**2``, for estimates
    on slides too large to explain whole; the others stay uncomputed, NaN in the maps, as tiles
    outside the tissue do). Returns the summary.
    """
    with folder_lock(out):
        return _explain_slide_file(run, slide, out, level=level, tile_size=tile_size, stride=stride, method=method,
                                   batch_size=batch_size, min_tissue=min_tissue, device=device,
                                   limit_tiles=limit_tiles, map_side=map_side, workers=workers,
                                   normalize=normalize, seed=seed, piece_tiles=piece_tiles,
                                   tile_map_size=tile_map_size, progress=progress, cam_layer=cam_layer,
                                   sample_every=sample_every)


def _explain_slide_file(run: str | Path, slide: str | Path, out: str | Path, *, level: int, tile_size: int | None,
                        stride: int | None, method: str, batch_size: int, min_tissue: float, device: str,
                        limit_tiles: int | None, map_side: int, workers: int, normalize: str, seed: int,
                        piece_tiles: int, tile_map_size: int | None,
                        progress: Callable[[int, int], None] | None, cam_layer: str | None,
                        sample_every: int = 1) -> dict[str, Any]:
    t0 = time.perf_counter()
    slide_path = Path(slide)
    if not slide_path.is_file():
        raise InterpError(f"{slide_path}: no such slide file")
    if normalize not in NORMALIZATIONS:
        raise InterpError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    if not 0.0 <= float(min_tissue) <= 1.0:
        raise InterpError(f"min_tissue must be in [0, 1], got {min_tissue}")
    piece_tiles = positive_int(piece_tiles, "piece_tiles")
    sample_every = positive_int(sample_every, "sample_every")
    batch_size = positive_int(batch_size, "batch_size")
    if limit_tiles is not None:
        limit_tiles = positive_int(limit_tiles, "limit_tiles")
    get_method(method)
    dev = pick_device(device)
    loaded = load_run(run, dev, cam_layer=cam_layer)
    input_size = int(loaded.config["image_size"])
    tile = input_size if tile_size is None else positive_int(tile_size, "tile_size")
    stride = tile if stride is None else positive_int(stride, "stride")
    if stride > tile:
        raise InterpError(f"stride ({stride}) must not exceed tile_size ({tile}): the tiles would leave gaps")
    m = input_size if tile_map_size is None else min(positive_int(tile_map_size, "tile_map_size"), input_size)
    reader = open_slide(slide_path, level=level)
    W, H = reader.size
    rows, cols = grid_shape((W, H), tile, stride)
    if rows * cols > MAX_TILES:
        raise InterpError(f"{W}x{H} pixels at tile {tile}, stride {stride} is {rows * cols:,} tiles, more than "
                          f"{MAX_TILES:,}; use a larger stride or tile, or a coarser --level")
    d = map_downsample(reader.size, map_side)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ident = run_identity(loaded)
    st = slide_path.stat()
    info = _slide_info(reader, slide_path)
    plan = {"version": PLAN_VERSION, "weights_sha1": ident["weights_sha1"], "run": ident["path"],
            "slide": str(slide_path.resolve()), "slide_bytes": st.st_size, "slide_mtime_ns": st.st_mtime_ns,
            "level": int(level), "level_downsample": float(getattr(reader, "downsample", 1.0)),
            "slide_size": [W, H], "level0_size": info["level0_size"], "mpp": info["mpp"],
            "tile_size": tile, "stride": stride, "input_size": input_size, "tile_map_size": m, "grid": [rows, cols],
            "downsample": d, "method": method, "cam_layer": cam_layer, "seed": seed, "min_tissue": float(min_tissue),
            "limit_tiles": limit_tiles, "piece_tiles": piece_tiles, "classes": loaded.classes}
    if sample_every > 1:  # only then, so the plans (and results) of whole-grid jobs stay as they were
        plan["sample_every"] = sample_every
    thumb = read_thumbnail(reader, d)
    tissue_px = tissue_mask(thumb)
    tissue = tile_tissue_fraction(tissue_px, (rows, cols), tile, stride, d) >= float(min_tissue)
    cells = np.argwhere(tissue)
    if sample_every > 1:
        cells = cells[(cells[:, 0] % sample_every == 0) & (cells[:, 1] % sample_every == 0)]
    if limit_tiles is not None:
        cells = cells[:limit_tiles]
    plan["n_todo"] = int(len(cells))
    plan["n_pieces"] = -(-len(cells) // piece_tiles)
    try:
        old = read_json(out / PLAN) if (out / PLAN).is_file() else None
    except (OSError, ValueError, InterpError):
        old = None
    if old == plan and (out / "summary.json").is_file():  # finished with the same plan: reuse it as it is
        close = getattr(reader, "close", None)
        if callable(close):
            close()
        try:
            return {**read_json(out / "summary.json"), "reused": True}
        except (OSError, ValueError, InterpError):
            pass
    if old != plan:
        _clear(out)
    (out / "summary.json").unlink(missing_ok=True)  # written last: its presence means the maps are complete
    Image.fromarray(thumb).save(out / "thumbnail.png")
    Image.fromarray(tissue_px.astype(np.uint8) * 255).save(out / "tissue.png")
    np.save(out / "tissue_tiles.npy", tissue, allow_pickle=False)
    write_json(out / PLAN, plan)
    t_open = time.perf_counter() - t0

    pieces = out / PIECES
    pieces.mkdir(exist_ok=True)
    work, dev = _placed_model(loaded.model, dev)
    opts = seed_option(method, seed)
    total = int(len(cells))
    done = sum(len(cells[k * piece_tiles:(k + 1) * piece_tiles]) for k in range(plan["n_pieces"])
               if (pieces / _piece_name(k)).is_file())
    t_compute, n_computed_now = 0.0, 0
    _write_progress(out, done, total, plan["n_pieces"])
    if progress is not None:
        progress(done, total)
    for k in range(plan["n_pieces"]):
        path = pieces / _piece_name(k)
        if path.is_file():
            continue
        part = cells[k * piece_tiles:(k + 1) * piece_tiles]
        t1 = time.perf_counter()
        probs, maps = [], []
        for idx, p, mp in explain_tiles(work, reader, part, stride=stride, tile_size=tile, method=method,
                                        batch_size=batch_size, input_size=input_size if tile != input_size else None,
                                        method_options=opts, workers=workers, device=dev,
                                        interpolation=run_interpolation(loaded.config)):
            probs.append(p.astype(np.float32))
            maps.append((mp if m == mp.shape[-1] else _resample(mp, (m, m))).numpy().astype(np.float32))
            if progress is not None:
                progress(done + sum(len(q) for q in probs), total)
        _save_piece(path, part.astype(np.int32), np.concatenate(probs), np.concatenate(maps))
        t_compute += time.perf_counter() - t1
        n_computed_now += len(part)
        done += len(part)
        _write_progress(out, done, total, plan["n_pieces"])
    close = getattr(reader, "close", None)
    if callable(close):
        close()

    t_write = time.perf_counter()
    maps_ = assemble(out, normalize=normalize)
    res = maps_.result
    files = _write_maps(res, out)
    np.save(out / "saliency_slide.npy", maps_.saliency["slide"], allow_pickle=False)
    np.save(out / "saliency_tile.npy", maps_.saliency["tile"], allow_pickle=False)
    np.save(out / "entropy.npy", maps_.entropy, allow_pickle=False)
    files += ["saliency_slide.npy", "saliency_tile.npy", "entropy.npy", "tissue_tiles.npy", PLAN, PROGRESS]
    write_geojson(out / GEOJSON, tiles_geojson(maps_, plan))
    files.append(GEOJSON)
    pred = res.pred
    counts = {c: int((pred == i).sum()) for i, c in enumerate(res.classes)}
    summary = {
        "slide": info, "level": level, "slide_size": [W, H], "tile_size": tile,
        "stride": stride, "input_size": input_size, "tile_map_size": m, "grid": [rows, cols], "downsample": d,
        "map_size": [int(res.saliency.shape[1]), int(res.saliency.shape[0])], "method": method,
        "normalize": normalize, "min_tissue": min_tissue, "limit_tiles": limit_tiles, "sample_every": sample_every,
        "tiles": {"total": rows * cols, "tissue": int(tissue.sum()), "computed": res.n_computed,
                  "skipped": rows * cols - res.n_computed},
        "pieces": {"count": plan["n_pieces"], "tiles_per_piece": piece_tiles},
        "class_counts": counts, "classes": res.classes,
        "timings": {"open_seconds": t_open, "explain_seconds": t_compute, "tiles_computed_now": n_computed_now,
                    "write_seconds": time.perf_counter() - t_write, "total_seconds": time.perf_counter() - t0,
                    "tiles_per_second": n_computed_now / t_compute if t_compute > 0 else None},
        "device": str(dev), "run": ident, "files": files,
    }
    write_json(out / "summary.json", summary)
    summary["files"].append("summary.json")
    return summary


def _slide_info(reader: Any, path: Path) -> dict[str, Any]:
    info = reader.info() if hasattr(reader, "info") else {"file": str(path), "vendor": "image", "level": 0,
                                                          "size": list(reader.size), "mpp": [None, None]}
    dims = getattr(reader, "level_dimensions", None)
    info["level0_size"] = list(dims[0]) if dims else list(reader.size)
    return info


def _piece_name(k: int) -> str:
    return f"{k:05d}.npz"


def _clear(out: Path) -> None:
    """Remove the pieces and maps of another plan from ``out`` (files this module writes only)."""
    pieces = out / PIECES
    if pieces.is_dir():
        for f in pieces.glob("*.npz"):
            f.unlink()
    for name in ("summary.json", PLAN, PROGRESS, GEOJSON):
        (out / name).unlink(missing_ok=True)


def _save_piece(path: Path, cells: np.ndarray, probs: np.ndarray, maps: np.ndarray) -> None:
    """Write one piece atomically (temp file + rename): a reader never sees half a piece."""
    atomic_write(path, lambda f: np.savez(f, cells=cells, probs=probs, maps=maps))


def _write_progress(out: Path, done: int, total: int, n_pieces: int) -> None:
    write_json(out / PROGRESS, {"done": int(done), "total": int(total), "pieces": int(n_pieces),
                                "time": time.time()})


def job_running(out: str | Path) -> bool:
    """True while an ``explain-slide`` job (any process) holds the folder ``out``'s lock."""
    return folder_locked(out)


def read_progress(out: str | Path) -> dict[str, Any]:
    """``{done, total, pieces, complete, running}`` of the job folder ``out`` (zeros when nothing is there)."""
    out = Path(out)
    prog = {"done": 0, "total": 0, "pieces": 0}
    try:
        if (out / PROGRESS).is_file():
            prog.update(read_json(out / PROGRESS))
    except (OSError, ValueError, InterpError):
        pass
    prog["complete"] = (out / "summary.json").is_file()
    prog["running"] = job_running(out)
    return prog


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

    Overlapping tiles are averaged (``slide._stitch``); ``"slide"`` normalisation divides the
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
        f = out / PIECES / _piece_name(k)
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


def tiles_geojson(maps: SlideMaps, plan: dict[str, Any]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection QuPath imports: one ``Polygon`` per computed tile in level-0 pixels.

    Tile ``(r, c)`` of level ``L`` (downsample ``ds``) covers level-0 pixels
    ``[c*stride*ds, (c*stride + tile)*ds) x [r*stride*ds, (r*stride + tile)*ds)``, clipped to the
    slide. ``properties``: ``objectType`` "tile", ``classification`` ``{name, color}`` (predicted
    class), ``measurements``: ``prob_<class>`` per class, ``entropy`` (nats), ``saliency_mean_abs``
    (mean ``|map|`` of the tile, raw) and ``saliency_mass`` (the tile's share of the slide's total
    ``|map|``, so the masses sum to 1), and ``row``/``col`` of the grid. ``id``: a UUID (QuPath reads
    the object id as one), the same for the same grid tile of the same run and grid, different for
    another run. The shape follows what QuPath 0.4/0.5 reads (``QuPathTypeAdapters.PathObjectTypeAdapter``:
    ``objectType`` "tile" makes a tile object; a classification object needs ``name`` and an RGB
    ``color`` array; measurements as a name -> number map); see ``docs/slides.md``.
    """
    res = maps.result
    ds = float(plan["level_downsample"])
    W0, H0 = plan["level0_size"]
    T, S = int(plan["tile_size"]), int(plan["stride"])
    total = float(np.nansum(maps.tile_saliency))
    # ids differ between runs and grids, so two runs' files imported into one QuPath image never share an id
    key = (f"interp-core/tile/{plan.get('weights_sha1', '')}/{plan.get('slide_bytes', '')}/L{plan.get('level', 0)}"
           f"/t{T}/s{S}")
    feats = []
    for r, c in zip(*np.nonzero(np.isfinite(res.probs[..., 0]))):
        r, c = int(r), int(c)
        x0, y0 = c * S * ds, r * S * ds
        x1, y1 = min((c * S + T) * ds, W0), min((r * S + T) * ds, H0)
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        p = res.probs[r, c]
        k = int(np.argmax(p))
        ent = float(-np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-30)), 0.0)))
        meas = {f"prob_{name}": float(p[i]) for i, name in enumerate(res.classes)}
        meas.update({"entropy": ent, "saliency_mean_abs": float(maps.tile_saliency[r, c]),
                     "saliency_mass": float(maps.tile_saliency[r, c]) / total if total > 0 else 0.0,
                     "row": r, "col": c})
        color = list(CLASS_COLORS[k % len(CLASS_COLORS)])
        feats.append({"type": "Feature", "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{key}/{r}/{c}")),
                      "geometry": {"type": "Polygon", "coordinates": [ring]},
                      "properties": {"objectType": "tile", "classification": {"name": res.classes[k], "color": color},
                                     "measurements": meas}})
    return {"type": "FeatureCollection", "features": feats}


def write_geojson(path: str | Path, collection: dict[str, Any]) -> None:
    """Write a GeoJSON object atomically (strict JSON)."""
    write_json(path, collection)


def _write_maps(res: Any, out: Path) -> list[str]:
    """Write the PNG and .npy maps of a ``SlideResult``; return the file names."""
    out.mkdir(parents=True, exist_ok=True)
    thumb = res.thumbnail
    written: list[str] = []

    def png(name: str, arr: np.ndarray) -> None:
        Image.fromarray(arr).save(out / name)
        written.append(name)

    def npy(name: str, arr: np.ndarray) -> None:
        np.save(out / name, arr, allow_pickle=False)
        written.append(name)

    png("thumbnail.png", thumb)
    png("tissue.png", (res.tissue_map.astype(np.uint8) * 255))
    sal = res.saliency
    npy("saliency.npy", sal.astype(np.float32))
    finite = sal[np.isfinite(sal)]
    vmin, vmax = display_range(finite if finite.size else np.zeros(1), clip_percentile=99.0)
    png("saliency.png", overlay_nan(thumb, sal, vmin, vmax, cmap="inferno"))
    npy("probs.npy", res.probs.astype(np.float32))
    npy("prediction.npy", res.pred.astype(np.int64))
    prob_maps = [res.prob_map(i) for i in range(len(res.classes))]
    for name, pm in zip(res.classes, prob_maps):
        png(f"probability_{_safe_name(name)}.png", overlay_nan(thumb, pm, 0.0, 1.0, cmap="viridis"))
    stack = np.stack(prob_maps)
    covered = np.isfinite(stack[0])
    cls = np.where(covered, np.argmax(np.nan_to_num(stack, nan=-1.0), axis=0), -1)
    colors = np.asarray([CLASS_COLORS[i % len(CLASS_COLORS)] for i in range(len(res.classes))], np.uint8)
    pred_img = thumb.copy()
    pred_img[covered] = (0.4 * thumb[covered] + 0.6 * colors[cls[covered]]).astype(np.uint8)
    png("prediction.png", pred_img)
    return written


def _safe_name(name: str) -> str:
    """A class name as a file-name fragment (letters, digits, ``-``, ``_``; others become ``_``)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "class"


def results_dir(run: str | Path, slide: str | Path, *, level: int = 0, method: str = "saliency",
                tile_size: int | None = None, stride: int | None = None) -> Path:
    """Where ``explain-slide`` writes by default, and where the Slide page looks:
    ``RUN/slides/<slide stem>-<8 hex of its real path>/L<level>-<method>-t<tile>-s<stride>``.

    ``tile_size`` defaults to the run's input size and ``stride`` to the tile size, so the page and
    the command land in the same folder for the same settings and reuse each other's results.
    """

    run, slide = Path(run), Path(slide)
    if tile_size is None:
        tile_size = int(read_json(run / "config.json")["image_size"])
    stride = tile_size if stride is None else stride
    tag = hashlib.sha1(str(slide.resolve()).encode()).hexdigest()[:8]
    return run / "slides" / f"{slide.stem}-{tag}" / f"L{int(level)}-{method}-t{int(tile_size)}-s{int(stride)}"


def start_background(run: str | Path, slide: str | Path, out: str | Path, *, level: int = 0,
                     method: str = "saliency", stride: int | None = None, device: str = "cpu",
                     extra: list[str] | None = None) -> int:
    """Start ``python -m interp_core explain-slide`` for ``out`` in a detached process; return its pid.

    The process takes the folder's lock while it works (``job_running``), writes its pieces as it
    goes (``read_progress``, ``assemble`` show them) and its stderr to ``.<out name>.log`` beside
    ``out``. Nothing is started when a job already holds the folder (returns 0).
    """
    out = Path(out)
    if job_running(out):
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "interp_core", "explain-slide", "--run", str(Path(run).resolve()),
            "--slide", str(Path(slide).resolve()), "--out", str(out.resolve()), "--level", str(int(level)),
            "--attribution", method, "--device", device, "--quiet"]
    if stride is not None:
        args += ["--stride", str(int(stride))]
    args += list(extra or [])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    repo = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(repo), *filter(None, [os.environ.get("PYTHONPATH")])])
    with open(out.parent / f".{out.name}.log", "ab") as log:
        proc = subprocess.Popen(args, cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log, start_new_session=True)
    return proc.pid


def job_log_tail(out: str | Path, n: int = 5) -> str:
    """The last ``n`` lines of a background job's log (its one-line error when it failed)."""
    out = Path(out)
    log = out.parent / f".{out.name}.log"
    try:
        return "\n".join(log.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


# -- what the Slide page shows (Streamlit-free; the page and ui/slide_page.py only draw it) -----------

#: The Slide page's overlays: id -> label.
OVERLAYS = {"none": "no overlay", "probability": "class probability per tile", "saliency": "saliency (stitched)",
            "entropy": "uncertainty (predictive entropy)", "tissue": "tissue mask"}
#: Each overlay's default colour map.
OVERLAY_CMAPS = {"probability": "viridis", "saliency": "inferno", "entropy": "magma", "tissue": "Greens"}


def default_pair(entries: list, dataset: str | None) -> list[str]:
    """Keys of the two runs the viewers show first: ``dataset``'s baseline (objective ``erm``) and its
    SCAAT retrain when both exist; else the first two runs (the same one twice when there is one).
    ``entries`` have ``key``, ``dataset`` and ``config`` (``interp_core.catalog`` entries)."""
    pool = [e for e in entries if e.dataset == dataset] or entries
    base = [e.key for e in pool if e.config.get("objective") == "erm"]
    scaat = [e.key for e in pool if e.config.get("objective") == "scaat"]
    pair = (base[:1] + scaat[:1]) if base and scaat else [e.key for e in pool[:2]]
    return pair if len(pair) == 2 else (pair * 2)[:2]


def dataset_for_slide(datasets: set[str], slide: str | Path) -> str | None:
    """The dataset a slide is named after (``synthetic-he.tiff`` -> ``synthetic-he``), or None.
    The longest matching name wins (``synthetic-he-biased`` over ``synthetic-he``)."""
    stem = Path(slide).stem
    hits = [d for d in datasets if d and stem.startswith(d)]
    return max(hits, key=len) if hits else None


def tile_stride(size: int, step: str) -> int:
    """The page's tile step: ``"tile"`` (no overlap) or ``"half"`` (half a tile; overlaps averaged)."""
    return size if step == "tile" else max(1, size // 2)


def overlay_values(m: SlideMaps | None, show: str, cls: str, normalize: str) -> np.ndarray | None:
    """The map a viewer overlays for ``show`` (see ``OVERLAYS``), NaN where nothing was computed; None
    for no overlay or no results yet."""
    if m is None or show == "none":
        return None
    r = m.result
    if show == "probability":
        return r.prob_map(r.classes.index(cls)) if cls in r.classes else None
    if show == "saliency":
        return m.saliency[normalize]
    if show == "entropy":
        return m.entropy
    return r.tissue_map.astype(np.float32)


def overlay_scale(values: list[np.ndarray | None], show: str, normalize: str, classes: list[str],
                  cls: str) -> tuple[float, float, str]:
    """One colour scale ``(vmin, vmax, label)`` for both viewers: saliency from 0 (or ``-top`` when
    signed) to the 99.5th percentile of ``|value|`` over both maps; entropy 0..log(classes) nats;
    probability and tissue 0..1."""
    finite = [v[np.isfinite(v)] for v in values if v is not None and np.isfinite(v).any()]
    if show == "saliency" and finite:
        both = np.concatenate(finite)
        top = float(np.percentile(np.abs(both), 99.5)) or 1.0
        return (-top if both.min() < 0 else 0.0), top, \
            f"saliency ({'slide-wide' if normalize == 'slide' else 'per tile'})"
    if show == "entropy":
        return 0.0, float(np.log(max(2, len(classes)))), "entropy (nats)"
    if show == "probability":
        return 0.0, 1.0, f"p({cls})"
    return 0.0, 1.0, "tissue"


def native_tile_maps(m: SlideMaps, normalize: str) -> TileMaps:
    """Each tile's saliency map as computed, placed in level-0 pixels (``deepzoom.TileMaps``): what the
    viewer shows deeper than the stitched map."""
    ds = float(m.plan["level_downsample"])
    return TileMaps(m.tile_cells, m.native_maps(normalize), m.plan["tile_size"] * ds, m.plan["stride"] * ds,
                    tuple(m.plan["grid"]))


def viewer_grid(plan: dict[str, Any] | None) -> dict[str, float] | None:
    """The tile grid in level-0 pixels (the viewer maps a click to a tile with it), None before results."""
    if plan is None:
        return None
    ds = float(plan["level_downsample"])
    return {"tile": plan["tile_size"] * ds, "stride": plan["stride"] * ds, "rows": plan["grid"][0],
            "cols": plan["grid"][1]}


def css_ramp(cmap: str) -> list[str]:
    """The colour map as 9 CSS colours (the legend's gradient)."""
    lut = colormap_lut(cmap)
    return [f"rgb({r},{g},{b})" for r, g, b in lut[::32].tolist() + [lut[-1].tolist()]]


def job_state(p: dict[str, Any]) -> str:
    """A viewer title's job state: done, tiles so far, or not explained yet."""
    return "done" if p["complete"] else (f"{p['done']:,}/{p['total']:,} tiles" if p["total"] else "not explained yet")


def stored_tile_metrics(m: SlideMaps | None, row: int, col: int) -> dict[str, float | None]:
    """What explain-slide stored for tile (row, col): p(predicted class), entropy (nats) and the
    tile's share of the slide's |saliency|; empty when the tile was not computed."""
    if m is None or not np.isfinite(m.result.probs[row, col, 0]):
        return {}
    pr = m.result.probs[row, col]
    total = float(np.nansum(m.tile_saliency))
    return {"explain-slide p(pred)": float(pr.max()),
            "entropy (nats)": float(-(pr * np.log(np.maximum(pr, 1e-30))).sum()),
            "saliency mass (share of slide)": float(m.tile_saliency[row, col]) / total if total else None}


def change_map(left: np.ndarray, right: np.ndarray) -> np.ndarray | None:
    """Right minus left, each map divided by its own maximum ``|value|`` (None when shapes differ)."""
    if left.shape != right.shape:
        return None
    return right / (float(np.abs(right).max()) or 1.0) - left / (float(np.abs(left).max()) or 1.0)


def stitched_view(slide: str | Path, m: SlideMaps | None, values: np.ndarray | None, vmin: float, vmax: float,
                  cmap: str, alpha: float, map_side: int = 1024) -> np.ndarray:
    """uint8 RGB: the stitched overlay on the slide's thumbnail (the job's own thumbnail when there are
    results, else one of at most ``map_side`` px a side), what the page shows when the deep-zoom
    viewer is unavailable."""
    if m is not None:
        thumb = m.result.thumbnail
    else:
        reader = open_slide(slide)
        thumb = read_thumbnail(reader, map_downsample(reader.size, map_side))
    if values is None or values.shape != thumb.shape[:2]:
        return thumb
    return overlay_nan(thumb, values, vmin, vmax, cmap=cmap, alpha=float(alpha))
