"""Whole-slide files through OpenSlide: a pyramidal tiled TIFF written with tifffile, read back lazily,
and explained tile by tile exactly as the same pixels held in memory."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interp_core.errors import InterpError
from interp_core.slides.explain import ArraySlide, explain_slide, open_slide, read_thumbnail
from interp_core.slides.wsi import OpenSlideReader, detect_format, pyramid_levels, write_pyramid_tiff


def test_pyramid_tiff_is_read_by_openslide_region_by_region(slide_tiff, slide_image):
    assert detect_format(slide_tiff) == "generic-tiff"
    levels = pyramid_levels(slide_image, 3)
    with OpenSlideReader(slide_tiff) as s:
        assert s.level_dimensions == [(200, 136), (100, 68), (50, 34)]
        assert s.level_downsamples == [1.0, 2.0, 4.0]
        assert s.size == (200, 136) and s.mpp == (0.5, 0.5)
        np.testing.assert_array_equal(s.read_region(37, 21, 50, 40), slide_image[21:61, 37:87])
        np.testing.assert_array_equal(s.read_region(0, 0, 200, 136), slide_image)
        edge = s.read_region(180, 120, 32, 32)  # reaches past both edges: white outside
        np.testing.assert_array_equal(edge[:16, :20], slide_image[120:, 180:])
        assert (edge[16:] == 255).all() and (edge[:, 20:] == 255).all()
        assert (s.read_region(-8, -8, 8, 8) == 255).all()
    lvl1 = OpenSlideReader(slide_tiff, level=1)
    assert lvl1.size == (100, 68) and lvl1.mpp == (1.0, 1.0)
    np.testing.assert_array_equal(lvl1.read_region(10, 5, 30, 20), levels[1][5:25, 10:40])
    # the 2x2 block mean of level 0 (rounded), as written
    assert abs(int(levels[1][3, 40, 0]) - slide_image[6:8, 80:82, 0].mean()) <= 0.5


def test_thumbnail_comes_from_the_lowest_fitting_level(slide_tiff, slide_image):
    s = OpenSlideReader(slide_tiff)
    assert s.thumbnail_level(4) == (2, 1) and s.thumbnail_level(8) == (2, 2) and s.thumbnail_level(2) == (1, 1)
    assert s.thumbnail_level(3) == (0, 3)  # no level holds whole 3x3 blocks
    exact = read_thumbnail(ArraySlide(slide_image), 4)
    th = s.thumbnail(4)
    assert th.shape == exact.shape == (34, 50, 3)
    assert np.abs(th.astype(int) - exact).max() <= 1  # block mean of block means, rounded twice
    assert OpenSlideReader(slide_tiff, level=1).thumbnail(2).shape == (34, 50, 3)


def test_a_thumbnail_no_level_divides_is_resampled_from_a_coarser_level(slide_tiff, slide_image, monkeypatch):
    """d = 3: no level holds whole 3x3 blocks. The full-resolution level is not decoded; level 1
    (2x) is box-filtered by 1.5 with the grid aligned, so each pixel stays within a few grey levels
    of the exact 3x3 block mean (block edges fall inside level-1 pixels) and nothing drifts."""
    s = OpenSlideReader(slide_tiff)
    levels_read = []
    real = s._read
    monkeypatch.setattr(s, "_read", lambda level, *a: levels_read.append(level) or real(level, *a))
    th = s.thumbnail(3)
    exact = read_thumbnail(ArraySlide(slide_image), 3)
    assert th.shape == exact.shape
    assert set(levels_read) == {1}
    diff = np.abs(th.astype(int) - exact.astype(int))[:-1, :-1]  # the last row/column mixes in padding
    assert np.median(diff) <= 2 and np.percentile(diff, 95) <= 25  # random-noise tissue: block edges blur
    # no drift: the glass/tissue boundary (column 72 of 200 -> thumbnail column 24) stays put
    sat = th.max(-1).astype(int) - th.min(-1)
    assert sat[:-1, :23].max() < 30 and sat[:-1, 25:-1].min() > 30


def test_a_near_integer_level_is_accepted_only_when_it_cannot_drift(slide_tiff):
    """200 px wide, d = 4: 50 thumbnail blocks. A 4x level recorded as 3.99 (k = 1.0025) drifts
    0.125 px over the slide and is used; one recorded as 3.9 (k = 1.026) would drift 1.3 px, so
    the 2x level (k = 2 exactly) is used instead."""
    s = OpenSlideReader(slide_tiff)
    s.level_downsamples = (1.0, 2.0, 3.99)
    assert s.thumbnail_level(4) == (2, 1)
    s.level_downsamples = (1.0, 2.0, 3.9)
    assert s.thumbnail_level(4) == (1, 2)



def test_open_slide_picks_the_reader_by_format(slide_tiff, slide_image, tmp_path):
    from PIL import Image
    assert isinstance(open_slide(slide_tiff), OpenSlideReader)
    assert open_slide(slide_tiff, level=2).size == (50, 34)
    Image.fromarray(slide_image).save(tmp_path / "plain.tif")  # a strip TIFF: an ordinary image
    plain = open_slide(tmp_path / "plain.tif")
    assert isinstance(plain, ArraySlide)
    np.testing.assert_array_equal(plain.array, slide_image)
    (tmp_path / "bad.svs").write_bytes(b"not a slide at all")
    with pytest.raises(InterpError, match="not a whole-slide file OpenSlide can read"):
        open_slide(tmp_path / "bad.svs")
    with pytest.raises(InterpError, match="no pyramid level 3"):
        open_slide(slide_tiff, level=3)
    with pytest.raises(InterpError, match="only pyramid level 0"):
        open_slide(tmp_path / "plain.tif", level=1)
    with pytest.raises(InterpError, match="no such slide file"):
        OpenSlideReader(tmp_path / "missing.svs")


def test_tissue_mask_skips_the_white_tiles(slide_tiff):
    from interp_core.models import create_model
    torch.manual_seed(0)
    model = create_model("smallcnn", 2, width=4).eval()
    res = explain_slide(model, OpenSlideReader(slide_tiff), tile_size=32, method="cam", downsample=4)
    assert res.grid_shape == (5, 7)
    # glass for x < 72: columns 0 and 1 (x < 64) are white, column 2 (64..96) holds 24 of 32 columns
    # of tissue; the corner tile (192.., 128..) holds 8x8 of 32x32 slide pixels: 6% < min_tissue 10%
    expected = np.zeros((5, 7), bool)
    expected[:, 2:] = True
    expected[4, 6] = False
    np.testing.assert_array_equal(res.tissue, expected)
    np.testing.assert_array_equal(np.isfinite(res.probs[..., 0]), expected)
    assert res.n_computed == 24 and res.tissue_map.shape == (34, 50)


@pytest.mark.parametrize("level", [0, 1])
def test_explain_slide_through_openslide_equals_the_array(slide_tiff, slide_image, level):
    from interp_core.models import create_model
    torch.manual_seed(1)
    model = create_model("smallcnn", 2, width=4).eval()
    pixels = pyramid_levels(slide_image, 3)[level]
    kw = dict(tile_size=16, stride=12, method="saliency", downsample=2, skip_background=False, batch_size=7)
    a = explain_slide(model, ArraySlide(pixels), **kw)
    b = explain_slide(model, OpenSlideReader(slide_tiff, level=level), **kw)
    assert a.grid_shape == b.grid_shape and a.n_computed == b.n_computed == a.n_tiles
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.saliency, b.saliency)


def test_dataloader_workers_open_their_own_handles(slide_tiff):
    from interp_core.models import create_model
    torch.manual_seed(2)
    model = create_model("smallcnn", 2, width=4).eval()
    reader = OpenSlideReader(slide_tiff)
    kw = dict(tile_size=32, method="cam", downsample=4, batch_size=4)
    one = explain_slide(model, reader, workers=0, **kw)
    two = explain_slide(model, reader, workers=2, **kw)
    np.testing.assert_array_equal(one.probs, two.probs)
    np.testing.assert_array_equal(one.saliency, two.saliency)
    import pickle  # the reader crosses process boundaries without its handle
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._handle is None
    np.testing.assert_array_equal(clone.read_region(3, 4, 10, 10), reader.read_region(3, 4, 10, 10))


def test_limit_computes_only_the_first_tissue_tiles(slide_tiff):
    from interp_core.models import create_model
    model = create_model("smallcnn", 2, width=4).eval()
    res = explain_slide(model, OpenSlideReader(slide_tiff), tile_size=32, method="cam", downsample=4, limit=6)
    assert res.n_computed == 6
    computed = np.argwhere(np.isfinite(res.probs[..., 0]))
    tissue = np.argwhere(res.tissue)
    np.testing.assert_array_equal(computed, tissue[:6])


def test_write_pyramid_tiff_checks_its_input(tmp_path):
    with pytest.raises(InterpError, match="uint8 RGB"):
        write_pyramid_tiff(tmp_path / "x.tiff", np.zeros((8, 8), np.uint8))
    with pytest.raises(InterpError, match="multiple of 16"):
        write_pyramid_tiff(tmp_path / "x.tiff", np.zeros((8, 8, 3), np.uint8), tile=20)
    assert not list(tmp_path.iterdir())


def test_sample_slide_is_the_ihc_image_as_a_pyramid(tmp_path):
    from skimage import data
    from interp_core.slides.wsi import write_sample_slide
    path = write_sample_slide(tmp_path / "s" / "ihc.tiff")
    s = OpenSlideReader(path)
    assert s.vendor == "generic-tiff" and s.level_dimensions == [(512, 512), (256, 256), (128, 128)]
    np.testing.assert_array_equal(s.read_region(0, 0, 512, 512), data.immunohistochemistry()[..., :3])
    assert [p.name for p in path.parent.iterdir()] == ["ihc.tiff"]  # no temporary file left
