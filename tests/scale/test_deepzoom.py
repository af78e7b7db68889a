"""The viewer's tile source: Deep Zoom tiles equal the slide regions they claim, overlay tiles show the
map values they claim, and only slides under the configured roots are served (paths outside, ``..``,
links out of a root and malformed tile coordinates are refused with a message)."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from interp_core.slides.deepzoom import DeepZoomSlide, TileRequestError, colormap_lut, parse_tile_request
from interp_core.slides.roots import SlideAccessError, SlideRoots
from interp_core.slides.tile_service import TileService


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture()
def root(tmp_path, slide_tiff):
    r = tmp_path / "slides"
    r.mkdir()
    (r / "case.tiff").write_bytes(slide_tiff.read_bytes())
    return r


def test_deep_zoom_tile_equals_the_slide_region(slide_tiff, slide_image):
    from interp_core.slides.wsi import OpenSlideReader
    dz = DeepZoomSlide(slide_tiff, tile_size=64, overlap=1)
    top = dz.max_level
    assert dz.info()["width"] == 200 and dz.info()["height"] == 136 and dz.info()["mpp"] == 0.5
    assert dz.dz.level_dimensions[top] == (200, 136) and dz.dz.level_tiles[top] == (4, 3)
    for col, row in [(0, 0), (1, 1), (3, 2), (2, 0)]:
        x, y, w, h = dz.tile_region(top, col, row)
        tile = np.asarray(dz.tile(top, col, row))
        assert tile.shape == (h, w, 3)
        # overlap: one pixel shared with each neighbour, none past the slide edge
        assert x == col * 64 - (1 if col else 0) and y == row * 64 - (1 if row else 0)
        np.testing.assert_array_equal(tile, slide_image[y:y + h, x:x + w])  # lossless pyramid: exact
    # one level up is pyramid level 1 of the file (downsample 2): the tile equals that level's region
    lvl1 = OpenSlideReader(slide_tiff, level=1)
    for col, row in [(0, 0), (1, 1)]:
        x, y, w, h = dz.tile_region(top - 1, col, row)
        np.testing.assert_array_equal(np.asarray(dz.tile(top - 1, col, row)), lvl1.read_region(x, y, w, h))


def test_service_serves_tiles_and_refuses_malformed_requests(root, slide_image):
    svc = TileService(SlideRoots((root,)), tile_size=64)
    sid = svc.register_slide("case.tiff")
    status, ctype, body = svc.handle([sid, "info.json"])
    assert status == 200 and json.loads(body)["max_level"] == svc.slide(sid).max_level
    top = svc.slide(sid).max_level
    status, ctype, body = svc.handle([sid, "tiles", str(top), "1_1.png"])
    x, y, w, h = svc.slide(sid).tile_region(top, 1, 1)
    assert status == 200 and ctype == "image/png"
    np.testing.assert_array_equal(_png(body)[..., :3], slide_image[y:y + h, x:x + w])
    assert svc.handle([sid, "tiles", str(top), "1_1.png"])[2] == body and svc.cache.hits >= 1  # cached
    status, ctype, body = svc.handle([sid, "tiles", str(top), "0_0.jpeg"])
    assert status == 200 and body[:2] == b"\xff\xd8"
    bad = {
        (sid, "tiles", str(top), "9_0.jpeg"): "no tile (9, 0)",
        (sid, "tiles", "99", "0_0.jpeg"): "no Deep Zoom level 99",
        (sid, "tiles", "-1", "0_0.jpeg"): "level must be a non-negative integer",
        (sid, "tiles", str(top), "a_0.jpeg"): "column must be a non-negative integer",
        (sid, "tiles", str(top), "0_0.gif"): "malformed tile name",
        (sid, "overlay", "ffffffffffffffff", str(top), "0_0.png"): "malformed tile name",
        (sid, "tiles", str(top), "00.jpeg"): "malformed tile name",
        (sid, "tiles", str(top), "1e3_0.jpeg"): "column must be a non-negative integer",
        (sid, "tiles", "..", "0_0.jpeg"): "level must be a non-negative integer",
        (sid, "..", "..", "etc", "passwd"): "not a tile path",
        ("0123456789abcdef", "tiles", "0", "0_0.jpeg"): "unknown slide id",
        (sid, "overlay", "ffffffffffffffff", str(top), "0_0.webp"): "unknown overlay id",
    }
    for parts, msg in bad.items():
        status, ctype, body = svc.handle(list(parts))
        assert status in (400, 404) and ctype.startswith("text/plain") and msg in body.decode(), (parts, body)
    with pytest.raises(TileRequestError, match="row must be"):
        parse_tile_request(0, 0, True)


def test_overlay_tile_shows_the_map_values(root):
    svc = TileService(SlideRoots((root,)), tile_size=64)
    sid = svc.register_slide(root / "case.tiff")
    dz = svc.slide(sid)
    vals = np.full((34, 50), np.nan, np.float32)  # one map pixel = 4 level-0 pixels
    vals[0:8, 0:8] = 1.0   # level-0 pixels [0, 32) x [0, 32)
    vals[10:20, 20:30] = 0.25
    oid = svc.register_overlay(sid, vals, 4.0, vmin=0.0, vmax=1.0, cmap="viridis")
    assert svc.register_overlay(sid, vals, 4.0, vmin=0.0, vmax=1.0, cmap="viridis") == oid  # same inputs, same id
    top = dz.max_level
    status, ctype, body = svc.handle([sid, "overlay", oid, str(top), "0_0.webp"])
    rgba = _png(body)
    x, y, w, h = dz.tile_region(top, 0, 0)
    assert status == 200 and ctype == "image/webp" and rgba.shape == (h, w, 4)
    lut = colormap_lut("viridis")
    np.testing.assert_array_equal(rgba[5, 5], [*lut[255], 255])
    np.testing.assert_array_equal(rgba[31, 31], [*lut[255], 255])
    assert rgba[32, 32, 3] == 0 and rgba[5, 40, 3] == 0  # NaN: transparent
    # tile (1, 0) starts at level-0 x = 63 (overlap): its pixel (27, 50) is level-0 (90, 50) -> map (22, 12): 0.25
    rgba = _png(svc.handle([sid, "overlay", oid, str(top), "1_0.webp"])[2])
    np.testing.assert_array_equal(rgba[50, 27], [*lut[64], 255])
    # one level up a pixel covers 2 level-0 pixels: (45, 25) -> level-0 (91, 51) -> map (22, 12)
    rgba1 = _png(svc.handle([sid, "overlay", oid, str(top - 1), "0_0.webp"])[2])
    np.testing.assert_array_equal(rgba1[25, 45], [*lut[64], 255])
    assert rgba1[10, 10, 3] == 255 and rgba1[17, 17, 3] == 0


def test_slide_roots_refuse_paths_outside(tmp_path, root, monkeypatch):
    roots = SlideRoots((root,))
    assert roots.resolve("case.tiff") == (root / "case.tiff").resolve()
    assert roots.resolve(str(root / "case.tiff")) == (root / "case.tiff").resolve()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.tiff").write_bytes((root / "case.tiff").read_bytes())
    cases = {
        str(outside / "secret.tiff"): "outside the slide folders",
        "/etc/passwd": "outside the slide folders",
        "../elsewhere/secret.tiff": "'..' segments are not allowed",
        str(root / ".." / "elsewhere" / "secret.tiff"): "'..' segments are not allowed",
        "sub/../case.tiff": "'..' segments are not allowed",
        "missing.tiff": "no such slide file",
        "": "no slide path given",
        "case\x00.tiff": "NUL",
    }
    os.symlink(outside / "secret.tiff", root / "link-out.tiff")  # a link out of the root
    os.symlink(outside, root / "dir-out")
    cases["link-out.tiff"] = "outside the slide folders"
    cases[str(root / "dir-out" / "secret.tiff")] = "outside the slide folders"
    for path, msg in cases.items():
        with pytest.raises(SlideAccessError, match=msg):
            roots.resolve(path)
    os.symlink(root / "case.tiff", root / "link-in.tiff")  # a link inside the root is fine
    assert roots.resolve("link-in.tiff") == (root / "case.tiff").resolve()
    assert [p.name for p in roots.list_slides()] == ["case.tiff"]  # links out are not listed
    svc = TileService(roots)
    with pytest.raises(SlideAccessError, match="outside"):
        svc.register_slide(outside / "secret.tiff")
    # $INTERP_SLIDES_DIR adds folders
    monkeypatch.setenv("INTERP_SLIDES_DIR", str(outside))
    monkeypatch.setenv("INTERP_SAMPLE_DATA", str(tmp_path / "nothing"))
    assert SlideRoots.from_env().resolve(str(outside / "secret.tiff")) == (outside / "secret.tiff").resolve()


def test_tile_maps_are_drawn_as_computed_and_overlaps_averaged():
    from interp_core.slides.deepzoom import TileMaps, sample_tile_maps
    maps = np.array([[[1, 2], [3, 4]], [[10, 20], [30, 40]]], np.float32)
    # two 4-pixel tiles side by side (stride 4), each map 2x2: a map pixel covers 2x2 level-0 pixels
    tm = TileMaps(np.array([[0, 0], [0, 1]]), maps, tile=4.0, stride=4.0, grid=(1, 2))
    got = sample_tile_maps(tm, (0, 0, 8, 5), 1.0)
    want = np.array([[1, 1, 2, 2, 10, 10, 20, 20], [1, 1, 2, 2, 10, 10, 20, 20],
                     [3, 3, 4, 4, 30, 30, 40, 40], [3, 3, 4, 4, 30, 30, 40, 40]], np.float32)
    np.testing.assert_array_equal(got[:4], want)
    assert np.isnan(got[4]).all()  # below the grid: no tile
    # a coarser level (2 level-0 pixels per pixel) samples the centres: one map pixel each
    np.testing.assert_array_equal(sample_tile_maps(tm, (0, 0, 4, 2), 2.0), [[1, 2, 10, 20], [3, 4, 30, 40]])
    # stride 2: tile 1 starts at x = 2; where both cover (x in [2, 4)) the values are averaged
    tm2 = TileMaps(np.array([[0, 0], [0, 1]]), maps, tile=4.0, stride=2.0, grid=(1, 2))
    row = sample_tile_maps(tm2, (0, 0, 7, 1), 1.0)[0]
    np.testing.assert_allclose(row[:6], [1, 1, (2 + 10) / 2, (2 + 10) / 2, 20, 20])
    assert np.isnan(row[6])
