"""Dataset-wide explain jobs written in shards: resumable, memory bounded, reusable.

``explain_dataset(run, data, split, out)`` attributes every tile of a split (or a stratified
``limit`` of them, as ``evaluate``) and writes ``out/manifest.json`` and ``out/shard_*.npz`` in
the format of :mod:`interp_core.evaluation.shards` (which also reads them back).

Shards are written atomically (temporary file, fsync, rename), so a shard file that exists is
complete; the manifest is rewritten after every shard. Running the same job again skips the
shards that exist and does the rest; a different job in the same folder (another run, weights,
dataset, split, method, ...) is refused with the fields that differ. Memory: one shard's arrays
plus one batch, whatever the dataset size.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from .._utils.device import pick_device
from .._utils.io import atomic_write
from .._utils.locking import folder_lock
from .._utils.validation import positive_int, workers_count
from ..attribution import get_method, predict_and_attribute
from ..attribution.registry import identity_options
from ..data import open_split
from ..data.selection import data_fingerprint, stratified_subset, tiles_digest
from ..errors import DataError, InterpError
from ..runs import LoadedRun, load_run, run_identity, run_interpolation, write_json
from .explain import resolve_target
from .shards import (FORMAT, FORMAT_VERSION, IDENTITY_KEYS, MANIFEST, FolderInUseError, OtherJobError,
                     existing_shards, read_indices, shard_name)

SHARD_KEYS = ("indices", "labels", "predictions", "targets", "probabilities", "attributions", "scales")


def explain_dataset(run: str | Path | LoadedRun, data: str | Path, split: str, out: str | Path, *,
                    method: str = "saliency", shard_size: int = 256, batch_size: int = 64, device: str = "auto",
                    limit: int | None = None, target: str | int | None = None, seed: int = 0, workers: int = 0,
                    progress: bool | Callable[[int, int], None] = False,
                    on_shard: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Attribute every tile of ``data``/``split`` with ``run`` and write shards to ``out`` (module docstring).

    ``method``: an attribution method (``interp_core.attribution.METHODS``), seeded with ``seed``
    when stochastic. ``target``: class name or index explained in every tile; None (default) the
    predicted class. ``limit``: only a stratified subset of that many tiles (as ``evaluate``).
    ``progress``: True for a tqdm bar on stderr, or a callable ``(done, total)`` in tiles.
    ``on_shard(k)``: called after shard ``k`` is on disk (tests use it to interrupt a job).
    Returns the final manifest plus ``shards_written`` (this call) and ``seconds``.
    """
    t0 = time.perf_counter()
    shard_size = positive_int(shard_size, "shard_size")
    batch_size = positive_int(batch_size, "batch_size")
    if limit is not None:
        limit = positive_int(limit, "limit")
    workers = workers_count(workers)
    get_method(method)
    dev = pick_device(device)
    loaded = run if isinstance(run, LoadedRun) else load_run(run, dev)
    model = loaded.model.to(dev).eval()
    image_size = int(loaded.config["image_size"])
    ds = open_split(data, split, image_size=image_size, interpolation=run_interpolation(loaded.config))
    if ds.classes != loaded.classes:
        raise DataError(f"{data}: classes {ds.classes} differ from the run's {loaded.classes}")
    idx = list(range(len(ds))) if limit is None or limit >= len(ds) else stratified_subset(ds.labels, limit)
    tgt = resolve_target(target, loaded.classes)
    opts = identity_options(method, seed)  # the seed, and a non-black default baseline (occlusion's blur)
    if method == "gradcam" and getattr(model, "cam_layer_name", None):  # a named layer is part of the job
        opts = {**opts, "layer": model.cam_layer_name}
    manifest: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "run": run_identity(loaded),
        "data": {"path": str(Path(data).resolve()), "fingerprint": data_fingerprint(data)},
        "split": split, "method": method, "method_options": opts, "target": tgt, "shard_size": shard_size,
        "n_tiles": len(idx), "limit": limit, "tiles_digest": tiles_digest(ds, idx), "image_size": image_size,
        "classes": loaded.classes, "n_shards": math.ceil(len(idx) / shard_size), "dtype": "float16 * scales",
    }
    files = [ds.records[i].file for i in idx] if hasattr(ds, "records") else [str(i) for i in idx]
    out = Path(out)
    with folder_lock(out):  # one job per folder at a time, across processes and dashboard sessions
        done = _check_folder(out, manifest)
        _write_manifest(out, manifest, done)
        bar, report = _progress(progress, len(idx), sum(_shard_len(k, shard_size, len(idx)) for k in done))
        written = 0
        try:
            for k in range(manifest["n_shards"]):
                if k in done:
                    continue
                part = slice(k * shard_size, (k + 1) * shard_size)
                loader = DataLoader(Subset(ds, idx[part]), batch_size=batch_size, shuffle=False, num_workers=workers)
                arrays = _shard_arrays(model, loader, method, opts, tgt, dev, report, idx[part], files[part])
                atomic_write(out / shard_name(k), lambda f: np.savez(f, **arrays))
                done.add(k)
                written += 1
                _write_manifest(out, manifest, done)
                if on_shard is not None:
                    on_shard(k)
        finally:
            if bar is not None:
                bar.close()
        return {**manifest, "shards_written": written, "seconds": time.perf_counter() - t0}


def _shard_arrays(model: nn.Module, loader: DataLoader, method: str, opts: dict[str, Any], target: int | None,
                  device: torch.device, report: Callable[[int], None], rows: Sequence[int],
                  files: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays of one shard (the format of :mod:`.shards`): predict and attribute every batch of ``loader``."""
    parts: dict[str, list[np.ndarray]] = {key: [] for key in SHARD_KEYS}
    for batch in loader:
        x = batch["image"].to(device)
        p, t, a = predict_and_attribute(model, x, method, target, **opts)
        a = a.float().cpu()
        scale = a.flatten(1).abs().amax(1)
        a16 = (a / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None, None]).half()
        for key, v in zip(SHARD_KEYS, (batch["index"], batch["label"], p.argmax(1), t, p, a16, scale)):
            parts[key].append(v.detach().cpu().numpy())
        report(len(x))
    arrays = {key: np.concatenate(v) for key, v in parts.items()}
    for key in ("indices", "labels", "predictions", "targets"):
        arrays[key] = arrays[key].astype(np.int64)
    arrays["probabilities"] = arrays["probabilities"].astype(np.float32)
    arrays["scales"] = arrays["scales"].astype(np.float32)
    arrays["files"] = np.asarray(list(files), dtype=str)
    if arrays["indices"].tolist() != list(rows):
        raise RuntimeError("the DataLoader returned tiles out of order")
    return arrays


def _write_manifest(out: Path, manifest: dict[str, Any], done: set[int]) -> None:
    manifest["shards_done"] = sorted(done)
    manifest["complete"] = len(done) == manifest["n_shards"]
    write_json(out / MANIFEST, manifest)


def _shard_len(k: int, shard_size: int, n: int) -> int:
    return max(0, min(shard_size, n - k * shard_size))


def _progress(progress: bool | Callable[[int, int], None], total: int,
              initial: int) -> tuple[Any, Callable[[int], None]]:
    """A tqdm bar (``progress=True``), a callback adapter, or nothing; returns ``(bar, advance)``."""
    if callable(progress):
        state = {"done": initial}
        progress(initial, total)

        def advance(k: int) -> None:
            state["done"] += k
            progress(state["done"], total)
        return None, advance
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=initial, unit="tile", desc="explain", file=sys.stderr, dynamic_ncols=True)
        return bar, bar.update
    return None, lambda k: None


def _check_folder(out: Path, manifest: dict[str, Any]) -> set[int]:
    """Shards already done for this job in ``out``; refuse a folder holding anything else."""
    if out.exists() and not out.is_dir():
        raise InterpError(f"{out}: exists and is not a folder")
    mpath = out / MANIFEST
    if not mpath.is_file():
        if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
            raise FolderInUseError(f"{out}: folder is not empty and holds no {MANIFEST}; choose a new --out folder")
        return set()
    try:
        old = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InterpError(f"{mpath}: unreadable ({e}); delete the folder to start again") from None
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise FolderInUseError(f"{mpath}: not an explain-shards manifest; choose a new --out folder")
    new = json.loads(json.dumps(manifest, default=str))
    differ = [k for k in IDENTITY_KEYS if old.get(k) != new.get(k)]
    if differ:
        raise OtherJobError(f"{out} holds another explain job (different {', '.join(differ)}); "
                          "use a new --out folder or delete this one")
    size, n = int(manifest["shard_size"]), int(manifest["n_tiles"])
    done = set()
    for k, path in existing_shards(out, int(manifest["n_shards"])):
        try:
            ok = len(read_indices(path)) == _shard_len(k, size, n)
        except Exception:  # noqa: BLE001 - a damaged shard is redone
            ok = False
        if ok:
            done.add(k)
    return done


