from __future__ import annotations

import pytest
import torch

from interp_core._utils.device import pick_device, seed_everything
from interp_core.errors import InterpError
from interp_core.models import create_model, list_models


def test_pick_device_cpu_and_errors():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(InterpError, match="unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InterpError, match="no CUDA"):
            pick_device("cuda")


def test_seed_everything_reproducible():
    seed_everything(3)
    a = torch.rand(5)
    seed_everything(3)
    assert torch.equal(a, torch.rand(5))


@pytest.mark.parametrize("arch,side", [("smallcnn", 16), ("resnet18", 8)])
def test_registry_shapes(arch, side):
    assert arch in list_models()
    m = create_model(arch, 3).eval()
    x = torch.rand(2, 3, 64, 64)
    feats = m.forward_features(x)
    assert feats.shape[-1] == side  # smallcnn keeps 1/4 of the input side for CAM
    assert m(x).shape == (2, 3)
    assert torch.allclose(m.forward_head(feats), m(x))


def test_registry_errors():
    with pytest.raises(InterpError, match="unknown architecture 'vgg'"):
        create_model("vgg", 2)
    with pytest.raises(InterpError, match="at least 2 classes"):
        create_model("smallcnn", 1)
