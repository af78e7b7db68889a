"""Bias readouts: aligned groups, agree/disagree/gap/worst group, AUROC, per-refresh AUROC of 1 - E."""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from interp_core.errors import InterpError
from interp_core.evaluation.evaluate import accuracy_report
from interp_core.metrics.bias import (aligned_groups, auroc, bias_readout, minority_mask,
                                      refresh_minority_auroc)


def _pairwise_auroc(scores, positive) -> float:
    """Independent reference: the share of (positive, negative) pairs ordered right, ties 1/2."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_hand_cases() -> None:
    assert auroc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    # positives 0.5, 0.3; negatives 0.4, 0.3: pairs (0.5>0.4) 1, (0.5>0.3) 1, (0.3<0.4) 0, (0.3=0.3) 1/2
    assert auroc([0.5, 0.3, 0.4, 0.3], [1, 1, 0, 0]) == pytest.approx(2.5 / 4)
    assert auroc([1.0, 1.0, 1.0], [1, 0, 0]) == 0.5  # all tied: chance
    assert math.isnan(auroc([0.1, 0.2], [0, 0]))
    with pytest.raises(InterpError):
        auroc([0.1, 0.2], [1])


def test_auroc_matches_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(3, 40))
        s = rng.integers(0, 5, size=n).astype(float)  # many ties
        y = rng.random(n) < 0.3
        if y.all() or not y.any():
            continue
        assert auroc(s, y) == pytest.approx(_pairwise_auroc(s, y))


def test_aligned_groups_and_minority() -> None:
    labels = [0, 0, 0, 1, 1, 1, 1]
    groups = ["n|warm", "n|warm", "n|cool", "t|cool", "t|cool", "t|cool", "t|warm"]
    aligned = aligned_groups(labels, groups)
    assert aligned == {0: "n|warm", 1: "t|cool"}
    assert minority_mask(labels, groups, aligned).tolist() == [False, False, True, False, False, False, True]
    assert aligned_groups([0, 1], ["normal", "tumor"]) is None  # one group per class: no look
    assert aligned_groups([0, 0], [None, None]) is None


def test_bias_readout_hand_case() -> None:
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    groups = ["n|w", "n|w", "n|c", "n|c", "t|c", "t|c", "t|w", "t|w"]
    aligned = {0: "n|w", 1: "t|c"}
    correct = [1, 1, 0, 1, 1, 0, 0, 0]
    r = bias_readout(correct, labels, groups, aligned)
    # agree tiles: 1,1 (n|w) and 1,0 (t|c) -> 3/4; disagree: 0,1 (n|c) and 0,0 (t|w) -> 1/4
    assert r["agree_accuracy"] == 0.75 and r["disagree_accuracy"] == 0.25
    assert r["agree_disagree_gap"] == pytest.approx(0.5)
    assert r["worst_group_accuracy"] == 0.0  # t|w
    assert (r["n_agree"], r["n_disagree"]) == (4, 4)


def test_accuracy_report_adds_the_readout_only_with_aligned_groups() -> None:
    ds = SimpleNamespace(classes=["n", "t"], groups=["n|w", "n|c", "t|c", "t|w"])
    pred, labels = torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1])
    m, d = accuracy_report(ds, [0, 1, 2, 3], pred, labels, {0: "n|w", 1: "t|c"})
    assert m["agree_accuracy"]["mean"] == 1.0 and m["disagree_accuracy"]["mean"] == 0.5
    assert m["agree_disagree_gap"]["mean"] == 0.5 and m["worst_group_accuracy"]["mean"] == 0.0
    assert d["aligned_groups"] == {"n": "n|w", "t": "t|c"}
    m2, _ = accuracy_report(ds, [0, 1, 2, 3], pred, labels)
    assert "agree_accuracy" not in m2 and "worst_group_accuracy" in m2


def test_refresh_minority_auroc_per_refresh() -> None:
    ids = ["a", "b", "c", "d", "e"]
    group_of = {"a": "n|w", "b": "n|w", "c": "n|c", "d": "t|c", "e": "t|w"}
    label_of = {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1}
    aligned = {0: "n|w", 1: "t|c"}  # minority: c, e
    e = np.array([[0.9, 0.8, 0.2, 0.7, 0.3],    # minority lowest E: AUROC 1
                  [0.1, 0.2, 0.9, 0.3, 0.95]])  # minority highest E: AUROC 0
    w = np.ones_like(e)
    rows = refresh_minority_auroc(e, ids, [2, 3], group_of, label_of, aligned, w)
    assert [r["refresh_epoch"] for r in rows] == [2, 3]
    assert rows[0]["auroc_1_minus_E"] == 1.0 and rows[1]["auroc_1_minus_E"] == 0.0
    # within class 0 (a, b majority; c minority): refresh 2 has E 0.1, 0.2 vs 0.9 -> AUROC 0
    assert rows[1]["auroc_within_class"] == {0: 0.0, 1: 0.0}
    assert rows[0]["auroc_within_class"] == {0: 1.0, 1: 1.0}
    assert rows[0]["E_mean_minority"] == pytest.approx(0.25) and rows[0]["E_mean_aligned"] == pytest.approx(0.8)
    assert rows[0]["weight_mean_minority"] == 1.0
    with pytest.raises(InterpError):
        refresh_minority_auroc(e[:, :4], ids, [2, 3], group_of, label_of, aligned)


def test_training_aligned_groups_reads_the_train_split(tmp_path) -> None:
    import csv

    from interp_core.evaluation.evaluate import training_aligned_groups
    from interp_core.testing import make_tiny_dataset
    root = make_tiny_dataset(tmp_path / "d", n_per_class=4, size=16, classes=("a", "b"))
    rows = list(csv.DictReader((root / "groups.csv").open()))
    for r in rows:  # train: class a mostly 'x', class b mostly 'y'; test: the other way round
        train_rows = [q for q in rows if q["split"] == "train" and q["class_name"] == r["class_name"]]
        first = r["split"] == "train" and r is train_rows[0]
        look = {"a": "x", "b": "y"}[r["class_name"]]
        other = {"x": "y", "y": "x"}[look]
        r["group"] = f"{r['class_name']}|{other if first or r['split'] == 'test' else look}"
    with (root / "groups.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["split", "class_name", "file", "group"])
        w.writeheader()
        w.writerows(rows)
    assert training_aligned_groups(root) == {0: "a|x", 1: "b|y"}
    plain = make_tiny_dataset(tmp_path / "p", n_per_class=4, size=16, classes=("a", "b"), groups=False)
    assert training_aligned_groups(plain) is None
