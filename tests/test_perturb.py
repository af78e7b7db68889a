"""Background split and masked L-inf PGD (interp_core.consistency.perturb)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from interp_core._utils.device import torch_threads
from interp_core.errors import InterpError
from interp_core.models import create_model
from interp_core.consistency.perturb import background_attack, background_mask, default_step_size, masked_pgd, parse_threshold

EPS = 8 / 255


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest and immune to a busy shared CPU."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    m = create_model("smallcnn", 2, width=4)
    m.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        m(torch.rand(16, 3, 32, 32))
    return m


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 32, 32, generator=g)
    x[0, :, :4] = 0.0  # saturated pixels on both ends of [0,1]
    x[1, :, :4] = 1.0
    y = torch.randint(0, 2, (6,), generator=g)
    mask = torch.rand(6, 32, 32, generator=g) < 0.6
    return x, y, mask


def test_background_mask_numeric_and_mean_thresholds() -> None:
    h = torch.tensor([[[0.0, 0.2], [0.5, 1.0]]])
    assert torch.equal(background_mask(h, 0.5), torch.tensor([[[True, True], [False, False]]]))
    assert torch.equal(background_mask(h, "0.5"), background_mask(h, 0.5))
    # mean = 0.425: 0 and 0.2 below
    assert torch.equal(background_mask(h, "mean"), torch.tensor([[[True, True], [False, False]]]))
    h2 = torch.tensor([[[0.0, 0.6], [0.7, 1.0]]])  # mean 0.575 -> only 0 below
    assert torch.equal(background_mask(h2, "mean"), torch.tensor([[[True, False], [False, False]]]))
    # per-sample means in a batch
    both = background_mask(torch.cat([h, h2]), "mean")
    assert both.sum().item() == 3
    # a constant map has nothing strictly below its mean
    assert not background_mask(torch.full((1, 3, 3), 0.4), "mean").any()


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, "median", "abc"])
def test_threshold_validation(bad: object) -> None:
    with pytest.raises(InterpError):
        parse_threshold(bad)  # type: ignore[arg-type]


def test_default_step_size() -> None:
    assert default_step_size(0.03, 3) == pytest.approx(0.025)
    assert default_step_size(8 / 255, 1) == pytest.approx(2.5 * 8 / 255)


@pytest.mark.parametrize("random_start", [False, True])
def test_foreground_unchanged_and_within_bounds(model, batch, random_start) -> None:
    x, y, mask = batch
    g = torch.Generator().manual_seed(3)
    res = masked_pgd(model, x, y, mask, eps=EPS, steps=3, random_start=random_start, generator=g)
    fg = ~mask[:, None].expand_as(x)
    assert torch.equal(res.x_adv[fg], x[fg])  # to the bit
    assert (res.x_adv - x).abs().max().item() <= EPS + 1e-7
    assert res.x_adv.min().item() >= 0.0 and res.x_adv.max().item() <= 1.0
    assert (res.x_adv != x)[~fg].float().mean() > 0.5  # the background did move
    assert torch.equal(res.mask[:, 0], mask)


def test_attack_increases_cross_entropy(model, batch) -> None:
    x, y, mask = batch
    model.eval()
    with torch.no_grad():
        ce_clean = F.cross_entropy(model(x), y)
        res = masked_pgd(model, x, y, mask, eps=EPS, steps=3)
        ce_adv = F.cross_entropy(model(res.x_adv), y)
    assert ce_adv > ce_clean
    noise = torch.where(mask[:, None], (x + EPS * torch.randn_like(x).sign()).clamp(0, 1), x)
    with torch.no_grad():
        assert ce_adv > F.cross_entropy(model(noise), y)  # better than random signs of the same size


def test_reported_predictions_match_model(model, batch) -> None:
    x, y, mask = batch
    model.eval()
    res = masked_pgd(model, x, y, mask, eps=0.2, steps=3)
    with torch.no_grad():
        assert torch.allclose(res.logits_clean, model(x), atol=1e-5)
        assert torch.allclose(res.logits_adv, model(res.x_adv), atol=1e-5)
    assert torch.equal(res.pred_changed, model(x).argmax(1) != model(res.x_adv).argmax(1))
    assert torch.equal(res.target, y)


def test_no_parameter_grad_and_mode_restored(model, batch) -> None:
    x, y, mask = batch
    model.train()
    for p in model.parameters():
        p.grad = None
    masked_pgd(model, x, y, mask)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():  # works from inside a no-grad block, e.g. an evaluation loop
        res = masked_pgd(model, x, y, mask)
    assert not model.training
    assert (res.x_adv != x).any()


def test_zero_budget_or_empty_mask_is_identity(model, batch) -> None:
    x, y, mask = batch
    for kw, m in (({"eps": 0.0}, mask), ({"steps": 0}, mask), ({}, torch.zeros_like(mask))):
        res = masked_pgd(model, x, y, m, **kw)
        assert torch.equal(res.x_adv, x)
        assert not res.pred_changed.any()


def test_callable_mask_gets_clean_forward(model, batch) -> None:
    x, y, mask = batch
    model.eval()
    seen = {}

    def from_clean(feats, logits):
        seen["feats"], seen["logits"] = feats, logits
        return mask

    res = masked_pgd(model, x, y, from_clean)
    with torch.no_grad():
        assert torch.allclose(seen["feats"], model.forward_features(x), atol=1e-6)
        assert torch.allclose(seen["logits"], model(x), atol=1e-6)
    assert torch.equal(res.x_adv, masked_pgd(model, x, y, mask).x_adv)


def test_target_none_uses_prediction(model, batch) -> None:
    x, _, mask = batch
    model.eval()
    res = masked_pgd(model, x, None, mask)
    assert torch.equal(res.target, model(x).argmax(1))


def test_matches_a_plain_reference_implementation(model, batch) -> None:
    """Hand-written PGD with the update rule of the docstring gives the same image."""
    x, y, mask = batch
    model.eval()
    eps, steps = EPS, 2
    alpha = default_step_size(eps, steps)
    m = mask[:, None].float()
    delta = torch.zeros_like(x)
    for _ in range(steps):
        d = delta.clone().requires_grad_(True)
        loss = F.cross_entropy(model(x + d), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, d)
        delta = (delta + alpha * g.sign() * m).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    ref = x + delta
    res = masked_pgd(model, x, y, mask, eps=eps, steps=steps)
    assert (res.x_adv - ref).abs().max().item() < 1e-6


def test_background_attack_uses_heatmap(model, batch) -> None:
    x, y, _ = batch
    h = torch.zeros(6, 32, 32)
    h[:, 8:24, 8:24] = 1.0  # foreground square
    res = background_attack(model, x, y, h, threshold=0.5)
    assert torch.equal(res.x_adv[:, :, 8:24, 8:24], x[:, :, 8:24, 8:24])
    assert (res.x_adv[:, :, :8] != x[:, :, :8]).any()


def test_bad_inputs_raise(model, batch) -> None:
    x, y, mask = batch
    with pytest.raises(InterpError):
        masked_pgd(model, x * 2, y, mask)
    with pytest.raises(InterpError):
        masked_pgd(model, x, y, mask[:, :10])
    with pytest.raises(InterpError):
        masked_pgd(model, x, y[:2], mask)
    with pytest.raises(InterpError):
        masked_pgd(model, x, y, mask, eps=-0.1)


def test_random_start_is_seeded(model, batch) -> None:
    x, y, mask = batch
    run = lambda seed: masked_pgd(model, x, y, mask, random_start=True,  # noqa: E731
                                  generator=torch.Generator().manual_seed(seed)).x_adv
    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))
    assert not torch.equal(run(5), masked_pgd(model, x, y, mask).x_adv)
