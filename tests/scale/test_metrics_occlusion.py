"""Occlusion has one baseline everywhere (issue 17, item 4): the blurred tile, in the core's default, so
the Metrics page's evaluation, the stored maps and Explore's tile maps are the same maps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interp_core.attribution import METHODS, attribute
from interp_core.attribution.registry import identity_options
from interp_core.evaluation.evaluate import EvalSettings, cache_key, evaluate_run
from interp_core.runs import load_run

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from interp_core.testing import make_tiny_dataset
    return make_tiny_dataset(tmp_path_factory.mktemp("d") / "ds", n_per_class=2, size=16, classes=("normal", "tumor"))


def test_occlusion_default_is_the_blurred_tile_and_is_part_of_stored_results_identity(data, fake_run):
    assert METHODS["occlusion"].options["baseline"] == "blur"
    assert identity_options("occlusion", 0) == {"baseline": "blur"}
    assert identity_options("saliency", 0) == {} and identity_options("integrated_gradients", 0) == {}
    s = EvalSettings(split="test", attribution="occlusion")
    assert cache_key(fake_run, data, s) != cache_key(fake_run, data, EvalSettings(split="test", attribution="saliency"))
    payload_without = cache_key(fake_run, data, EvalSettings(split="test", attribution="occlusion", explanations=False))
    assert payload_without != cache_key(fake_run, data, s)  # the baseline is in the key only when maps are made


def test_metrics_evaluation_scores_the_blurred_baseline_maps(data, fake_run):
    from interp_core import metrics as M
    from interp_core.data import open_split
    s = EvalSettings(split="test", attribution="occlusion", batch_size=8)
    res = evaluate_run(fake_run, data, s, device=CPU)
    run = load_run(fake_run, CPU)
    ds = open_split(data, "test", image_size=16)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    with torch.no_grad():
        pred = run.model.eval()(x).argmax(1)
    blur = attribute(run.model, x, "occlusion", pred, baseline="blur")
    black = attribute(run.model, x, "occlusion", pred, baseline=0.0)
    got = np.array(res["details"]["per_tile"]["sparseness"])
    np.testing.assert_allclose(got, M.sparseness(blur).numpy(), rtol=1e-5)
    assert not np.allclose(got, M.sparseness(black).numpy(), rtol=1e-3)


def test_explore_and_metrics_state_the_same_baseline():
    from interp_core.evaluation import tile_analysis as compute
    assert compute.PAGE_METHOD_OPTIONS.get("occlusion", {}).get("baseline", "blur") == "blur"
    assert "blurred tile" in compute.METHOD_NOTES["occlusion"] and "not with black" in compute.METHOD_NOTES["occlusion"]
