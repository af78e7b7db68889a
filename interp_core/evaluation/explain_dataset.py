"""Dataset-wide explain jobs written in shards: resumable, memory bounded, reusable.

``explain_dataset(run, data, split, out)`` attributes every tile of a split (or a stratified
``limit`` of them, as ``evaluate``) and writes, in ``out/``::

    manifest.json        what the job is (run identity with a weights hash, dataset fingerprint,
                         split, method, shard size, tile count) and which shards are done
    shard_00000.npz      tiles 0..shard_size-1 of the job, then shard_00001.npz, ...

Each shard is a NumPy ``.npz`` of plain arrays (load with ``allow_pickle=False``): ``indices``
int64 ``[N]`` (dataset indices), ``files`` unicode ``[N]`` (paths relative to the dataset),
``labels``, ``predictions``, ``targets`` int64 ``[N]``, ``probabilities`` float32 ``[N, C]``,
``attributions`` float16 ``[N, H, W]`` and ``scales`` float32 ``[N]``. [ours] The attribution of
tile ``i`` is ``attributions[i] * scales[i]``: float16 keeps about 3 significant digits but
underflows below 6e-5, where raw gradients of a trained model often lie, so each map is stored
divided by its maximum ``|a|`` (``scales``; 0 for an all-zero map). ``load_shards`` does the
multiplication.

Shards are written atomically (temporary file, fsync, rename), so a shard file that exists is
complete; the manifest is rewritten after every shard. Running the same job again skips the
shards that exist and does the rest; a different job in the same folder (another run, weights,
dataset, split, method, ...) is refused with the fields that differ. Memory: one shard's arrays
plus one batch, whatever the dataset size.

``evaluate --attributions DIR`` reuses a finished job (``check_job``, ``StoredMaps``); the Metrics
page keeps its jobs in ``default_job_dir(RUN, split, method)``.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ..errors import DataError, InterpError
from ..runs import LoadedRun

MANIFEST = "manifest.json"
FORMAT = "interp_core.explain_shards"
FORMAT_VERSION = 1
#: Manifest fields that identify a job; a folder holding another job's shards is refused.
IDENTITY_KEYS = ("format", "format_version", "run", "data", "split", "method", "method_options", "target",
                 "shard_size", "n_tiles", "limit", "tiles_digest", "image_size", "classes")


class OtherJobError(InterpError):
    """The output folder holds another explain job's manifest and shards."""


class FolderInUseError(InterpError):
    """The output folder holds files but no explain-job manifest."""


def shard_name(k: int) -> str:
    """``shard_00000.npz`` for shard ``k``."""
    return f"shard_{k:05d}.npz"


def file_sha1(path: str | Path) -> str:
    """Hex SHA-1 of a file's content, read in 1 MB chunks."""
    h = hashlib.sha1()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_identity(run: LoadedRun) -> dict[str, Any]:
    """What identifies a run's model: its name, path, architecture, classes, input size and the SHA-1
    of its weights file (so a retrained run in the same folder is a different model)."""
    weights = run.path / "model.safetensors"
    return {"name": run.name, "path": str(run.path), "arch": run.config.get("arch"),
            "objective": run.config.get("objective"), "classes": run.classes,
            "image_size": int(run.config["image_size"]),
            "weights_sha1": file_sha1(weights) if weights.is_file() else None}


@dataclass
class Shard:
    """One shard read back: arrays of ``N`` tiles; ``attributions`` float32 ``[N, H, W]`` (rescaled)."""

    index: int
    indices: np.ndarray
    files: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    targets: np.ndarray
    probabilities: np.ndarray
    attributions: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)


# -- job -------------------------------------------------------------------------------------------
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
    from ..attribution import attribute, attribution_state, get_method, seed_option
    from ..data import open_split
    from .._utils.device import pick_device
    from .evaluate import data_fingerprint, stratified_subset
    from .explain import resolve_target
    from ..runs import load_run, write_json
    t0 = time.perf_counter()
    shard_size = _positive(shard_size, "shard_size")
    batch_size = _positive(batch_size, "batch_size")
    if limit is not None:
        limit = _positive(limit, "limit")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InterpError(f"workers must be a non-negative integer, got {workers!r}")
    get_method(method)
    dev = pick_device(device)
    loaded = run if isinstance(run, LoadedRun) else load_run(run, dev)
    model = loaded.model.to(dev).eval()
    image_size = int(loaded.config["image_size"])
    from ..runs import run_interpolation
    ds = open_split(data, split, image_size=image_size, interpolation=run_interpolation(loaded.config))
    if ds.classes != loaded.classes:
        raise DataError(f"{data}: classes {ds.classes} differ from the run's {loaded.classes}")
    idx = list(range(len(ds))) if limit is None or limit >= len(ds) else stratified_subset(ds.labels, limit)
    tgt = resolve_target(target, loaded.classes)
    opts = seed_option(method, seed)
    if method == "gradcam" and getattr(model, "cam_layer_name", None):  # a named layer is part of the job
        opts = {**opts, "layer": model.cam_layer_name}
    n = len(idx)
    n_shards = math.ceil(n / shard_size)
    files = [ds.records[i].file for i in idx] if hasattr(ds, "records") else [str(i) for i in idx]
    digest = tiles_digest(ds, idx)
    manifest: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "run": run_identity(loaded),
        "data": {"path": str(Path(data).resolve()), "fingerprint": data_fingerprint(data)},
        "split": split, "method": method, "method_options": opts, "target": tgt, "shard_size": shard_size,
        "n_tiles": n, "limit": limit, "tiles_digest": digest, "image_size": image_size, "classes": loaded.classes,
        "n_shards": n_shards, "dtype": "float16 * scales",
    }
    out = Path(out)
    with job_lock(out):  # one job per folder at a time, across processes and dashboard sessions
        done = _check_folder(out, manifest)
        manifest["shards_done"] = sorted(done)
        manifest["complete"] = len(done) == n_shards
        write_json(out / MANIFEST, manifest)

        bar, report = _progress(progress, n, sum(_shard_len(k, shard_size, n) for k in done))
        written = 0
        try:
            for k in range(n_shards):
                if k in done:
                    continue
                rows = idx[k * shard_size:(k + 1) * shard_size]
                loader = DataLoader(Subset(ds, rows), batch_size=batch_size, shuffle=False, num_workers=workers)
                parts: dict[str, list[np.ndarray]] = {key: [] for key in ("indices", "labels", "predictions", "targets",
                                                                           "probabilities", "attributions", "scales")}
                for batch in loader:
                    x = batch["image"].to(dev)
                    with attribution_state(model), torch.no_grad():
                        p = torch.softmax(model(x).float(), dim=1)
                    pred = p.argmax(1)
                    t = pred if tgt is None else torch.full_like(pred, tgt)
                    a = attribute(model, x, method, t, **opts).float().cpu()
                    scale = a.flatten(1).abs().amax(1)
                    a16 = (a / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None, None]).half()
                    for key, v in (("indices", batch["index"]), ("labels", batch["label"]), ("predictions", pred),
                                   ("targets", t), ("probabilities", p), ("attributions", a16), ("scales", scale)):
                        parts[key].append(v.detach().cpu().numpy())
                    report(len(x))
                arrays = {key: np.concatenate(v) for key, v in parts.items()}
                for key in ("indices", "labels", "predictions", "targets"):
                    arrays[key] = arrays[key].astype(np.int64)
                arrays["probabilities"] = arrays["probabilities"].astype(np.float32)
                arrays["scales"] = arrays["scales"].astype(np.float32)
                arrays["files"] = np.asarray([files[k * shard_size + j] for j in range(len(rows))], dtype=str)
                if arrays["indices"].tolist() != rows:
                    raise RuntimeError("the DataLoader returned tiles out of order")
                _save_npz(out / shard_name(k), arrays)
                done.add(k)
                written += 1
                manifest["shards_done"] = sorted(done)
                manifest["complete"] = len(done) == n_shards
                write_json(out / MANIFEST, manifest)
                if on_shard is not None:
                    on_shard(k)
        finally:
            if bar is not None:
                bar.close()
        return {**manifest, "shards_written": written, "seconds": time.perf_counter() - t0}



_HELD = threading.local()  # job folders this thread holds the lock of (the lock is re-entrant per thread)


@contextlib.contextmanager
def job_lock(out: str | Path) -> Iterator[None]:
    """Exclusive use of the job folder ``out`` across processes and threads (dashboard sessions):
    ``flock`` on ``.NAME.lock`` beside it, so a second job on the same folder waits for the first
    instead of interleaving manifests or deleting its shards. Re-entrant within a thread. Where
    the lock file cannot be created (a read-only folder) it proceeds unlocked: nothing can be
    written there anyway."""
    out = Path(out)
    key = str(out.resolve())
    held = getattr(_HELD, "keys", None)
    if held is None:
        held = _HELD.keys = set()
    if key in held:
        yield
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        f = open(out.parent / f".{out.name}.lock", "a+")
    except OSError:
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
            fcntl.flock(f, fcntl.LOCK_UN)



def _positive(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InterpError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


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
        import sys

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
    for k in range(int(manifest["n_shards"])):
        path = out / shard_name(k)
        if not path.is_file():
            continue
        try:
            with np.load(path, allow_pickle=False) as z:
                ok = len(z["indices"]) == _shard_len(k, size, n)
        except Exception:  # noqa: BLE001 - a damaged shard is redone
            ok = False
        if ok:
            done.add(k)
    return done


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to a temporary file in the same folder, fsync, rename: the shard appears whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -- reading ---------------------------------------------------------------------------------------
def read_manifest(out: str | Path) -> dict[str, Any]:
    """The manifest of an explain-shards folder (``DataError`` when missing or not one)."""
    path = Path(out) / MANIFEST
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{out}: no {MANIFEST}; not an explain-shards folder") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DataError(f"{path}: not an explain-shards manifest")
    return m


def load_shards(out: str | Path, *, require_complete: bool = False) -> Iterator[Shard]:
    """The finished shards of ``out`` in order, one at a time (so memory stays one shard).

    Attributions come back as float32 ``attributions * scales``. ``require_complete``: raise
    ``DataError`` if the job has missing shards instead of yielding the ones there are.
    """
    m = read_manifest(out)
    out = Path(out)
    missing = [k for k in range(int(m["n_shards"])) if not (out / shard_name(k)).is_file()]
    if missing and require_complete:
        raise DataError(f"{out}: {len(missing)} of {m['n_shards']} shards missing (e.g. {shard_name(missing[0])}); "
                        "run the explain job again to finish it")
    for k in range(int(m["n_shards"])):
        path = out / shard_name(k)
        if not path.is_file():
            continue
        try:
            with np.load(path, allow_pickle=False) as z:
                a = z["attributions"].astype(np.float32) * z["scales"].astype(np.float32)[:, None, None]
                yield Shard(k, z["indices"], z["files"], z["labels"], z["predictions"], z["targets"],
                            z["probabilities"], a)
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{path}: unreadable shard ({str(e)[:160]})") from None


# -- reuse by evaluate -----------------------------------------------------------------------------
#: Sub-folder of a run where the dashboard keeps its dataset-wide explain jobs.
JOBS_DIR = "attributions"


def default_job_dir(run_dir: str | Path, split: str, method: str) -> Path:
    """Where a run's sharded maps of ``split`` with ``method`` are kept: ``RUN/attributions/<split>-<method>/``.

    The one place that names this folder (the Metrics page writes and reuses it) [ours].
    """
    return Path(run_dir) / JOBS_DIR / f"{split}-{method}"


def tiles_digest(ds: Any, idx: list[int] | np.ndarray) -> str:
    """SHA-1 of the file names and labels of the dataset tiles ``idx``, in that order: which tiles a
    job's indices stand for. A folder whose files were added, removed or renamed gives another
    digest even when the tile count (and so every index) is unchanged."""
    labels = ds.labels  # a property that builds the whole list: read it once
    idx = [int(i) for i in idx]
    files = [ds.records[i].file for i in idx] if hasattr(ds, "records") else [str(i) for i in idx]
    return hashlib.sha1(json.dumps([files, [labels[i] for i in idx]]).encode()).hexdigest()


def maps_fingerprint(manifest: dict[str, Any]) -> str:
    """A short hash of what determines a job's maps: weights SHA-1, dataset fingerprint, split, method and
    its options, target, tile selection, input size and classes.

    Paths and the shard size are left out, so a copied repository or a re-sharded job keeps it; used
    in evaluation cache keys (a result computed from stored float16 maps is cached apart).
    """
    keys = ("format_version", "split", "method", "method_options", "target", "n_tiles", "limit", "tiles_digest",
            "image_size", "classes")
    payload = {k: manifest.get(k) for k in keys}
    payload["weights_sha1"] = (manifest.get("run") or {}).get("weights_sha1")
    payload["data"] = (manifest.get("data") or {}).get("fingerprint")
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_job(out: str | Path, run_dir: str | Path, data: str | Path, split: str, method: str,
              indices: list[int] | np.ndarray, *, seed: int | None = 0) -> dict[str, Any]:
    """The manifest of ``out`` if its maps can stand in for ``attribute(...)`` in an evaluation of
    ``run_dir`` on ``data``/``split`` with ``method`` (and ``seed``) over the dataset ``indices``;
    else ``InterpError`` (one line) naming every field that differs.

    Checked: the run's weights SHA-1, the dataset fingerprint, split, method and its options, that
    the maps explain the predicted class (no fixed ``target``), that the job is complete, and that its
    shards hold every index evaluated (more is fine: tiles are matched by dataset index).
    """
    from ..attribution import seed_option
    from .evaluate import data_fingerprint
    m = read_manifest(out)
    out = Path(out)
    weights = Path(run_dir) / "model.safetensors"
    sha = file_sha1(weights) if weights.is_file() else None
    differ = []

    def cmp(name: str, stored: Any, here: Any) -> None:
        if stored != here:
            differ.append(f"{name}: {stored!r} stored, {here!r} here")

    stored_sha = (m.get("run") or {}).get("weights_sha1")
    if stored_sha != sha:
        differ.append(f"run weights SHA-1: {str(stored_sha)[:12]} stored, {str(sha)[:12]} here")
    cmp("dataset fingerprint", (m.get("data") or {}).get("fingerprint"), data_fingerprint(data))
    cmp("split", m.get("split"), split)
    cmp("method", m.get("method"), method)
    if m.get("method") == method:
        cmp("method_options", m.get("method_options"), json.loads(json.dumps(seed_option(method, seed))))
    if m.get("target") is not None:
        differ.append(f"target: class {m['target']} stored, the predicted class here")
    missing = [k for k in range(int(m.get("n_shards", 0))) if not (out / shard_name(k)).is_file()]
    if not m.get("complete") or missing:
        differ.append(f"complete: {len(missing)} of {m.get('n_shards')} shards missing (run the explain job again)")
    elif not differ:
        have = np.concatenate([_read_indices(out / shard_name(k)) for k in range(int(m["n_shards"]))] or
                              [np.zeros(0, np.int64)])
        lack = np.setdiff1d(np.asarray(indices, dtype=np.int64), have)
        if len(lack):
            differ.append(f"tiles: {len(lack)} of the {len(indices)} evaluated tiles are not in the shards "
                          f"(e.g. index {int(lack[0])}; the job has {len(have)})")
        else:
            # indices are positions in the split's file list: the same files must still sit there
            from ..data import open_split
            ds = open_split(data, split, image_size=m.get("image_size"))
            if int(have.max(initial=-1)) >= len(ds) or tiles_digest(ds, np.sort(have)) != m.get("tiles_digest"):
                differ.append("tiles: the split's files or labels changed since the maps were stored")
    if differ:
        raise InterpError(f"{out}: stored attributions do not fit this evaluation ({'; '.join(differ)})")
    return m


def _read_indices(path: Path) -> np.ndarray:
    """The ``indices`` array of one shard (the other arrays of the .npz are not read)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return np.asarray(z["indices"], dtype=np.int64)
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: unreadable shard ({str(e)[:160]})") from None


class StoredMaps:
    """The maps of a finished job looked up by dataset index, reading one shard at a time.

    Holds the index table (three int64 arrays of the job's tile count) and at most one shard's
    float16 maps, so memory stays bounded whatever the dataset size; callers that ask for indices
    in increasing order (as ``evaluate`` does) read each shard once.
    """

    def __init__(self, out: str | Path, manifest: dict[str, Any] | None = None):
        self.out = Path(out)
        self.manifest = manifest if manifest is not None else read_manifest(out)
        self.fingerprint = maps_fingerprint(self.manifest)
        parts = [_read_indices(self.out / shard_name(k)) for k in range(int(self.manifest["n_shards"]))]
        idx = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        shard = np.concatenate([np.full(len(p), k, np.int64) for k, p in enumerate(parts)]) if parts else idx
        row = np.concatenate([np.arange(len(p), dtype=np.int64) for p in parts]) if parts else idx
        order = np.argsort(idx, kind="stable")
        self._idx, self._shard, self._row = idx[order], shard[order], row[order]
        self._k: int | None = None
        self._maps: np.ndarray | None = None
        self._scales: np.ndarray | None = None
        self._targets: np.ndarray | None = None
        self.shard_reads = 0

    def _load(self, k: int) -> None:
        if self._k == k:
            return
        path = self.out / shard_name(k)
        try:
            with np.load(path, allow_pickle=False) as z:
                self._maps, self._scales, self._targets = z["attributions"], z["scales"], z["targets"]
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{path}: unreadable shard ({str(e)[:160]})") from None
        self._k = k
        self.shard_reads += 1

    def get(self, indices: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Maps float32 ``[n, H, W]`` (``attributions * scales``) and the classes they explain ``[n]``
        of the dataset ``indices``, in that order (``DataError`` for an index the job lacks)."""
        want = np.asarray(indices, dtype=np.int64)
        pos = np.searchsorted(self._idx, want)
        bad = (pos >= len(self._idx)) | (self._idx[np.minimum(pos, len(self._idx) - 1)] != want) if len(self._idx) \
            else np.ones(len(want), bool)
        if bad.any():
            raise DataError(f"{self.out}: no stored map for tile {int(want[bad][0])}")
        out: np.ndarray | None = None
        targets = np.zeros(len(want), np.int64)
        shards, rows = self._shard[pos], self._row[pos]
        for k in dict.fromkeys(shards.tolist()):  # shards in first-use order
            self._load(k)
            sel = shards == k
            r = rows[sel]
            a = self._maps[r].astype(np.float32) * self._scales[r].astype(np.float32)[:, None, None]
            if out is None:
                out = np.empty((len(want),) + a.shape[1:], np.float32)
            out[sel] = a
            targets[sel] = self._targets[r]
        if out is None:
            size = int(self.manifest.get("image_size", 0))
            out = np.zeros((0, size, size), np.float32)
        return out, targets
