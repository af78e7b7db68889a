"""Saliency Guided Training: the fill, the k-lowest mask in every channel, options and the loss."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from captum.attr import Saliency

from interp_core.errors import InterpError
from interp_core.models import create_model
from interp_core.training.objectives.base import StepContext, get_objective, options_from_dict
from interp_core.training.objectives.sgt import SGT, fill_low_saliency


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("smallcnn", 2, width=4)


def _banded_images(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Channel c of image i lives in its own band, so a fill from the wrong channel is visible."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([0.0, 0.4, 0.8]).view(1, 3, 1, 1) + 0.02 * torch.arange(n).view(n, 1, 1, 1)
    return base + 0.15 * torch.rand(n, 3, size, size, generator=g)


def _ctx(seed: int = 0) -> StepContext:
    return StepContext(epoch=0, step=0, steps_per_epoch=10, device=torch.device("cpu"),
                       generator=torch.Generator().manual_seed(seed))


def test_uniform_fill_stays_in_each_channels_range_and_only_on_the_mask():
    x = _banded_images()
    mask = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1)) < 0.5
    out = fill_low_saliency(x, mask, "uniform_channel_range", torch.Generator().manual_seed(2))
    full = mask.expand_as(x)
    assert torch.equal(out[~full], x[~full])
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    assert ((out >= lo) & (out <= hi)).all()
    assert (out[full] != x[full]).float().mean() > 0.99  # every channel of a masked pixel replaced
    # spread over the range, not a constant: the per-channel std of the fill ~ (hi - lo) / sqrt(12)
    filled = torch.where(full, out, torch.nan)
    std = torch.stack([filled[i, c][mask[i, 0]].std() for i in range(4) for c in range(3)])
    assert ((std > 0.03) & (std < 0.06)).all()


def test_other_fills():
    x = _banded_images()
    mask = torch.zeros(4, 1, 16, 16, dtype=torch.bool)
    mask[:, :, :4] = True
    full = mask.expand_as(x)
    zero = fill_low_saliency(x, mask, "zero")
    assert (zero[full] == 0).all() and torch.equal(zero[~full], x[~full])
    mean = fill_low_saliency(x, mask, "channel_mean")
    expected = x.mean((2, 3), keepdim=True).expand_as(x)
    assert torch.equal(mean[full], expected[full]) and torch.equal(mean[~full], x[~full])
    with pytest.raises(InterpError):
        fill_low_saliency(x, mask, "blur")


def test_masked_input_changes_exactly_the_k_lowest_saliency_pixels():
    model = _model().train()
    x = _banded_images(n=4, size=16)
    y = torch.tensor([0, 1, 0, 1])
    obj = SGT(SGT.Options(k=0.25), 4)
    x_masked, mask = obj.masked_input(model, x, y, torch.Generator().manual_seed(0))
    assert model.training
    # independent reference: Captum saliency on the eval-mode model, summed |grad| over channels
    ref = Saliency(copy.deepcopy(model).eval()).attribute(x.clone().requires_grad_(True), target=y, abs=True).sum(1)
    for i in range(4):
        m = mask[i, 0]
        assert int(m.sum()) == 64  # round(0.25 * 256)
        assert ref[i][m].max() <= ref[i][~m].min()
        changed = (x_masked[i] != x[i])
        assert torch.equal(changed.any(0), m)  # changes only on the mask ...
        assert changed[:, m].float().mean() > 0.99  # ... and in all three channels there


def test_batch_loss_extras_mode_grads_and_determinism():
    model = _model()
    b = {"image": _banded_images(n=8), "label": torch.tensor([0, 1] * 4), "index": torch.arange(8)}
    obj = SGT(SGT.Options(), 8)
    m1, m2 = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    l1, e1 = obj.batch_loss(m1, b, _ctx(3))
    l2, e2 = obj.batch_loss(m2, b, _ctx(3))
    assert torch.equal(l1, l2) and e1 == e2
    assert m1.training and all(p.grad is None for p in m1.parameters())
    assert set(e1) == {"ce", "kl", "perturbed_fraction"}
    assert e1["perturbed_fraction"] == pytest.approx(0.5) and e1["kl"] > 0
    assert l1.item() == pytest.approx(e1["ce"] + 1.0 * e1["kl"], rel=1e-5)
    l1.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m1.parameters())
    l3, _ = obj.batch_loss(copy.deepcopy(model).train(), b, _ctx(4))
    assert not torch.equal(l1, l3)


def test_options():
    o = SGT.Options()
    assert (o.saliency_method, o.k, o.fill, o.kl_weight, o.bn_stats) == (
        "saliency", 0.5, "uniform_channel_range", 1.0, "separate")
    for f in dataclasses.fields(SGT.Options):
        assert f.metadata.get("help"), f.name
    for bad in ({"k": 0.0}, {"k": 1.0}, {"k": 1.5}, {"fill": "blur"}, {"kl_weight": -1},
                {"saliency_method": "x"}, {"bn_stats": "x"}, {"eval_precision": "float16"}):
        with pytest.raises(InterpError):
            options_from_dict(SGT, bad)
    assert options_from_dict(SGT, {"k": "0.3"}).k == 0.3
    assert get_objective("sgt") is SGT
