"""Deletion/insertion: agreement with a slow, obvious float64 loop; batching; baselines; edge cases."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.ndimage
import torch
from interp_core.metrics.testing import images, tiny_cnn
from torch import nn

from interp_core.errors import InterpError
from interp_core.metrics import chunk_bounds, deletion_auc, gaussian_blur, insertion_auc, make_baseline


def _scipy_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    out = scipy.ndimage.gaussian_filter(x.double().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=3.0)
    return torch.from_numpy(out)


def _slow_curves(model, x, a, target, n_steps, base, insert):
    """One image, one step, one pixel at a time, in float64: the definition written out."""
    model = copy.deepcopy(model).double().eval()
    x, base = x.double(), base.double()
    b, _, h, w = x.shape
    n = h * w
    size = n // n_steps
    counts = [j * size for j in range(n_steps)] + [n]
    fractions = [k / n for k in counts]
    curves, aucs = [], []
    for s in range(b):
        values = a[s].flatten().tolist()
        order = sorted(range(n), key=lambda i: -values[i])  # stable: ties by lower index
        curve = []
        for k in counts:
            img = (base[s] if insert else x[s]).clone()
            src = x[s] if insert else base[s]
            for p in order[:k]:
                r, c = divmod(p, w)
                img[:, r, c] = src[:, r, c]
            with torch.no_grad():
                prob = torch.softmax(model(img[None]), dim=1)[0, int(target[s])]
            curve.append(float(prob))
        curves.append(curve)
        aucs.append(sum((fractions[j + 1] - fractions[j]) * (curve[j] + curve[j + 1]) / 2 for j in range(n_steps)))
    return np.array(aucs), np.array(curves), np.array(fractions)


@pytest.mark.parametrize("insert", [False, True])
@pytest.mark.parametrize("baseline", ["blur", "zero", "mean"])
def test_curves_equal_slow_float64_loop(insert, baseline):
    model = tiny_cnn(seed=0)
    x = images(3, 8, seed=2)
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 6, (3, 8, 8), generator=g).float()  # many ties: checks the tie order too
    a[0] = torch.rand(8, 8, generator=g) - 0.5                # and a signed, tie-free map
    target = torch.tensor([0, 2, 1])
    n_steps = 5  # 64 px: chunks of 12, the last one 16
    if baseline == "blur":
        base = _scipy_blur(x, 1.5)
    elif baseline == "zero":
        base = torch.zeros_like(x)
    else:
        base = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    fn = insertion_auc if insert else deletion_auc
    res = fn(model, x, a, target, n_steps=n_steps, baseline=baseline, blur_sigma=1.5)
    auc, curve, fractions = _slow_curves(model, x, a, target, n_steps, base, insert)
    np.testing.assert_allclose(res.fractions.numpy(), fractions, atol=1e-7)
    np.testing.assert_allclose(res.curve.numpy(), curve, atol=2e-6)
    np.testing.assert_allclose(res.auc.numpy(), auc, atol=2e-6)
    assert res.curve.shape == (3, n_steps + 1)


def test_endpoints_are_the_image_and_the_baseline():
    model = tiny_cnn(seed=1)
    x = images(2, 8, seed=4)
    a = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([1, 0])
    p_x = torch.softmax(model(x), 1)[[0, 1], target]
    p_zero = torch.softmax(model(torch.zeros_like(x)), 1)[[0, 1], target]
    d = deletion_auc(model, x, a, target, n_steps=4, baseline="zero")
    i = insertion_auc(model, x, a, target, n_steps=4, baseline="zero")
    torch.testing.assert_close(d.curve[:, 0], p_x.detach())
    torch.testing.assert_close(d.curve[:, -1], p_zero.detach())
    torch.testing.assert_close(i.curve[:, 0], p_zero.detach())
    torch.testing.assert_close(i.curve[:, -1], p_x.detach())
    assert torch.equal(d.fractions, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


class _Constant(nn.Module):
    """Ignores its input: softmax([0, log 3]) = [0.25, 0.75] whatever the image."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, float(np.log(3.0))]))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 2)


def test_input_independent_model_gives_its_constant_probability():
    x = images(2, 8)
    a = torch.rand(2, 8, 8)
    res = deletion_auc(_Constant(), x, a, target=torch.tensor([0, 1]), n_steps=7)
    np.testing.assert_allclose(res.auc.numpy(), [0.25, 0.75], rtol=1e-6)
    res = insertion_auc(_Constant(), x, a, target=1, n_steps=7)
    np.testing.assert_allclose(res.auc.numpy(), [0.75, 0.75], rtol=1e-6)


def test_all_steps_go_through_few_forward_passes():
    model = tiny_cnn(seed=0)
    calls: list[int] = []
    model.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    x, a = images(4, 8), torch.rand(4, 8, 8)
    deletion_auc(model, x, a, target=torch.zeros(4, dtype=torch.long), n_steps=7)
    assert calls == [32]  # 4 images x 8 points in one forward (default: up to 64 per pass on the CPU)
    calls.clear()
    insertion_auc(model, x, a, target=torch.zeros(4, dtype=torch.long), n_steps=7, batch_size=10)
    assert calls == [10, 10, 10, 2]
    calls.clear()
    deletion_auc(model, x, a, n_steps=7)  # target predicted: one extra forward of the clean images
    assert calls == [4, 32]


def test_eval_mode_is_used_and_restored_and_batchnorm_untouched():
    model = tiny_cnn(seed=5, batchnorm=True)
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    stats = copy.deepcopy(bn.state_dict())
    x, a, t = images(2, 8), torch.rand(2, 8, 8), torch.tensor([0, 1])
    expected = deletion_auc(model.eval(), x, a, t, n_steps=4).curve
    model.train()
    got = deletion_auc(model, x, a, t, n_steps=4).curve
    assert model.training and bn.training
    torch.testing.assert_close(got, expected)
    for k, v in bn.state_dict().items():
        assert torch.equal(v, stats[k]), k


def test_predicted_target_is_the_default():
    model = tiny_cnn(seed=0)
    x, a = images(3, 8), torch.rand(3, 8, 8)
    pred = model(x).argmax(1)
    torch.testing.assert_close(deletion_auc(model, x, a, n_steps=4).auc, deletion_auc(model, x, a, pred, n_steps=4).auc)


def test_auc_lies_in_unit_interval_and_perfect_map_beats_reversed_one():
    model = tiny_cnn(seed=0)
    x = images(4, 8, seed=7)
    t = model(x).argmax(1)
    # occlusion-style "true" relevance: drop in probability when a pixel alone is zeroed
    with torch.no_grad():
        p = torch.softmax(model(x), 1)[torch.arange(4), t]
        rel = torch.zeros(4, 8, 8)
        for r in range(8):
            for c in range(8):
                xo = x.clone()
                xo[:, :, r, c] = 0
                rel[:, r, c] = p - torch.softmax(model(xo), 1)[torch.arange(4), t]
    good = deletion_auc(model, x, rel, t, n_steps=8, baseline="zero").auc
    bad = deletion_auc(model, x, -rel, t, n_steps=8, baseline="zero").auc
    assert bool((good >= 0).all() and (good <= 1).all())
    assert bool((good < bad).all())


def test_blur_matches_scipy_gaussian_filter():
    x = images(2, 16, seed=3)
    for sigma in (1.5, 5.0):
        torch.testing.assert_close(gaussian_blur(x.double(), sigma), _scipy_blur(x, sigma))
    assert torch.equal(gaussian_blur(x, 0.0), x)


def test_baseline_options():
    x = images(2, 4)
    assert torch.equal(make_baseline(x, "zero"), torch.zeros_like(x))
    assert torch.equal(make_baseline(x, 0.5), torch.full_like(x, 0.5))
    color = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)
    assert torch.equal(make_baseline(x, color)[1, :, 2, 3], torch.tensor([0.1, 0.2, 0.3]))
    m = make_baseline(x, "mean")
    torch.testing.assert_close(m[:, :, 0, 0], x.mean(dim=(2, 3)))
    with pytest.raises(InterpError, match="unknown baseline 'noise'"):
        make_baseline(x, "noise")
    with pytest.raises(InterpError, match="cannot be broadcast"):
        make_baseline(x, torch.zeros(2, 3))


def test_chunk_bounds():
    assert chunk_bounds(10, 3).tolist() == [0, 3, 6, 10]
    assert chunk_bounds(4, 4).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(InterpError, match="n_steps"):
        chunk_bounds(4, 5)


def test_bad_inputs_raise_clear_errors():
    model, x = tiny_cnn(), images(2, 8)
    with pytest.raises(InterpError, match=r"attribution shape \[2,4,4\] does not match images shape \[2,3,8,8\]"):
        deletion_auc(model, x, torch.rand(2, 4, 4))
    with pytest.raises(InterpError, match="target"):
        deletion_auc(model, x, torch.rand(2, 8, 8), target=torch.tensor([0, 1, 2]))
    with pytest.raises(InterpError, match="n_steps"):
        insertion_auc(model, x, torch.rand(2, 8, 8), n_steps=0)
