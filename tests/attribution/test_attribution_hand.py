"""Hand-computed cases: a linear model where every gradient method is exact, Grad-CAM vs CAM, zero maps."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from interp_core.attribution import attribute, normalize_max, overlay
from interp_core.models.base import TileClassifier


class LinearModel(nn.Module):
    """``f_k(x) = sum_{c,h,w} W[k,c,h,w] x[c,h,w] + b_k``: the input gradient of class ``k`` is ``W[k]``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, with_num_classes: bool = True):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        if with_num_classes:
            self.num_classes = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,kchw->bk", x, self.weight) + self.bias


W1 = torch.tensor([[[1.0, -2.0], [0.0, 3.0]],
                   [[-1.0, 1.0], [2.0, 0.0]],
                   [[0.5, 0.0], [-1.0, 1.0]]])
X = torch.tensor([[[0.5, 1.0], [0.0, 0.25]],
                  [[1.0, 0.5], [0.5, 0.0]],
                  [[0.0, 1.0], [1.0, 0.5]]])[None]
# x * W1 per channel: [[0.5, -2], [0, 0.75]], [[-1, 0.5], [1, 0]], [[0, 0], [-1, 0.5]]
SUM_ABS_W = torch.tensor([[[2.5, 3.0], [3.0, 4.0]]])
SUM_W = torch.tensor([[[0.5, -1.0], [1.0, 4.0]]])
SUM_XW = torch.tensor([[[-0.5, -1.5], [0.0, 1.25]]])
SUM_ABS_XW = torch.tensor([[[1.5, 2.5], [2.0, 1.25]]])


def linear_model(with_num_classes: bool = True) -> LinearModel:
    weight = torch.stack([torch.full((3, 2, 2), 0.1), W1])
    return LinearModel(weight, torch.tensor([-10.0, 0.0]), with_num_classes)  # predicts class 1


@pytest.mark.parametrize("target", [None, 1])
@pytest.mark.parametrize("with_num_classes", [True, False])
def test_linear_model_exact_maps(target, with_num_classes):
    m = linear_model(with_num_classes)
    exact = {
        ("saliency", False): SUM_ABS_W,
        ("input_x_gradient", False): SUM_ABS_XW,
        ("input_x_gradient", True): SUM_XW,
        ("integrated_gradients", True): SUM_XW,  # the path integral of a constant gradient
        ("smoothgrad", False): SUM_ABS_W,  # noise does not change a constant gradient
        ("guided_backprop", True): SUM_W,  # no ReLU: the plain gradient
        ("occlusion", True): SUM_XW,  # 1x1 window (2x2 image), baseline 0: f(x) - f(x without pixel)
    }
    for (method, signed), expected in exact.items():
        black = {"baseline": 0.0} if method == "occlusion" else {}  # its default is the blurred image
        got = attribute(m, X, method, target, signed=signed, **black)
        torch.testing.assert_close(got, expected, msg=f"{method} signed={signed}")
    # GradientShap with a black baseline only and no noise: (x - 0) * W, whatever the random alphas.
    got = attribute(m, X, "gradient_shap", target, signed=True, baselines=("zeros",), n_samples=5)
    torch.testing.assert_close(got, SUM_XW)


def test_linear_model_other_class_and_batch():
    m = linear_model()
    x = torch.cat([X, 2 * X])
    got = attribute(m, x, "input_x_gradient", torch.tensor([0, 1]), signed=True)
    torch.testing.assert_close(got[0], 0.1 * X[0].sum(0))
    torch.testing.assert_close(got[1], 2 * SUM_XW[0])


def _pixel_cam_model() -> TileClassifier:
    """GAP + linear on ``ReLU(normalised x)``: the feature map is the image itself (3 channels, full size)."""
    model = TileClassifier(nn.ReLU(), feature_channels=3, num_classes=2)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [2.0, -1.0, 0.5]]))
        model.head.bias.zero_()
    return model


def test_gradcam_is_cam_over_hw_on_a_hand_model():
    model = _pixel_cam_model()
    x = X.clone()
    feats = torch.relu((x - 0.5) / 0.25)  # the model's Normalize is (x - 0.5) / 0.25
    w = torch.tensor([2.0, -1.0, 0.5])
    cam = torch.relu(torch.einsum("c,bchw->bhw", w, feats))
    torch.testing.assert_close(attribute(model, x, "cam", 1), cam)
    torch.testing.assert_close(attribute(model, x, "gradcam", 1), cam / 4)  # Grad-CAM weights are w / (h w)


@pytest.mark.parametrize("target", [None, torch.tensor([0, 1, 2, 1])])
def test_gradcam_equals_cam_after_max_normalisation(tiny_cnn, images, target):
    model = tiny_cnn
    gradcam = attribute(model, images, "gradcam", target)
    cam = attribute(model, images, "cam", target)
    assert gradcam.abs().amax() > 0
    torch.testing.assert_close(normalize_max(gradcam), normalize_max(cam), atol=1e-5, rtol=1e-4)


def test_input_independent_model_gives_all_zero_maps_without_nan():
    m = LinearModel(torch.zeros(2, 3, 2, 2), torch.tensor([0.0, 1.0]))
    for method in ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "gradient_shap",
                   "guided_backprop", "occlusion"):
        a = attribute(m, X, method)
        assert torch.equal(a, torch.zeros(1, 2, 2)), method
        assert torch.equal(normalize_max(a), torch.zeros(1, 2, 2))
    rgb = overlay(X[0], a[0], cmap="gray", alpha=1.0)
    assert (rgb == 0).all()  # a constant map gets the colormap's lowest colour (black for gray)
