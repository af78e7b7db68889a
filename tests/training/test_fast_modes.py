"""The fast modes of SCAAT and ECE (issue 16): each piece against an independent computation."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from interp_core.consistency.score import carried_consistency
from interp_core.consistency.similarity import cosine_similarity
from interp_core.errors import InterpError
from interp_core.models import create_model
from interp_core.runs import load_tensors
from interp_core.training import TrainConfig, train
from interp_core.training.objectives.base import EpochContext, options_from_dict
from interp_core.training.objectives.ece import ECE
from interp_core.training.objectives.scaat import SCAAT, clean_training_pass, fgsm_from_gradient, loss_input_saliency
from interp_core.training.saliency_guidance import adaptive_low_saliency_mask, kl_divergence
from interp_core.training.sample_store import PerturbationStore
from tests._fixtures.training import step_batch, step_context

EPS = 8 / 255
QUIET = dict(progress=False, log=lambda m: None)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("smallcnn", 2, width=4).train()




def _fast(**kw) -> SCAAT:
    return SCAAT(options_from_dict(SCAAT, {"mode": "fast", "warmup_epochs": 0, **kw}), 8)


class _Inputs:
    """Records the input of every forward call of a module (clean pass first, perturbed second)."""

    def __init__(self, model):
        self.seen: list[torch.Tensor] = []
        self.handle = model.register_forward_pre_hook(lambda m, args: self.seen.append(args[0].detach().clone()))


# -- SCAAT fast: step 1 ------------------------------------------------------------------------------
def test_saliency_from_the_training_pass_equals_a_separate_train_mode_input_gradient():
    model, b = _model(), step_batch()
    ref = copy.deepcopy(model)
    params = list(model.parameters())
    logits, ce, grads = clean_training_pass(model, b["image"], b["label"], params)
    # independent: a separate train-mode forward, then input and weight gradients by backward()
    x = b["image"].clone().requires_grad_(True)
    ce_ref = F.cross_entropy(ref(x), b["label"])
    ce_ref.backward()
    assert torch.allclose(ce, ce_ref)
    assert torch.allclose(grads[0], x.grad, atol=1e-7, rtol=1e-5)
    for g, p in zip(grads[1:], ref.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-7, rtol=1e-5)
    assert all(p.grad is None for p in params)  # .grad untouched
    sal = loss_input_saliency(grads[0], b["image"])
    by_hand = x.grad.abs().sum(1)
    by_hand = by_hand / by_hand.flatten(1).amax(1).view(-1, 1, 1)
    assert torch.allclose(sal, by_hand, atol=1e-6) and sal.shape == (8, 16, 16)
    # with two classes the map is the logit margin's (1 - p_y cancels in the max-normalisation)
    # (in train mode each sample's logits depend on the others' through BatchNorm: compare in eval mode)
    ev = copy.deepcopy(model).eval()
    xe = b["image"].clone().requires_grad_(True)
    F.cross_entropy(ev(xe), b["label"], reduction="sum").backward()
    xm2 = b["image"].clone().requires_grad_(True)
    o2 = ev(xm2)
    (o2.gather(1, b["label"].view(-1, 1)) - o2.gather(1, 1 - b["label"].view(-1, 1))).sum().backward()
    assert torch.allclose(loss_input_saliency(xe.grad, b["image"]), loss_input_saliency(xm2.grad, b["image"]), atol=1e-5)


def test_fast_loss_gradient_is_ce_plus_weighted_kl_with_detached_target():
    """The returned loss's backward gives d/dp [CE(f(x)) + lambda * KL(p(x).detach() || p(x + delta))],
    with x + delta rebuilt independently (train-mode dCE/dx -> mask; random start + sign step)."""
    model, b = _model(), step_batch()
    ref = copy.deepcopy(model)
    obj = _fast(kl_weight=3.0, kl_batch_fraction=1.0)  # the whole batch (the fraction-1 path draws no subset)
    loss, extras = obj.batch_loss(model, b, step_context(seed=4))
    loss.backward()
    assert model.training
    # replay: the same seed draws the mask's tie-breaks first, then the random start
    gen = torch.Generator().manual_seed(4)
    x = b["image"].clone().requires_grad_(True)
    logits = ref(x)
    ce = F.cross_entropy(logits, b["label"])
    (gx,) = torch.autograd.grad(ce, x, retain_graph=True)
    mask = adaptive_low_saliency_mask(loss_input_saliency(gx, b["image"]), obj.options.q, obj.options.rho_min,
                                      obj.options.rho_max, generator=gen)
    u = (torch.rand(b["image"].shape, generator=gen) * 2 - 1) * EPS
    delta = (u + 1.25 * EPS * gx.sign()).clamp(-EPS, EPS)  # random start + one sign step along dCE/dx
    x_adv = (b["image"] + delta * mask).clamp(0, 1)
    from interp_core.training.saliency_guidance import _running_stats_frozen
    with _running_stats_frozen([m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)]):
        logits_adv = ref(x_adv)
    kl = kl_divergence(logits.detach(), logits_adv).mean()
    total = ce + 3.0 * kl
    assert loss.item() == pytest.approx(total.item(), rel=1e-5)
    assert extras["kl"] == pytest.approx(kl.item(), rel=1e-4, abs=1e-9)
    total.backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4)
    # BatchNorm running statistics: updated by the clean pass only, as ERM would
    for bm, bq in zip(model.buffers(), ref.buffers()):
        assert torch.allclose(bm.float(), bq.float())


# -- SCAAT fast: step 3 (perturbation from the training gradient) ---------------------------------------
def test_perturbation_stays_within_eps_inside_the_mask_and_steps_along_the_training_gradient():
    model, b = _model(), step_batch(n=8, size=16)
    obj = _fast()
    rec = _Inputs(model)
    x = b["image"]
    for step in range(3):
        rec.seen.clear()
        ref = copy.deepcopy(model)
        loss, _ = obj.batch_loss(model, b, step_context(seed=step))
        loss.backward()
        torch.optim.SGD(model.parameters(), lr=0.5).step()  # the weights move between steps
        model.zero_grad(set_to_none=True)
        clean, x_adv = rec.seen
        assert torch.equal(clean, x)
        # independent: the same train-mode input gradient, the same tie-break draws
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(ref(xi), b["label"]), xi)
        mask = adaptive_low_saliency_mask(loss_input_saliency(g, x), obj.options.q, obj.options.rho_min,
                                          obj.options.rho_max, generator=torch.Generator().manual_seed(step))
        d = x_adv - x
        assert d.abs().max() <= EPS + 1e-6
        assert ((x_adv >= 0) & (x_adv <= 1)).all()
        assert torch.equal(d * ~mask, torch.zeros_like(d))  # nothing changes outside M
        inside = mask.expand_as(d) & (x > EPS) & (x < 1 - EPS) & (g != 0)  # where [0,1] does not bind
        assert inside.sum() > 100
        assert torch.equal(d[inside].sign(), g[inside].sign())  # alpha = 1.25 eps: the step's sign wins
        assert (d[inside].abs() >= 0.25 * EPS - 1e-6).all()
    rec.handle.remove()


def test_fgsm_from_gradient_by_hand():
    x = torch.tensor([[[[0.5, 0.99, 0.01, 0.5]]]])
    grad = torch.tensor([[[[1.0, 1.0, -1.0, -1.0]]]])
    mask = torch.tensor([[[[True, True, True, False]]]])
    u = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.03
    out = fgsm_from_gradient(x, grad, mask, eps=0.03, alpha=0.05, generator=torch.Generator().manual_seed(0))
    # u + 0.05 * sign -> clipped to +-eps whatever u; then x + delta clipped to [0, 1]; off-mask unchanged
    assert torch.allclose(out, torch.tensor([[[[0.53, 1.0, 0.0, 0.5]]]]), atol=1e-6)
    start = fgsm_from_gradient(x, grad, mask, eps=0.03, alpha=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(start[mask], (x + u).clamp(0, 1)[mask], atol=1e-6)  # alpha 0: the random start


def test_store_quantisation_bound_clamp_and_random_start():
    st = PerturbationStore(8, EPS)
    d = (torch.rand(8, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1) * EPS
    st.put(torch.arange(8), d)
    assert (st.get(torch.arange(8), d.shape, EPS) - d).abs().max() <= EPS / 254 + 1e-7
    assert st.get(torch.tensor([3, 1]), (2, 3, 6, 6), EPS).sub(d[[3, 1]]).abs().max() <= EPS / 254 + 1e-7
    assert st.get(torch.arange(8), d.shape, EPS / 4).abs().max() <= EPS / 4  # clamped to the current eps
    fresh = PerturbationStore(4, EPS).get(torch.arange(4), (4, 3, 6, 6), EPS, generator=torch.Generator().manual_seed(1))
    assert fresh.abs().max() <= EPS and fresh.std() > EPS / 3  # random start U[-eps, eps]


def test_fast_options_validation():
    with pytest.raises(InterpError):
        options_from_dict(SCAAT, {"mode": "faster"})
    with pytest.raises(InterpError):
        options_from_dict(SCAAT, {"mode": "fast", "bn_stats": "joint"})
    with pytest.raises(InterpError):
        options_from_dict(SCAAT, {"kl_batch_fraction": 0.5})  # exact mode
    with pytest.raises(InterpError):
        options_from_dict(SCAAT, {"mode": "fast", "kl_batch_fraction": 0.0})


def test_kl_batch_fraction_picks_the_seeded_subset_and_averages_its_kl():
    """``kl_batch_fraction`` f: the perturbed branch gets the rows ``sort(randperm(B)[:ceil(f B)])``
    drawn first from the step's generator (the same rows for the same seed); CE covers the whole
    batch, the KL term is the mean over those rows; rebuilt independently here."""
    from interp_core.training.saliency_guidance import _running_stats_frozen
    model, b = _model(), step_batch(n=8)
    ref = copy.deepcopy(model)
    obj = _fast(kl_batch_fraction=0.3, kl_weight=5.0)  # ceil(0.3 * 8) = 3 rows
    rec = _Inputs(model)
    loss, extras = obj.batch_loss(model, b, step_context(seed=7))
    loss.backward()
    clean, x_adv = rec.seen
    rec.handle.remove()
    gen = torch.Generator().manual_seed(7)
    sub = torch.randperm(8, generator=gen)[:3].sort().values
    assert len(clean) == 8 and len(x_adv) == 3
    x = b["image"].clone().requires_grad_(True)
    logits = ref(x)
    ce = F.cross_entropy(logits, b["label"])
    (gx,) = torch.autograd.grad(ce, x, retain_graph=True)
    xs, gs = b["image"][sub], gx[sub]
    mask = adaptive_low_saliency_mask(loss_input_saliency(gs, xs), obj.options.q, obj.options.rho_min,
                                      obj.options.rho_max, generator=gen)
    u = (torch.rand(xs.shape, generator=gen) * 2 - 1) * EPS
    expected = (xs + (u + 1.25 * EPS * gs.sign()).clamp(-EPS, EPS) * mask).clamp(0, 1)
    assert torch.allclose(x_adv, expected, atol=1e-6)
    with _running_stats_frozen([m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)]):
        logits_adv = ref(expected)
    kl = kl_divergence(logits[sub].detach(), logits_adv).mean()
    total = ce + 5.0 * kl
    assert loss.item() == pytest.approx(total.item(), rel=1e-5)
    assert extras["kl"] == pytest.approx(kl.item(), rel=1e-4, abs=1e-9)
    total.backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4)
    # the same seed picks the same rows; another seed (almost surely) others
    again = _Inputs(m2 := copy.deepcopy(ref))
    obj.batch_loss(m2, b, step_context(seed=7))
    assert torch.equal(again.seen[1], x_adv)
    picks = set()
    for seed in range(6):
        r = _Inputs(m3 := copy.deepcopy(ref))
        obj.batch_loss(m3, b, step_context(seed=seed))
        rows = torch.randperm(8, generator=torch.Generator().manual_seed(seed))[:3].sort().values
        # each perturbed row is within eps of the batch row the seed picked (random rows differ by far more)
        assert len(r.seen[1]) == 3 and (r.seen[1] - b["image"][rows]).abs().max() <= EPS + 1e-6
        picks.add(tuple(rows.tolist()))
    assert len(picks) > 1


# -- SCAAT fast through the training loop --------------------------------------------------------------
def _cfg(data, out, seed=1, epochs=3):
    return TrainConfig(data=str(data), out=str(out), objective="scaat", epochs=epochs, batch_size=8, seed=seed,
                       objective_options={"mode": "fast", "warmup_epochs": 0})


def test_same_seed_same_fast_run_on_cpu(tiny_data, tmp_path):
    train(_cfg(tiny_data, tmp_path / "a", epochs=2), **QUIET)
    train(_cfg(tiny_data, tmp_path / "b", epochs=2), **QUIET)
    train(_cfg(tiny_data, tmp_path / "c", epochs=2, seed=2), **QUIET)
    wa, wb, wc = (load_tensors(tmp_path / f"{r}/model.safetensors") for r in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


class _Killed(Exception):
    pass


def test_fast_run_killed_mid_epoch_resumes_to_the_same_weights(tiny_data, tmp_path, monkeypatch):
    train(_cfg(tiny_data, tmp_path / "full"), **QUIET)
    original = SCAAT.batch_loss

    def dies_in_epoch_3(self, model, batch, ctx):
        if ctx.epoch == 2 and ctx.step == 1:
            raise _Killed  # mid-epoch, after step 0 changed the weights in memory
        return original(self, model, batch, ctx)

    monkeypatch.setattr(SCAAT, "batch_loss", dies_in_epoch_3)
    with pytest.raises(_Killed):
        train(_cfg(tiny_data, tmp_path / "killed"), **QUIET)
    monkeypatch.setattr(SCAAT, "batch_loss", original)
    logs: list[str] = []
    train(_cfg(tiny_data, tmp_path / "killed"), progress=False, log=logs.append)
    assert any("resuming after epoch 2" in m for m in logs)
    wa = load_tensors(tmp_path / "full/model.safetensors")
    wb = load_tensors(tmp_path / "killed/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ca = load_tensors(tmp_path / "full/checkpoint/epoch_0003/model.safetensors")
    cb = load_tensors(tmp_path / "killed/checkpoint/epoch_0003/model.safetensors")
    assert all(torch.equal(ca[k], cb[k]) for k in ca)


# -- ECE fast ------------------------------------------------------------------------------------------
def test_carried_consistency_by_hand():
    model, b = _model().eval(), step_batch()
    x, y = b["image"], b["label"]
    delta = (torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) * 2 - 1) * EPS
    res = carried_consistency(model, x, y, delta, eps=EPS, alpha=0.01, threshold="0.5")
    # independent: CAM by hand, background, x_hat, gradient, one projected step
    with torch.no_grad():
        feats = model.forward_features(x)
        w = model.head.weight[y]
        cam = F.interpolate(torch.einsum("bc,bchw->bhw", w, feats).clamp_min(0)[:, None], size=x.shape[-2:],
                            mode="bilinear", align_corners=False)[:, 0]
        h = cam / cam.flatten(1).amax(1).clamp_min(1e-30).view(-1, 1, 1)
    bg = (h < 0.5)[:, None]
    x_hat = torch.where(bg, torch.minimum(torch.maximum(x + delta, (x - EPS).clamp_min(0)), (x + EPS).clamp_max(1)), x)
    xh = x_hat.clone().requires_grad_(True)
    fh = model.forward_features(xh)
    logits = model.forward_head(fh)
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xh)
    cam2 = F.interpolate(torch.einsum("bc,bchw->bhw", w, fh.detach()).clamp_min(0)[:, None], size=x.shape[-2:],
                         mode="bilinear", align_corners=False)[:, 0]
    h2 = cam2 / cam2.flatten(1).amax(1).clamp_min(1e-30).view(-1, 1, 1)
    assert torch.allclose(res.score, cosine_similarity(h, h2), atol=1e-5)
    step = torch.minimum(torch.maximum(x_hat + 0.01 * g.sign(), (x - EPS).clamp_min(0)), (x + EPS).clamp_max(1)) - x
    assert torch.allclose(res.delta_next, torch.where(bg, step, delta), atol=1e-6)
    assert res.delta_next.abs().max() <= EPS + 1e-6
    # foreground never changes; a zero perturbation scores 1
    assert torch.equal((res.delta_next * ~bg)[~bg.expand_as(x)], (delta * ~bg)[~bg.expand_as(x)])
    zero = carried_consistency(model, x, y, torch.zeros_like(x), eps=EPS)
    assert torch.allclose(zero.score, torch.ones(8), atol=1e-6) and not zero.pred_changed.any()


def _ece_setup(n=16, size=16):
    model = _model().eval()
    g = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(8, 3, size, size, generator=g), "label": torch.randint(0, 2, (8,), generator=g),
                "index": torch.arange(i * 8, (i + 1) * 8)} for i in range(n // 8)]
    return model, batches


def _ectx(model, batches, epoch, run_dir):
    return EpochContext(epoch=epoch, total_epochs=9, model=model, train_eval_loader=batches,
                        device=torch.device("cpu"), run_dir=run_dir, generator=torch.Generator().manual_seed(epoch))


def test_ece_fast_selection_lowest_consistency_and_oldest_scores():
    obj = ECE(options_from_dict(ECE, {"mode": "fast", "refresh_fraction": 0.5}), 8)
    obj.store.seen[:] = True
    obj.consistency = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.95, 0.97, 0.99, 0.3]])
    obj.rescored = torch.tensor([[True, True, True, True, False, True, False, True]])
    chosen = obj.select_for_rescoring()
    # k = 4: the two lowest E (1, 3), then the two scored longest ago among the rest (4, 6: never)
    assert chosen.nonzero().flatten().tolist() == [1, 3, 4, 6]


def test_ece_fast_refreshes_every_epoch_and_resumes(tmp_path):
    model, batches = _ece_setup()
    a = ECE(options_from_dict(ECE, {"mode": "fast", "warmup_epochs": 1, "refresh_every": 3}), 16)
    assert a.begin_epoch(_ectx(model, batches, 0, tmp_path))["refreshed"] == 0.0  # warm-up
    first = a.begin_epoch(_ectx(model, batches, 1, tmp_path))
    assert first["refreshed"] == 1.0 and first["rescored_share"] == 1.0
    second = a.begin_epoch(_ectx(model, batches, 2, tmp_path))  # every epoch, refresh_every not used
    assert second["refreshed"] == 1.0 and second["rescored_share"] == 0.5
    assert a.store.seen.all() and a.store.q.float().abs().max() * EPS / 127 <= EPS + 1e-7
    state = {k: v.clone() for k, v in a.state_tensors().items()}
    b = ECE(options_from_dict(ECE, {"mode": "fast", "warmup_epochs": 1, "refresh_every": 3}), 16)
    b.load_state_tensors(state)
    assert torch.equal(b.store.q, a.store.q) and torch.equal(b.rescored, a.rescored)
    ea = a.begin_epoch(_ectx(model, batches, 3, tmp_path))
    eb = b.begin_epoch(_ectx(model, batches, 3, tmp_path))
    assert torch.equal(a.consistency, b.consistency) and torch.equal(a.weights, b.weights)
    assert ea["consistency_mean"] == eb["consistency_mean"]
    with np.load(tmp_path / "consistency.npz", allow_pickle=False) as z:
        assert z["rescored"].shape == (3, 16) and z["rescored"][0].all() and z["rescored"].sum(1).tolist() == [16, 8, 8]
    # an exact-mode state (no rescored rows, no store) still loads
    c = ECE(options_from_dict(ECE, {}), 16)
    c.load_state_tensors({k: v for k, v in state.items() if k in ("weights", "refresh_epochs", "consistency",
                                                                   "pred_changed", "labels")})
    assert c.rescored.all() and c.rescored.shape == (2, 16)
    assert math.isclose(float(a.weights.mean()), 1.0, rel_tol=1e-5)


def test_ece_fast_first_refresh_scores_one_exact_attack_step(tmp_path):
    """The first fast refresh equals the exact refresh with K = 1 (step alpha of the configured K)."""
    from interp_core.consistency.options import ConsistencyOptions
    from interp_core.consistency.score import dataset_consistency
    model, batches = _ece_setup()
    a = ECE(options_from_dict(ECE, {"mode": "fast", "warmup_epochs": 0}), 16)
    a.begin_epoch(_ectx(model, batches, 0, tmp_path))
    opts = ConsistencyOptions(steps=1, alpha=ConsistencyOptions().step_size)
    ref = dataset_consistency(model, batches, opts)
    assert torch.allclose(a.consistency[0][ref.indices], ref.scores, atol=1e-5)
