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
    OUT/tiles.geojson          one polygon per computed tile in level-0 pixels (QuPath import), see export.tiles_geojson
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from ..attribution import get_method, seed_option
from .._utils.device import pick_device
from ..errors import InterpError
from .._utils.io import atomic_write
from .._utils.locking import folder_lock, folder_locked
from .._utils.validation import positive_int
from ..runs import load_run, run_identity, read_json, run_interpolation, write_json
from .explain import (MAX_TILES, NORMALIZATIONS, grid_shape, open_slide, read_thumbnail, tile_tissue_fraction,
                      tissue_mask)
from .export import GEOJSON, tiles_geojson, write_geojson, write_maps
from .maps import PIECES, PLAN, PROGRESS, assemble, map_downsample, piece_name
from .reader import slide_info
from .tiles import _placed_model, _resample, explain_tiles


#: Tissue tiles per resumable piece of an ``explain-slide`` job.
PIECE_TILES = 512
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
    ``slide.explain_slide``. ``sample_every``: only tiles ``(r, c)`` with ``r``, ``c`` multiples of it (a
    systematic sample for slides too large to explain whole; the rest NaN). Returns the summary.
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
    piece_tiles, batch_size, limit_tiles = _checked_options(slide_path, method, normalize, min_tissue, piece_tiles,
                                                            batch_size, limit_tiles)
    sample_every = positive_int(sample_every, "sample_every")
    dev = pick_device(device)
    loaded = load_run(run, dev, cam_layer=cam_layer)
    out = Path(out)
    job = _plan_job(loaded, slide_path, out, level=level, tile_size=tile_size, stride=stride, method=method,
                    min_tissue=min_tissue, limit_tiles=limit_tiles, map_side=map_side, seed=seed,
                    piece_tiles=piece_tiles, tile_map_size=tile_map_size, cam_layer=cam_layer,
                    sample_every=sample_every)
    reused = _reuse_or_reset(out, job)
    if reused is not None:
        return reused
    t_open = time.perf_counter() - t0
    dev, t_compute, n_computed_now = _compute_pieces(out, job, loaded, dev, method=method, seed=seed,
                                                     batch_size=batch_size, workers=workers, progress=progress)
    return _write_results(out, job, level=level, normalize=normalize, min_tissue=min_tissue, dev=dev, t0=t0,
                          t_open=t_open, t_compute=t_compute, n_computed_now=n_computed_now)


def _checked_options(slide_path: Path, method: str, normalize: str, min_tissue: float, piece_tiles: int,
                     batch_size: int, limit_tiles: int | None) -> tuple[int, int, int | None]:
    """Fail early on a bad option; ``(piece_tiles, batch_size, limit_tiles)`` as positive ints."""
    if not slide_path.is_file():
        raise InterpError(f"{slide_path}: no such slide file")
    if normalize not in NORMALIZATIONS:
        raise InterpError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    if not 0.0 <= float(min_tissue) <= 1.0:
        raise InterpError(f"min_tissue must be in [0, 1], got {min_tissue}")
    piece_tiles = positive_int(piece_tiles, "piece_tiles")
    batch_size = positive_int(batch_size, "batch_size")
    if limit_tiles is not None:
        limit_tiles = positive_int(limit_tiles, "limit_tiles")
    get_method(method)
    return piece_tiles, batch_size, limit_tiles


@dataclass
class _Job:
    """One planned ``explain-slide`` call: the open slide, its plan (``plan.json``), the slide's
    info, the run's identity, the thumbnail and tissue masks, and the tissue tiles to compute."""

    reader: Any
    plan: dict[str, Any]
    info: dict[str, Any]
    ident: dict[str, Any]
    thumb: np.ndarray
    tissue_px: np.ndarray
    tissue: np.ndarray
    cells: np.ndarray


def _plan_job(loaded: Any, slide_path: Path, out: Path, *, level: int, tile_size: int | None, stride: int | None,
              method: str, min_tissue: float, limit_tiles: int | None, map_side: int, seed: int, piece_tiles: int,
              tile_map_size: int | None, cam_layer: str | None, sample_every: int = 1) -> _Job:
    """Open the slide, choose the grid and the map resolution, find the tissue tiles (every
    ``sample_every``-th row and column of them only, when > 1); create ``out``."""
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
    out.mkdir(parents=True, exist_ok=True)
    ident = run_identity(loaded)
    st = slide_path.stat()
    info = slide_info(reader, slide_path)
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
    return _Job(reader, plan, info, ident, thumb, tissue_px, tissue, cells)


def _reuse_or_reset(out: Path, job: _Job) -> dict[str, Any] | None:
    """The finished folder's summary (``"reused": True``) when ``out`` holds the same plan complete; else
    clear another plan's files, write the thumbnail, tissue masks and ``plan.json``, and return None."""
    plan = job.plan
    try:
        old = read_json(out / PLAN) if (out / PLAN).is_file() else None
    except (OSError, ValueError, InterpError):
        old = None
    if old == plan and (out / "summary.json").is_file():  # finished with the same plan: reuse it as it is
        try:
            summary = {**read_json(out / "summary.json"), "reused": True}
        except (OSError, ValueError, InterpError):  # unreadable: recompute (the slide stays open for that)
            summary = None
        if summary is not None:
            close = getattr(job.reader, "close", None)
            if callable(close):
                close()
            return summary
    if old != plan:
        _clear(out)
    (out / "summary.json").unlink(missing_ok=True)  # written last: its presence means the maps are complete
    Image.fromarray(job.thumb).save(out / "thumbnail.png")
    Image.fromarray(job.tissue_px.astype(np.uint8) * 255).save(out / "tissue.png")
    np.save(out / "tissue_tiles.npy", job.tissue, allow_pickle=False)
    write_json(out / PLAN, plan)
    return None


def _compute_pieces(out: Path, job: _Job, loaded: Any, dev: torch.device, *, method: str, seed: int,
                    batch_size: int, workers: int,
                    progress: Callable[[int, int], None] | None) -> tuple[torch.device, float, int]:
    """Compute the pieces not on disk yet, each written as soon as it is done; close the slide.
    Returns ``(device used, compute seconds, tiles computed now)``."""
    plan, cells, reader = job.plan, job.cells, job.reader
    piece_tiles, tile, stride = plan["piece_tiles"], plan["tile_size"], plan["stride"]
    input_size, m = plan["input_size"], plan["tile_map_size"]
    pieces = out / PIECES
    pieces.mkdir(exist_ok=True)
    work, dev = _placed_model(loaded.model, dev)
    opts = seed_option(method, seed)
    total = int(len(cells))
    done = sum(len(cells[k * piece_tiles:(k + 1) * piece_tiles]) for k in range(plan["n_pieces"])
               if (pieces / piece_name(k)).is_file())
    t_compute, n_computed_now = 0.0, 0
    _write_progress(out, done, total, plan["n_pieces"])
    if progress is not None:
        progress(done, total)
    for k in range(plan["n_pieces"]):
        path = pieces / piece_name(k)
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
    return dev, t_compute, n_computed_now


def _write_results(out: Path, job: _Job, *, level: int, normalize: str, min_tissue: float, dev: torch.device,
                   t0: float, t_open: float, t_compute: float, n_computed_now: int) -> dict[str, Any]:
    """Assemble the pieces, write the maps, ``tiles.geojson`` and (last) ``summary.json``; return the summary."""
    plan = job.plan
    rows, cols = plan["grid"]
    t_write = time.perf_counter()
    maps_ = assemble(out, normalize=normalize)
    res = maps_.result
    files = write_maps(res, out)
    np.save(out / "saliency_slide.npy", maps_.saliency["slide"], allow_pickle=False)
    np.save(out / "saliency_tile.npy", maps_.saliency["tile"], allow_pickle=False)
    np.save(out / "entropy.npy", maps_.entropy, allow_pickle=False)
    files += ["saliency_slide.npy", "saliency_tile.npy", "entropy.npy", "tissue_tiles.npy", PLAN, PROGRESS]
    write_geojson(out / GEOJSON, tiles_geojson(maps_, plan))
    files.append(GEOJSON)
    pred = res.pred
    counts = {c: int((pred == i).sum()) for i, c in enumerate(res.classes)}
    summary = {
        "slide": job.info, "level": level, "slide_size": plan["slide_size"], "tile_size": plan["tile_size"],
        "stride": plan["stride"], "input_size": plan["input_size"], "tile_map_size": plan["tile_map_size"],
        "grid": [rows, cols], "downsample": plan["downsample"],
        "map_size": [int(res.saliency.shape[1]), int(res.saliency.shape[0])], "method": plan["method"],
        "normalize": normalize, "min_tissue": min_tissue, "limit_tiles": plan["limit_tiles"],
        "sample_every": plan.get("sample_every", 1),
        "tiles": {"total": rows * cols, "tissue": int(job.tissue.sum()), "computed": res.n_computed,
                  "skipped": rows * cols - res.n_computed},
        "pieces": {"count": plan["n_pieces"], "tiles_per_piece": plan["piece_tiles"]},
        "class_counts": counts, "classes": res.classes,
        "timings": {"open_seconds": t_open, "explain_seconds": t_compute, "tiles_computed_now": n_computed_now,
                    "write_seconds": time.perf_counter() - t_write, "total_seconds": time.perf_counter() - t0,
                    "tiles_per_second": n_computed_now / t_compute if t_compute > 0 else None},
        "device": str(dev), "run": job.ident, "files": files,
    }
    write_json(out / "summary.json", summary)
    summary["files"].append("summary.json")
    return summary


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
    goes (``read_progress``, ``maps.assemble`` show them) and its stderr to ``.<out name>.log`` beside
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
