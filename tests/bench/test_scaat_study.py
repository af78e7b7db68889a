"""The SCAAT study's report: paired differences, sign agreement and targets, rebuilt from JSON files alone."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import scaat_study as S  # noqa: E402


def _arm(name, control, seeds, **metrics):
    return {"arm": name, "dataset": "toy", "why": "", "seeds": seeds, "n_epochs": 8, "limit": None,
            "spec": {"objective": "scaat" if control else "erm", "options": {}, "epochs": 3, "scratch": False,
                     "control": control},
            "metrics": {"saliency": metrics}}


def test_paired_differences_match_seeds_by_value_and_targets_are_checked():
    ctl = _arm("control", None, [0, 1, 2], sparseness=[0.40, 0.50, 0.30], accuracy=[0.9, 0.9, 0.9])
    arm = _arm("x", "control", [2, 0, 1], sparseness=[0.36, 0.46, 0.57], accuracy=[0.895, 0.9, 0.885])
    assert S.paired(arm, ctl, "sparseness") == pytest.approx([0.06, 0.06, 0.07])
    assert S.paired(arm, ctl, "missing") is None
    v = S.verdict(arm, ctl)
    assert v["sparseness"] and not v["relevance_mass_accuracy"] and not v["all"]
    assert v["accuracy"] is True  # mean -0.0067: within the target
    assert S._signs([0.1, 0.2, 0.3]) == "3/3+" and S._signs([0.0, 0.0]) == "2/2="
    assert S._signs([0.1, -0.2, 0.0]) == "1+ 1- 1="


def test_report_is_rebuilt_from_the_files_alone(tmp_path):
    d = tmp_path / "toy"
    d.mkdir()
    ctl = _arm("control", None, [0, 1], sparseness=[0.4, 0.5], accuracy=[0.9, 0.8],
               relevance_mass_accuracy=[0.3, 0.3], symmetric_relevance_gain=[0.1, 0.1])
    arm = _arm("default", "control", [0, 1], sparseness=[0.46, 0.56], accuracy=[0.9, 0.8],
               relevance_mass_accuracy=[0.36, 0.37], symmetric_relevance_gain=[0.1, 0.12])
    (d / "control.json").write_text(json.dumps(ctl))
    (d / "default.json").write_text(json.dumps(arm))
    text = S.report(tmp_path).read_text()
    assert "Δ +0.060±0.000 (2/2+)" in text  # Gini
    assert "Δ +0.065±0.007 (2/2+)" in text  # relevance mass
    assert "**all met**" in text
    assert (tmp_path / "frontier.png").stat().st_size > 1000
