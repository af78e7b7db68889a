"""normalize_max and clip_percentile: hand cases, constant and all-zero maps, NumPy's percentile."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interp_core.attribution import clip_percentile, normalize_max, percentile
from interp_core.errors import InterpError


def test_normalize_max_hand_case_and_edge_maps():
    a = torch.stack([torch.tensor([[0.0, 1.0], [2.0, 4.0]]),   # ordinary
                     torch.zeros(2, 2),                         # all zero: stays zero, no NaN
                     torch.full((2, 2), 2.5),                   # constant: all ones
                     torch.tensor([[-2.0, 1.0], [0.0, 0.5]])])  # signed: divided by max |a|
    out = normalize_max(a)
    expected = torch.stack([torch.tensor([[0.0, 0.25], [0.5, 1.0]]), torch.zeros(2, 2), torch.ones(2, 2),
                            torch.tensor([[-1.0, 0.5], [0.0, 0.25]])])
    assert torch.equal(out, expected)


def test_normalize_max_keeps_gradients_flowing_and_accepts_flat_maps():
    a = torch.tensor([[1.0, 3.0]], requires_grad=True)
    normalize_max(a).sum().backward()
    assert torch.equal(a.grad, torch.tensor([[1 / 3, 1 / 3]]))  # the scale is treated as a constant


def test_clip_percentile_matches_numpy_and_is_per_sample():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 7, 9, generator=g) ** 4 * torch.tensor([1.0, 10.0, 100.0]).view(3, 1, 1)
    for q in (50.0, 90.0, 99.0, 100.0):
        p = np.percentile(a.numpy().reshape(3, -1), q, axis=1)
        torch.testing.assert_close(percentile(a, q), torch.tensor(p, dtype=torch.float32))
        expected = np.minimum(a.numpy(), p[:, None, None])
        torch.testing.assert_close(clip_percentile(a, q), torch.tensor(expected))


def test_clip_percentile_hand_case_signed_constant_and_zero():
    ramp = torch.arange(10.0).view(1, 2, 5)  # |a| = 0..9: the 90th percentile is 8.1
    torch.testing.assert_close(clip_percentile(ramp, 90.0).flatten(), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 8.1]))
    signed = torch.tensor([[[-10.0, 1.0], [2.0, 3.0]]])  # |a| 75th percentile = 4.75: -10 -> -4.75
    torch.testing.assert_close(clip_percentile(signed, 75.0), torch.tensor([[[-4.75, 1.0], [2.0, 3.0]]]))
    const = torch.full((2, 3, 3), 0.7)
    assert torch.equal(clip_percentile(const), const)
    assert torch.equal(clip_percentile(torch.zeros(1, 4, 4)), torch.zeros(1, 4, 4))


@pytest.mark.parametrize("q", [0.0, 101.0, -5.0])
def test_clip_percentile_rejects_bad_q(q):
    with pytest.raises(InterpError, match=r"percentile q must be in \(0, 100\]"):
        clip_percentile(torch.ones(1, 2, 2), q)


def test_unbatched_input_is_an_error():
    with pytest.raises(InterpError, match=r"batch of maps \[B, H, W\]"):
        normalize_max(torch.ones(5))
