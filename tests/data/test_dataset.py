from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from interp_core.data import load_npz_split, load_rgb, load_split, open_split
from interp_core.errors import DataError
from interp_core.testing import make_tiny_dataset


def test_imagefolder_items_masks_groups(tiny_data):
    ds = load_split(tiny_data, "train")
    assert ds.classes == ["a", "b"] and len(ds) == 32 and ds.has_masks
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["mask"].shape == (1, 32, 32) and item["mask"].sum() > 0
    assert int(item["label"]) == 0 and int(item["index"]) == 0
    assert ds.ids[0] == "train/a/0000.png"
    assert ds.groups[0] == "a|even" and ds.groups[1] == "a|odd"


def test_resize_applies_to_masks(tiny_data):
    ds = load_split(tiny_data, "test", image_size=16)
    it = ds[3]
    assert it["image"].shape == (3, 16, 16) and it["mask"].shape == (1, 16, 16)
    assert set(it["mask"].unique().tolist()) <= {0.0, 1.0}


def test_augmentation_is_deterministic_per_epoch_and_joint(tiny_data):
    ds = load_split(tiny_data, "train", augment=True, seed=1)
    ds.set_epoch(0)
    a = ds[5]
    b = ds[5]
    assert torch.equal(a["image"], b["image"])
    plain = load_split(tiny_data, "train")[5]
    # the mask moves with the image: bright pixels of the square stay under the mask
    for item in (a,):
        inside = item["image"][:, item["mask"][0] > 0].mean()
        outside = item["image"][:, item["mask"][0] == 0].mean()
        assert inside > outside
    changed = False
    for e in range(8):
        ds.set_epoch(e)
        changed |= not torch.equal(ds[5]["image"], plain["image"])
    assert changed


def test_missing_val_is_carved_deterministically(tmp_path):
    root = make_tiny_dataset(tmp_path / "d", n_per_class=10, splits=("train", "test"))
    tr, va = load_split(root, "train"), load_split(root, "val")
    assert len(tr) + len(va) == 20 and len(va) == 4
    assert not set(tr.ids) & set(va.ids)
    assert load_split(root, "val").ids == va.ids
    assert sorted({va.labels.count(0), va.labels.count(1)}) == [2]


def test_errors_name_the_culprit(tmp_path):
    root = make_tiny_dataset(tmp_path / "d", n_per_class=2)
    with pytest.raises(DataError, match="dataset folder not found"):
        load_split(tmp_path / "nope", "train")
    with pytest.raises(DataError, match="unknown split"):
        load_split(root, "dev")
    empty_cls = root / "test" / "a"
    for p in empty_cls.iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"test/a: class folder has no images"):
        load_split(root, "test")
    (root / "train" / "a" / "0000.png").write_bytes(b"not a png at all")
    ds = load_split(root, "train")
    with pytest.raises(DataError, match=r"train/a/0000.png: not a readable image"):
        ds[0]
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "train" / "a" / "0001.png")
    with pytest.raises(DataError, match=r"mask is 8x8 but its image is 16x16"):
        ds[1]
    one = tmp_path / "one"
    (one / "train" / "only").mkdir(parents=True)
    with pytest.raises(DataError, match="at least 2"):
        load_split(one, "train")
    nodata = tmp_path / "empty"
    nodata.mkdir()
    with pytest.raises(DataError, match="no 'train' split"):
        load_split(nodata, "train")


def test_medmnist_npz_adapter(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 9, (n, 1)).astype(np.uint8)
    arrays["train_labels"][0, 0] = 8
    path = tmp_path / "pathmnist.npz"
    np.savez_compressed(path, **arrays)
    ds = open_split(path, "test", image_size=32)
    assert len(ds) == 6 and ds.classes[-1] == "colorectal_adenocarcinoma" and len(ds.classes) == 9
    item = ds[2]
    assert item["image"].shape == (3, 32, 32) and int(item["label"]) == int(arrays["test_labels"][2, 0])
    assert ds.ids[2] == "test/000002"
    gray = tmp_path / "other.npz"
    np.savez(gray, train_images=np.zeros((3, 8, 8), np.uint8), train_labels=np.array([0, 1, 1]))
    g = load_npz_split(gray, "train")
    assert g.classes == ["class_0", "class_1"] and g[0]["image"].shape == (3, 8, 8)
    with pytest.raises(DataError, match="no 'val_images'"):
        load_npz_split(gray, "val")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable npz"):
        load_npz_split(bad, "train")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "F", "1"])
def test_load_rgb_converts_modes(mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (9, 7), dtype=np.uint16))
    elif mode == "F":
        img = Image.fromarray(rng.random((9, 7)).astype(np.float32) * 1000)
    else:
        img = Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="TIFF" if mode in ("I;16", "F") else "PNG")
    out = load_rgb(buf.getvalue())
    assert out.array.shape == (9, 7, 3) and out.array.dtype == np.uint8
    if mode != "1":
        assert out.array.max() > 0


def test_load_rgb_refuses_bad_bytes():
    with pytest.raises(DataError, match="empty"):
        load_rgb(b"")
    with pytest.raises(DataError, match="not a readable image"):
        load_rgb(b"\x00" * 100)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="PNG")
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_rgb(buf.getvalue()[:60])
    with pytest.raises(DataError, match="more than the limit"):
        load_rgb(buf.getvalue(), max_pixels=100)
