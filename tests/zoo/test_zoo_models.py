"""timm/torchvision architectures through the whole chain: build offline, attribute, metrics,
one SCAAT step, explanation consistency, import-model round trip. Small inputs, 4 images."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from interp_core.attribution import attribute, supports_cam
from interp_core.consistency.score import explanation_consistency
from interp_core.errors import InterpError, RunError
from interp_core.models.import_model import import_model
from interp_core.metrics import deletion_auc, sparseness
from interp_core.models import create_model, is_known_arch, zoo_defaults
from interp_core.models.folding import eval_forward_module
from interp_core.runs import load_run, read_config
from interp_core.training.objectives import get_objective, options_from_dict
from interp_core.training.objectives.base import StepContext

# (architecture, input side): stride-32 CNNs at 64 px (2x2 maps), EfficientNet-B0 at 32 px (1x1,
# to keep it fast), the ViT at 64 px (a 4x4 patch grid)
MODELS = [("timm/test_resnet", 64), ("timm/test_vit", 64), ("timm/resnet10t", 64), ("timm/efficientnet_b0", 32)]


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_defaults_come_from_timm_pretrained_cfg_and_normalisation_is_inside():
    import timm
    d = zoo_defaults("timm/resnet10t")
    cfg = timm.get_pretrained_cfg("resnet10t").to_dict()
    assert d["mean"] == list(cfg["mean"]) and d["std"] == list(cfg["std"])
    assert d["image_size"] == cfg["input_size"][-1] == 176 and d["interpolation"] == "bicubic"
    m = create_model("timm/resnet10t", 3).eval()
    assert m.image_size == 176 and m.net.get_classifier().out_features == 3
    x = _images(2, 32)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(m(x), m.net((x - mean) / std))
    # the user's statistics win
    m2 = create_model("timm/resnet10t", 3, mean=[0.1], std=[0.2, 0.3, 0.4], image_size=96, interpolation="bilinear")
    assert m2.normalize.mean.flatten().tolist() == pytest.approx([0.1] * 3)
    assert m2.normalize.std.flatten().tolist() == pytest.approx([0.2, 0.3, 0.4])
    assert m2.image_size == 96 and m2.interpolation == "bilinear"


def test_registry_names_still_work_and_unknown_names_are_refused():
    assert is_known_arch("smallcnn") and is_known_arch("timm/test_vit") and is_known_arch("torchvision/resnet18")
    assert not is_known_arch("timm/no_such_net") and not is_known_arch("torchvision/nope") and not is_known_arch("x")
    assert type(create_model("smallcnn", 2)).__name__ == "TileClassifier"
    with pytest.raises(InterpError, match="unknown timm architecture 'no_such_net'"):
        create_model("timm/no_such_net", 2)
    with pytest.raises(InterpError, match="mean needs 1 or 3"):
        create_model("timm/test_resnet", 2, mean=[0.1, 0.2])


def test_torchvision_models_build_offline_and_find_their_cam_layer():
    m = create_model("torchvision/resnet18", 2, image_size=64).eval()
    assert m.auto_cam_layer_name == "layer4" and not supports_cam(m)
    v = create_model("torchvision/vit_b_16", 2, image_size=32).eval()
    assert v.auto_cam_layer_name == "encoder.layers.encoder_layer_11.ln_1" and v.is_token_model
    x = _images(1, 32)
    a = attribute(v, x, "gradcam", target=0)
    assert a.shape == (1, 32, 32) and torch.isfinite(a).all()


def test_cam_layer_choice_and_reshape_of_token_models():
    vit = create_model("timm/test_vit", 2, image_size=64).eval()
    assert vit.auto_cam_layer_name == "blocks.5.norm1" and vit.net.num_prefix_tokens == 1
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).view(2, 17, 3)
    grid = vit.cam_reshape(tokens)  # class token dropped, 16 patch tokens row-major on a 4x4 grid
    assert grid.shape == (2, 3, 4, 4)
    torch.testing.assert_close(grid[1, 2, 1, 3], tokens[1, 1 + 1 * 4 + 3, 2])
    swin_like = torch.randn(2, 5, 6, 7)
    vit_nhwc = create_model("timm/test_vit", 2, image_size=64)
    vit_nhwc.net.output_fmt = "NHWC"  # the layout flag timm's Swin carries
    torch.testing.assert_close(vit_nhwc.cam_reshape(swin_like), swin_like.permute(0, 3, 1, 2))
    # a named layer replaces the automatic one; names are the timm network's own (or the wrapper's)
    vit.set_cam_layer("blocks.2.norm1")
    assert vit.cam_layer is vit.net.blocks[2].norm1
    assert vit.resolve_layer("net.blocks.2.norm1") is vit.net.blocks[2].norm1
    with pytest.raises(InterpError, match="no module 'blocks.99'"):
        vit.set_cam_layer("blocks.99")
    a2 = attribute(vit, _images(1, 64), "gradcam", target=1)
    a5 = attribute(vit, _images(1, 64), "gradcam", target=1, layer="blocks.5.norm1")
    assert not torch.allclose(a2, a5)


def test_cam_only_for_gap_linear_heads():
    assert supports_cam(create_model("timm/test_resnet", 2, image_size=32))
    assert not supports_cam(create_model("timm/convnext_atto", 2, image_size=32))  # LayerNorm after the pool
    vit = create_model("timm/test_vit", 2, image_size=64)
    assert not supports_cam(vit)
    with pytest.raises(InterpError, match="global-average-pool"):
        attribute(vit, _images(1, 64), "cam", target=0)


def test_batchnorm_folding_exact_where_plain_batchnorm_and_skipped_elsewhere():
    x = _images(2, 64)
    r = create_model("timm/resnet10t", 2, image_size=64).eval()
    folded = eval_forward_module(r)
    assert folded is not r and any(type(m).__name__ == "_FoldedConvBN" for m in folded.modules())
    torch.testing.assert_close(folded(x), r(x), atol=1e-5, rtol=1e-4)
    e = create_model("timm/efficientnet_b0", 2, image_size=64).eval()  # BatchNormAct2d: BN + activation
    torch.testing.assert_close(eval_forward_module(e)(x), e(x), atol=1e-5, rtol=1e-4)
    v = create_model("timm/test_vit", 2, image_size=64).eval()  # LayerNorm only: nothing to fold
    assert eval_forward_module(v) is v


@pytest.mark.parametrize("arch,size", MODELS)
def test_attribute_metrics_scaat_consistency_import(arch, size, tmp_path):
    torch.manual_seed(0)
    model = create_model(arch, 2, image_size=size).eval()
    x, y = _images(4, size), torch.tensor([0, 1, 0, 1])
    # attribution: gradient method, Grad-CAM (and CAM where the head allows it), maps at input size
    methods = ["saliency", "gradcam"] + (["cam"] if supports_cam(model) else [])
    for method in methods:
        a = attribute(model, x, method, target=y)
        assert a.shape == (4, size, size) and torch.isfinite(a).all() and (a >= 0).all(), method
    if supports_cam(model):  # GAP + linear: Grad-CAM is CAM up to a positive factor per sample
        g, c = attribute(model, x, "gradcam", target=y), attribute(model, x, "cam", target=y)
        norm = lambda t: t / t.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)  # noqa: E731
        torch.testing.assert_close(norm(g), norm(c), atol=1e-4, rtol=1e-3)
    a = attribute(model, x, "saliency", target=y)
    s = sparseness(a)
    assert ((s >= 0) & (s <= 1)).all()
    d = deletion_auc(model, x, a, y, n_steps=4)
    assert ((d.auc >= 0) & (d.auc <= 1)).all()
    # one SCAAT step: finite loss, parameter gradients, nothing perturbed outside the budget
    scaat = get_objective("scaat")
    obj = scaat(options_from_dict(scaat, {"warmup_epochs": 0}), num_train=4)
    model.train()
    ctx = StepContext(epoch=0, step=0, steps_per_epoch=1, device=torch.device("cpu"),
                      generator=torch.Generator().manual_seed(0))
    loss, extras = obj.batch_loss(model, {"image": x, "label": y, "index": torch.arange(4)}, ctx)
    assert torch.isfinite(loss) and extras["perturbed_fraction"] > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad(set_to_none=True)
    model.eval()
    # the consistency attack: background-masked PGD, foreground untouched, scores in [0, 1]
    res = explanation_consistency(model, x, y, steps=1)
    assert res.score.shape == (4,) and ((res.score >= -1e-6) & (res.score <= 1 + 1e-6)).all()
    assert torch.equal(res.x_adv[~res.background[:, None].expand_as(x)], x[~res.background[:, None].expand_as(x)])
    # import-model round trip: the network's own state dict (DataParallel prefix) -> run -> same logits
    w = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.net.state_dict().items()}}, w)
    info = import_model(arch, w, ["a", "b"], tmp_path / "run", image_size=size)
    assert info["notes"] == []
    run = load_run(tmp_path / "run")
    with torch.no_grad():
        torch.testing.assert_close(run.model(x), model(x))
    cfg = read_config(tmp_path / "run")
    assert cfg["arch"] == arch and cfg["image_size"] == size and cfg["objective"] == "imported"
    assert "/" not in cfg["imported_from"]["file"]


def test_grad_cam_hook_path_leaves_the_model_as_found():
    m = create_model("timm/test_vit", 2, image_size=64)
    m.train()
    for p in m.parameters():
        p.grad = None
    attribute(m, _images(2, 64), "gradcam", target=0)
    assert m.training and all(p.grad is None and p.requires_grad for p in m.parameters())
    assert not any(mod._forward_hooks for mod in m.modules())


def test_build_errors_are_one_line():
    with pytest.raises(InterpError, match="image_size must be between 8 and 4096"):
        create_model("timm/test_vit", 2, image_size=0)
    with pytest.raises(InterpError, match="interpolation must be one of"):
        create_model("timm/test_vit", 2, interpolation="lanczos")
    with pytest.raises(RunError):
        load_run("/nonexistent/run")
    assert isinstance(create_model("torchvision/efficientnet_b0", 2, image_size=32), nn.Module)


def test_register_tokens_are_dropped_before_the_grid():
    import timm

    from interp_core.models.zoo import ZooClassifier
    net = timm.create_model("test_vit", pretrained=False, num_classes=2, img_size=64, reg_tokens=4)
    m = ZooClassifier(net, "timm", 2, (0.5,) * 3, (0.5,) * 3, 64, "bicubic").eval()
    assert net.num_prefix_tokens == 5  # class token + 4 registers
    tokens = torch.randn(1, 5 + 16, 8)
    torch.testing.assert_close(m.cam_reshape(tokens)[0, :, 0, 1], tokens[0, 5 + 1])
    a = attribute(m, _images(1, 64), "gradcam", target=0)
    assert a.shape == (1, 64, 64) and torch.isfinite(a).all()
