"""The evaluation's metric loop walks the metric registry (issue 15, item 4), and gives the numbers
the shipped evaluation caches hold (computed by the loop that named every metric)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from interp_core import metrics as M
from interp_core.evaluation.evaluate import CACHE_DIR, EvalSettings, cache_key, evaluate_run
from interp_core.evaluation.explanation_metrics import scored_metrics

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "sample_data/runs/synthetic-he/baseline-erm"
DATA = ROOT / "sample_data/data/synthetic-he"


def test_the_loop_scores_every_registered_explanation_metric_and_the_expensive_ones_on_request():
    cheap, costly = scored_metrics(expensive=True)
    reads_maps = [m.name for m in M.METRICS.values() if {"a", "method"} & set(m.requires)]
    assert [m.name for m in cheap] == [n for n in reads_maps if not M.METRICS[n].expensive]
    assert [m.name for m in costly] == [n for n in reads_maps if M.METRICS[n].expensive]
    assert {m.name for m in costly} == {"max_sensitivity", "model_randomisation"}
    assert scored_metrics(expensive=False)[1] == []
    assert not {"accuracy", "group_accuracy", "worst_group_accuracy"} & {m.name for m in cheap + costly}
    assert M.METRICS["symmetric_relevance_gain"].reuses == {"morf_auc": "deletion_auc"}


def test_reusing_the_deletion_auc_gives_the_srg_computed_from_scratch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    x, a, t = torch.rand(3, 3, 8, 8), torch.rand(3, 8, 8), torch.tensor([0, 1, 0])
    srg = M.METRICS["symmetric_relevance_gain"]
    morf = M.METRICS["deletion_auc"].score(model=model, x=x, a=a, target=t, n_steps=4)
    assert torch.equal(srg.score(model=model, x=x, a=a, target=t, n_steps=4, morf_auc=morf),
                       srg.score(model=model, x=x, a=a, target=t, n_steps=4))


def test_the_loop_reproduces_a_shipped_evaluation_exactly():
    s = EvalSettings(limit=None)
    cached = RUN / CACHE_DIR / f"{cache_key(RUN, DATA, s)}.json"
    if not cached.is_file():
        pytest.skip("shipped evaluation cache not present")
    stored = json.loads(cached.read_text())
    fresh = evaluate_run(RUN, DATA, s, device=torch.device("cpu"))
    metrics = [k for k, v in stored.items() if isinstance(v, dict) and "mean" in v]
    assert "symmetric_relevance_gain" in metrics and "explanation_consistency" in metrics
    for k in metrics:
        assert fresh[k] == stored[k], k
    assert fresh["details"]["per_tile"] == stored["details"]["per_tile"]
    assert fresh["details"]["curves"] == stored["details"]["curves"]
