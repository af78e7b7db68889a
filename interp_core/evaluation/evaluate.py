"""Dataset-level evaluation of a run: accuracy (per class, per group) and the explanation-quality
metrics of METHODS.md section 4, summarised as ``{"metric": {"mean", "std", "n"}}``.

Explanation consistency is measured with the settings an ``ece`` run trained with (its
``config.json``), the defaults for other runs. The localisation metrics are computed only when the dataset has masks, group accuracies only
when it has ``groups.csv``, artifact mass only when it has artifact masks.

``attributions=DIR`` (a finished ``explain_dataset`` job, e.g. ``explain --data ... --out DIR``)
makes the explanation metrics read that job's stored maps instead of computing them; the job must
be of the same run weights, dataset, split and method and hold every tile evaluated. Such a result
is cached under its own key (float16 maps differ slightly from fresh ones).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Subset

from ..attribution.registry import identity_options
from .._utils.device import pick_device
from .._utils.hashing import file_sha1
from .._utils.locking import folder_lock
from ..consistency.options import consistency_options_for
from ..data import open_split
from ..data.selection import data_fingerprint, stratified_subset
from ..errors import DataError, InterpError
from ..metrics import summarise
from ..metrics.bias import aligned_groups, bias_readout
from ..runs import LoadedRun, load_run, read_json, run_interpolation, write_json, write_text
from .explain_dataset import explain_dataset
from .explanation_metrics import explanation_metrics
from .metrics_checkpoint import read_checkpoint
from .predict import predict_loader
from .shards import (MANIFEST, FolderInUseError, OtherJobError, StoredMaps, check_job, default_job_dir,
                     maps_fingerprint, read_manifest)


@dataclass
class EvalSettings:
    """What to compute; stored in the result so cached results can be keyed by it."""

    split: str = "test"
    attribution: str = "saliency"
    limit: int | None = None
    batch_size: int = 64
    expensive: bool = False
    explanations: bool = True
    n_steps: int = 32
    seed: int = 0


def _open(run: LoadedRun, data: str | Path, s: EvalSettings):
    ds = open_split(data, s.split, image_size=run.config["image_size"], interpolation=run_interpolation(run.config))
    if ds.classes != run.classes:
        raise DataError(f"{data}: classes {ds.classes} differ from the run's {run.classes}")
    if s.limit is None or s.limit >= len(ds):
        return ds, list(range(len(ds)))
    return ds, stratified_subset(ds.labels, max(1, s.limit))


def accuracy_report(ds, idx: list[int], pred: torch.Tensor, labels: torch.Tensor,
                    aligned: dict[int, str] | None = None) -> tuple[dict, dict]:
    """Top-level accuracy metrics and details (per class, per group, worst group); with
    ``aligned`` (each class's training-majority group, :func:`training_aligned_groups`) also the
    background-bias readout: ``agree_accuracy``, ``disagree_accuracy``, ``agree_disagree_gap``."""
    correct = (pred == labels).double()
    metrics: dict[str, Any] = {"accuracy": summarise(correct)}
    per_class = {}
    for k, name in enumerate(ds.classes):
        sel = labels == k
        per_class[name] = summarise(correct[sel])
    details: dict[str, Any] = {"per_class_accuracy": per_class}
    groups = ds.groups
    if groups is not None:
        g = [groups[i] for i in idx]
        per_group = {name: summarise(correct[torch.tensor([x == name for x in g])]) for name in sorted(set(g))}
        details["group_accuracy"] = per_group
        worst = min((v["mean"] for v in per_group.values() if v["n"]), default=None)
        metrics["worst_group_accuracy"] = {"mean": worst, "std": None, "n": len(per_group)}
        details["per_tile"] = {"group": g}
        if aligned is not None:
            r = bias_readout(correct.cpu().numpy(), [int(labels[j]) for j in range(len(idx))], g, aligned)
            for key, n in (("agree_accuracy", r["n_agree"]), ("disagree_accuracy", r["n_disagree"]),
                           ("agree_disagree_gap", r["n_agree"] + r["n_disagree"])):
                metrics[key] = {"mean": r[key], "std": None, "n": n}
            details["aligned_groups"] = {ds.classes[k]: v for k, v in sorted(aligned.items())}
    details.setdefault("per_tile", {})["accuracy"] = correct.tolist()
    return metrics, details


def training_aligned_groups(data: str | Path) -> dict[int, str] | None:
    """Each class's most frequent group among the training tiles when ``groups.csv`` marks a look
    (``class|look``; see :mod:`interp_core.metrics.bias`), else None."""
    try:
        train = open_split(data, "train")
    except DataError:
        return None
    groups = train.groups
    if groups is None:
        return None
    return aligned_groups(train.labels, groups)


def write_predictions(path: str | Path, ds, idx: list[int], pred: torch.Tensor, conf: torch.Tensor) -> None:
    """``file,label,pred,confidence`` with class names; ``file`` relative to the dataset root.

    Written atomically (``runs.write_text``): a full disk leaves the old file or none, never a part.
    """
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["file", "label", "pred", "confidence"])
    for j, i in enumerate(idx):
        rec = ds.records[i]
        w.writerow([rec.file, ds.classes[rec.label], ds.classes[int(pred[j])], f"{float(conf[j]):.6f}"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, buf.getvalue())


def evaluate_run(run: str | Path | LoadedRun, data: str | Path, settings: EvalSettings | None = None, *,
                 device: torch.device | None = None, progress: bool | Callable[[int, int], None] = False,
                 predictions_csv: str | Path | None = None,
                 attributions: str | Path | None = None, checkpoint: str | Path | None = None,
                 checkpoint_id: str = "") -> dict[str, Any]:
    """Evaluate ``run`` on ``data``; see the module docstring for what is included.

    ``checkpoint``/``checkpoint_id``: where the explanation metrics keep their progress so an
    interrupted call resumes (``explanation_metrics``); ``cached_evaluate`` passes them.

    ``attributions``: folder of a finished ``explain_dataset`` job whose maps the explanation
    metrics use (matched by dataset index, read one shard at a time); refused with an
    ``InterpError`` naming the differing field when it is not this run's, dataset's, split's and
    method's, is unfinished or lacks an evaluated tile.
    """
    s = settings or EvalSettings()
    device = device or pick_device("auto")
    t0 = time.time()
    loaded = run if isinstance(run, LoadedRun) else load_run(run, device)
    model = loaded.model.to(device).eval()
    ds, idx = _open(loaded, data, s)
    maps = None
    if attributions is not None and s.explanations:
        manifest = check_job(attributions, loaded.path, data, s.split, s.attribution, idx, seed=s.seed)
        maps = StoredMaps(attributions, manifest)
    loader = DataLoader(Subset(ds, idx), batch_size=max(s.batch_size, 128), shuffle=False)
    preds = predict_loader(model, loader, device)
    aligned = training_aligned_groups(data) if ds.groups is not None else None
    metrics, details = accuracy_report(ds, idx, preds.pred, preds.labels, aligned)
    if predictions_csv:
        write_predictions(predictions_csv, ds, idx, preds.pred, preds.confidence)
    if s.explanations:
        em, ed = explanation_metrics(model, ds, idx, preds.pred, s, device=device, progress=progress, maps=maps,
                                     consistency=consistency_options_for(loaded.config),
                                     checkpoint=checkpoint, checkpoint_id=checkpoint_id)
        metrics.update(em)
        details["per_tile"].update(ed.pop("per_tile", {}))
        details.update(ed)
    details["per_tile"]["file"] = [ds.records[i].file for i in idx]
    result: dict[str, Any] = {
        "run": str(loaded.path), "run_name": loaded.name, "data": str(Path(data).resolve()), "split": s.split,
        "n_tiles": len(idx), "settings": asdict(s),
    }
    result.update(metrics)
    details["seconds"] = time.time() - t0
    result["details"] = details
    return result


CACHE_DIR = "eval_cache"


def cache_key(run_dir: str | Path, data: str | Path, settings: EvalSettings, maps: str | None = None) -> str:
    """Key of a cached evaluation: the weights' content, the data location and every setting, plus
    ``maps`` (``shards.maps_fingerprint``) when the maps were read from a stored job, so such
    a result never stands in for one computed from fresh maps or from another job."""
    run_dir = Path(run_dir)
    payload: dict[str, Any] = {"weights": file_sha1(run_dir / "model.safetensors")[:16],
                               "data": data_fingerprint(data), "settings": asdict(settings), "version": 3}
    if maps is not None:
        payload["maps"] = maps
    base = identity_options(settings.attribution, None).get("baseline") if settings.explanations else None
    if base is not None:  # occlusion against the blurred tile: never a result computed against black
        payload["baseline"] = base
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def cache_path(run_dir: str | Path, data: str | Path, settings: EvalSettings, maps: str | None = None) -> Path:
    """Where :func:`cached_evaluate` keeps the result of these settings: ``RUN/eval_cache/<key>.json``."""
    return Path(run_dir) / CACHE_DIR / f"{cache_key(run_dir, data, settings, maps)}.json"


def read_cached(path: str | Path) -> dict[str, Any] | None:
    """A cached evaluation, or None when there is none or it is damaged (then it is recomputed)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed
        return None


def cached_evaluate(run_dir: str | Path, data: str | Path, settings: EvalSettings | None = None, *,
                    device: torch.device | None = None, progress: bool | Callable[[int, int], None] = False,
                    refresh: bool = False, attributions: str | Path | None = None) -> dict[str, Any]:
    """``evaluate_run`` with its result cached in ``RUN/eval_cache/<key>.json`` (see ``cache_key``).

    A read-only run directory still works: the result is returned, just not cached.
    ``attributions``: as in ``evaluate_run``; the key then includes the job's maps fingerprint.
    While the explanation metrics run, their progress is kept in ``<key>.partial.npz`` beside the
    entry (see :func:`partial_progress`): an interrupted call (a closed dashboard tab, a crash)
    resumes with the tiles already scored; the file is deleted once the result is stored.
    """
    s = settings or EvalSettings()
    maps = None
    if attributions is not None and s.explanations:
        maps = maps_fingerprint(read_manifest(attributions))
    path = cache_path(run_dir, data, s, maps)
    cached = None if refresh else read_cached(path)
    if cached is not None:
        return cached
    partial = path.with_suffix(".partial.npz")
    if refresh:
        partial.unlink(missing_ok=True)
    result = evaluate_run(run_dir, data, s, device=device, progress=progress, attributions=attributions,
                          checkpoint=partial, checkpoint_id=path.stem)
    try:
        write_json(path, result)
        partial.unlink(missing_ok=True)
    except OSError:
        pass
    return result


def partial_progress(run_dir: str | Path, data: str | Path, settings: EvalSettings,
                     maps: str | None = None) -> tuple[int, int] | None:
    """``(tiles scored, tiles in all)`` of an interrupted ``cached_evaluate`` of these settings (and
    stored maps of fingerprint ``maps``) that the next call resumes, or None when there is none."""
    partial = cache_path(run_dir, data, settings, maps).with_suffix(".partial.npz")
    state = read_checkpoint(partial) if partial.is_file() else None
    return None if state is None else (state["done"], state["total"])


# -- stored maps beside the run (the Metrics page) -------------------------------------------------
#: Attribution costs (``METHODS[m].cost``) for which ``evaluate_with_stored_maps`` stores the maps first.
STORE_MAPS_COSTS = ("slow", "medium")


@dataclass
class StoredMapsUse:
    """How ``evaluate_with_stored_maps`` got its maps: ``folder`` (None: computed on the fly),
    ``reused`` (the folder was complete before the call) and ``note`` (why none were stored)."""

    folder: Path | None = None
    reused: bool = False
    note: str | None = None


def stored_maps_job(run_dir: str | Path, data: str | Path, settings: EvalSettings) -> Path | None:
    """``shards.default_job_dir`` of these settings if it holds a finished job that
    ``evaluate_run(..., attributions=)`` accepts for them; None otherwise (never raises for a
    missing, foreign or unfinished folder)."""
    folder = default_job_dir(run_dir, settings.split, settings.attribution)
    if not (folder / MANIFEST).is_file():
        return None
    try:
        run = load_run(run_dir, torch.device("cpu"))
        _, idx = _open(run, data, settings)
        check_job(folder, run_dir, data, settings.split, settings.attribution, idx, seed=settings.seed)
    except InterpError:
        return None
    return folder


def stored_maps_fingerprint(run_dir: str | Path, data: str | Path, settings: EvalSettings) -> tuple[Path, str] | None:
    """``(folder, maps fingerprint)`` of the finished explain job :func:`stored_maps_job` finds, or None."""
    folder = stored_maps_job(run_dir, data, settings)
    return None if folder is None else (folder, maps_fingerprint(read_manifest(folder)))


def evaluate_with_stored_maps(run_dir: str | Path, data: str | Path, settings: EvalSettings | None = None, *,
                              device: torch.device | None = None, store: bool = True,
                              progress: Callable[[str, int, int], None] | None = None
                              ) -> tuple[dict[str, Any], StoredMapsUse]:
    """``cached_evaluate`` reusing, or first writing, the run's sharded maps in
    ``shards.default_job_dir(run_dir, split, method)``.

    A finished matching job there is reused. Else, with ``store`` (the Metrics page sets it for
    "slow" and "medium" methods), ``explain_dataset`` writes the maps there first (resumable: a
    reload or crash keeps the finished shards; a stale job of other weights or another tile
    selection in that folder is replaced) and the metrics read them. A read-only run folder, or a
    folder holding files that are not an explain job, falls back to computing the maps on the fly.
    ``progress(phase, done, total)``: phase ``"maps"`` (the explain job) then ``"metrics"``.
    """
    s = settings or EvalSettings()
    device = device or pick_device("auto")

    def phase(name: str) -> Callable[[int, int], None] | bool:
        return (lambda done, total: progress(name, done, total)) if progress is not None else False

    # two sessions on one run and method wait for each other (one writes the maps, the other reuses them)
    with folder_lock(default_job_dir(run_dir, s.split, s.attribution)):
        use = _stored_maps(run_dir, data, s, device, store, phase("maps"))
        return cached_evaluate(run_dir, data, s, device=device, progress=phase("metrics"),
                               attributions=use.folder), use


def _stored_maps(run_dir: str | Path, data: str | Path, s: EvalSettings, device: torch.device, store: bool,
                 progress: Callable[[int, int], None] | bool) -> StoredMapsUse:
    """The maps :func:`evaluate_with_stored_maps` evaluates with: a matching finished job reused,
    else (with ``store``) one written now; ``folder`` None means computing them on the fly."""
    found = stored_maps_job(run_dir, data, s) if s.explanations else None
    if found is not None:
        return StoredMapsUse(found, reused=True)
    if not (store and s.explanations):
        return StoredMapsUse()
    folder = default_job_dir(run_dir, s.split, s.attribution)
    n = len(open_split(data, s.split))
    job = dict(method=s.attribution, limit=None if s.limit is None or s.limit >= n else max(1, s.limit),
               batch_size=s.batch_size, device=str(device), seed=s.seed, progress=progress)
    try:
        try:
            explain_dataset(run_dir, data, s.split, folder, **job)
        except OtherJobError:  # a stale job of this folder (older weights, another tile selection): redo
            _clear_job(folder)
            explain_dataset(run_dir, data, s.split, folder, **job)
    except OSError as e:  # e.g. a read-only run folder
        return StoredMapsUse(note=f"maps not stored ({e.filename or folder}: {e.strerror or e}); computed directly")
    except FolderInUseError as e:
        return StoredMapsUse(note=f"maps not stored ({e}); computed directly")
    return StoredMapsUse(folder)


def _clear_job(folder: Path) -> None:
    """Delete an explain job's own files (manifest, shards, temporaries) from ``folder``, nothing else."""
    for p in folder.iterdir():
        if p.name == MANIFEST or (p.name.startswith(("shard_", ".shard_")) and ".npz" in p.name):
            p.unlink()
