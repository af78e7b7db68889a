"""Slide tiling, tissue detection and stitching (interp_core.slides.explain), checked against direct per-tile computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from interp_core.attribution import attribute
from interp_core._utils.device import torch_threads
from interp_core.errors import InterpError
from interp_core.models import create_model
from interp_core.slides.explain import (ArraySlide, explain_slide, grid_shape, open_slide, read_thumbnail, tile_tissue_fraction,
                               tissue_mask)
from interp_core.testing import pattern_image

TILE = 32


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    m = create_model("smallcnn", 3, width=4)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def tile_tensor(img: np.ndarray, x: int, y: int, t: int = TILE) -> torch.Tensor:
    region = ArraySlide(img).read_region(x, y, t, t)
    return torch.from_numpy(region).permute(2, 0, 1).float().div(255)[None]


# -- readers and tissue ----------------------------------------------------------------------------------
def test_array_slide_reads_regions_padding_outside_with_white():
    img = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(4, 5, 3)
    s = ArraySlide(img)
    assert s.size == (5, 4)
    np.testing.assert_array_equal(s.read_region(1, 2, 3, 2), img[2:4, 1:4])
    r = s.read_region(3, 2, 4, 3)  # 2 columns and 1 row past the edge
    np.testing.assert_array_equal(r[:2, :2], img[2:4, 3:5])
    assert (r[2:] == 255).all() and (r[:, 2:] == 255).all()
    assert (s.read_region(-3, 0, 2, 2) == 255).all()
    with pytest.raises(InterpError, match="8-bit RGB"):
        ArraySlide(np.zeros((4, 4), np.uint8))
    with pytest.raises(InterpError, match="8-bit RGB"):
        ArraySlide(np.zeros((4, 4, 3), np.float32))


def test_open_slide_goes_through_load_rgb(tmp_path):
    from PIL import Image
    img = pattern_image(40, 30)
    Image.fromarray(img).convert("RGBA").save(tmp_path / "s.png")
    s = open_slide(tmp_path / "s.png")
    np.testing.assert_array_equal(s.array, img)
    with pytest.raises(InterpError):
        open_slide(tmp_path / "missing.png")


def test_thumbnail_is_the_block_mean():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
    th = read_thumbnail(ArraySlide(img), 4)
    ref = np.rint(img.astype(np.float64).reshape(3, 4, 4, 4, 3).mean(axis=(1, 3)))
    np.testing.assert_array_equal(th, ref.astype(np.uint8))
    # 10x7 at 4: partial blocks are averaged with the white padding
    th2 = read_thumbnail(ArraySlide(img[:7, :10]), 4)
    assert th2.shape == (2, 3, 3)
    padded = np.full((8, 12, 3), 255.0)
    padded[:7, :10] = img[:7, :10]
    np.testing.assert_array_equal(th2, np.rint(padded.reshape(2, 4, 3, 4, 3).mean(axis=(1, 3))).astype(np.uint8))


def test_tissue_mask_separates_glass_from_stain():
    img = pattern_image()
    mask = tissue_mask(img)
    assert not mask[:, :96].any()
    assert mask[:, 96:].mean() > 0.99


def test_tissue_mask_all_background_and_flat_colour():
    assert not tissue_mask(np.full((20, 30, 3), 250, np.uint8)).any()
    assert not tissue_mask(np.full((20, 30, 3), 0, np.uint8)).any()  # black: saturation 0
    assert tissue_mask(np.full((20, 30, 3), (200, 80, 150), np.uint8)).all()


def test_tissue_threshold_is_clipped_so_pale_tissue_is_kept():
    # glass (S=0), pale stroma (S=0.2 -> 200,200,250 has S=0.2), strong stain (S=0.7): Otsu alone would
    # put its threshold between pale and strong tissue; the cap at 0.08 keeps the pale tissue.
    img = np.zeros((10, 30, 3), np.uint8)
    img[:, :10] = 245
    img[:, 10:20] = (200, 200, 250)
    img[:, 20:] = (230, 69, 120)
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu
    assert threshold_otsu(rgb2hsv(img)[..., 1]) > 0.2  # the unclipped threshold would drop the pale part
    m = tissue_mask(img)
    assert not m[:, :10].any() and m[:, 10:].all()
    m_unclipped = tissue_mask(img, max_threshold=1.0)
    assert not m_unclipped[:, 10:20].any()
    with pytest.raises(InterpError, match="unknown tissue method"):
        tissue_mask(img, method="nope")


def test_grid_shape_and_tile_tissue_fraction_by_hand():
    assert grid_shape((256, 192), 32, 32) == (6, 8)
    assert grid_shape((256, 192), 32, 16) == (11, 15)
    assert grid_shape((257, 192), 32, 32) == (6, 9)  # one pixel column more -> a padded column of tiles
    assert grid_shape((20, 12), 32, 32) == (1, 1)
    mask = np.zeros((4, 6), bool)  # thumbnail at d=2 of a 12x8 image
    mask[:2, :3] = True
    frac = tile_tissue_fraction(mask, grid_shape((12, 8), 4, 4), 4, 4, 2)
    # tiles are 2x2 thumbnail pixels: tile (0,0) all tissue, (0,1) half (column 2 of 2..3), others 0
    np.testing.assert_allclose(frac, [[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])


# -- explain_slide ---------------------------------------------------------------------------------------
def test_grid_background_nan_and_stitched_shape(model):
    img = pattern_image()
    res = explain_slide(model, ArraySlide(img), tile_size=TILE, downsample=4, batch_size=8)
    assert res.grid_shape == (6, 8) and res.n_tiles == 48
    assert res.probs.shape == (6, 8, 3) and res.probs.dtype == np.float32
    expected_tissue = np.zeros((6, 8), bool)
    expected_tissue[:, 3:] = True
    np.testing.assert_array_equal(res.tissue, expected_tissue)
    assert np.isnan(res.probs[:, :3]).all()
    assert np.isfinite(res.probs[:, 3:]).all()
    np.testing.assert_allclose(res.probs[:, 3:].sum(-1), 1.0, atol=1e-5)
    assert res.n_computed == 30
    assert res.saliency.shape == (48, 64) and res.saliency.dtype == np.float32
    assert res.thumbnail.shape == (48, 64, 3)
    assert np.isnan(res.saliency[:, :24]).all() and np.isfinite(res.saliency[:, 24:]).all()
    assert np.nanmax(res.saliency) == pytest.approx(1.0)  # "slide" normalisation
    assert (res.pred[:, :3] == -1).all() and set(np.unique(res.pred[:, 3:])) <= {0, 1, 2}
    full = explain_slide(model, ArraySlide(img), tile_size=TILE, skip_background=False, batch_size=16)
    assert full.n_computed == 48 and np.isfinite(full.probs).all() and np.isfinite(full.saliency).all()
    np.testing.assert_allclose(full.probs[:, 3:], res.probs[:, 3:], atol=1e-6)


def test_probs_and_maps_equal_per_tile_computation(model):
    """Without normalisation at downsample 1 the stitched map is each tile's own attribute() map."""
    img = pattern_image(96, 64, glass_cols=0)
    res = explain_slide(model, ArraySlide(img), tile_size=TILE, downsample=1, normalize="none", batch_size=4)
    for r in range(2):
        for c in range(3):
            x = tile_tensor(img, c * TILE, r * TILE)
            with torch.no_grad():
                p = torch.softmax(model(x), 1)[0].numpy()
            np.testing.assert_allclose(res.probs[r, c], p, atol=1e-5)
            ref = attribute(model, x, "saliency", int(p.argmax()))[0].numpy()
            np.testing.assert_allclose(res.saliency[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE], ref,
                                       rtol=1e-4, atol=1e-7)


def test_overlapping_tiles_are_averaged_and_downsampled_by_area(model):
    img = pattern_image(64, 64, glass_cols=0)
    res = explain_slide(model, ArraySlide(img), tile_size=TILE, stride=16, downsample=4, normalize="none",
                        method="gradcam", target=1)
    assert res.grid_shape == (3, 3)
    acc, cnt = np.zeros((64, 64)), np.zeros((64, 64))
    for r in range(3):
        for c in range(3):
            m = attribute(model, tile_tensor(img, 16 * c, 16 * r), "gradcam", 1)[0].numpy()
            acc[16 * r:16 * r + TILE, 16 * c:16 * c + TILE] += m
            cnt[16 * r:16 * r + TILE, 16 * c:16 * c + TILE] += 1
    ref = (acc / cnt).reshape(16, 4, 16, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(res.saliency, ref, rtol=1e-4, atol=1e-7)


def test_tile_normalisation_puts_every_tile_max_at_one(model):
    img = pattern_image(96, 64, glass_cols=0)
    res = explain_slide(model, ArraySlide(img), tile_size=TILE, downsample=1, normalize="tile")
    for r in range(2):
        for c in range(3):
            assert res.saliency[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE].max() == pytest.approx(1.0)


def test_progress_callback(model):
    calls: list[tuple[int, int]] = []
    res = explain_slide(model, ArraySlide(pattern_image()), tile_size=TILE, batch_size=7,
                        progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 48) and calls[-1] == (48, 48)
    assert all(t == 48 for _, t in calls)
    dones = [d for d, _ in calls]
    assert dones == sorted(dones) and len(calls) == 1 + -(-res.n_computed // 7)  # 0, then one per batch (the last at 48)


def test_tiles_are_streamed_batch_by_batch(model):
    """Tiles are read lazily: when a batch is reported, at most the tiles computed so far have been read."""
    class CountingSlide(ArraySlide):
        tile_reads = 0

        def read_region(self, x, y, w, h):
            if (w, h) == (TILE, TILE):
                CountingSlide.tile_reads += 1
            return super().read_region(x, y, w, h)

    slide = CountingSlide(pattern_image(glass_cols=0))
    seen = []
    explain_slide(model, slide, tile_size=TILE, batch_size=5,
                  progress=lambda done, total: seen.append((done, CountingSlide.tile_reads)))
    assert [reads for _, reads in seen[1:-1]] == list(range(5, 48, 5))
    assert all(reads <= max(done, 1) for done, reads in seen)


def test_one_tile_image(model):
    img = pattern_image(TILE, TILE, glass_cols=0)
    res = explain_slide(model, ArraySlide(img), tile_size=TILE, downsample=4)
    assert res.grid_shape == (1, 1) and res.n_tiles == 1 and res.n_computed == 1
    assert res.saliency.shape == (8, 8) and np.isfinite(res.saliency).all()


def test_image_smaller_than_a_tile_is_padded_with_white(model):
    img = pattern_image(20, 12, glass_cols=0)
    res = explain_slide(model, ArraySlide(img), tile_size=TILE, downsample=4, skip_background=False)
    assert res.grid_shape == (1, 1)
    assert res.saliency.shape == (3, 5)
    padded = np.full((TILE, TILE, 3), 255, np.uint8)
    padded[:12, :20] = img
    x = torch.from_numpy(padded).permute(2, 0, 1).float().div(255)[None]
    with torch.no_grad():
        np.testing.assert_allclose(res.probs[0, 0], torch.softmax(model(x), 1)[0].numpy(), atol=1e-5)
    # 20*12 / 32**2 = 23% tissue, the rest padding: counted as tissue at min_tissue 0.1, background at 0.5
    assert explain_slide(model, ArraySlide(img), tile_size=TILE, min_tissue=0.1).n_computed == 1
    skipped = explain_slide(model, ArraySlide(img), tile_size=TILE, downsample=4, min_tissue=0.5)
    assert skipped.n_computed == 0 and np.isnan(skipped.probs).all() and np.isnan(skipped.saliency).all()


def test_deterministic_and_model_state_kept(model):
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = explain_slide(model, ArraySlide(pattern_image()), tile_size=TILE, stride=16)
    b = explain_slide(model, ArraySlide(pattern_image()), tile_size=TILE, stride=16)
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.saliency, b.saliency)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_input_size_resizes_tiles_for_the_model(model):
    img = pattern_image(128, 64, glass_cols=0)
    res = explain_slide(model, ArraySlide(img), tile_size=64, input_size=32, downsample=4, normalize="none")
    assert res.grid_shape == (1, 2) and res.saliency.shape == (16, 32)
    x = torch.nn.functional.interpolate(tile_tensor(img, 64, 0, 64), size=(32, 32), mode="bilinear",
                                        align_corners=False, antialias=True)
    with torch.no_grad():
        np.testing.assert_allclose(res.probs[0, 1], torch.softmax(model(x), 1)[0].numpy(), atol=1e-5)


def test_bad_arguments_are_clear_errors(model):
    s = ArraySlide(pattern_image())
    with pytest.raises(InterpError, match="stride"):
        explain_slide(model, s, tile_size=TILE, stride=40)
    with pytest.raises(InterpError, match="tile_size"):
        explain_slide(model, s, tile_size=0)
    with pytest.raises(InterpError, match="more than"):
        explain_slide(model, s, tile_size=TILE, stride=1, max_tiles=1000)
    with pytest.raises(InterpError, match="target"):
        explain_slide(model, s, tile_size=TILE, target=3)
    with pytest.raises(InterpError, match="class names"):
        explain_slide(model, s, tile_size=TILE, classes=["a", "b"])
    with pytest.raises(InterpError, match="unknown attribution method"):
        explain_slide(model, s, tile_size=TILE, method="nope")
    with pytest.raises(InterpError, match="normalize"):
        explain_slide(model, s, tile_size=TILE, normalize="global")


def test_prob_map_paints_each_tile_probability_over_its_footprint(model):
    res = explain_slide(model, ArraySlide(pattern_image()), tile_size=TILE, downsample=4)
    pm = res.prob_map(2)
    assert pm.shape == res.saliency.shape
    assert np.isnan(pm[:, :24]).all()  # skipped glass tiles
    np.testing.assert_allclose(pm[8:16, 32:40], res.probs[1, 4, 2])  # tile (1, 4) covers rows 8..16, cols 32..40
    with pytest.raises(InterpError):
        res.prob_map(3)


def test_array_slide_is_a_slide_reader():
    from interp_core.slides.explain import SlideReader
    assert isinstance(ArraySlide(pattern_image(8, 8)), SlideReader)


def test_slide_page_choices_by_hand():
    """What the Slide page shows, computed outside Streamlit (interp_core.slides.view), against hand values."""
    from types import SimpleNamespace as NS

    from interp_core.slides.view import (change_map, dataset_for_slide, default_pair, job_state, overlay_scale,
                                        tile_stride, viewer_grid)
    runs = [NS(key="a", dataset="he", config={"objective": "ece"}), NS(key="b", dataset="he", config={"objective": "erm"}),
            NS(key="c", dataset="he", config={"objective": "scaat"}), NS(key="d", dataset="ihc", config={"objective": "erm"})]
    assert default_pair(runs, "he") == ["b", "c"]  # baseline vs its SCAAT retrain, not the first two
    assert default_pair(runs, "ihc") == ["d", "d"]  # one run: shown twice
    assert default_pair(runs, None) == ["b", "c"] and default_pair(runs[:1], "x") == ["a", "a"]
    assert dataset_for_slide({"synthetic-he", "synthetic-he-biased", "ihc"}, "/s/synthetic-he-biased.tiff") == \
        "synthetic-he-biased"
    assert dataset_for_slide({"synthetic-he", "ihc"}, "case.svs") is None
    assert (tile_stride(64, "tile"), tile_stride(64, "half"), tile_stride(1, "half")) == (64, 32, 1)
    assert viewer_grid(None) is None
    assert viewer_grid({"level_downsample": 2.0, "tile_size": 64, "stride": 32, "grid": [3, 5]}) == \
        {"tile": 128.0, "stride": 64.0, "rows": 3, "cols": 5}
    assert job_state({"complete": False, "done": 1200, "total": 3000}) == "1,200/3,000 tiles"
    assert job_state({"complete": False, "done": 0, "total": 0}) == "not explained yet"
    # one colour scale for both maps: saliency 0..p99.5 of |values| (signed: symmetric), NaN ignored
    left = np.array([[0.0, 1.0], [np.nan, 3.0]])
    right = np.arange(200, dtype=float).reshape(10, 20) / 100
    vmin, vmax, label = overlay_scale([left, right, None], "saliency", "slide", ["n", "t"], "t")
    assert vmin == 0.0 and vmax == pytest.approx(np.percentile(np.r_[0.0, 1.0, 3.0, right.ravel()], 99.5))
    assert label == "saliency (slide-wide)"
    assert overlay_scale([-left], "saliency", "tile", ["n", "t"], "t")[:2] == \
        pytest.approx((-np.percentile([0, 1, 3], 99.5), np.percentile([0, 1, 3], 99.5)))
    assert overlay_scale([left], "entropy", "slide", ["a", "b", "c"], "a") == (0.0, pytest.approx(np.log(3)),
                                                                               "entropy (nats)")
    assert overlay_scale([left], "probability", "slide", ["n", "t"], "t") == (0.0, 1.0, "p(t)")
    # the change view: each map over its own max |value|, right minus left
    a, b = np.array([[1.0, -2.0]]), np.array([[0.0, 4.0]])
    np.testing.assert_allclose(change_map(a, b), [[0.0 - 0.5, 1.0 + 1.0]])
    assert change_map(a, np.zeros((2, 2))) is None


def test_stitched_view_overlays_only_computed_pixels():
    """The fallback image when the deep-zoom viewer is unavailable: the thumbnail where no tile was
    computed, the alpha blend of thumbnail and colour map elsewhere."""
    from types import SimpleNamespace as NS

    from interp_core.attribution import colorize
    from interp_core.slides.view import stitched_view
    thumb = np.full((2, 3, 3), 200, np.uint8)
    vals = np.array([[np.nan, 0.0, 1.0], [0.5, np.nan, np.nan]])
    out = stitched_view("unused.tiff", NS(result=NS(thumbnail=thumb)), vals, 0.0, 1.0, "inferno", 0.25)
    np.testing.assert_array_equal(out[0, 0], thumb[0, 0])
    np.testing.assert_array_equal(out[1, 1:], thumb[1, 1:])
    want = np.rint(0.75 * 200 + 0.25 * colorize(np.array([[1.0]]), "inferno")[0, 0] * 255)
    np.testing.assert_array_equal(out[0, 2], want)
    assert stitched_view("x", NS(result=NS(thumbnail=thumb)), None, 0, 1, "inferno", 0.5) is thumb
