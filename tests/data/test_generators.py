"""Sample-data generators: layout, masks, artifact rates, ihc disjointness, determinism, safety."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from interp_core.data import generate
from interp_core.data.generate import GENERATORS, make_dataset
from interp_core.errors import InterpError

SPLITS = ("train", "val", "test")


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _rows(root: Path, name: str = "groups.csv") -> list[dict[str, str]]:
    with open(root / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    """One tiny copy of every kind (10 tiles per split), shared by the layout tests."""
    base = tmp_path_factory.mktemp("gen")
    out = {}
    for kind in GENERATORS:
        out[kind] = base / kind
        make_dataset(kind, out[kind], size=32, n_train=10, n_val=10, n_test=10, seed=3)
    return out


def test_generators_lists_the_four_kinds():
    assert set(GENERATORS) == {"synthetic-he", "synthetic-he-biased", "synthetic-he-bgbias", "ihc"}
    assert all(isinstance(v, str) and v and "\n" not in v for v in GENERATORS.values())


@pytest.mark.parametrize("kind", list(GENERATORS))
def test_layout_masks_and_groups(sets, kind):
    root = sets[kind]
    info = json.loads((root / "dataset.json").read_text())
    assert {"kind", "seed", "size", "counts", "classes", "generator_version"} <= set(info)
    assert info["kind"] == kind and info["seed"] == 3 and info["size"] == 32
    classes = info["classes"]
    assert classes == sorted(classes) and len(classes) == 2
    files = set()
    for split in SPLITS:
        assert sorted(p.name for p in (root / split).iterdir()) == classes
        for c in classes:
            names = sorted(p.name for p in (root / split / c).glob("*.png"))
            assert len(names) == info["counts"][split][c] > 0
            assert sorted(p.name for p in (root / "masks" / split / c).glob("*.png")) == names
            for n in names:
                img = Image.open(root / split / c / n)
                mask = Image.open(root / "masks" / split / c / n)
                assert img.mode == "RGB" and mask.mode == "L" and img.size == mask.size == (32, 32)
                assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
                files.add(f"{split}/{c}/{n}")
        assert sum(info["counts"][split].values()) == 10
    if kind != "ihc":  # exactly 50/50
        assert all(set(info["counts"][s].values()) == {5} for s in SPLITS)
    rows = _rows(root)
    assert list(rows[0]) == ["split", "class_name", "file", "group"]
    assert {r["file"] for r in rows} == files and len(rows) == len(files)
    for r in rows:
        assert r["file"].startswith(f"{r['split']}/{r['class_name']}/")
        assert r["group"].split("|")[0] == r["class_name"]
    assert not list(root.parent.glob(".*tmp-*")), "temporary folder left behind"


@pytest.mark.parametrize("kind", ["synthetic-he", "synthetic-he-biased"])
def test_synthetic_masks_mark_lesions_of_tumor_tiles_only(tmp_path, kind):
    root = tmp_path / "d"
    make_dataset(kind, root, n_train=40, n_val=2, n_test=2, seed=1)
    cover = []
    for c in ("normal", "tumor"):
        for p in (root / "masks" / "train" / c).glob("*.png"):
            m = _png(p) > 0
            if c == "normal":
                assert not m.any()
            else:
                cover.append(m.mean())
    assert len(cover) == 20
    # the lesion outline covers roughly 5-30 % of a tile
    assert 0.03 < min(cover) and max(cover) < 0.45 and 0.08 < float(np.median(cover)) < 0.3
    # tumor tiles are darker (more hematoxylin) inside the lesion than outside it
    p = next((root / "train" / "tumor").glob("*.png"))
    img, m = _png(p).astype(float).mean(2), _png(root / "masks" / "train" / "tumor" / p.name) > 0
    assert img[m].mean() < img[~m].mean()


def test_biased_artifact_rates_groups_and_no_overlap(tmp_path):
    root = tmp_path / "b"
    info = make_dataset("synthetic-he-biased", root, n_train=60, n_val=20, n_test=40, seed=2)
    assert info["artifact_rates"]["train"] == {"tumor": 0.9, "normal": 0.1}
    groups = {r["file"]: r["group"] for r in _rows(root)}
    expected = {"train": {"tumor": 27, "normal": 3}, "val": {"tumor": 9, "normal": 1},
                "test": {"tumor": 10, "normal": 10}}
    for split in SPLITS:
        for c in ("normal", "tumor"):
            marked = 0
            for p in sorted((root / split / c).glob("*.png")):
                rel = f"{split}/{c}/{p.name}"
                art = _png(root / "artifact_masks" / rel) > 0
                lesion = _png(root / "masks" / rel) > 0
                assert art.shape == lesion.shape == (64, 64)
                assert not (art & lesion).any(), f"pen mark overlaps the lesion in {rel}"
                assert groups[rel] == f"{c}|{'artifact' if art.any() else 'clean'}"
                marked += bool(art.any())
            assert marked == expected[split][c], (split, c)


def test_biased_is_plain_tissue_plus_a_local_mark(tmp_path):
    """Same seed: clean tiles are byte-identical to synthetic-he; marked ones differ only near the mark."""
    plain, biased = tmp_path / "p", tmp_path / "b"
    make_dataset("synthetic-he", plain, n_train=16, n_val=2, n_test=2, seed=5)
    make_dataset("synthetic-he-biased", biased, n_train=16, n_val=2, n_test=2, seed=5)
    n_marked = 0
    for r in _rows(biased):
        a, b = _png(plain / r["file"]), _png(biased / r["file"])
        assert np.array_equal(_png(plain / "masks" / r["file"]), _png(biased / "masks" / r["file"]))
        art = _png(biased / "artifact_masks" / r["file"]) > 0
        if r["group"].endswith("|clean"):
            assert np.array_equal(a, b)
        else:
            n_marked += 1
            changed = np.abs(a.astype(int) - b.astype(int)).max(2) > 0
            assert changed[art].mean() > 0.9  # ink darkens the marked region
            assert not (changed & ~ndimage.binary_dilation(art, iterations=5)).any()
            assert b[art].astype(float).mean() < a[art].astype(float).mean()
    assert n_marked >= 8


def test_bgbias_look_rates_and_groups(tmp_path):
    root = tmp_path / "g"
    info = make_dataset("synthetic-he-bgbias", root, n_train=60, n_val=20, n_test=40, seed=2)
    assert info["class_look"] == {"normal": "warm", "tumor": "cool"}
    assert not (root / "artifact_masks").exists()
    counts: dict = {}
    for r in _rows(root):
        c, look = r["group"].split("|")
        assert c == r["class_name"] and look in ("warm", "cool")
        key = (r["split"], c, look == info["class_look"][c])
        counts[key] = counts.get(key, 0) + 1
    # 90 % of each class has its own look in train/val (27 of 30, 9 of 10), 50 % in test (10 of 20)
    for split, agree, total in (("train", 27, 30), ("val", 9, 10), ("test", 10, 20)):
        for c in ("normal", "tumor"):
            assert counts[(split, c, True)] == agree and counts[(split, c, False)] == total - agree, (split, c)


def test_bgbias_is_plain_tissue_with_a_tinted_context(tmp_path):
    """Same seed: the lesion core is byte-identical to synthetic-he, the context is tinted
    (warm: blue darkened more than red; cool: red darkened more than blue)."""
    plain, tinted = tmp_path / "p", tmp_path / "t"
    make_dataset("synthetic-he", plain, n_train=16, n_val=2, n_test=2, seed=5)
    make_dataset("synthetic-he-bgbias", tinted, n_train=16, n_val=2, n_test=2, seed=5)
    seen = set()
    for r in _rows(tinted):
        a, b = _png(plain / r["file"]).astype(float), _png(tinted / r["file"]).astype(float)
        lesion = _png(tinted / "masks" / r["file"]) > 0
        assert np.array_equal(_png(plain / "masks" / r["file"]) > 0, lesion)
        core = ndimage.binary_erosion(lesion, iterations=4)  # beyond the reach of the defocus blur
        if core.any():
            assert np.array_equal(a[core], b[core])
        context = ~ndimage.binary_dilation(lesion, iterations=6)
        ratio = (b[context].mean(0) + 1) / (a[context].mean(0) + 1)  # per channel R, G, B
        look = r["group"].split("|")[1]
        seen.add(look)
        if look == "warm":
            assert ratio[2] < ratio[0] and ratio[2] < 0.99
        else:
            assert ratio[0] < ratio[2] and ratio[0] < 0.99
    assert seen == {"warm", "cool"}


def _intersects(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def test_ihc_splits_are_spatially_disjoint_and_labels_follow_dab(tmp_path):
    from skimage import color, data

    root = tmp_path / "ihc"
    info = make_dataset("ihc", root, n_train=12, n_val=10, n_test=10, seed=0)
    regions = info["regions"]
    assert set(regions) == set(SPLITS)
    crop = info["crop"]
    for i, s in enumerate(SPLITS):
        for t in SPLITS[i + 1:]:
            assert not _intersects(regions[s], regions[t]), (s, t)
    src = data.immunohistochemistry()
    dab = ndimage.gaussian_filter(color.rgb2hed(src)[..., 2], 1.0) > info["dab_threshold"]
    rows = _rows(root, "tiles.csv")
    assert {r["file"] for r in rows} == {r["file"] for r in _rows(root)}
    boxes = {s: [] for s in SPLITS}
    for r in rows:
        y0, x0 = int(r["y0"]), int(r["x0"])
        box = (y0, y0 + crop, x0, x0 + crop)
        ry0, ry1, rx0, rx1 = regions[r["split"]]
        assert ry0 <= box[0] and box[1] <= ry1 and rx0 <= box[2] and box[3] <= rx1, r
        boxes[r["split"]].append(box)
        frac = dab[box[0]:box[1], box[2]:box[3]].mean()
        if r["class_name"] == "dab_positive":
            assert frac >= info["positive_fraction"]
        else:
            assert r["class_name"] == "dab_negative" and frac <= info["negative_fraction"]
        if r["split"] != "train":  # not augmented: the tile is the source crop itself
            assert r["transform"] == "none"
            crop_mask = dab[box[0]:box[1], box[2]:box[3]]
            if r["class_name"] == "dab_negative":
                crop_mask = np.zeros_like(crop_mask)
            # the tile is the source crop resized by PIL (bilinear), its mask resized by area
            side = (info["size"], info["size"])
            img = np.asarray(Image.fromarray(src[box[0]:box[1], box[2]:box[3]]).resize(side, Image.BILINEAR))
            expect = np.asarray(Image.fromarray(crop_mask.astype(np.uint8) * 255).resize(side, Image.BILINEAR)) >= 128
            assert np.array_equal(_png(root / r["file"]), img)
            assert np.array_equal(_png(root / "masks" / r["file"]) > 0, expect)
    # no pixel of a val/test tile lies in any training tile
    for s in ("val", "test"):
        assert not any(_intersects(a, b) for a in boxes[s] for b in boxes["train"])
    for s in SPLITS:
        assert info["counts"][s] == {"dab_negative": 5 if s != "train" else 6,
                                     "dab_positive": 5 if s != "train" else 6}
    assert info["augmented_splits"] == ["train"]
    assert any(r["transform"] != "none" for r in rows if r["split"] == "train")


def test_ihc_train_augmentation_moves_the_mask_with_the_image(tmp_path):
    root = tmp_path / "ihc"
    make_dataset("ihc", root, n_train=8, n_val=2, n_test=2, seed=4)
    from interp_core.data import ihc

    rgb, positive, _ = ihc.source_image()
    for r in _rows(root, "tiles.csv"):
        if r["split"] != "train" or r["class_name"] != "dab_positive":
            continue
        y0, x0 = int(r["y0"]), int(r["x0"])
        spec = dict(kv.split("=") for kv in r["transform"].split(","))
        m = positive[y0:y0 + ihc.CROP, x0:x0 + ihc.CROP]
        m = np.rot90(m, int(spec["rot90"]))
        m = m[:, ::-1] if spec["flip"] == "1" else m
        m = ihc._resize(np.zeros((ihc.CROP, ihc.CROP, 3), np.uint8), np.ascontiguousarray(m), 64)[1]
        assert m.shape == (64, 64) and m.any()
        assert np.array_equal(_png(root / "masks" / r["file"]) > 0, m)


def test_ihc_keeps_ambiguous_tiles_near_the_gap(tmp_path):
    """Three quarters of each class lie within 0.10 of the 0.48/0.52 gap (hand-written band, not ihc.is_hard)."""
    root = tmp_path / "ihc"
    make_dataset("ihc", root, n_train=16, n_val=20, n_test=20, seed=1)
    from interp_core.data import ihc

    _, positive, _ = ihc.source_image()
    rows = _rows(root, "tiles.csv")
    for r in rows:
        y0, x0, crop = int(r["y0"]), int(r["x0"]), int(r["crop"])
        frac = positive[y0:y0 + crop, x0:x0 + crop].mean()
        assert abs(float(r["dab_fraction"]) - frac) < 1e-4
        if r["class_name"] == "dab_positive":
            assert frac >= 0.52
            band = frac <= 0.62
        else:
            assert frac <= 0.48
            band = frac >= 0.38
        assert r["ambiguous"] == str(int(band)), r
    for split, n in (("train", 16), ("val", 20), ("test", 20)):
        for c in ("dab_negative", "dab_positive"):
            sel = [r for r in rows if r["split"] == split and r["class_name"] == c]
            assert len(sel) == n // 2
            assert sum(r["ambiguous"] == "1" for r in sel) == round(0.75 * (n // 2)), (split, c)
        if split != "train":  # no position twice in a non-augmented split
            pos = [(r["y0"], r["x0"]) for r in rows if r["split"] == split]
            assert len(set(pos)) == len(pos)


def test_ihc_regions_hold_the_default_counts_without_repeats():
    """The shipped counts (val >= 150 tiles) fit the non-augmented splits' pools, easy and ambiguous."""
    from interp_core.data import ihc

    counts = generate.DEFAULT_COUNTS["ihc"]
    assert counts["val"] >= 150 and counts["test"] >= 150
    for split in ("val", "test"):
        half = counts[split] // 2
        n_hard = round(ihc.HARD_SHARE * half)
        hard, clear = ihc.candidates(split, hard=True), ihc.candidates(split, hard=False)
        for label in (0, 1):
            assert len(hard[label]) >= n_hard and len(clear[label]) >= half - n_hard, (split, label)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    for kind in GENERATORS:
        a, b, c = tmp_path / f"{kind}-a", tmp_path / f"{kind}-b", tmp_path / f"{kind}-c"
        for root, seed in ((a, 7), (b, 7), (c, 8)):
            make_dataset(kind, root, size=32, n_train=6, n_val=4, n_test=4, seed=seed)
        da, db, dc = _digest(a), _digest(b), _digest(c)
        assert da == db, kind
        ha = {v for k, v in da.items() if k.endswith(".png") and not k.startswith(("masks", "artifact_masks"))}
        hc = {v for k, v in dc.items() if k.endswith(".png") and not k.startswith(("masks", "artifact_masks"))}
        assert len(ha & hc) < len(ha) / 2, kind


def test_unknown_kind_lists_the_kinds(tmp_path):
    with pytest.raises(InterpError) as e:
        make_dataset("gland-soup", tmp_path / "x")
    assert all(k in str(e.value) for k in GENERATORS)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kw", [{"size": 8}, {"n_train": 1}, {"n_test": -3}, {"seed": -1}])
def test_bad_arguments_are_user_errors(tmp_path, kw):
    with pytest.raises(InterpError):
        make_dataset("synthetic-he", tmp_path / "x", **kw)


def test_refuses_foreign_directory_and_replaces_its_own(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InterpError, match="refusing"):
        make_dataset("synthetic-he", foreign, n_train=2, n_val=2, n_test=2)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]

    (tmp_path / "afile").write_text("x")
    with pytest.raises(InterpError):
        make_dataset("synthetic-he", tmp_path / "afile", n_train=2, n_val=2, n_test=2)

    empty = tmp_path / "empty"
    empty.mkdir()
    make_dataset("synthetic-he", empty, n_train=2, n_val=2, n_test=2)  # an empty folder is fine

    ours = tmp_path / "ours"
    make_dataset("synthetic-he", ours, n_train=6, n_val=2, n_test=2)
    make_dataset("synthetic-he-biased", ours, n_train=2, n_val=2, n_test=2)  # replaced whole
    assert json.loads((ours / "dataset.json").read_text())["kind"] == "synthetic-he-biased"
    assert len(list((ours / "train").rglob("*.png"))) == 2  # no stale tiles from the first run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "empty", "foreign", "ours"]


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = generate.render_he_tile

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(generate, "render_he_tile", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_dataset("synthetic-he", tmp_path / "d", n_train=10, n_val=2, n_test=2)
    assert list(tmp_path.iterdir()) == []
