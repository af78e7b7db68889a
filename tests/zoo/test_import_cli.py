"""``import-model`` end to end on the command line: a timm ResNet state dict as .pth and a ViT as
.safetensors become runs that explain (map at the tile's resolution, --cam-layer), evaluate,
explain-slide, compare and ``train --init`` (SCAAT) accept; tiles of another size are resized."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from interp_core.models import create_model
from interp_core.runs import load_run
from interp_core.testing import cli_in_process, pattern_image


def _ok(capsys, *args):
    code, out, err = cli_in_process(capsys, *args)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    resnet = create_model("timm/resnet10t", 1000, image_size=64).net  # an ImageNet-shaped checkpoint
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet.state_dict().items()}, "epoch": 3},
               d / "resnet10t.pth")
    vit = create_model("timm/test_vit", 2, image_size=64).net
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(d / "vit.safetensors"))
    return d


@pytest.mark.slow
def test_import_then_every_command(weight_files, tiny_data, tiny_run, tmp_path, capsys):
    classes = sorted(p.name for p in (tiny_data / "train").iterdir())
    res = _ok(capsys, "import-model", "--arch", "timm/resnet10t", "--weights", str(weight_files / "resnet10t.pth"),
              "--classes", *classes, "--image-size", "64", "--out", str(tmp_path / "resnet"))
    assert res["cam_layer"] == "layer4" and "1000 classes" in res["notes"][0]
    res = _ok(capsys, "import-model", "--arch", "timm/test_vit", "--weights", str(weight_files / "vit.safetensors"),
              "--classes", *classes, "--image-size", "64", "--mean", "0.5", "--std", "0.25",
              "--out", str(tmp_path / "vit"))
    assert res["notes"] == [] and res["cam_layer"] == "blocks.5.norm1" and res["std"] == [0.25] * 3
    assert res["interpolation"] == "bicubic"
    vit = tmp_path / "vit"
    cfg = json.loads((vit / "config.json").read_text())
    assert "/" not in json.dumps(cfg["imported_from"]) and cfg["arch_options"]["mean"] == [0.5] * 3

    # explain one 32-px tile with a 64-px model: the map comes back at the tile's 32x32
    tile = next((tiny_data / "test" / classes[0]).iterdir())
    out = tmp_path / "m.npy"
    info = _ok(capsys, "explain", "--run", str(vit), "--image", str(tile), "--attribution", "gradcam",
               "--cam-layer", "blocks.2.norm1", "--out", str(out))
    assert any("bicubic" in n for n in info["notes"])
    a = np.load(out)
    assert a.shape == (32, 32) and np.isfinite(a).all()
    _ok(capsys, "explain", "--run", str(vit), "--image", str(tile), "--attribution", "gradcam", "--out", str(out))
    assert not np.allclose(np.load(out), a)  # another layer, another map
    code, _, err = cli_in_process(capsys, "explain", "--run", str(vit), "--image", str(tile), "--attribution",
                                  "gradcam", "--cam-layer", "blocks.77", "--out", str(out))
    assert code == 2 and "no module 'blocks.77'" in err

    # dataset mode: the named layer is part of the job, so the same folder refuses the automatic layer
    shards = tmp_path / "shards"
    _ok(capsys, "explain", "--run", str(vit), "--data", str(tiny_data), "--limit", "4", "--attribution", "gradcam",
        "--cam-layer", "blocks.2.norm1", "--out", str(shards), "--quiet")
    code, _, err = cli_in_process(capsys, "explain", "--run", str(vit), "--data", str(tiny_data), "--limit", "4",
                                  "--attribution", "gradcam", "--out", str(shards), "--quiet")
    assert code == 2 and "different method_options" in err

    # evaluate (resized tiles, the model's interpolation) with Grad-CAM on a named layer
    m = _ok(capsys, "evaluate", "--run", str(tmp_path / "resnet"), "--data", str(tiny_data), "--limit", "6",
            "--attribution", "gradcam", "--cam-layer", "layer3", "--quiet")
    assert m["n_tiles"] == 6 and m["cam_layer"] == "layer3" and 0 <= m["sparseness"]["mean"] <= 1

    # explain-slide on a plain image: 64-px tiles straight into the 64-px ViT
    slide = tmp_path / "slide.png"
    Image.fromarray(pattern_image(192, 128, glass_cols=64)).save(slide)
    s = _ok(capsys, "explain-slide", "--run", str(vit), "--slide", str(slide), "--out", str(tmp_path / "sl"),
            "--attribution", "gradcam", "--cam-layer", "blocks.4.norm1", "--quiet")
    assert sum(s["class_counts"].values()) >= 1 and (tmp_path / "sl" / "summary.json").is_file()

    # compare a 32-px project run with the 64-px imported ViT
    r = _ok(capsys, "compare", "--runs", str(tiny_run), str(vit), "--data", str(tiny_data), "--limit", "4",
            "--out", str(tmp_path / "r.html"), "--quiet")
    assert (tmp_path / "r.html").stat().st_size > 1000 and r

    # SCAAT fine-tunes the imported ResNet (head replaced) for one epoch
    t = _ok(capsys, "train", "--data", str(tiny_data), "--objective", "scaat", "--init", str(tmp_path / "resnet"),
            "--epochs", "1", "--batch-size", "16", "--out", str(tmp_path / "ft"), "--quiet")
    assert t["epochs"] == 1
    ft = load_run(tmp_path / "ft")
    assert ft.config["arch"] == "timm/resnet10t" and ft.config["arch_options"]["interpolation"] == "bicubic"
    assert ft.config["image_size"] == 64


@pytest.mark.slow
def test_train_a_timm_architecture_with_own_initial_weights(tiny_data, tmp_path, capsys):
    torch.manual_seed(0)
    net = create_model("timm/test_resnet", 1000, image_size=32).net
    torch.save({"model": net.state_dict()}, tmp_path / "init.pth")
    code, out, err = cli_in_process(capsys, "train", "--data", str(tiny_data), "--arch", "timm/test_resnet",
                                    "--epochs", "1", "--batch-size", "16", "--weights", str(tmp_path / "init.pth"),
                                    "--out", str(tmp_path / "r"), "--quiet")
    assert code == 0, err
    assert json.loads(out)["epochs"] == 1 and "head fc replaced" in err and "1000 classes" in err
    trained = load_run(tmp_path / "r").model.net.state_dict()
    init = net.state_dict()["conv1.0.weight"]
    moved = (trained["conv1.0.weight"] - init).abs().max()
    assert 0 < moved < 0.01  # started from the file's weights (a few AdamW steps of lr 1e-3 away)
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["arch_options"] == {"mean": [0.5] * 3, "std": [0.5] * 3, "image_size": 32, "interpolation": "bilinear"}
    code, _, err = cli_in_process(capsys, "train", "--data", str(tiny_data), "--arch", "timm/nope", "--epochs", "1",
                                  "--out", str(tmp_path / "x"))
    assert code == 2 and "unknown architecture 'timm/nope'" in err
