"""Pointing game, relevance mass/rank accuracy, artifact mass: Quantus agreement and hand cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interp_core.errors import InterpError
from interp_core.metrics import artifact_mass, pointing_game, relevance_mass_accuracy, relevance_rank_accuracy

quantus = pytest.importorskip("quantus")

NAN = float("nan")


def _quantus(metric_cls, a: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Quantus on our inputs, like-for-like: its defaults (raw a, abs=False) but no batch-wide normalisation."""
    b, h, w = a.shape
    metric = metric_cls(abs=False, normalise=False, disable_warnings=True)
    out = metric(model=None, x_batch=np.zeros((b, 3, h, w), dtype=np.float32), y_batch=np.zeros(b, dtype=int),
                 a_batch=a[:, None].double().numpy().copy(), s_batch=mask[:, None].float().numpy())
    return np.asarray(out, dtype=np.float64)


def _random_case(seed: int, b: int = 8, size: int = 16, signed: bool = False):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(b, size, size, generator=g)
    if signed:
        a = a - 0.4
    # blob-shaped masks of random position and size, plus one random scatter mask
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy, cx = torch.randint(0, size, (2, b, 1, 1), generator=g)
    r = torch.randint(2, size // 2, (b, 1, 1), generator=g)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    mask[-1] = torch.rand(size, size, generator=g) < 0.2
    return a, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pointing_game_equals_quantus(seed):
    a, mask = _random_case(seed)
    a[0] = a[0] * ~mask[0]  # a guaranteed miss
    a[1, mask[1]] += 1.0    # a guaranteed hit
    ours = pointing_game(a, mask)
    np.testing.assert_array_equal(ours.numpy(), _quantus(quantus.PointingGame, a, mask))
    assert ours[0] == 0 and ours[1] == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relevance_mass_accuracy_equals_quantus(seed):
    a, mask = _random_case(seed)
    np.testing.assert_allclose(relevance_mass_accuracy(a, mask).numpy(),
                               _quantus(quantus.RelevanceMassAccuracy, a, mask), rtol=1e-6)


def test_relevance_mass_accuracy_on_signed_maps_equals_quantus_on_clipped_maps():
    a, mask = _random_case(3, signed=True)
    np.testing.assert_allclose(relevance_mass_accuracy(a, mask).numpy(),
                               _quantus(quantus.RelevanceMassAccuracy, a.clamp_min(0), mask), rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relevance_rank_accuracy_equals_quantus(seed):
    a, mask = _random_case(seed, signed=seed == 2)
    np.testing.assert_allclose(relevance_rank_accuracy(a, mask).numpy(),
                               _quantus(quantus.RelevanceRankAccuracy, a, mask), rtol=1e-6)


def test_hand_computed_localisation():
    a = torch.tensor([[[0.1, 0.9, 0.0],
                       [0.4, -2.0, 0.3],
                       [0.0, 0.2, 0.1]]])
    mask = torch.tensor([[[0, 1, 1],
                          [1, 1, 0],
                          [0, 0, 0]]])
    # max 0.9 at (0,1), inside
    assert pointing_game(a, mask).item() == 1.0
    # positive mass 2.0; inside: 0.9 + 0 + 0.4 + 0 (the -2 is clipped) = 1.3
    assert relevance_mass_accuracy(a, mask).item() == pytest.approx(1.3 / 2.0)
    # k = 4: top-4 = 0.9, 0.4, 0.3, 0.2 -> in mask: 0.9, 0.4 -> 2/4
    assert relevance_rank_accuracy(a, mask).item() == pytest.approx(0.5)


def test_single_pixel_masks():
    a = torch.tensor([[[0.2, 0.5], [0.1, 0.05]]]).repeat(2, 1, 1)
    mask = torch.zeros(2, 2, 2, dtype=torch.bool)
    mask[0, 0, 1] = True   # on the maximum
    mask[1, 1, 0] = True   # elsewhere
    assert pointing_game(a, mask).tolist() == [1.0, 0.0]
    assert relevance_rank_accuracy(a, mask).tolist() == [1.0, 0.0]
    np.testing.assert_allclose(relevance_mass_accuracy(a, mask).numpy(), [0.5 / 0.85, 0.1 / 0.85], rtol=1e-6)


def test_empty_masks_give_nan():
    a = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 4, 4)
    mask[1, 0, 0] = 1
    for fn in (pointing_game, relevance_mass_accuracy, relevance_rank_accuracy, artifact_mass):
        out = fn(a, mask)
        assert math.isnan(out[0].item()), fn.__name__
        assert not math.isnan(out[1].item()), fn.__name__


def test_constant_and_zero_maps():
    n = 16
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :1, :] = True  # 4 pixels
    maps = torch.stack([torch.full((4, 4), 0.3), torch.zeros(4, 4)])
    # every pixel is a maximum: a hit as in Quantus
    assert pointing_game(maps, mask).tolist() == [1.0, 1.0]
    # ties resolved by expectation: chance level k/n
    np.testing.assert_allclose(relevance_rank_accuracy(maps, mask).numpy(), [4 / n, 4 / n])
    rma = relevance_mass_accuracy(maps, mask)
    assert rma[0].item() == pytest.approx(4 / n)
    assert math.isnan(rma[1].item())  # no positive mass: undefined (Quantus: 0/0 = NaN as well)


def test_rank_accuracy_ties_at_the_boundary():
    # k = 2; values 0.9 (in mask) > 0.5 = 0.5 = 0.5 (one of the three tied in mask):
    # 1 sure hit + 1 slot shared by 3 tied pixels of which 1 in mask -> (1 + 1/3) / 2
    a = torch.tensor([[[0.9, 0.5, 0.5, 0.5, 0.1]]])
    mask = torch.tensor([[[1, 0, 1, 0, 0]]])
    assert relevance_rank_accuracy(a, mask).item() == pytest.approx((1 + 1 / 3) / 2)


def test_artifact_mass_is_relevance_mass_on_the_region():
    a, region = _random_case(4, signed=True)
    torch.testing.assert_close(artifact_mass(a, region), relevance_mass_accuracy(a, region))
    assert artifact_mass.info.higher_is_better is False


def test_mask_layouts_and_dtypes_are_accepted():
    a, mask = _random_case(5, b=3, size=8)
    ref = relevance_mass_accuracy(a, mask)
    torch.testing.assert_close(relevance_mass_accuracy(a[:, None], mask[:, None].float() * 255), ref)
    torch.testing.assert_close(relevance_mass_accuracy(a, mask.to(torch.uint8)), ref)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(InterpError, match=r"attribution shape \[2,8,8\] and mask shape \[2,1,16,16\] differ"):
        relevance_mass_accuracy(torch.rand(2, 8, 8), torch.ones(2, 1, 16, 16))
    with pytest.raises(InterpError, match=r"\[3,8,8\].*\[2,8,8\]"):
        pointing_game(torch.rand(3, 8, 8), torch.ones(2, 8, 8))
    with pytest.raises(InterpError, match="region shape"):
        artifact_mass(torch.rand(2, 8, 8), torch.ones(2, 4, 4))
    with pytest.raises(InterpError, match=r"mask must have shape"):
        pointing_game(torch.rand(2, 8, 8), torch.ones(2, 3, 8, 8))
