"""Which tiles and which dataset: a deterministic stratified subset, a dataset fingerprint that
does not depend on where the repository is cloned, and a digest of the files a list of indices
stands for. Shared by evaluation, explain jobs and their caches."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

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


def data_fingerprint(data: str | Path) -> str:
    """Identifies a dataset independently of where the repository is cloned: the content of its
    ``dataset.json`` (written by our generators) when present, else the resolved path."""
    p = Path(data)
    meta = p / "dataset.json"
    if meta.is_file():
        return "dataset.json:" + hashlib.sha1(meta.read_bytes()).hexdigest()[:16]
    return str(p.resolve())


def tiles_digest(ds: Any, idx: list[int] | np.ndarray) -> str:
    """SHA-1 of the file names and labels of the dataset tiles ``idx``, in that order: which tiles a
    job's indices stand for. A folder whose files were added, removed or renamed gives another
    digest even when the tile count (and so every index) is unchanged."""
    labels = ds.labels  # a property that builds the whole list: read it once
    idx = [int(i) for i in idx]
    files = [ds.records[i].file for i in idx] if hasattr(ds, "records") else [str(i) for i in idx]
    return hashlib.sha1(json.dumps([files, [labels[i] for i in idx]]).encode()).hexdigest()
