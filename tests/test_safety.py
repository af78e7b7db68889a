"""Safe loading: no pickle anywhere, images from arbitrary bytes, runs validated, paths confined."""
from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from interp_core.data import load_rgb
from interp_core.errors import DataError, RunError
from interp_core.models import create_model
from interp_core.runs import load_run, safe_child, save_model_weights

ROOT = Path(__file__).resolve().parents[1]


def test_no_pickle_and_no_unsafe_torch_load_in_the_code():
    offenders = []
    files = [*ROOT.glob("interp_core/**/*.py"), *ROOT.glob("pages/*.py"), *ROOT.glob("ui/*.py"),
             *ROOT.glob("bench/*.py"), ROOT / "app.py"]
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"^\s*(import|from)\s+(pickle|cPickle|dill|joblib)\b", code):
                offenders.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                offenders.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
            if re.search(r"allow_pickle\s*=\s*True", code):
                offenders.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_give_an_image_or_a_data_error(blob):
    try:
        out = load_rgb(blob)
    except DataError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert out.array.dtype == np.uint8 and out.array.ndim == 3 and out.array.shape[2] == 3


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(1, 40), w=st.integers(1, 40), mode=st.sampled_from(["RGB", "RGBA", "L", "P", "I;16", "F", "1"]),
       fmt=st.sampled_from(["PNG", "TIFF", "JPEG", "BMP"]), cut=st.integers(0, 3))
def test_generated_images_load_or_fail_cleanly(h, w, mode, fmt, cut):
    rng = np.random.default_rng(h * 100 + w)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    elif mode == "F":
        img = Image.fromarray(rng.random((h, w)).astype(np.float32))
    else:
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, KeyError, ValueError):
        return  # PIL cannot write that mode in that format
    data = buf.getvalue()
    if cut:
        data = data[: max(1, len(data) * cut // 4)]  # truncated file
    try:
        out = load_rgb(data)
    except DataError:
        assert cut  # only truncated files may fail
        return
    assert out.array.shape == (h, w, 3) and out.array.dtype == np.uint8


def test_decompression_bomb_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG")  # a small file, 400 Mpixel
    with pytest.raises(DataError, match="too many pixels|more than the limit"):
        load_rgb(buf.getvalue())
    buf = io.BytesIO()
    Image.new("L", (100, 100)).save(buf, format="PNG")
    with pytest.raises(DataError, match="100x100 pixels, more than the limit of 1,000"):
        load_rgb(buf.getvalue(), max_pixels=1000)


def test_runs_are_validated(tiny_run, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_run, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "arch": "vgg99"}))
    with pytest.raises(RunError, match="unknown architecture 'vgg99'"):
        load_run(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "num_classes": 3}))
    with pytest.raises(RunError, match="does not match the 2 class names"):
        load_run(bad)
    (bad / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "image_size"}))
    with pytest.raises(RunError, match="missing key.*image_size"):
        load_run(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(RunError, match="unreadable JSON"):
        load_run(bad)
    (bad / "config.json").write_text(json.dumps(cfg))
    save_model_weights(create_model("resnet18", 2), bad / "model.safetensors")
    with pytest.raises(RunError, match="another architecture"):
        load_run(bad)
    save_model_weights(create_model("smallcnn", 3), bad / "model.safetensors")
    with pytest.raises(RunError, match="wrong architecture or class count"):
        load_run(bad)
    (bad / "model.safetensors").write_bytes(b"\x80\x04pickle-ish garbage")
    with pytest.raises(RunError, match="not a valid safetensors"):
        load_run(bad)


def test_run_paths_cannot_escape_the_root(tmp_path):
    root = tmp_path / "runs"
    (root / "a").mkdir(parents=True)
    assert safe_child(root, "a") == (root / "a").resolve()
    for name in ("../x", "/etc", "a/../../x", ""):
        with pytest.raises(RunError):
            safe_child(root, name)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(RunError, match="outside"):
        safe_child(root, "link")
