"""The registry: every metric has complete metadata, and ``score`` gives a per-sample [B] tensor."""
from __future__ import annotations

import torch

from interp_core.metrics import METRICS, metric_table
from interp_core.metrics.testing import grad_saliency, images, tiny_cnn

EXPECTED = {
    "accuracy": ("accuracy", True), "sparseness": ("complexity", True), "complexity": ("complexity", False),
    "pointing_game": ("localisation", True), "relevance_mass_accuracy": ("localisation", True),
    "relevance_rank_accuracy": ("localisation", True), "artifact_mass": ("localisation", False),
    "deletion_auc": ("faithfulness", False), "insertion_auc": ("faithfulness", True),
    "symmetric_relevance_gain": ("faithfulness", True),
    "max_sensitivity": ("robustness", False), "model_randomisation": ("randomisation", False),
}


def test_metadata_is_complete_and_directions_right():
    assert set(METRICS) == set(EXPECTED)
    for name, info in METRICS.items():
        assert (info.category, info.higher_is_better) == EXPECTED[name], name
        assert info.description and info.reference and info.requires
        assert info.attribution_form in {"absolute", "clipped", "raw", "none"}
        doc = info.fn.__doc__ or ""
        assert "better" in doc, f"{name}: docstring must say which direction is better"


def test_table_is_grouped_by_category_and_json_friendly():
    rows = metric_table()
    cats = [r["category"] for r in rows]
    assert cats == sorted(cats, key=["accuracy", "complexity", "localisation", "faithfulness", "robustness",
                                     "randomisation"].index)
    assert all(isinstance(v, str) for r in rows for v in r.values())
    assert [r["name"] for r in metric_table("faithfulness")] == ["deletion_auc", "insertion_auc",
                                                                  "symmetric_relevance_gain"]


def test_score_returns_per_sample_values_for_every_metric():
    model, x = tiny_cnn(), images(3, 8)
    mask = torch.zeros(3, 1, 8, 8)
    mask[:, :, 2:5, 2:5] = 1
    y = torch.tensor([0, 1, 2])
    inputs = {"model": model, "x": x, "a": grad_saliency(model, x, y), "mask": mask, "region": mask,
              "method": grad_saliency, "pred": model(x).argmax(1), "y": y, "target": y, "n_steps": 4, "n": 2}
    for name, info in METRICS.items():
        assert info.available(inputs)
        out = info.score(**inputs)
        assert isinstance(out, torch.Tensor) and out.shape == (3,), name
    assert not METRICS["pointing_game"].available({"a": inputs["a"]})
