"""The explain-shards format: what an ``explain_dataset`` job leaves in its folder, and how it is read.

A folder holds::

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

``evaluate --attributions DIR`` reuses a finished job (``check_job``, ``StoredMaps``); the Metrics
page keeps its jobs in ``default_job_dir(RUN, split, method)``. The writer is
:mod:`interp_core.evaluation.explain_dataset`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .._utils.hashing import file_sha1
from ..attribution.registry import identity_options
from ..data import open_split
from ..data.selection import data_fingerprint, tiles_digest
from ..errors import DataError, InterpError

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


# -- reading ---------------------------------------------------------------------------------------
def existing_shards(out: Path, n_shards: int) -> Iterator[tuple[int, Path]]:
    """``(k, path)`` of the shard files of ``out`` that exist, in order."""
    for k in range(n_shards):
        path = out / shard_name(k)
        if path.is_file():
            yield k, path


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
    for k, path in existing_shards(out, int(m["n_shards"])):
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
        cmp("method_options", m.get("method_options"), json.loads(json.dumps(identity_options(method, seed))))
    if m.get("target") is not None:
        differ.append(f"target: class {m['target']} stored, the predicted class here")
    missing = [k for k in range(int(m.get("n_shards", 0))) if not (out / shard_name(k)).is_file()]
    if not m.get("complete") or missing:
        differ.append(f"complete: {len(missing)} of {m.get('n_shards')} shards missing (run the explain job again)")
    elif not differ:
        have = np.concatenate([read_indices(out / shard_name(k)) for k in range(int(m["n_shards"]))] or
                              [np.zeros(0, np.int64)])
        lack = np.setdiff1d(np.asarray(indices, dtype=np.int64), have)
        if len(lack):
            differ.append(f"tiles: {len(lack)} of the {len(indices)} evaluated tiles are not in the shards "
                          f"(e.g. index {int(lack[0])}; the job has {len(have)})")
        else:
            # indices are positions in the split's file list: the same files must still sit there
            ds = open_split(data, split, image_size=m.get("image_size"))
            if int(have.max(initial=-1)) >= len(ds) or tiles_digest(ds, np.sort(have)) != m.get("tiles_digest"):
                differ.append("tiles: the split's files or labels changed since the maps were stored")
    if differ:
        raise InterpError(f"{out}: stored attributions do not fit this evaluation ({'; '.join(differ)})")
    return m


def read_indices(path: Path) -> np.ndarray:
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
        parts = [read_indices(self.out / shard_name(k)) for k in range(int(self.manifest["n_shards"]))]
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
