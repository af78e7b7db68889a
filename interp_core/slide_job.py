"""``explain-slide``: one slide file explained by a run, written to a folder of maps and a summary.

``explain_slide_file(run, slide, out)`` opens the slide (``slide.open_slide``: a whole-slide file
through OpenSlide at a pyramid level, or a plain image), runs ``slide.explain_slide`` and writes::

    OUT/thumbnail.png          the slide at the maps' resolution (1/downsample of the level's side)
    OUT/tissue.png             the tissue mask at that resolution (white = tissue)
    OUT/saliency.png|.npy      stitched saliency: overlay on the thumbnail; float32 [h, w], NaN = not computed
    OUT/probability_<class>.png  per-tile probability of each class drawn over the thumbnail
    OUT/probs.npy              float32 [rows, cols, C] per tile, NaN for skipped tiles
    OUT/prediction.png|.npy    predicted class per tile (int [rows, cols], -1 = skipped; PNG in class colours)
    OUT/summary.json           slide, level, grid, tile counts, class counts, timings, run identity

The map resolution is chosen so that the longer side has at most ``map_side`` pixels [ours].
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from .errors import InterpError

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
    from .attribution import colorize, scale_to_unit
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    col = colorize(scale_to_unit(np.where(ok, v, vmin), vmin, vmax), cmap) * 255.0
    out = rgb.astype(np.float64)
    out[ok] = (1 - alpha) * out[ok] + alpha * col[ok]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def explain_slide_file(run: str | Path, slide: str | Path, out: str | Path, *, level: int = 0,
                       tile_size: int | None = None, stride: int | None = None, method: str = "saliency",
                       batch_size: int = 64, min_tissue: float = 0.1, device: str = "auto",
                       limit_tiles: int | None = None, map_side: int = 1024, workers: int = 0,
                       normalize: str = "slide", seed: int = 0,
                       progress: Callable[[int, int], None] | None = None,
                       cam_layer: str | None = None) -> dict[str, Any]:
    """Explain ``slide`` with ``run`` tile by tile and write the maps and ``summary.json`` to ``out``.

    ``tile_size``: tile side in pixels of the chosen ``level`` (default: the run's input size;
    another size is resized to the run's input for the model). Other options as
    ``slide.explain_slide``; ``limit_tiles`` computes only the first N tissue tiles. Returns the
    summary (also written to ``out/summary.json``). ``cam_layer``: Grad-CAM's module name (see
    ``runs.load_run``).
    """
    from .attribution import seed_option
    from .device import pick_device
    from .explain_dataset import run_identity
    from .runs import load_run, run_interpolation, write_json
    from .slide import explain_slide, open_slide
    t0 = time.perf_counter()
    slide_path = Path(slide)
    if not slide_path.is_file():
        raise InterpError(f"{slide_path}: no such slide file")
    dev = pick_device(device)
    loaded = load_run(run, dev, cam_layer=cam_layer)
    input_size = int(loaded.config["image_size"])
    tile = input_size if tile_size is None else int(tile_size)
    reader = open_slide(slide_path, level=level)
    d = map_downsample(reader.size, map_side)
    t_open = time.perf_counter() - t0
    res = explain_slide(loaded.model, reader, tile_size=tile, stride=stride, method=method, batch_size=batch_size,
                        downsample=d, device=dev, progress=progress, classes=loaded.classes,
                        input_size=input_size if tile != input_size else None, normalize=normalize,
                        min_tissue=min_tissue, method_options=seed_option(method, seed), workers=workers,
                        limit=limit_tiles, interpolation=run_interpolation(loaded.config))
    close = getattr(reader, "close", None)
    if callable(close):
        close()
    t_write = time.perf_counter()
    out = Path(out)
    (out / "summary.json").unlink(missing_ok=True)  # written last: its presence means the maps are complete
    files = _write_maps(res, out)
    pred = res.pred
    counts = {c: int((pred == i).sum()) for i, c in enumerate(res.classes)}
    info = reader.info() if hasattr(reader, "info") else {"file": str(slide_path), "vendor": "image", "level": 0,
                                                            "size": list(reader.size), "mpp": [None, None]}
    summary = {
        "slide": info, "level": level, "slide_size": list(res.slide_size), "tile_size": res.tile_size,
        "stride": res.stride, "input_size": input_size, "grid": list(res.grid_shape), "downsample": res.downsample,
        "map_size": [int(res.saliency.shape[1]), int(res.saliency.shape[0])], "method": method,
        "normalize": normalize, "min_tissue": min_tissue, "limit_tiles": limit_tiles,
        "tiles": {"total": res.n_tiles, "tissue": int(res.tissue.sum()), "computed": res.n_computed,
                  "skipped": res.n_tiles - res.n_computed},
        "class_counts": counts, "classes": res.classes,
        "timings": {"open_seconds": t_open, "explain_seconds": res.seconds,
                    "write_seconds": time.perf_counter() - t_write, "total_seconds": time.perf_counter() - t0,
                    "tiles_per_second": res.tiles_per_second},
        "device": str(dev), "run": run_identity(loaded), "files": files,
    }
    write_json(out / "summary.json", summary)
    summary["files"].append("summary.json")
    return summary


def _write_maps(res: Any, out: Path) -> list[str]:
    """Write the PNG and .npy maps of a ``SlideResult``; return the file names."""
    from .attribution import display_range
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
