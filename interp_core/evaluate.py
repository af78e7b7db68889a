"""Dataset-level evaluation of a run: accuracy (per class, per group) and the explanation-quality
metrics of METHODS.md section 4, summarised as ``{"metric": {"mean", "std", "n"}}``.

The localisation metrics are computed only when the dataset has masks, group accuracies only
when it has ``groups.csv``, artifact mass only when it has artifact masks.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .data import open_split
from .device import pick_device
from .errors import DataError
from .metrics import summarise
from .predict import predict_loader
from .runs import LoadedRun, load_run


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
    ds = open_split(data, s.split, image_size=run.config["image_size"])
    if ds.classes != run.classes:
        raise DataError(f"{data}: classes {ds.classes} differ from the run's {run.classes}")
    if s.limit is None or s.limit >= len(ds):
        return ds, list(range(len(ds)))
    return ds, stratified_subset(ds.labels, max(1, s.limit))


def stratified_subset(labels: list[int], n: int) -> list[int]:
    """``n`` indices taken round-robin over the classes (each class in file order), sorted.

    Deterministic, and unlike "the first n" it does not return a single class when the split is
    stored class by class.
    """
    by_class: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    out: list[int] = []
    k = 0
    while len(out) < n:
        for lab in sorted(by_class):
            if k < len(by_class[lab]) and len(out) < n:
                out.append(by_class[lab][k])
        k += 1
    return sorted(out)


def accuracy_report(ds, idx: list[int], pred: torch.Tensor, labels: torch.Tensor) -> tuple[dict, dict]:
    """Top-level accuracy metrics and details (per class, per group, worst group)."""
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
    return metrics, details


def write_predictions(path: str | Path, ds, idx: list[int], pred: torch.Tensor, conf: torch.Tensor) -> None:
    """``file,label,pred,confidence`` with class names; ``file`` relative to the dataset root.

    Written atomically (``runs.write_text``): a full disk leaves the old file or none, never a part.
    """
    from .runs import write_text
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
                 predictions_csv: str | Path | None = None) -> dict[str, Any]:
    """Evaluate ``run`` on ``data``; see the module docstring for what is included."""
    s = settings or EvalSettings()
    device = device or pick_device("auto")
    t0 = time.time()
    loaded = run if isinstance(run, LoadedRun) else load_run(run, device)
    model = loaded.model.to(device).eval()
    ds, idx = _open(loaded, data, s)
    loader = DataLoader(Subset(ds, idx), batch_size=max(s.batch_size, 128), shuffle=False)
    preds = predict_loader(model, loader, device)
    metrics, details = accuracy_report(ds, idx, preds.pred, preds.labels)
    if predictions_csv:
        write_predictions(predictions_csv, ds, idx, preds.pred, preds.confidence)
    if s.explanations:
        from .explanation_metrics import explanation_metrics
        em, ed = explanation_metrics(model, ds, idx, preds.pred, s, device=device, progress=progress)
        metrics.update(em)
        details.update(ed)
    result: dict[str, Any] = {
        "run": str(loaded.path), "run_name": loaded.name, "data": str(Path(data).resolve()), "split": s.split,
        "n_tiles": len(idx), "settings": asdict(s),
    }
    result.update(metrics)
    details["seconds"] = time.time() - t0
    result["details"] = details
    return result


CACHE_DIR = "eval_cache"


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def data_fingerprint(data: str | Path) -> str:
    """Identifies a dataset independently of where the repository is cloned: the content of its
    ``dataset.json`` (written by our generators) when present, else the resolved path."""
    p = Path(data)
    meta = p / "dataset.json"
    if meta.is_file():
        return "dataset.json:" + hashlib.sha1(meta.read_bytes()).hexdigest()[:16]
    return str(p.resolve())


def cache_key(run_dir: str | Path, data: str | Path, settings: EvalSettings) -> str:
    """Key of a cached evaluation: the weights' content, the data location and every setting."""
    run_dir = Path(run_dir)
    payload = json.dumps({"weights": _file_digest(run_dir / "model.safetensors"),
                          "data": data_fingerprint(data), "settings": asdict(settings),
                          "version": 1}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:20]


def cached_evaluate(run_dir: str | Path, data: str | Path, settings: EvalSettings | None = None, *,
                    device: torch.device | None = None, progress: bool | Callable[[int, int], None] = False,
                    refresh: bool = False) -> dict[str, Any]:
    """``evaluate_run`` with its result cached in ``RUN/eval_cache/<key>.json`` (see ``cache_key``).

    A read-only run directory still works: the result is returned, just not cached.
    """
    from .runs import read_json, write_json
    s = settings or EvalSettings()
    path = Path(run_dir) / CACHE_DIR / f"{cache_key(run_dir, data, s)}.json"
    if path.is_file() and not refresh:
        try:
            return read_json(path)
        except Exception:  # a damaged cache entry is recomputed
            pass
    result = evaluate_run(run_dir, data, s, device=device, progress=progress)
    try:
        write_json(path, result)
    except OSError:
        pass
    return result
