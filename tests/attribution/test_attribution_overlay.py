"""Overlay rendering: dtype/shape, blending, shared colour scale, colour bar, mask contours."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interp_core.attribution import (colorbar_image, colorize, display_range, draw_contour, mask_contour, overlay,
                                     shared_range)
from interp_core.errors import InterpError


def _img():
    return torch.rand(3, 8, 10, generator=torch.Generator().manual_seed(0))


def _ramp():
    return torch.arange(80.0).view(8, 10)


def _u8(colors):
    return np.rint(np.asarray(colors) * 255).astype(np.uint8)


def test_output_dtype_shape_and_alpha_extremes():
    img, a = _img(), _ramp()
    out = overlay(img, a)
    assert out.dtype == np.uint8 and out.shape == (8, 10, 3)
    assert np.array_equal(overlay(img, a, alpha=0.0), _u8(img.permute(1, 2, 0).numpy()))
    full = overlay(img, a, alpha=1.0, clip_percentile=None, cmap="viridis")
    assert np.array_equal(full, _u8(colorize(a.numpy() / 79.0, "viridis")))


def test_tensor_chw_and_uint8_hwc_images_give_the_same_overlay():
    img = _img()
    u8 = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    a = torch.rand(8, 10, generator=torch.Generator().manual_seed(1))
    from_u8 = overlay(u8, a).astype(int)
    from_float = overlay(torch.tensor(u8).permute(2, 0, 1).float() / 255, a).astype(int)
    assert np.abs(from_u8 - from_float).max() <= 1  # float32 / 255 vs float64 / 255: rounding only
    assert np.array_equal(overlay(img, a.numpy()), overlay(img, a[None]))


def test_percentile_clipping_saturates_the_top_values():
    a = _ramp()
    out = overlay(_img(), a, alpha=1.0, cmap="gray", clip_percentile=50.0)  # vmax = 39.5
    assert (out[a.numpy() >= 39.5] == 255).all() and (out[a.numpy() < 39] < 255).all()


def test_shared_scale_across_models():
    a = _ramp()
    b = 2 * a
    # Each map on its own scale: the same picture (maps differ only by a factor).
    assert np.array_equal(overlay(_img(), a, alpha=1.0), overlay(_img(), b, alpha=1.0))
    lo, hi = shared_range([a, b], clip_percentile=None)
    assert (lo, hi) == (0.0, 158.0)
    oa = overlay(_img(), a, alpha=1.0, cmap="gray", vmin=lo, vmax=hi)
    ob = overlay(_img(), b, alpha=1.0, cmap="gray", vmin=lo, vmax=hi)
    assert ob[7, 9, 0] == 255 and oa[7, 9, 0] == 128  # 79 / 158 = 0.5 of the bar
    assert not np.array_equal(oa, ob)


def test_display_range_signed_and_constant_maps():
    assert display_range(torch.tensor([[-4.0, 1.0], [2.0, 0.0]]), None) == (-4.0, 4.0)
    assert display_range(torch.full((3, 3), 2.0), 99.0) == (0.0, 2.0)
    out = overlay(_img(), torch.full((8, 10), 3.0), alpha=1.0, cmap="gray", vmin=3.0, vmax=3.0)
    assert (out == 0).all()  # vmax <= vmin: lowest colour, no NaN


def test_colorbar_runs_from_high_at_the_top_to_low_at_the_bottom():
    bar = colorbar_image("viridis", height=20, width=4)
    assert bar.shape == (20, 4, 3) and bar.dtype == np.uint8
    assert np.array_equal(bar[0, 0], _u8(colorize(np.array(1.0), "viridis")))
    assert np.array_equal(bar[-1, 0], _u8(colorize(np.array(0.0), "viridis")))
    horizontal = colorbar_image("jet", height=3, width=30, vertical=False)
    assert np.array_equal(horizontal[0, -1], _u8(colorize(np.array(1.0), "jet")))


def test_mask_contour_hand_case():
    mask = np.zeros((5, 6), dtype=np.uint8)
    mask[1:4, 1:4] = 7  # a 3x3 square (any nonzero value): its 8 outer pixels are the contour
    expected = np.zeros((5, 6), dtype=bool)
    expected[1:4, 1:4] = True
    expected[2, 2] = False
    assert np.array_equal(mask_contour(mask), expected)
    assert np.array_equal(mask_contour(torch.tensor(mask)[None]), expected)


def test_mask_contour_does_not_frame_the_image_edge():
    assert not mask_contour(np.ones((4, 4))).any()
    top = np.zeros((5, 5))
    top[:3] = 1  # the top three rows: only the row next to the outside is a boundary
    expected = np.zeros((5, 5), dtype=bool)
    expected[2] = True
    assert np.array_equal(mask_contour(top), expected)


def test_contour_drawn_on_the_overlay():
    mask = torch.zeros(8, 10)
    mask[2:6, 3:8] = 1
    plain = overlay(_img(), _ramp())
    out = overlay(_img(), _ramp(), mask=mask, contour_color=(255, 0, 255))
    c = mask_contour(mask)
    assert (out[c] == [255, 0, 255]).all() and np.array_equal(out[~c], plain[~c])
    assert np.array_equal(draw_contour(plain, c, (255, 0, 255)), out)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"cmap": "not_a_cmap"}, "unknown colormap 'not_a_cmap'"),
    ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
    ({"clip_percentile": 0.0}, "clip_percentile must be in"),
    ({"attribution": torch.zeros(4, 4)}, "does not match the image size"),
    ({"attribution": torch.full((8, 10), float("nan"))}, "NaN"),
    ({"image": np.zeros((8, 10, 3), dtype=np.int32)}, "uint8 image or a float image"),
    ({"image": torch.zeros(4, 8, 10)}, r"got shape \[4, 8, 10\]"),
    ({"image": 255.0 * torch.ones(3, 8, 10)}, r"float image must hold finite values in \[0, 1\]"),
    ({"mask": torch.zeros(3, 3)}, "mask shape"),
])
def test_bad_overlay_input(kwargs, pattern):
    args = {"image": _img(), "attribution": _ramp(), **kwargs}
    with pytest.raises(InterpError, match=pattern):
        overlay(args.pop("image"), args.pop("attribution"), **args)
