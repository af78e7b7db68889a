"""Symmetric relevance gain: a hand-computed case, a slow float64 per-image loop, and its invariances."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from interp_core.metrics import (
    METRICS,
    deletion_auc,
    least_relevant_first_deletion,
    symmetric_relevance_gain,
)
from interp_core.metrics.testing import images, tiny_cnn


def _slow_deletion_auc(model, x, a, target, n_steps, base, least_first):
    """One image, one chunk, one pixel at a time in float64, ordered by ``a`` (ties: lower index first)."""
    model = copy.deepcopy(model).double().eval()
    x, base = x.double(), base.double()
    b, _, h, w = x.shape
    n = h * w
    size = n // n_steps
    counts = [j * size for j in range(n_steps)] + [n]
    fr = [k / n for k in counts]
    aucs = []
    for s in range(b):
        v = a[s].flatten().tolist()
        order = sorted(range(n), key=(lambda i: v[i]) if least_first else (lambda i: -v[i]))
        curve = []
        for k in counts:
            img = x[s].clone()
            for p in order[:k]:
                r, c = divmod(p, w)
                img[:, r, c] = base[s][:, r, c]
            with torch.no_grad():
                curve.append(float(torch.softmax(model(img[None]), 1)[0, int(target[s])]))
        aucs.append(sum((fr[j + 1] - fr[j]) * (curve[j] + curve[j + 1]) / 2 for j in range(n_steps)))
    return np.array(aucs)


@pytest.mark.parametrize("baseline", ["zero", "mean"])
def test_srg_equals_slow_float64_loop(baseline):
    model = tiny_cnn(seed=0)
    x = images(3, 8, seed=2)
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 6, (3, 8, 8), generator=g).float()  # ties: the order within a tie matters
    a[0] = torch.rand(8, 8, generator=g) - 0.5                # signed, tie-free
    target = torch.tensor([0, 2, 1])
    base = torch.zeros_like(x) if baseline == "zero" else x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    res = symmetric_relevance_gain(model, x, a, target, n_steps=5, baseline=baseline)
    morf = _slow_deletion_auc(model, x, a, target, 5, base, least_first=False)
    lerf = _slow_deletion_auc(model, x, a, target, 5, base, least_first=True)
    np.testing.assert_allclose(res.morf_auc.numpy(), morf, atol=2e-6)
    np.testing.assert_allclose(res.lerf_auc.numpy(), lerf, atol=2e-6)
    np.testing.assert_allclose(res.srg.numpy(), lerf - morf, atol=4e-6)
    assert res.srg.shape == (3,)


class _OnePixel(nn.Module):
    """logits ``[0, log(3) * x[0, 0, 0]]``: p(class 1) is 0.75 while pixel (0, 0) is 1, 0.5 once it is 0."""

    def forward(self, x):
        return torch.stack([torch.zeros(len(x), dtype=x.dtype), math.log(3.0) * x[:, 0, 0, 0]], 1)


def test_hand_computed_case():
    # 2x2 image of ones, zero baseline, 4 chunks of one pixel, the map ranks pixel (0,0) first.
    x = torch.ones(1, 3, 2, 2)
    a = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    res = symmetric_relevance_gain(_OnePixel(), x, a, 1, n_steps=4, baseline="zero")
    # MoRF curve 0.75, 0.5, 0.5, 0.5, 0.5 -> 0.25 * (0.625 + 1.5) = 0.53125
    # LeRF curve 0.75, 0.75, 0.75, 0.75, 0.5 -> 0.25 * (2.25 + 0.625) = 0.71875
    torch.testing.assert_close(res.morf_auc, torch.tensor([0.53125]))
    torch.testing.assert_close(res.lerf_auc, torch.tensor([0.71875]))
    torch.testing.assert_close(res.srg, torch.tensor([0.1875]))
    # the reversed map puts the pixel last: the gain changes sign exactly
    torch.testing.assert_close(symmetric_relevance_gain(_OnePixel(), x, -a, 1, n_steps=4, baseline="zero").srg,
                               torch.tensor([-0.1875]))


def test_a_model_that_ignores_its_input_scores_zero_and_reused_morf_is_the_same():
    class Constant(nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, 1.0]]).expand(len(x), 2)

    x, a = images(2, 8), torch.rand(2, 8, 8)
    torch.testing.assert_close(symmetric_relevance_gain(Constant(), x, a, 1, n_steps=4).srg, torch.zeros(2))
    model = tiny_cnn(seed=1)
    t = torch.tensor([0, 2])
    d = deletion_auc(model, x, a, t, n_steps=4)
    full = symmetric_relevance_gain(model, x, a, t, n_steps=4)
    reused = symmetric_relevance_gain(model, x, a, t, n_steps=4, morf_auc=d.auc)
    torch.testing.assert_close(full.srg, reused.srg)
    torch.testing.assert_close(least_relevant_first_deletion(model, x, a, t, n_steps=4).auc, full.lerf_auc)


def test_registered_as_a_faithfulness_metric_higher_is_better():
    info = METRICS["symmetric_relevance_gain"]
    assert info.category == "faithfulness" and info.higher_is_better and info.attribution_form == "raw"
