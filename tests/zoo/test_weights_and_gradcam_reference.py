"""Users' weight files (safe reading, prefixes, head replacement, mismatch messages) and the ViT
Grad-CAM checked against pytorch-grad-cam's own result on the same model and layer."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from interp_core.attribution import attribute
from interp_core.errors import RunError
from interp_core.models.import_model import import_model
from interp_core.models import create_model
from interp_core.models.weights import load_into_network, read_state_dict
from interp_core.runs import load_run


class _Boom:
    """Unpickling this object runs ``os.system``: what a malicious checkpoint does."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:  # a torch-style zip file whose pickle calls os.system on load
        torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Boom(str(marker))}, f)
    # the payload really is live: a plain pickle round trip of the same object would run it
    assert b"system" in evil.read_bytes()
    with pytest.raises(RunError, match=r"evil\.pth: refused") as e:
        read_state_dict(evil)
    assert "weights_only" in str(e.value)
    assert not marker.exists()
    raw = tmp_path / "evil.pkl.bin"  # a bare (non-zip) pickle as well
    raw.write_bytes(pickle.dumps(_Boom(str(marker))))
    with pytest.raises(RunError, match=r"evil\.pkl\.bin"):
        read_state_dict(raw)
    assert not marker.exists()
    # control: the same payload through a plain unpickler does run (so the refusal above is what saved us)
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Boom(str(control))))
    assert control.exists()
    # import-model refuses it with the same message and writes nothing
    with pytest.raises(RunError, match="refused"):
        import_model("timm/test_resnet", evil, ["a", "b"], tmp_path / "run")
    assert not (tmp_path / "run").exists() and not marker.exists()


def test_prefixes_wrappers_and_head_replacement(tmp_path):
    src = create_model("timm/test_resnet", 5, image_size=32).eval()  # a 5-class checkpoint
    sd = src.net.state_dict()
    for i, (wrapped, name) in enumerate([
        ({f"module.{k}": v for k, v in sd.items()}, "a.pt"),
        ({"model": {f"model.{k}": v for k, v in sd.items()}, "epoch": 7}, "b.pth"),
        ({"state_dict": {f"module.model.{k}": v for k, v in sd.items()}}, "c.bin"),
    ]):
        torch.save(wrapped, tmp_path / name)
        got = read_state_dict(tmp_path / name)
        dst = create_model("timm/test_resnet", 2, image_size=32).eval()
        notes = load_into_network(dst.net, got, str(tmp_path / name))
        assert len(notes) == 1 and "head fc replaced" in notes[0] and "5 classes" in notes[0] and "has 2" in notes[0]
        for k, v in dst.net.state_dict().items():  # every tensor but the head comes from the file
            if not k.startswith("fc."):
                assert torch.equal(v, sd[k]), (name, k)
        assert not torch.equal(dst.net.fc.weight[:2], sd["fc.weight"][:2])
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "d.safetensors"))
    info = import_model("timm/test_resnet", tmp_path / "d.safetensors", ["x", "y"], tmp_path / "run", image_size=32)
    assert "replaced" in info["notes"][0]
    run = load_run(tmp_path / "run")
    assert run.config["imported_from"]["notes"] == info["notes"]
    torch.testing.assert_close(run.model.net.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])


def test_other_mismatches_name_the_first_differing_tensor(tmp_path):
    sd = create_model("timm/test_resnet", 2, image_size=32).net.state_dict()
    dst = create_model("timm/test_resnet", 2, image_size=32).net
    bad = dict(sd)
    bad["layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(RunError, match=r"tensor layer1\.0\.conv1\.weight has shape \(3, 3, 3, 3\)"):
        load_into_network(dst, bad, "f.pth")
    missing = {k: v for k, v in sd.items() if k != "conv1.0.weight"}
    with pytest.raises(RunError, match=r"1 tensor\(s\) of the model missing from the file, first conv1\.0\.weight"):
        load_into_network(dst, missing, "f.pth")
    other = create_model("timm/resnet10t", 2, image_size=32).net.state_dict()
    with pytest.raises(RunError, match="weights do not fit this architecture"):
        load_into_network(dst, other, "f.pth")
    (tmp_path / "x.onnx").write_bytes(b"0")
    with pytest.raises(RunError, match="unknown weights format .onnx"):
        read_state_dict(tmp_path / "x.onnx")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(RunError, match="holds a list, not a state dict"):
        read_state_dict(tmp_path / "list.pt")


def _tutorial_reshape(tensor: torch.Tensor, height: int = 4, width: int = 4) -> torch.Tensor:
    """pytorch-grad-cam's ``reshape_transform`` from its ViT tutorial (tutorials/vision_transformers.md),
    written out independently of the project's ``cam_reshape``."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a - a.min(axis=(1, 2), keepdims=True)
    return a / (a.max(axis=(1, 2), keepdims=True) + 1e-7)


@pytest.mark.parametrize("layer", [None, "blocks.3.norm1"])
def test_vit_grad_cam_agrees_with_pytorch_grad_cam(layer):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    torch.manual_seed(0)
    model = create_model("timm/test_vit", 3, image_size=64).eval()
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    targets = [0, 2, 1]
    ours = attribute(model, x, "gradcam", target=targets, **({"layer": layer} if layer else {})).numpy()
    module = model.net.blocks[-1].norm1 if layer is None else model.net.blocks[3].norm1
    with GradCAM(model=model, target_layers=[module], reshape_transform=_tutorial_reshape) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    assert ref.shape == ours.shape == (3, 64, 64) and ref.max() > 0
    # pytorch-grad-cam min-max scales each map (then resizes with OpenCV): compare in that form
    np.testing.assert_allclose(_minmax(ours), ref, atol=2e-3)


def test_cnn_grad_cam_agrees_with_pytorch_grad_cam():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    model = create_model("timm/test_resnet", 2, image_size=64).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ours = attribute(model, x, "gradcam", target=[1, 0]).numpy()
    with GradCAM(model=model, target_layers=[model.net.layer4]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(0)])
    np.testing.assert_allclose(_minmax(ours), ref, atol=2e-3)


@pytest.mark.slow
def test_swin_grad_cam_agrees_with_pytorch_grad_cam():
    """Swin's blocks give ``[B, H, W, C]`` maps (timm's NHWC layout): the tutorial's transform only
    moves the channels first."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    torch.manual_seed(0)
    model = create_model("timm/swin_tiny_patch4_window7_224", 2, image_size=224).eval()
    assert model.auto_cam_layer_name == "layers.3.blocks.1.norm1"
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    ours = attribute(model, x, "gradcam", target=[1]).numpy()
    with GradCAM(model=model, target_layers=[model.net.layers[-1].blocks[-1].norm1],
                 reshape_transform=lambda t: t.transpose(2, 3).transpose(1, 2)) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)])
    assert ref.max() > 0
    np.testing.assert_allclose(_minmax(ours), ref, atol=2e-3)
