"""Sparseness (Gini) and complexity (entropy): Quantus agreement and hand-computed edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interp_core.errors import InterpError
from interp_core.metrics import complexity, sparseness

quantus = pytest.importorskip("quantus")


def _quantus(metric_cls, a: torch.Tensor) -> np.ndarray:
    b, h, w = a.shape
    x = np.zeros((b, 3, h, w), dtype=np.float32)
    metric = metric_cls(abs=True, normalise=False, disable_warnings=True)
    a_np = a[:, None].numpy().astype(np.float64).copy()  # Quantus edits a_batch in place
    return np.asarray(metric(model=None, x_batch=x, y_batch=np.zeros(b, dtype=int), a_batch=a_np), dtype=np.float64)


@pytest.mark.parametrize("seed", [0, 1])
def test_sparseness_equals_quantus_on_random_signed_maps(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(6, 16, 16, generator=g) * torch.rand(6, 1, 1, generator=g) * 3
    a[0] = a[0] ** 5  # a sparse one
    ours = sparseness(a).double().numpy()
    ref = _quantus(quantus.Sparseness, a)
    np.testing.assert_allclose(ours, ref, atol=2e-6)


def test_complexity_equals_quantus_on_random_maps():
    a = torch.randn(6, 16, 16, generator=torch.Generator().manual_seed(2)) ** 3
    np.testing.assert_allclose(complexity(a).double().numpy(), _quantus(quantus.Complexity, a), rtol=1e-5, atol=1e-5)


def test_sparseness_hand_computed():
    # |a| sorted = [1, 2, 3, 4], n = 4: sum (2i-n-1) a_i = -3*1 - 1*2 + 1*3 + 3*4 = 10; / (4 * 10) = 0.25
    a = torch.tensor([[[4.0, -1.0], [2.0, 3.0]]])
    assert sparseness(a).item() == pytest.approx(0.25)


def test_sparseness_edge_cases():
    n = 16 * 16
    one_hot = torch.zeros(1, 16, 16)
    one_hot[0, 3, 5] = 2.0
    maps = torch.stack([torch.full((16, 16), 0.7), torch.zeros(16, 16), one_hot[0]])
    out = sparseness(maps)
    assert out[0].item() == pytest.approx(0.0, abs=1e-7)          # constant: not sparse at all
    assert out[1].item() == 0.0                                   # all-zero: 0, as Quantus (documented)
    assert out[2].item() == pytest.approx(1 - 1 / n, abs=1e-7)    # one pixel: maximal
    # Quantus adds 1e-7 to every value: here that moves the one-hot value by ~1e-7 * n / 2 = 1.3e-5
    q = _quantus(quantus.Sparseness, maps)
    np.testing.assert_allclose(out.double().numpy(), q, atol=3e-5)


def test_complexity_edge_cases():
    one_hot = torch.zeros(16, 16)
    one_hot[7, 7] = -3.0
    out = complexity(torch.stack([torch.full((16, 16), 2.0), one_hot, torch.zeros(16, 16)]))
    assert out[0].item() == pytest.approx(math.log(256), rel=1e-6)
    assert out[1].item() == 0.0
    assert math.isnan(out[2].item())


def test_complexity_hand_computed():
    # p = [1/4, 1/4, 1/2, 0] -> H = 2 * (1/4) ln 4 + (1/2) ln 2 = 1.5 ln 2
    a = torch.tensor([[[1.0, -1.0], [2.0, 0.0]]])
    assert complexity(a).item() == pytest.approx(1.5 * math.log(2), rel=1e-6)


def test_channel_maps_are_reduced_by_absolute_sum():
    a = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(sparseness(a), sparseness(a.abs().sum(1)))
    assert torch.allclose(sparseness(a[:, :1]), sparseness(a[:, 0]))


def test_bad_shapes_and_values_raise():
    with pytest.raises(InterpError, match=r"\[B,H,W\]"):
        sparseness(torch.rand(8, 8))
    with pytest.raises(InterpError, match="NaN"):
        complexity(torch.tensor([[[float("nan"), 1.0]]]))
