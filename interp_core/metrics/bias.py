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
from typing import Sequence

import numpy as np

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
