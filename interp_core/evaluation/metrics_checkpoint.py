"""The progress file of an explanation-metrics computation: what an interrupted call (a closed
dashboard tab, a crash) has finished, so the next call resumes after the last finished batch.

One ``.npz`` (no pickles) written atomically after every batch: the per-tile values of every metric
so far, the perturbation curves, the randomisation tables, and the random state of the consistency
attack (without it a resumed run would draw other perturbations than an uninterrupted one).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._utils.io import atomic_write


def checkpoint_ident(checkpoint_id: str, idx: list[int], batch_size: int, pred: torch.Tensor) -> str:
    """What a progress file must match to be resumed: the caller's id (the cache key), the tiles,
    the batch size and the predicted classes."""
    return hashlib.sha1(json.dumps({"id": checkpoint_id, "idx": list(map(int, idx)), "batch_size": batch_size,
                                    "pred": [int(v) for v in pred]}).encode()).hexdigest()


def write_checkpoint(path: Path | str, ident: str, done: int, total: int, mismatched: int,
                     values: dict[str, list[torch.Tensor]], curves: dict[str, list[torch.Tensor]],
                     fractions: torch.Tensor | None, rand_layers: list[str] | None,
                     rand_tables: list[torch.Tensor], gen: torch.Generator) -> Path | None:
    """Write the state after ``done`` tiles atomically; returns the path, or None (checkpointing off)
    when it cannot be written (e.g. a read-only run folder)."""
    meta = {"ident": ident, "done": done, "total": total, "mismatched": mismatched, "metrics": sorted(values),
            "curves": sorted(curves), "rand_layers": rand_layers}
    arrays: dict[str, np.ndarray] = {"meta": np.asarray(json.dumps(meta)), "generator": gen.get_state().numpy()}
    for k, v in curves.items():
        arrays[f"curve_{k}"] = torch.cat(v).numpy()
    if fractions is not None:
        arrays["fractions"] = fractions.numpy()
    if rand_tables:
        arrays["rand_table"] = torch.cat(rand_tables, dim=1).numpy()
    for k, v in values.items():
        arrays[f"value_{k}"] = torch.cat(v).numpy()
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError:
        return None
    return Path(path)


def read_checkpoint(path: str | Path, ident: str | None = None) -> dict[str, Any] | None:
    """The state written by an interrupted computation (``done`` tiles finished, per-metric values so
    far, ...), or None when there is none, it is unreadable, or (with ``ident``) it belongs to other
    settings or tiles."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if ident is not None and meta["ident"] != ident:
                return None
            return {"done": int(meta["done"]), "mismatched": int(meta["mismatched"]),
                    "total": int(meta["total"]),
                    "values": {k: z[f"value_{k}"].copy() for k in meta["metrics"]},
                    "curves": {k: z[f"curve_{k}"].copy() for k in meta.get("curves", [])},
                    "fractions": z["fractions"].copy() if "fractions" in z.files else None,
                    "rand_table": z["rand_table"].copy() if "rand_table" in z.files else None,
                    "rand_layers": meta["rand_layers"], "generator": z["generator"].copy()}
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
