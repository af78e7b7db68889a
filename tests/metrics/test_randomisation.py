"""Cascading model randomisation and the torch Spearman it relies on (checked against scipy)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.stats
import torch

from interp_core.errors import InterpError
from interp_core.metrics import model_randomisation, randomisable_layers, rankdata, spearman
from interp_core.metrics.testing import grad_saliency, images, input_map, tiny_cnn, tiny_linear
from interp_core.models import create_model


def test_rankdata_equals_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    v = torch.randint(0, 5, (4, 30), generator=g).float()
    v[0] = torch.rand(30, generator=g)
    v[1] = 2.0  # all tied
    expected = np.stack([scipy.stats.rankdata(row, method="average") for row in v.numpy()])
    np.testing.assert_array_equal(rankdata(v).numpy(), expected)


def test_spearman_equals_scipy():
    g = torch.Generator().manual_seed(1)
    u = torch.randint(0, 6, (5, 7, 7), generator=g).float()
    v = u + torch.randint(0, 4, (5, 7, 7), generator=g).float() * torch.randn(5, 1, 1, generator=g)
    v[4] = torch.rand(7, 7, generator=g)
    ours = spearman(u, v).numpy()
    ref = [scipy.stats.spearmanr(a.flatten(), b.flatten()).statistic for a, b in zip(u.numpy(), v.numpy())]
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_spearman_of_constant_map_is_nan():
    out = spearman(torch.ones(1, 4, 4), torch.rand(1, 4, 4))
    assert math.isnan(out.item())


def test_layer_order_is_top_down():
    model = create_model("smallcnn", 2, width=4)
    layers = randomisable_layers(model)
    assert layers[0] == "head"
    assert layers[-1] == "features.0"  # first conv is randomised last
    assert "normalize" not in layers and all(not n.startswith("pool") for n in layers)
    kinds = {type(dict(model.named_modules())[n]).__name__ for n in layers}
    assert kinds == {"Linear", "Conv2d", "BatchNorm2d"}


def test_single_layer_equals_hand_computed_spearman():
    # flatten-linear: saliency = sum_c |W[t]|; after reset_parameters under seed 5 it is sum_c |W'[t]|
    model, x = tiny_linear(seed=0), images(3, 8)
    t = torch.tensor([0, 1, 1])
    res = model_randomisation(model, x, t, method=grad_saliency, seed=5)
    assert res.layers == ["1"] and res.per_layer.shape == (1, 3)
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        fresh[1].reset_parameters()
    w0 = model[1].weight.detach().view(2, 3, 8, 8).abs().sum(1)
    w1 = fresh[1].weight.detach().view(2, 3, 8, 8).abs().sum(1)
    ref = [scipy.stats.spearmanr(w0[c].flatten(), w1[c].flatten()).statistic for c in t.tolist()]
    np.testing.assert_allclose(res.per_layer[0].numpy(), ref, rtol=1e-5)
    torch.testing.assert_close(res.score, res.per_layer[0])


def test_weight_independent_method_fails_the_check():
    res = model_randomisation(tiny_cnn(), images(2, 8), method=input_map)
    assert res.layers == ["6", "2", "0"]  # linear, second conv, first conv
    assert torch.equal(res.per_layer, torch.ones(3, 2))
    assert res.score.tolist() == [1.0, 1.0]


def test_gradient_saliency_decorrelates_and_reductions():
    model, x = tiny_cnn(seed=0), images(4, 8)
    res = model_randomisation(model, x, method=grad_saliency, seed=0)
    last = model_randomisation(model, x, method=grad_saliency, seed=0, reduce="last")
    torch.testing.assert_close(last.score, res.per_layer[-1])
    torch.testing.assert_close(res.score, res.per_layer.nanmean(0))
    assert torch.equal(res.per_layer, last.per_layer)  # seeded: identical cascades
    assert bool((res.per_layer[-1].abs() < 0.6).all())  # a fully random model explains differently


def test_callers_model_and_global_rng_untouched():
    model = tiny_cnn(seed=3, batchnorm=True).train()
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    model_randomisation(model, images(2, 8), method=grad_saliency)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and model[1].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_bad_arguments():
    model, x = tiny_cnn(), images(2, 8)
    with pytest.raises(InterpError, match="reduce"):
        model_randomisation(model, x, method=grad_saliency, reduce="max")
    with pytest.raises(InterpError, match="cannot randomise layer"):
        model_randomisation(model, x, method=grad_saliency, layers=["nope"])
