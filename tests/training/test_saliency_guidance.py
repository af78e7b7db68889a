"""Training-time saliency, low-saliency masks and the paired clean/perturbed forward pass."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from captum.attr import InputXGradient, Saliency
from torch import nn

from interp_core.errors import InterpError
from interp_core.models import create_model
from interp_core.training.saliency_guidance import (
    adaptive_low_saliency_mask,
    adaptive_mask_counts,
    as_eval_input,
    eval_forward_module,
    eval_mode,
    kl_divergence,
    lowest_saliency_mask,
    mask_from_order,
    normalise_per_sample_max,
    paired_logits,
    sort_pixels_by_saliency,
    step_generator,
    training_saliency,
)


def _linear_model(weight: torch.Tensor) -> nn.Module:
    """logits = W @ flatten(x): the input gradient of logit y is W[y], known by hand."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(weight)
    return nn.Sequential(nn.Flatten(), lin)


def _tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("smallcnn", 2, width=4)


# -- eval_mode ---------------------------------------------------------------------------------------
def test_eval_mode_restores_each_module_mode():
    model = _tiny_cnn()
    model.train()
    frozen_bn = model.features[1]
    frozen_bn.eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model.features[0].training
    assert not frozen_bn.training


# -- saliency -----------------------------------------------------------------------------------------
def test_saliency_of_a_linear_model_is_its_weight_row():
    torch.manual_seed(0)
    c, h, w = 3, 2, 2
    weight = torch.randn(2, c * h * w)
    model = _linear_model(weight)
    x = torch.rand(2, c, h, w)
    y = torch.tensor([0, 1])
    sal, logits = training_saliency(model, x, y, "saliency")
    expected = weight[y].view(2, c, h, w).abs().sum(1)
    expected = expected / expected.flatten(1).amax(1).view(2, 1, 1)
    torch.testing.assert_close(sal, expected)
    torch.testing.assert_close(logits, model(x).detach())

    sal_ixg, _ = training_saliency(model, x, y, "input_x_gradient")
    expected = (x * weight[y].view(2, c, h, w)).abs().sum(1)
    expected = expected / expected.flatten(1).amax(1).view(2, 1, 1)
    torch.testing.assert_close(sal_ixg, expected)


@pytest.mark.parametrize("method,captum_cls", [("saliency", Saliency), ("input_x_gradient", InputXGradient)])
def test_saliency_matches_captum_on_a_cnn(method, captum_cls):
    model = _tiny_cnn().eval()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 1, 0])
    sal, _ = training_saliency(model, x, y, method)
    ref = captum_cls(model).attribute(x.clone(), target=y).abs().sum(1)
    ref = ref / ref.flatten(1).amax(1).view(-1, 1, 1)
    torch.testing.assert_close(sal, ref, rtol=1e-4, atol=1e-6)


def test_saliency_leaves_parameter_grads_and_mode_untouched():
    model = _tiny_cnn().train()
    x = torch.rand(4, 3, 16, 16)
    y = torch.tensor([0, 1, 1, 0])
    training_saliency(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    with torch.no_grad():  # also works when the caller disabled grad
        training_saliency(model, x, y)
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert model.training


def test_unknown_saliency_method_is_a_user_error():
    with pytest.raises(InterpError):
        training_saliency(_tiny_cnn(), torch.rand(1, 3, 8, 8), torch.tensor([0]), "occlusion")


def test_gradcam_region_saliency_matches_captum_layer_gradcam():
    from captum.attr import LayerAttribution, LayerGradCam
    model = _tiny_cnn().eval()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 1, 0])
    sal, logits = training_saliency(model, x, y, "gradcam")
    cam = LayerGradCam(model, model.cam_layer).attribute(x.clone(), target=y, relu_attributions=True)
    ref = LayerAttribution.interpolate(cam, (16, 16), interpolate_mode="bilinear")[:, 0]
    ref = normalise_per_sample_max(ref)
    torch.testing.assert_close(sal, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logits, model(x).detach(), rtol=1e-4, atol=1e-5)
    both, _ = training_saliency(model, x, y, "mean_saliency_gradcam")
    grad, _ = training_saliency(model, x, y, "saliency")
    torch.testing.assert_close(both, normalise_per_sample_max((ref + grad) / 2), rtol=1e-4, atol=1e-5)


def test_smoothgrad_region_saliency_is_the_mean_of_noisy_gradients(monkeypatch):
    import interp_core.training.saliency_guidance as sg
    model = _tiny_cnn().eval()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 0])
    sal, logits = training_saliency(model, x, y, "smoothgrad", torch.Generator().manual_seed(5))
    noise = torch.randn((sg.TRAINING_SMOOTHGRAD_SAMPLES, *x.shape), generator=torch.Generator().manual_seed(5))
    ref = torch.stack([Saliency(model).attribute(x + sg.TRAINING_SMOOTHGRAD_STDEV * e, target=y).abs().sum(1)
                       for e in noise]).mean(0)
    torch.testing.assert_close(sal, normalise_per_sample_max(ref), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, model(x).detach(), rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(sg, "TRAINING_SMOOTHGRAD_STDEV", 0.0)  # no noise: the plain gradient map
    torch.testing.assert_close(training_saliency(model, x, y, "smoothgrad")[0],
                               training_saliency(model, x, y, "saliency")[0], rtol=1e-4, atol=1e-6)


def test_normalise_per_sample_max_keeps_zero_maps_zero():
    s = torch.tensor([[[0.0, 2.0], [1.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    out = normalise_per_sample_max(s)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))


# -- adaptive mask: cumulative-mass rule and clamps, computed by hand -------------------------------------
# n = 10 pixels, q = 0.1, rho in [0.3, 0.8] -> counts clamped to [3, 8].
CASES = [
    # sorted saliency                      total  q*total  largest prefix with csum <= q*total  clamp
    ([1.0] * 10, 3),                    # 10     1        m = 1 (csum 1, 2, ...)                    -> rho_min: 3
    ([0.0] * 8 + [1.0, 9.0], 8),        # 10     1        m = 9 (csum 0 x8, 1, 10)                  -> rho_max: 8
    ([0, 0, 0, 0, 0, 1, 1, 2, 2, 4], 6),  # 10   1        m = 6 (csum 0 x5, 1, 2, ...)              -> 6
    ([0.0] * 10, 8),                    # all-zero: csum 0 <= 0 everywhere, m = 10                  -> rho_max: 8
]


@pytest.mark.parametrize("values,expected", CASES)
def test_adaptive_mask_counts_by_hand(values, expected):
    s = torch.tensor([values], dtype=torch.float32)
    assert adaptive_mask_counts(s, 0.1, 0.3, 0.8).tolist() == [expected]


def test_adaptive_mask_counts_other_q_and_clamps():
    s = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 2, 2, 4]], dtype=torch.float32)
    # q = 0.25: threshold 2.5; csum = 0,0,0,0,0,1,2,4,... -> m = 7
    assert adaptive_mask_counts(s, 0.25, 0.3, 0.8).tolist() == [7]
    # same, rho_max = 0.5 -> 5;  q = 0.1 (m = 6) with rho_min = 0.7 -> 7
    assert adaptive_mask_counts(s, 0.25, 0.3, 0.5).tolist() == [5]
    assert adaptive_mask_counts(s, 0.1, 0.7, 0.9).tolist() == [7]
    # rounding of the clamps: n = 10, rho_min = 0.25 -> round(2.5) = 3 (halves up)
    assert adaptive_mask_counts(torch.ones(1, 10), 0.1, 0.25, 0.8).tolist() == [3]


def test_adaptive_mask_selects_the_lowest_pixels_per_sample_batched():
    # Two 2x5 maps: the third case above scattered over the image, and a flat map.
    g = torch.Generator().manual_seed(0)
    values = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 2, 4], dtype=torch.float32)
    perm = torch.randperm(10, generator=g)
    sal = torch.stack([values[perm].view(2, 5), torch.ones(2, 5)])
    mask = adaptive_low_saliency_mask(sal, q=0.1, rho_min=0.3, rho_max=0.8, generator=g)
    assert mask.shape == (2, 1, 2, 5) and mask.dtype == torch.bool
    assert mask.flatten(1).sum(1).tolist() == [6, 3]
    m0, s0 = mask[0, 0], sal[0]
    # the 6 lowest values are five 0s and one of the two 1s: everything inside is <= 1, outside >= 1
    assert s0[m0].max() <= 1 and s0[~m0].min() >= 1 and int((s0[m0] == 0).sum()) == 5


def test_ties_are_broken_by_the_generator_and_reproducibly():
    zero = torch.zeros(1, 8, 8)
    a = adaptive_low_saliency_mask(zero, generator=torch.Generator().manual_seed(1))
    b = adaptive_low_saliency_mask(zero, generator=torch.Generator().manual_seed(1))
    c = adaptive_low_saliency_mask(zero, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.sum()) == int(c.sum()) == round(0.8 * 64)  # all-zero map -> rho_max
    # without a generator ties go by raster order: the first 51 pixels
    d = adaptive_low_saliency_mask(zero).flatten()
    assert d[:51].all() and not d[51:].any()


def test_sort_and_scatter_are_inverse():
    sal = torch.rand(3, 4, 6)
    order, sorted_vals = sort_pixels_by_saliency(sal, torch.Generator().manual_seed(0))
    torch.testing.assert_close(sorted_vals, sal.flatten(1).sort(1).values)
    counts = torch.tensor([0, 5, 24])
    mask = mask_from_order(order, counts, (4, 6))
    assert mask.flatten(1).sum(1).tolist() == [0, 5, 24]


def test_lowest_saliency_mask_takes_exactly_k_lowest():
    sal = torch.rand(4, 10, 10, generator=torch.Generator().manual_seed(3))
    mask = lowest_saliency_mask(sal, 0.5)[:, 0]
    for i in range(4):
        inside, outside = sal[i][mask[i]], sal[i][~mask[i]]
        assert inside.numel() == 50 and inside.max() < outside.min()
    assert int(lowest_saliency_mask(sal, 0.333).flatten(1).sum(1)[0]) == 33


# -- KL ------------------------------------------------------------------------------------------------
def test_kl_divergence_by_hand_and_in_both_arguments():
    lp = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    lq = torch.log(torch.tensor([[0.25, 0.75], [0.9, 0.1]]))
    expected0 = 0.5 * torch.log(torch.tensor(2.0)) + 0.5 * torch.log(torch.tensor(0.5 / 0.75))
    kl = kl_divergence(lp, lq)
    torch.testing.assert_close(kl, torch.stack([expected0, torch.tensor(0.0)]), atol=1e-6, rtol=1e-5)
    ref = F.kl_div(F.log_softmax(lq, 1), F.log_softmax(lp, 1), log_target=True, reduction="none").sum(1)
    torch.testing.assert_close(kl, ref)
    a = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(3, 4, requires_grad=True)
    ga, gb = torch.autograd.grad(kl_divergence(a, b).sum(), [a, b])
    assert ga.abs().sum() > 0 and gb.abs().sum() > 0


# -- paired forward and BatchNorm ------------------------------------------------------------------------
class _ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        with torch.no_grad():
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def _reference_clean_stats(model: _ConvBN, x, x_other):
    """Both halves normalised by the clean half's biased batch statistics, written out by hand."""
    h, h2 = model.conv(x), model.conv(x_other)
    mu = h.mean((0, 2, 3), keepdim=True)
    var = ((h - mu) ** 2).mean((0, 2, 3), keepdim=True)
    w, b = model.bn.weight.view(1, -1, 1, 1), model.bn.bias.view(1, -1, 1, 1)

    def norm(t):
        return (t - mu) / torch.sqrt(var + model.bn.eps) * w + b

    return [model.head(F.relu(norm(t)).mean((2, 3))) for t in (h, h2)]


def test_clean_bn_stats_match_a_hand_written_reference_with_gradients():
    model = _ConvBN().train()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x_other = (x + 0.2 * torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    ref_model = copy.deepcopy(model)
    a, b = paired_logits(model, x, x_other, "clean")
    ra, rb = _reference_clean_stats(ref_model, x, x_other)
    torch.testing.assert_close(a, ra, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b, rb, rtol=1e-4, atol=1e-5)
    (a.sum() + 2 * b.square().sum()).backward()
    (ra.sum() + 2 * rb.square().sum()).backward()
    for p, rp in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.grad, rp.grad, rtol=1e-4, atol=1e-4)  # conv bias grad is ~0 (cancelled by BN)
    assert "forward" not in model.bn.__dict__  # patch removed


@pytest.mark.parametrize("mode", ["separate", "clean"])
def test_clean_branch_is_erm_and_running_stats_come_from_it(mode):
    model = _tiny_cnn().train()
    erm = copy.deepcopy(model)
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    other = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    a, b = paired_logits(model, x, other, mode)
    torch.testing.assert_close(a, erm(x))
    erm_buffers = dict(erm.named_buffers())
    for name, buf in model.named_buffers():
        torch.testing.assert_close(buf, erm_buffers[name])
    (a.sum() + kl_divergence(a, b).sum()).backward()  # both graphs intact after the BN swaps
    assert all(p.grad is not None for p in model.parameters())
    assert all("forward" not in m.__dict__ and not m._forward_pre_hooks for m in model.modules())


def test_separate_and_joint_modes():
    model = _tiny_cnn().train()
    ref = copy.deepcopy(model)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    other = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    a, b = paired_logits(model, x, other, "separate")
    torch.testing.assert_close(a, ref(x))
    torch.testing.assert_close(b, ref(other))  # its own batch statistics
    joint = paired_logits(copy.deepcopy(ref), x, other, "joint")
    torch.testing.assert_close(torch.cat(joint), copy.deepcopy(ref)(torch.cat([x, other])))
    with pytest.raises(InterpError):
        paired_logits(model, x, other, "mixed")


def test_without_batchnorm_all_modes_agree():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x, other = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    ref = (model(x), model(other))
    for mode in ("separate", "clean", "joint"):
        for got, want in zip(paired_logits(model, x, other, mode), ref):
            torch.testing.assert_close(got, want)


# -- folded eval passes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["smallcnn", "resnet18"])
def test_folded_eval_module_computes_the_eval_function_and_its_input_gradient(arch):
    torch.manual_seed(0)
    model = create_model(arch, 3) if arch == "resnet18" else create_model(arch, 3, width=4)
    # float64: in float32 a ReLU kink within rounding distance of x can flip a gradient path
    model.double().train()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    for _ in range(2):  # non-trivial running statistics
        model(x)
    model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    folded = eval_forward_module(model)
    assert folded is not model and eval_forward_module(model) is folded  # built once, cached
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(type(m).__name__ == "_FoldedConvBN" for m in folded.modules()) == n_bn  # every BN folded
    xr = as_eval_input(x).requires_grad_(True)
    xr2 = x.clone().requires_grad_(True)
    out, ref = folded(xr), model(xr2)
    torch.testing.assert_close(out, ref)
    (g,) = torch.autograd.grad(out[:, 0].sum(), xr)
    (g_ref,) = torch.autograd.grad(ref[:, 0].sum(), xr2)
    torch.testing.assert_close(g, g_ref)
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # follows weight updates: parameters are shared, not copied
        model.head.weight.add_(1.0)
        model.features[0].weight.mul_(1.1)
        torch.testing.assert_close(folded(x), model(x))
    model.train()  # a train-mode BatchNorm is not folded: same as the model in train mode
    torch.testing.assert_close(folded(x), copy.deepcopy(model)(x))


def test_folded_module_is_rebuilt_when_buffers_are_replaced():
    model = _tiny_cnn().eval()
    folded = eval_forward_module(model)
    model.double()  # replaces every buffer (Normalize's mean/std, BN running statistics)
    refolded = eval_forward_module(model)
    assert refolded is not folded
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(refolded(x), model(x))


def test_folding_falls_back_to_the_model():
    plain = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten())
    assert eval_forward_module(plain) is plain

    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x):
            if x.sum() > 0:  # not traceable
                return self.bn(self.conv(x))
            return self.conv(x)

    dyn = Dynamic()
    assert eval_forward_module(dyn) is dyn


def test_step_generator_is_the_cpu_generator_itself():
    g = torch.Generator().manual_seed(0)
    assert step_generator(g, "cpu") is g


def test_folding_cache_does_not_keep_models_alive():
    """A model with nothing to fold is its own eval-forward module; the weak-keyed cache must not
    hold it through its value (a leak of one model copy per call in model randomisation)."""
    import gc
    import weakref

    from interp_core.models.folding import eval_forward_module

    makers = (lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten()),  # no BatchNorm
              lambda: create_model("smallcnn", 2, width=4).eval())
    for make in makers:
        model = make()
        assert eval_forward_module(model) is not None
        ref = weakref.ref(model)
        del model
        gc.collect()
        assert ref() is None
