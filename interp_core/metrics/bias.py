"""Bias readouts on data whose groups mark a class-correlated "look" (METHODS.md section 4).

Group names are ``class|look`` (``groups.csv``; e.g. ``tumor|cool`` or ``normal|artifact``). A
class's *aligned* group is the one most of its **training** tiles fall in (the look that agrees
with the class in training: 90 % of them in the biased sample sets); every other group of that
class is *bias-conflicting* (a minority group). From these:

- the background-bias readout (ImageNet-9 style, Xiao et al. 2021): accuracy on tiles whose look
  agrees with their class (aligned groups), on tiles where it disagrees (minority groups), the
  gap ``agree - disagree`` and the worst-group accuracy;
- :func:`auroc`: how well a per-sample score ranks minority-group tiles above aligned ones (used
  for ECE's ``1 - E`` and for ERM's error signal ``1 - p(true class)``, per refresh).

Everything here is plain numpy on small vectors; no model, no Streamlit.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from ..consistency.history import CONSISTENCY_FILE, read_consistency
from ..data import open_split
from ..errors import InterpError


def aligned_groups(labels: Sequence[int], groups: Sequence[str | None]) -> dict[int, str] | None:
    """``{class: its most frequent group}`` over training tiles, or None when the groups do not
    mark a look (fewer than two groups in every class, or no groups at all).

    Ties are broken by the group name (sorted), so the result is deterministic.
    """
    if len(labels) != len(groups):
        raise InterpError(f"{len(groups)} group labels for {len(labels)} labels")
    by_class: dict[int, Counter] = {}
    for lab, g in zip(labels, groups):
        if g is None:
            continue
        by_class.setdefault(int(lab), Counter())[g] += 1
    if not by_class or all(len(c) < 2 for c in by_class.values()):
        return None
    return {lab: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for lab, c in by_class.items()}


def minority_mask(labels: Sequence[int], groups: Sequence[str | None], aligned: dict[int, str]) -> np.ndarray:
    """Bool ``[N]``: the tile's group is not its class's aligned group (bias-conflicting)."""
    if len(labels) != len(groups):
        raise InterpError(f"{len(groups)} group labels for {len(labels)} labels")
    return np.array([g is not None and aligned.get(int(lab)) is not None and g != aligned[int(lab)]
                     for lab, g in zip(labels, groups)], dtype=bool)


def bias_readout(correct: Sequence[float] | np.ndarray, labels: Sequence[int], groups: Sequence[str | None],
                 aligned: dict[int, str]) -> dict[str, float | int | None]:
    """``agree_accuracy``, ``disagree_accuracy``, ``agree_disagree_gap`` (agree - disagree, lower is
    better), ``worst_group_accuracy`` (min over the groups present), with ``n_agree``, ``n_disagree``.

    ``correct`` is per-tile 0/1. A side with no tile gives None (and so does the gap).
    """
    c = np.asarray(correct, dtype=np.float64).reshape(-1)
    if not (len(c) == len(labels) == len(groups)):
        raise InterpError(f"{len(c)} predictions, {len(labels)} labels and {len(groups)} groups differ")
    minority = minority_mask(labels, groups, aligned)
    known = np.array([g is not None for g in groups], dtype=bool)
    agree = known & ~minority
    agree_acc = float(c[agree].mean()) if agree.any() else None
    dis_acc = float(c[minority].mean()) if minority.any() else None
    per_group = {}
    for g in sorted({g for g in groups if g is not None}):
        sel = np.array([x == g for x in groups], dtype=bool)
        per_group[g] = float(c[sel].mean())
    return {
        "agree_accuracy": agree_acc,
        "disagree_accuracy": dis_acc,
        "agree_disagree_gap": None if agree_acc is None or dis_acc is None else agree_acc - dis_acc,
        "worst_group_accuracy": min(per_group.values()) if per_group else None,
        "n_agree": int(agree.sum()),
        "n_disagree": int(minority.sum()),
    }


def auroc(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (Mann-Whitney U / (n+ n-)): the
    probability that a random positive scores above a random negative, ties counting one half.
    NaN when either class is empty. 0.5 is chance, 1 a perfect ranking.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos = np.asarray(positive, dtype=bool).reshape(-1)
    if s.shape != pos.shape:
        raise InterpError(f"{s.size} scores for {pos.size} labels")
    if not np.isfinite(s).all():
        raise InterpError("scores must be finite")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks (1-based) over runs of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = 0.5 * (a + 1 + b)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def refresh_minority_auroc(consistency: np.ndarray, sample_ids: Sequence[str], refresh_epochs: Sequence[int],
                           group_of: dict[str, str], label_of: dict[str, int], aligned: dict[int, str],
                           weights: np.ndarray | None = None) -> list[dict]:
    """Per ECE refresh (a row of ``consistency.npz``): how well ``1 - E`` flags the training tiles
    of minority (bias-conflicting) groups.

    ``consistency`` is ``[R, N]`` (``E`` per refresh and sample), ``sample_ids`` the ``N`` ids
    (paths relative to the dataset root, as in ``groups.csv``), ``group_of`` / ``label_of`` map an
    id to its group and class. Returns one dict per refresh: ``refresh_epoch``,
    ``auroc_1_minus_E`` (:func:`auroc`), ``auroc_within_class`` (``{class: AUROC}`` among that
    class's tiles only: whether ``1 - E`` separates a class's minority from its majority rather
    than one class from the other), ``E_mean_minority``, ``E_mean_aligned``, the 5th / 50th /
    95th percentiles of ``E`` and, with ``weights`` ``[R, N]``, the mean weight of each side.
    Ids without a group are left out.
    """
    e_all = np.asarray(consistency, dtype=np.float64)
    if e_all.ndim != 2 or e_all.shape[1] != len(sample_ids) or e_all.shape[0] != len(refresh_epochs):
        raise InterpError(f"consistency {list(e_all.shape)} does not match {len(refresh_epochs)} refreshes "
                          f"x {len(sample_ids)} samples")
    keep = np.array([str(i) in group_of for i in sample_ids], dtype=bool)
    ids = [str(i) for i, k in zip(sample_ids, keep) if k]
    labels = np.array([label_of[i] for i in ids])
    minority = minority_mask(labels.tolist(), [group_of[i] for i in ids], aligned)
    rows = []
    for r, epoch in enumerate(refresh_epochs):
        e = e_all[r, keep]
        row = {
            "refresh_epoch": int(epoch),
            "auroc_1_minus_E": auroc(1 - e, minority),
            "auroc_within_class": {int(c): auroc(1 - e[labels == c], minority[labels == c])
                                   for c in sorted(set(labels.tolist()))},
            "E_mean_minority": float(e[minority].mean()) if minority.any() else math.nan,
            "E_mean_aligned": float(e[~minority].mean()) if (~minority).any() else math.nan,
            "E_p05": float(np.quantile(e, 0.05)), "E_p50": float(np.quantile(e, 0.5)),
            "E_p95": float(np.quantile(e, 0.95)),
        }
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)[r, keep]
            row["weight_mean_minority"] = float(w[minority].mean()) if minority.any() else math.nan
            row["weight_mean_aligned"] = float(w[~minority].mean()) if (~minority).any() else math.nan
            row["weight_min"], row["weight_max"] = float(w.min()), float(w.max())
        rows.append(row)
    return rows


def consistency_groups(run_dir, data) -> dict | None:
    """Read ``RUN/consistency.npz`` and the dataset's ``groups.csv``: ``{"aligned": {class: group},
    "groups": [group per sample], "minority": bool [N], "consistency": [R, N], "refresh_epochs": [R],
    "per_refresh": refresh_minority_auroc(...)}``, or None when the run has no refresh or the data's
    groups mark no look. ``data`` is the dataset folder the run was trained on."""

    if not (Path(run_dir) / CONSISTENCY_FILE).is_file():
        return None
    train = open_split(data, "train")
    if train.groups is None:
        return None
    aligned = aligned_groups(train.labels, train.groups)
    if aligned is None:
        return None
    group_of = dict(zip(train.ids, train.groups))
    label_of = dict(zip(train.ids, train.labels))
    hist = read_consistency(run_dir)
    ids, cons, epochs, weights = hist.sample_ids, hist.consistency, hist.refresh_epochs, hist.weights
    if len(epochs) == 0:
        return None
    groups = [group_of.get(i) for i in ids]
    labels = [label_of.get(i, -1) for i in ids]
    return {
        "aligned": aligned, "sample_ids": ids, "groups": groups,
        "minority": minority_mask(labels, groups, aligned),
        "consistency": np.asarray(cons, dtype=np.float64), "refresh_epochs": [int(x) for x in epochs],
        "per_refresh": refresh_minority_auroc(cons, ids, epochs, group_of, label_of, aligned, weights),
    }
