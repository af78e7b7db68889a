"""attribute(): output contract, model state restored, batching, seeds, metadata and bad input."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from interp_core.attribution import METHODS, applicable_methods, attribute, list_methods, seed_option
from interp_core.attribution.registry import COSTS
from interp_core.errors import InterpError
from interp_core.models import create_model

ALL = ["saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "gradient_shap", "guided_backprop",
       "occlusion", "gradcam", "cam"]
FAST_OPTIONS = {"integrated_gradients": {"n_steps": 4}, "smoothgrad": {"n_samples": 3},
                "gradient_shap": {"n_samples": 3, "stdevs": 0.05}, "occlusion": {"window": 4, "stride": 4}}


def _opts(method):
    return dict(FAST_OPTIONS.get(method, {}))


def test_registry_lists_every_method_with_metadata():
    assert list(METHODS) == ALL
    assert list(list_methods()) == ALL
    for name, info in METHODS.items():
        assert info.name == name and info.description and info.cost in COSTS
        assert list_methods()[name] == info.description
    assert not METHODS["occlusion"].needs_gradients and not METHODS["cam"].needs_gradients
    assert METHODS["integrated_gradients"].signed and not METHODS["saliency"].signed


def test_seed_option_only_for_stochastic_methods(tiny_cnn, images):
    assert seed_option("smoothgrad", 3) == {"seed": 3} and seed_option("gradient_shap", 0) == {"seed": 0}
    assert seed_option("saliency", 3) == {} and seed_option("smoothgrad", None) == {}
    for method in ALL:  # never trips the unknown-option check
        attribute(tiny_cnn, images[:1], method, **seed_option(method, 5), **_opts(method))
    with pytest.raises(InterpError, match="unknown attribution method"):
        seed_option("nope", 1)


def test_applicable_methods():
    assert applicable_methods(create_model("smallcnn", 2, width=4)) == ALL
    linear = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    assert applicable_methods(linear) == ALL[:-2]  # no conv layer to explain: no gradcam, no cam


@pytest.mark.parametrize("method", ALL)
def test_output_shape_dtype_device_and_single_image(tiny_cnn, images, method):
    a = attribute(tiny_cnn, images.double(), method, **_opts(method))
    assert a.shape == (4, 16, 16) and a.dtype == torch.float32 and a.device == images.device
    assert torch.isfinite(a).all() and a.abs().sum() > 0
    single = attribute(tiny_cnn, images[1], method, **_opts(method))
    assert single.shape == (1, 16, 16)
    torch.testing.assert_close(single[0], a[1], atol=1e-6, rtol=1e-4)


def test_empty_batch(tiny_cnn):
    assert attribute(tiny_cnn, torch.zeros(0, 3, 8, 8), "saliency").shape == (0, 8, 8)


def _state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [p.grad for p in model.parameters()], {k: v.clone() for k, v in model.state_dict().items()})


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("train", [True, False])
def test_model_mode_flags_and_gradients_are_restored(tiny_cnn, images, method, train):
    model = tiny_cnn.train(train)
    model.features[1].eval()  # a frozen BatchNorm inside a training model
    params = list(model.parameters())
    params[0].requires_grad_(False)
    out = model(images).sum()
    out.backward()  # pending parameter gradients, as between backward() and optimizer.step()
    before = _state(model)
    grads = [None if g is None else g.clone() for g in before[2]]
    attribute(model, images, method, **_opts(method))
    after = _state(model)
    assert after[0] == before[0] and after[1] == before[1]
    assert all(a is b for a, b in zip(after[2], before[2]))  # the very same .grad tensors...
    for g, saved in zip(after[2], grads):  # ...with unchanged values
        assert (g is None and saved is None) or torch.equal(g, saved)
    assert all(torch.equal(before[3][k], after[3][k]) for k in before[3])  # BN running stats untouched
    assert _hooks(model) == 0


@pytest.mark.parametrize("method", ALL)
def test_chunking_does_not_change_the_result(tiny_cnn, images, method):
    whole = attribute(tiny_cnn, images, method, batch_size=64, **_opts(method))
    for bs in (1, 3):
        torch.testing.assert_close(attribute(tiny_cnn, images, method, batch_size=bs, **_opts(method)), whole,
                                   atol=1e-6, rtol=1e-4)


def test_default_batch_size_depends_on_samples_per_image(monkeypatch, tiny_cnn, images):
    seen = []
    info = METHODS["integrated_gradients"]

    def spy(model, x, target, **kw):
        seen.append(x.shape[0])
        return info.compute(model, x, target, **kw)

    monkeypatch.setitem(METHODS, "integrated_gradients", replace(info, compute=spy))
    attribute(tiny_cnn, images, "integrated_gradients", n_steps=32)  # 64 // 32 = 2 images per chunk
    attribute(tiny_cnn, images, "integrated_gradients", n_steps=8)  # 64 // 8 = 8: one chunk of 4
    assert seen == [2, 2, 4]


def test_per_image_baseline_is_split_with_the_batch(tiny_cnn, images):
    baseline = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    whole = attribute(tiny_cnn, images, "integrated_gradients", n_steps=4, baseline=baseline, batch_size=4)
    chunked = attribute(tiny_cnn, images, "integrated_gradients", n_steps=4, baseline=baseline, batch_size=1)
    single = attribute(tiny_cnn, images[2:3], "integrated_gradients", n_steps=4, baseline=baseline[2])
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(single[0], whole[2], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method", ["smoothgrad", "gradient_shap"])
def test_stochastic_methods_are_seeded_per_image(tiny_cnn, images, method):
    kw = _opts(method)
    a = attribute(tiny_cnn, images, method, seed=1, **kw)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a, attribute(tiny_cnn, images, method, seed=1, **kw))
    assert not torch.allclose(a, attribute(tiny_cnn, images, method, seed=2, **kw))
    # an image's map depends on the seed and the image, not on the batch it is in or its position
    shuffled = attribute(tiny_cnn, images[[2, 0, 3, 1]], method, seed=1, **kw)
    torch.testing.assert_close(shuffled, a[[2, 0, 3, 1]], atol=1e-6, rtol=1e-4)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(attribute(tiny_cnn, images, method, seed=g1, **kw),
                       attribute(tiny_cnn, images, method, seed=g2, **kw))


def test_signed_has_no_effect_on_non_negative_methods(tiny_cnn, images):
    for method in ("saliency", "smoothgrad", "gradcam", "cam"):
        kw = _opts(method)
        assert torch.equal(attribute(tiny_cnn, images, method, signed=True, **kw),
                           attribute(tiny_cnn, images, method, **kw))
    signed = attribute(tiny_cnn, images, "input_x_gradient", signed=True)
    assert (signed < 0).any() and not torch.equal(signed, attribute(tiny_cnn, images, "input_x_gradient"))


def test_works_under_no_grad_and_inference_mode(tiny_cnn, images):
    ref = attribute(tiny_cnn, images, "saliency")
    with torch.no_grad():
        torch.testing.assert_close(attribute(tiny_cnn, images, "saliency"), ref)
    with torch.inference_mode():
        x = images.clone()
        torch.testing.assert_close(attribute(tiny_cnn, x, "gradcam"), attribute(tiny_cnn, images, "gradcam"))
    assert not images.requires_grad


class _GuidedReLU(torch.autograd.Function):
    """Reference guided ReLU: forward ReLU, backward ``(input > 0) * max(grad, 0)``."""

    @staticmethod
    def forward(ctx, inp):
        ctx.save_for_backward(inp)
        return inp.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (inp,) = ctx.saved_tensors
        return grad.clamp_min(0) * (inp > 0)


def _guided_reference(model, x, target):
    model.eval()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    for m in relus:
        m.forward = _GuidedReLU.apply
    try:
        xr = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(model(xr).gather(1, target[:, None]).sum(), xr)
    finally:
        for m in relus:
            del m.forward
    return grad.sum(1)


@pytest.mark.parametrize("arch", ["smallcnn", "resnet18"])
def test_guided_backprop_matches_an_independent_implementation(arch):
    torch.manual_seed(0)
    model = create_model(arch, 3, **({"width": 4} if arch == "smallcnn" else {}))
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 2])
    ours = attribute(model.train(), x, "guided_backprop", target, signed=True)
    ref = _guided_reference(model, x, target)
    plain = attribute(model, x, "saliency", target)
    assert ours.abs().sum() > 0 and not torch.allclose(ours.abs(), plain)  # guided differs from the plain gradient
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-4)
    assert _hooks(model) == 0


# ---- bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target, pattern", [
    (3, r"target class 3 is out of range.*3 classes.*0\.\.2"),
    (-1, r"target class -1 is out of range"),
    (torch.tensor([0, 1, 5, 0]), r"target class 5 is out of range"),
    (torch.tensor([0, 1]), r"one per image \(4\)"),
    (torch.tensor([0.0, 1.0, 1.0, 0.0]), r"integer class indices"),
    ("cat", r"integer class indices|class index"),
])
def test_bad_target(tiny_cnn, images, target, pattern):
    with pytest.raises(InterpError, match=pattern):
        attribute(tiny_cnn, images, "saliency", target)


def test_target_range_without_num_classes_attribute(images):
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(InterpError, match="the model has 2 classes"):
        attribute(model, images, "saliency", 2)
    assert attribute(model, images, "saliency", [0, 1, 1, 0]).shape == (4, 16, 16)


def test_unknown_method_lists_the_valid_ones(tiny_cnn, images):
    with pytest.raises(InterpError, match="unknown attribution method 'grad_cam'; choose one of saliency, "
                                          "input_x_gradient, .*gradcam, cam"):
        attribute(tiny_cnn, images, "grad_cam")


def test_unknown_option_is_an_error(tiny_cnn, images):
    with pytest.raises(InterpError, match="'n_step'.*valid options: n_steps"):
        attribute(tiny_cnn, images, "integrated_gradients", n_step=8)
    with pytest.raises(InterpError, match="'seed'.*'saliency'; it takes no options"):
        attribute(tiny_cnn, images, "saliency", seed=0)


@pytest.mark.parametrize("x, pattern", [
    (torch.rand(2, 16, 16, 3), r"\[B, 3, H, W\].*got \[2, 16, 16, 3\]; channels-last"),
    (torch.rand(2, 1, 16, 16), r"got \[2, 1, 16, 16\]"),
    (torch.rand(16, 16), r"got \[16, 16\]"),
    (torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8), r"float images.*torch.uint8"),
    (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    ([[0.0]], "torch.Tensor"),
])
def test_bad_images(tiny_cnn, x, pattern):
    with pytest.raises(InterpError, match=pattern):
        attribute(tiny_cnn, x, "saliency")


@pytest.mark.parametrize("method, options, pattern", [
    ("integrated_gradients", {"n_steps": 0}, "'n_steps' must be a positive integer"),
    ("integrated_gradients", {"integration": "simpson"}, "'integration' must be one of gausslegendre"),
    ("integrated_gradients", {"baseline": torch.zeros(2, 3, 16, 16)}, "baseline tensor must have shape"),
    ("integrated_gradients", {"baseline": "grey"}, "one of zeros, blur"),
    ("smoothgrad", {"stdevs": -0.1}, "'stdevs' must be a finite number >= 0"),
    ("smoothgrad", {"seed": 1.5}, "'seed' must be an int or a torch.Generator"),
    ("gradient_shap", {"baselines": ("zeros", "noise")}, "'baselines' must be"),
    ("occlusion", {"window": 32}, "larger than the image"),
    ("occlusion", {"window": 4, "stride": 5}, "must not exceed the window"),
    ("gradcam", {"layer": nn.Conv2d(3, 3, 1)}, "submodule of the model"),
])
def test_bad_options(tiny_cnn, images, method, options, pattern):
    with pytest.raises(InterpError, match=pattern):
        attribute(tiny_cnn, images, method, **options)


def test_bad_batch_size(tiny_cnn, images):
    with pytest.raises(InterpError, match="batch_size must be a positive integer"):
        attribute(tiny_cnn, images, "saliency", batch_size=0)


def test_cam_methods_on_a_model_without_conv_features(images):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    with pytest.raises(InterpError, match="CAM needs .*gradcam"):
        attribute(model, images, "cam")
    with pytest.raises(InterpError, match="no 'cam_layer'; pass layer="):
        attribute(model, images, "gradcam")
    assert model.training  # the mode is restored after an error too
