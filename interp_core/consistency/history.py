"""The per-sample consistency history of an ``ece`` run: ``RUN/consistency.npz``, its writer
(the objective, after every refresh) and its reader (the dashboard), in one place.

Arrays (``np.load(..., allow_pickle=False)``): ``sample_ids`` [N] str, ``labels`` [N] int64,
``refresh_epochs`` [R] int64 (1-based, as the ``epoch`` field of ``history.jsonl``),
``consistency`` [R,N] float32, ``weights`` [R,N] float32 (used from that epoch on),
``pred_changed`` [R,N] bool (the attack flipped the prediction) and ``rescored`` [R,N] bool
(fast mode: which samples were scored afresh at that refresh). Column ``j`` is the sample with
dataset index ``j``. Written atomically, so a reader never sees half a file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._utils.io import atomic_write
from ..errors import InterpError

CONSISTENCY_FILE = "consistency.npz"


@dataclass
class ConsistencyHistory:
    """``RUN/consistency.npz`` of an ECE run, read back."""

    sample_ids: list[str]
    labels: np.ndarray
    refresh_epochs: np.ndarray
    consistency: np.ndarray  # [R, N]
    weights: np.ndarray  # [R, N]
    pred_changed: np.ndarray | None  # [R, N]


def write_consistency(path: str | Path, *, sample_ids: list[str], labels: np.ndarray, refresh_epochs: np.ndarray,
                      consistency: np.ndarray, weights: np.ndarray, pred_changed: np.ndarray,
                      rescored: np.ndarray) -> None:
    """Write the history file atomically with the dtypes of the module docstring."""
    atomic_write(path, lambda fh: np.savez(
        fh, sample_ids=np.asarray(sample_ids, dtype=np.str_), labels=np.asarray(labels).astype(np.int64),
        refresh_epochs=np.asarray(refresh_epochs).astype(np.int64),
        consistency=np.asarray(consistency).astype(np.float32), weights=np.asarray(weights).astype(np.float32),
        pred_changed=np.asarray(pred_changed).astype(np.bool_), rescored=np.asarray(rescored).astype(np.bool_)))


def read_consistency(run_dir: str | Path) -> ConsistencyHistory | None:
    """The run's consistency history, or None when the run has none (not ECE, or no refresh yet)."""
    path = Path(run_dir) / CONSISTENCY_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return ConsistencyHistory(
                sample_ids=[str(s) for s in z["sample_ids"]], labels=np.asarray(z["labels"]),
                refresh_epochs=np.asarray(z["refresh_epochs"]), consistency=np.asarray(z["consistency"], np.float32),
                weights=np.asarray(z["weights"], np.float32),
                pred_changed=np.asarray(z["pred_changed"]) if "pred_changed" in z.files else None)
    except (OSError, KeyError, ValueError) as e:
        raise InterpError(f"{path}: unreadable consistency file ({e})") from None


def least_consistent(hist: ConsistencyHistory, k: int = 12, refresh: int = -1) -> list[int]:
    """Column indices of the ``k`` training samples with the lowest consistency at one refresh."""
    row = hist.consistency[refresh]
    return [int(i) for i in np.argsort(row, kind="stable")[:k]]
