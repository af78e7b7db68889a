"""Every method equals Captum called directly with the same settings (explicit and default target)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import (GradientShap, GuidedBackprop, InputXGradient, IntegratedGradients, LayerAttribution,
                         LayerGradCam, NoiseTunnel, Occlusion, Saliency)

from interp_core.attribution import attribute, class_activation_map, gaussian_blur
from interp_core.attribution.gradient_shap import sample_draws
from interp_core.attribution.seeding import image_generators
from interp_core.attribution.smoothgrad import sample_noise

TARGETS = ["default", "explicit"]


def _setup(model, x, which):
    """Model in train mode for our call (attribute must switch to eval); target for Captum."""
    model.train()
    with torch.no_grad():
        predicted = model.eval()(x).argmax(1)
    model.train()
    if which == "default":
        return None, predicted
    explicit = torch.tensor([2, 0, 1, 2])
    return explicit, explicit


def _captum(model, fn):
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(model)


def _x(x):
    return x.clone().requires_grad_()


@pytest.mark.parametrize("which", TARGETS)
def test_saliency(tiny_cnn, images, which):
    target, t = _setup(tiny_cnn, images, which)
    ours = attribute(tiny_cnn, images, "saliency", target)
    ref = _captum(tiny_cnn, lambda m: Saliency(m).attribute(_x(images), target=t, abs=True)).sum(1)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("which", TARGETS)
def test_input_x_gradient(tiny_cnn, images, which):
    target, t = _setup(tiny_cnn, images, which)
    ours = attribute(tiny_cnn, images, "input_x_gradient", target)
    ours_signed = attribute(tiny_cnn, images, "input_x_gradient", target, signed=True)
    ref = _captum(tiny_cnn, lambda m: InputXGradient(m).attribute(_x(images), target=t))
    torch.testing.assert_close(ours, ref.abs().sum(1))
    torch.testing.assert_close(ours_signed, ref.sum(1))


@pytest.mark.parametrize("which", TARGETS)
def test_integrated_gradients(tiny_cnn, images, which):
    target, t = _setup(tiny_cnn, images, which)
    ours = attribute(tiny_cnn, images, "integrated_gradients", target, signed=True, n_steps=8)
    ref = _captum(tiny_cnn, lambda m: IntegratedGradients(m).attribute(
        _x(images), baselines=0.0, target=t, n_steps=8, method="gausslegendre"))
    torch.testing.assert_close(ours, ref.sum(1))
    ours_blur = attribute(tiny_cnn, images, "integrated_gradients", target, n_steps=4, baseline="blur",
                          integration="riemann_trapezoid")
    ref_blur = _captum(tiny_cnn, lambda m: IntegratedGradients(m).attribute(
        _x(images), baselines=gaussian_blur(images), target=t, n_steps=4, method="riemann_trapezoid"))
    torch.testing.assert_close(ours_blur, ref_blur.abs().sum(1))


@pytest.mark.parametrize("which", TARGETS)
def test_smoothgrad_equals_noise_tunnel_given_the_same_noise(tiny_cnn, images, which, monkeypatch):
    target, t = _setup(tiny_cnn, images, which)
    n, sd = 3, 0.2
    ours = attribute(tiny_cnn, images, "smoothgrad", target, n_samples=n, stdevs=sd, seed=7)
    noise = sample_noise(image_generators(7, images), n, tuple(images.shape[1:]), sd)
    calls = []

    def fake_normal(mean, std, *args, **kwargs):  # Captum: torch.normal(0, stdev_expanded), image-major
        assert tuple(std.shape) == tuple(noise.shape)
        calls.append(1)
        return noise.clone()

    monkeypatch.setattr(torch, "normal", fake_normal)
    ref = _captum(tiny_cnn, lambda m: NoiseTunnel(Saliency(m)).attribute(
        _x(images), nt_type="smoothgrad", nt_samples=n, stdevs=sd, target=t))
    assert calls == [1]
    torch.testing.assert_close(ours, ref.sum(1))


@pytest.mark.parametrize("which", TARGETS)
def test_gradient_shap_equals_captum_given_the_same_draws(tiny_cnn, images, which, monkeypatch):
    target, t = _setup(tiny_cnn, images, which)
    n, sd, b = 4, 0.1, images.shape[0]
    ours = attribute(tiny_cnn, images, "gradient_shap", target, signed=True, n_samples=n, stdevs=sd, seed=3)
    idx, alpha, noise = sample_draws(image_generators(3, images), n, 2, tuple(images.shape[1:]), sd)
    # Captum draws from one shared distribution: [zeros of every image, blur of every image].
    pool = torch.cat([torch.zeros_like(images), gaussian_blur(images)])
    pool_index = (idx * b + torch.arange(b)[:, None]).flatten().numpy()
    monkeypatch.setattr(np.random, "choice", lambda k, size: pool_index.copy())
    monkeypatch.setattr(np.random, "uniform", lambda lo, hi, size: alpha.flatten().double().numpy())
    monkeypatch.setattr(torch, "normal", lambda mean, std, *a, **k: noise.clone())
    ref = _captum(tiny_cnn, lambda m: GradientShap(m).attribute(_x(images), baselines=pool, n_samples=n,
                                                                stdevs=sd, target=t))
    torch.testing.assert_close(ours, ref.sum(1))


@pytest.mark.parametrize("which", TARGETS)
def test_guided_backprop(tiny_cnn, images, which):
    target, t = _setup(tiny_cnn, images, which)
    ours = attribute(tiny_cnn, images, "guided_backprop", target, signed=True)
    ref = _captum(tiny_cnn, lambda m: GuidedBackprop(m).attribute(_x(images), target=t))
    torch.testing.assert_close(ours, ref.sum(1))


@pytest.mark.parametrize("which", TARGETS)
def test_occlusion(tiny_cnn, images, which):
    target, t = _setup(tiny_cnn, images, which)
    ours = attribute(tiny_cnn, images, "occlusion", target, signed=True, window=4, stride=3, baseline=0.5)
    ref = _captum(tiny_cnn, lambda m: Occlusion(m).attribute(images, sliding_window_shapes=(3, 4, 4),
                                                             strides=(3, 3, 3), baselines=0.5, target=t))
    torch.testing.assert_close(ours, ref[:, 0])
    torch.testing.assert_close(ref[:, 0], ref[:, 2])  # the window spans the channels: one value per pixel
    small = images[:, :, :8, :8]  # default on 8x8: window 1, stride 1, baseline the blurred image
    default = attribute(tiny_cnn, small, "occlusion", target)
    t_small = t if target is not None else _captum(tiny_cnn, lambda m: m(small).argmax(1))
    blurred = gaussian_blur(small)
    ref_default = _captum(tiny_cnn, lambda m: Occlusion(m).attribute(small, sliding_window_shapes=(3, 1, 1),
                                                                     strides=(3, 1, 1), baselines=blurred,
                                                                     target=t_small))
    torch.testing.assert_close(default, ref_default[:, 0].abs())


@pytest.mark.parametrize("which", TARGETS)
def test_gradcam(tiny_cnn, images, which):
    target, t = _setup(tiny_cnn, images, which)
    ours = attribute(tiny_cnn, images, "gradcam", target)
    small = _captum(tiny_cnn, lambda m: LayerGradCam(m, m.cam_layer).attribute(_x(images), target=t,
                                                                               relu_attributions=True))
    ref = LayerAttribution.interpolate(small, (16, 16), interpolate_mode="bilinear")[:, 0]
    assert small.shape[-2:] == (4, 4) and (ref >= 0).all()
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("which", TARGETS)
def test_cam(tiny_cnn, images, which):
    target, t = _setup(tiny_cnn, images, which)
    ours = attribute(tiny_cnn, images, "cam", target)
    tiny_cnn.eval()
    torch.testing.assert_close(ours, class_activation_map(tiny_cnn, images, t))
