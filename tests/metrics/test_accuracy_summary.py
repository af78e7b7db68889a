"""Accuracy helpers (overall, per group, worst group) and the NaN-aware summary."""
from __future__ import annotations

import json
import math

import pytest
import torch

from interp_core.errors import InterpError
from interp_core.metrics import accuracy, group_accuracy, summarise, worst_group_accuracy


def test_accuracy_from_labels_and_scores():
    y = torch.tensor([0, 1, 1, 0])
    assert accuracy(torch.tensor([0, 1, 0, 0]), y).tolist() == [1.0, 1.0, 0.0, 1.0]
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5], [0.1, 0.2]])
    assert accuracy(logits, y).tolist() == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(InterpError, match="differ"):
        accuracy(torch.tensor([0, 1]), y)


def test_group_and_worst_group_accuracy_hand_computed():
    pred = torch.tensor([0, 0, 1, 1, 1, 0])
    y = torch.tensor([0, 1, 1, 1, 0, 0])
    groups = ["b/stamp", "a/clean", "a/clean", "a/clean", "b/stamp", "b/clean"]
    per = group_accuracy(pred, y, groups)
    assert list(per) == ["a/clean", "b/clean", "b/stamp"]
    assert per["a/clean"] == (pytest.approx(2 / 3), 3)
    assert per["b/clean"] == (1.0, 1)
    assert per["b/stamp"] == (0.5, 2)
    assert worst_group_accuracy(pred, y, groups) == 0.5
    assert math.isnan(worst_group_accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), []))
    with pytest.raises(InterpError, match="3 group labels for 6"):
        group_accuracy(pred, y, groups[:3])


def test_summarise_ignores_nan_and_is_json_safe():
    s = summarise(torch.tensor([1.0, float("nan"), 3.0, 2.0]))
    assert s["n"] == 3 and s["mean"] == pytest.approx(2.0)
    assert s["std"] == pytest.approx(math.sqrt(2 / 3))  # population std of 1, 2, 3
    assert summarise(torch.tensor([float("nan")])) == {"mean": None, "std": None, "n": 0}
    assert summarise(torch.tensor([0.25])) == {"mean": 0.25, "std": 0.0, "n": 1}
    json.loads(json.dumps(summarise(torch.tensor([float("nan"), float("nan")])), allow_nan=False))
