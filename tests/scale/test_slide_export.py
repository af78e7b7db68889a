"""The synthetic whole-slide generator, ``explain-slide``'s ``tiles.geojson`` (valid GeoJSON whose
polygons land on the right slide pixels, checked against the generated lesion mask) and its
resumable pieces."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interp_core.data.synthetic_wsi import write_synthetic_wsi


@pytest.fixture(scope="module")
def wsi(tmp_path_factory) -> Path:
    """A 768 x 640 synthetic slide (12 x 10 cells of 64 px), 3 lesions, JPEG pyramidal TIFF."""
    path = tmp_path_factory.mktemp("wsi") / "syn.tiff"
    write_synthetic_wsi(path, width=768, height=640, seed=3, n_lesions=3, bank=6, n_levels=2)
    return path


def _assert_geojson(obj: dict) -> None:
    """RFC 7946 structure: a FeatureCollection of Features with closed, 4+-position Polygon rings of numbers."""
    assert obj["type"] == "FeatureCollection" and isinstance(obj["features"], list)
    import uuid
    for f in obj["features"]:
        assert f["type"] == "Feature" and isinstance(f["properties"], dict)
        uuid.UUID(f["id"])  # QuPath reads the id as a UUID
        g = f["geometry"]
        polys = [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]
        assert g["type"] in ("Polygon", "MultiPolygon")
        for poly in polys:
            for ring in poly:
                assert len(ring) >= 4 and ring[0] == ring[-1]
                assert all(len(pt) == 2 and all(isinstance(v, (int, float)) for v in pt) for pt in ring)


# What QuPath 0.4.x/0.5.x does with one GeoJSON Feature on *File > Import objects from file*, transcribed
# from qupath-core/src/main/java/qupath/lib/io (tags v0.4.4 and v0.5.1, identical in these parts):
# QuPathTypeAdapters.PathObjectTypeAdapter.parseObject, MeasurementListTypeAdapter.read,
# GsonTools.PathClassTypeAdapter.read (+ PathClassProxy, arrayToRgb) and ROITypeAdapters.parseGeometry.
# An independent reading of the format, not a call into our writer; not a running QuPath.
QUPATH_TYPES = {"PathTileObject": "tile", "tile": "tile", "PathCellObject": "cell", "cell": "cell",
                "TMACoreObject": "tmaCore", "tmaCore": "tmaCore", "tma_core": "tmaCore",
                "PathDetectionObject": "detection", "detection": "detection", "PathRootObject": "root",
                "root": "root", "PathAnnotationObject": "annotation", "annotation": "annotation",
                "unknown": "annotation"}
QUPATH_GEOMETRIES = {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
                     "GeometryCollection"}


def qupath_reads(feature: dict) -> dict:
    """The object QuPath would make from ``feature``; raises where QuPath's import would throw, and
    flags (``fallback``) where it would silently fall back (unknown type -> annotation, id not a UUID)."""
    import uuid
    out: dict = {"fallback": []}
    fid = feature.get("id")
    try:
        out["uuid"] = uuid.UUID(str(fid)) if fid is not None else None
    except ValueError:
        out["fallback"].append("id is not a UUID: QuPath makes a new one")
    g = feature["geometry"]
    if g.get("type") not in QUPATH_GEOMETRIES:
        raise ValueError(f"QuPath: no Geometry type found for {g.get('type')!r}")  # IllegalArgumentException
    out["geometry"] = g["type"]
    props = feature.get("properties", {})
    kind = "unknown"
    for key in ("objectType", "object_type", "type"):
        if key in props:
            kind = str(props[key])
            break
    if kind not in QUPATH_TYPES:
        out["fallback"].append(f"unknown object type {kind!r}: QuPath makes an annotation")
    out["object"] = QUPATH_TYPES.get(kind, "annotation")
    cls = props.get("classification")
    if cls is None or isinstance(cls, str):
        out["class"], out["color"] = cls, None
    elif isinstance(cls, dict):
        if len(cls) == 0 or "colorRGB" in cls or "parentClass" in cls:
            raise ValueError("QuPath: pre-0.4 PathClass serialisation")  # read another way; not what we write
        if not (("name" in cls or "names" in cls) and "color" in cls):
            raise ValueError("QuPath: Unable to parse PathClass (needs name/names and color)")  # JsonParseException
        rgb = cls["color"]
        if not (isinstance(rgb, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in rgb)):
            raise ValueError("QuPath: classification color must be an int array")  # gson int[]
        if len(rgb) not in (0, 1, 3, 4) or not all(0 <= v <= 255 for v in rgb[:3] if len(rgb) >= 3):
            raise ValueError("QuPath: RGB array should have length 0, 1, 3 or 4")
        out["class"] = cls["name"] if "name" in cls else ":".join(cls["names"])
        out["color"] = tuple(rgb)
    else:
        raise ValueError("QuPath: Unable to parse PathClass")
    meas = props.get("measurements")
    out["measurements"] = {}
    if isinstance(meas, dict):
        for k, v in meas.items():
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                out["fallback"].append(f"measurement {k!r} skipped (not a number)")
            elif isinstance(v, str):
                out["measurements"][k] = float({"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(v.lower(), v))
            else:
                out["measurements"][k] = float(v)
    elif isinstance(meas, list):
        out["measurements"] = {m["name"]: float(m["value"]) for m in meas}
    return out


def test_qupath_reader_transcription_rejects_what_qupath_rejects():
    """The transcription above is not a pass-everything check: the shapes QuPath refuses are refused."""
    ok = {"type": "Feature", "id": "0b7e3b2c-1111-4c4c-8c8c-123456789abc",
          "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
          "properties": {"objectType": "tile", "classification": {"name": "tumor", "color": [1, 2, 3]},
                         "measurements": {"a": 1, "b": "NaN"}}}
    got = qupath_reads(ok)
    assert got["object"] == "tile" and got["class"] == "tumor" and got["color"] == (1, 2, 3) and not got["fallback"]
    assert got["measurements"]["a"] == 1.0 and np.isnan(got["measurements"]["b"])
    import copy
    for mutate in (lambda f: f["properties"]["classification"].pop("color"),  # a class without colour
                   lambda f: f["properties"]["classification"].update(color="#ff0000"),
                   lambda f: f["geometry"].update(type="Box")):
        bad = copy.deepcopy(ok)
        mutate(bad)
        with pytest.raises(ValueError):
            qupath_reads(bad)
    bad = copy.deepcopy(ok)
    bad["properties"]["objectType"] = "tiles"
    bad["id"] = "tile-3-4"
    assert len(qupath_reads(bad)["fallback"]) == 2 and qupath_reads(bad)["object"] == "annotation"


def test_synthetic_wsi_is_a_jpeg_pyramid_with_consistent_ground_truth(wsi):
    import openslide
    import tifffile
    s = openslide.OpenSlide(str(wsi))
    assert s.dimensions == (768, 640) and s.properties["openslide.vendor"] == "generic-tiff"
    assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    assert len(s.level_dimensions) >= 1
    with tifffile.TiffFile(wsi) as t:
        assert t.pages[0].compression == tifffile.COMPRESSION.JPEG and t.pages[0].is_tiled
    meta = json.loads(wsi.with_suffix(".json").read_text())
    cells = np.asarray(Image.open(wsi.parent / meta["files"]["lesion_cells"])) > 0
    mask = np.asarray(Image.open(wsi.parent / meta["files"]["lesion_mask"])) > 0
    assert cells.shape == (10, 12) and mask.shape == (640, 768) and cells.any()
    per_cell = mask.reshape(10, 64, 12, 64).any(axis=(1, 3))
    np.testing.assert_array_equal(per_cell, cells)  # evidence only in lesion cells, in every one of them
    # lesion cells hold tissue (coloured), glass cells are near-white
    rgb = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB")).astype(float)
    sat = (rgb.max(-1) - rgb.min(-1)).reshape(10, 64, 12, 64).mean(axis=(1, 3))
    assert sat[cells].min() > 20
    gj = json.loads((wsi.parent / meta["files"]["lesions"]).read_text())
    _assert_geojson(gj)
    covered = np.zeros_like(cells)
    for f in gj["features"]:
        for poly in f["geometry"]["coordinates"]:
            (x0, y0), (x1, _), (_, y1) = poly[0][0], poly[0][1], poly[0][2]
            covered[y0 // 64:y1 // 64, x0 // 64:x1 // 64] = True
    np.testing.assert_array_equal(covered, cells)


@pytest.mark.parametrize("level", [0, 1])
def test_tiles_geojson_lands_on_the_lesion_mask(wsi, tmp_path, helpers, level):
    from interp_core.slides.job import explain_slide_file
    run = helpers.make_run(tmp_path / "run", image_size=64)
    tile = 64 // 2 ** level  # always 64 level-0 pixels: one generator cell per tile
    out = tmp_path / "out"
    s = explain_slide_file(run, wsi, out, level=level, tile_size=tile, device="cpu", min_tissue=0.0,
                           piece_tiles=50)
    gj = json.loads((out / "tiles.geojson").read_text())
    _assert_geojson(gj)
    meta = json.loads(wsi.with_suffix(".json").read_text())
    mask = np.asarray(Image.open(wsi.parent / meta["files"]["lesion_mask"])) > 0
    cells = np.asarray(Image.open(wsi.parent / meta["files"]["lesion_cells"])) > 0
    probs = np.load(out / "probs.npy")
    assert len(gj["features"]) == s["tiles"]["computed"] == int(np.isfinite(probs[..., 0]).sum()) == 120
    classes = s["classes"]
    for f in gj["features"]:
        ring = f["geometry"]["coordinates"][0]
        xs, ys = [p[0] for p in ring], [p[1] for p in ring]
        x0, x1, y0, y1 = int(min(xs)), int(max(xs)), int(min(ys)), int(max(ys))
        m = f["properties"]["measurements"]
        r, c = m["row"], m["col"]
        assert (x0, y0, x1, y1) == (c * 64, r * 64, c * 64 + 64, r * 64 + 64)  # level-0 pixels of the tile
        assert mask[y0:y1, x0:x1].any() == cells[r, c]  # on the generated lesion mask exactly where it should be
        p = probs[r, c]
        assert f["properties"]["classification"]["name"] == classes[int(np.argmax(p))]
        assert [m[f"prob_{k}"] for k in classes] == pytest.approx(p.tolist(), abs=1e-6)
        assert m["entropy"] == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-5)
    assert sum(f["properties"]["measurements"]["saliency_mass"] for f in gj["features"]) == pytest.approx(1.0)
    # what QuPath 0.4/0.5 makes of each feature: a tile object of the predicted class, with its colour,
    # every measurement a number, no silent fallback; ids unique
    read = [qupath_reads(f) for f in gj["features"]]
    for f, q in zip(gj["features"], read):
        m = f["properties"]["measurements"]
        assert q["object"] == "tile" and q["geometry"] == "Polygon" and not q["fallback"]
        assert q["class"] in classes and len(q["color"]) == 3
        assert q["measurements"] == pytest.approx({k: float(v) for k, v in m.items()})
        assert set(q["measurements"]) == {f"prob_{k}" for k in classes} | {"entropy", "saliency_mean_abs",
                                                                             "saliency_mass", "row", "col"}
    assert len({q["uuid"] for q in read}) == len(read)
    # another run's file (other weights) has other ids: both can be imported into one QuPath image
    from interp_core.slides.export import tiles_geojson
    from interp_core.slides.maps import assemble
    plan = json.loads((out / "plan.json").read_text())
    assert tiles_geojson(assemble(out), plan) == gj  # the file is what the function makes
    other = tiles_geojson(assemble(out), {**plan, "weights_sha1": "0" * 40})
    assert not {f["id"] for f in other["features"]} & {f["id"] for f in gj["features"]}
    # the generator's lesion annotations too
    lesions = json.loads((wsi.parent / meta["files"]["lesions"]).read_text())
    for f in lesions["features"]:
        q = qupath_reads(f)
        assert q["object"] == "annotation" and q["geometry"] == "MultiPolygon" and not q["fallback"]
        assert q["class"] == "Tumor"


def test_explain_slide_resumes_from_its_pieces(wsi, tmp_path, helpers):
    from interp_core.slides.job import explain_slide_file, read_progress
    from interp_core.slides.maps import assemble
    run = helpers.make_run(tmp_path / "run", image_size=64)
    out = tmp_path / "job"
    first = explain_slide_file(run, wsi, out, device="cpu", piece_tiles=16, method="gradcam")
    n = first["tiles"]["computed"]
    assert n > 32
    assert first["pieces"]["count"] == -(-n // 16) and first["timings"]["tiles_computed_now"] == n
    sal, probs, gj = np.load(out / "saliency.npy"), np.load(out / "probs.npy"), (out / "tiles.geojson").read_text()
    # an interrupted job: the summary and two pieces are missing; the rerun computes only those
    (out / "summary.json").unlink()
    (out / "pieces" / "00001.npz").unlink()
    (out / "pieces" / "00002.npz").unlink()
    part = assemble(out)
    assert part.pieces_done == first["pieces"]["count"] - 2 and not part.complete
    assert int(np.isfinite(part.result.probs[..., 0]).sum()) == 16  # piece 0 only
    assert read_progress(out)["complete"] is False
    again = explain_slide_file(run, wsi, out, device="cpu", piece_tiles=16, method="gradcam")
    assert again["timings"]["tiles_computed_now"] == n - 16
    np.testing.assert_array_equal(np.load(out / "saliency.npy"), sal)
    np.testing.assert_array_equal(np.load(out / "probs.npy"), probs)
    assert (out / "tiles.geojson").read_text() == gj
    # a finished folder: nothing recomputed; another plan (method) starts over
    stamp = (out / "saliency.npy").stat().st_mtime_ns
    assert explain_slide_file(run, wsi, out, device="cpu", piece_tiles=16, method="gradcam")["reused"] is True
    assert (out / "saliency.npy").stat().st_mtime_ns == stamp  # not even rewritten
    other = explain_slide_file(run, wsi, out, device="cpu", piece_tiles=16, method="saliency")
    assert other["timings"]["tiles_computed_now"] == n and other["method"] == "saliency"
    assert read_progress(out) | {"time": 0} == {"done": n, "total": n, "pieces": first["pieces"]["count"],
                                                "complete": True, "running": False, "time": 0}


def test_overlapping_tiles_are_averaged_and_both_normalisations_written(wsi, tmp_path, helpers):
    from interp_core.slides.job import explain_slide_file
    run = helpers.make_run(tmp_path / "run", image_size=64)
    out = tmp_path / "half"
    explain_slide_file(run, wsi, out, device="cpu", stride=32, map_side=768, min_tissue=0.0)
    probs = np.load(out / "probs.npy")
    p1 = np.asarray(Image.open(out / "probability_tumor.png"))
    assert probs.shape[:2] == (19, 23) and p1.shape[:2] == (640, 768)
    from interp_core.slides.maps import assemble
    m = assemble(out)
    pm = m.result.prob_map(1)
    # the map pixel at (40, 40) is covered by tiles (0..1, 0..1): their mean, not the last one written
    assert pm[40, 40] == pytest.approx(probs[0:2, 0:2, 1].mean(), rel=1e-5)
    sl, tl = np.load(out / "saliency_slide.npy"), np.load(out / "saliency_tile.npy")
    assert np.nanmax(np.abs(sl)) == pytest.approx(1.0) and np.nanmax(np.abs(tl)) <= 1.0 + 1e-6
    assert not np.allclose(np.nan_to_num(sl), np.nan_to_num(tl))
    ent = np.load(out / "entropy.npy")
    assert np.nanmax(ent) <= np.log(2) + 1e-6 and np.isfinite(ent).all()


def test_sample_every_computes_the_systematic_sample_with_the_whole_grid_values(wsi, tmp_path, helpers):
    from interp_core.slides.job import assemble, explain_slide_file
    run = helpers.make_run(tmp_path / "run", image_size=64)
    full = explain_slide_file(run, wsi, tmp_path / "full", device="cpu", map_side=768)
    part = explain_slide_file(run, wsi, tmp_path / "part", device="cpu", map_side=768, sample_every=3)
    tissue = np.load(tmp_path / "full" / "tissue_tiles.npy")
    rr, cc = np.meshgrid(np.arange(tissue.shape[0]), np.arange(tissue.shape[1]), indexing="ij")
    want = tissue & (rr % 3 == 0) & (cc % 3 == 0)
    pf, pp = np.load(tmp_path / "full" / "probs.npy"), np.load(tmp_path / "part" / "probs.npy")
    assert 3 < want.sum() < tissue.sum() // 4
    np.testing.assert_array_equal(np.isfinite(pp[..., 0]), want)  # exactly the sampled tissue tiles
    np.testing.assert_allclose(pp[want], pf[want], rtol=1e-5, atol=1e-6)
    assert part["tiles"]["computed"] == int(want.sum()) and full["tiles"]["computed"] == int(tissue.sum())
    # the map: a sampled tile's footprint holds its raw map (same as the whole grid's, non-overlapping
    # tiles), every other pixel is NaN
    mf, mp = assemble(tmp_path / "full", normalize="none"), assemble(tmp_path / "part", normalize="none")
    covered = np.isfinite(mp.result.saliency)
    assert covered.sum() == want.sum() * 64 * 64  # map_side 768: one map pixel per slide pixel
    np.testing.assert_allclose(mp.result.saliency[covered], mf.result.saliency[covered], rtol=1e-4, atol=1e-6)
    # a whole-grid job's plan has no sample_every key (older job folders stay valid)
    assert "sample_every" not in json.loads((tmp_path / "full" / "plan.json").read_text())
    assert json.loads((tmp_path / "part" / "plan.json").read_text())["sample_every"] == 3
