"""Max-sensitivity: agreement with a per-sample loop over the documented noise, hand cases, errors."""
from __future__ import annotations

import math

import pytest
import torch

from interp_core.errors import InterpError
from interp_core.metrics import max_sensitivity
from interp_core.metrics.testing import grad_saliency, images, input_map, tiny_cnn, tiny_linear


def _slow_max_sensitivity(model, x, target, method, n, radius, seed):
    """The definition, one sample and one perturbation at a time, with the documented noise draw."""
    g = torch.Generator().manual_seed(seed)
    b = x.shape[0]
    d = (torch.rand((n * b, *x.shape[1:]), generator=g) * 2 - 1) * radius
    out = []
    for s in range(b):
        a0 = method(model, x[s:s + 1], target[s:s + 1]).double()
        ratios = []
        for i in range(n):
            xp = (x[s] + d[i * b + s]).clamp(0, 1)
            a = method(model, xp[None], target[s:s + 1]).double()
            ratios.append(float(torch.linalg.norm(a - a0) / torch.linalg.norm(a0)))
        out.append(max(ratios))
    return torch.tensor(out, dtype=torch.float64)


def test_equals_slow_loop_on_a_relu_cnn():
    model, x = tiny_cnn(seed=0), images(3, 8)
    t = torch.tensor([0, 1, 2])
    ours = max_sensitivity(model, x, t, method=grad_saliency, n=4, radius=0.1, seed=3, batch_size=5)
    ref = _slow_max_sensitivity(model, x, t, grad_saliency, n=4, radius=0.1, seed=3)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-6)
    assert bool((ours > 0).all())


def test_linear_model_saliency_is_perfectly_stable():
    # the gradient of a linear model does not depend on x, so every perturbed map equals a(x)
    out = max_sensitivity(tiny_linear(), images(3, 8), method=grad_saliency, n=5, radius=0.2)
    assert out.tolist() == [0.0, 0.0, 0.0]


def test_input_map_hand_bound():
    # a(x) = sum_c x_c at x = 0.5: ||a(x+d) - a(x)|| = ||sum_c d_c|| <= 3 r sqrt(HW), ||a(x)|| = 1.5 sqrt(HW)
    x = torch.full((2, 3, 8, 8), 0.5)
    out = max_sensitivity(tiny_linear(), x, target=0, method=input_map, n=6, radius=0.1)
    assert bool((out > 0).all() and (out <= 2 * 0.1).all())
    # sum of 3 uniforms in [-r, r] has RMS r: the max ratio over 6 draws is close to r / 1.5
    assert out.mean().item() == pytest.approx(0.1 / 1.5, rel=0.15)


def test_seeded_and_scale_invariant():
    model, x = tiny_cnn(seed=1), images(2, 8)
    a = max_sensitivity(model, x, method=grad_saliency, n=3, seed=7)
    b = max_sensitivity(model, x, method=grad_saliency, n=3, seed=torch.Generator().manual_seed(7))
    c = max_sensitivity(model, x, method=lambda m, xx, t: 10 * grad_saliency(m, xx, t), n=3, seed=7)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c)
    assert not torch.equal(a, max_sensitivity(model, x, method=grad_saliency, n=3, seed=8))


def test_zero_map_gives_nan_and_radius_zero_gives_zero():
    x = images(2, 8)
    zero = max_sensitivity(tiny_linear(), x, method=lambda m, xx, t: torch.zeros(xx.shape[0], 8, 8), n=2)
    assert all(math.isnan(v) for v in zero.tolist())
    assert max_sensitivity(tiny_cnn(), x, method=grad_saliency, n=2, radius=0.0).tolist() == [0.0, 0.0]


def test_model_mode_restored():
    model = tiny_cnn(seed=2, batchnorm=True).train()
    max_sensitivity(model, images(2, 8), method=grad_saliency, n=2)
    assert model.training and model[1].training


def test_method_by_name_uses_interp_core_attribution():
    attribution = pytest.importorskip("interp_core.attribution")
    if not hasattr(attribution, "attribute"):
        pytest.skip("interp_core.attribution.attribute does not exist yet")
    model, x = tiny_cnn(seed=0), images(2, 8)
    t = torch.tensor([0, 1])
    by_name = max_sensitivity(model, x, t, method="saliency", n=3, radius=0.1)
    by_callable = max_sensitivity(model, x, t, method=grad_saliency, n=3, radius=0.1)
    torch.testing.assert_close(by_name, by_callable, rtol=1e-4, atol=1e-6)


def test_bad_arguments():
    model, x = tiny_cnn(), images(2, 8)
    with pytest.raises(InterpError, match="n .*at least 1"):
        max_sensitivity(model, x, method=grad_saliency, n=0)
    with pytest.raises(InterpError, match="images must be"):
        max_sensitivity(model, x[0], method=grad_saliency)
    with pytest.raises(InterpError, match="method must be"):
        max_sensitivity(model, x, method=3)
