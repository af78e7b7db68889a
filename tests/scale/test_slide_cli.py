"""``explain-slide``: a pyramidal TIFF explained by a run through the command line, every output written."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from interp_core.testing import cli_in_process


_cli = cli_in_process


def test_explain_slide_writes_maps_and_summary(slide_tiff, fake_run, tmp_path, capsys):
    from interp_core.runs import load_run
    from interp_core.slides.explain import explain_slide
    from interp_core.slides.wsi import OpenSlideReader
    out = tmp_path / "out"
    code, stdout, stderr = _cli(capsys, "explain-slide", "--run", str(fake_run), "--slide", str(slide_tiff),
                                "--out", str(out), "--tile-size", "32", "--map-side", "50", "--device", "cpu",
                                "--attribution", "gradcam")
    assert code == 0, stderr
    assert json.loads(stdout)["tiles"] == {"total": 35, "tissue": 24, "computed": 24, "skipped": 11}
    names = {p.name for p in out.iterdir()}
    assert names == {"thumbnail.png", "tissue.png", "saliency.png", "saliency.npy", "probs.npy", "prediction.npy",
                     "prediction.png", "probability_normal.png", "probability_tumor.png", "summary.json",
                     "saliency_slide.npy", "saliency_tile.npy", "entropy.npy", "tiles.geojson", "plan.json",
                     "progress.json", "tissue_tiles.npy", "pieces"}
    s = json.loads((out / "summary.json").read_text())
    assert s["slide_size"] == [200, 136] and s["level"] == 0 and s["grid"] == [5, 7] and s["downsample"] == 4
    assert s["slide"]["vendor"] == "generic-tiff" and s["slide"]["mpp"] == [0.5, 0.5]
    assert s["tiles"]["computed"] == 24 and sum(s["class_counts"].values()) == 24
    assert s["timings"]["tiles_per_second"] > 0 and s["input_size"] == 16 and s["tile_size"] == 32
    assert len(s["run"]["weights_sha1"]) == 40 and s["method"] == "gradcam"
    for name in ("thumbnail.png", "saliency.png", "prediction.png", "probability_tumor.png"):
        assert Image.open(out / name).size == (50, 34), name
    tissue = np.asarray(Image.open(out / "tissue.png"))
    assert tissue.shape == (34, 50) and not tissue[:, :17].any() and tissue[:, 19:].all()
    # the files hold exactly what explain_slide computes with the same settings
    run = load_run(fake_run)
    ref = explain_slide(run.model, OpenSlideReader(slide_tiff), tile_size=32, input_size=16, method="gradcam",
                        downsample=4, classes=run.classes)
    np.testing.assert_array_equal(np.load(out / "saliency.npy", allow_pickle=False), ref.saliency)
    np.testing.assert_array_equal(np.load(out / "probs.npy", allow_pickle=False), ref.probs)
    np.testing.assert_array_equal(np.load(out / "prediction.npy", allow_pickle=False), ref.pred)
    assert s["class_counts"] == {c: int((ref.pred == i).sum()) for i, c in enumerate(run.classes)}


def test_explain_slide_level_limit_and_errors(slide_tiff, fake_run, tmp_path, capsys):
    out = tmp_path / "lvl"
    code, stdout, stderr = _cli(capsys, "explain-slide", "--run", str(fake_run), "--slide", str(slide_tiff),
                                "--out", str(out), "--level", "1", "--limit-tiles", "3", "--device", "cpu", "--quiet")
    assert code == 0, stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["slide_size"] == [100, 68] and s["tile_size"] == 16 and s["tiles"]["computed"] == 3
    assert s["slide"]["mpp"] == [1.0, 1.0] and stderr == ""
    code, _, stderr = _cli(capsys, "explain-slide", "--run", str(fake_run), "--slide", str(slide_tiff),
                           "--out", str(out), "--level", "7", "--device", "cpu", "--quiet")
    assert code == 2 and "no pyramid level 7" in stderr and len(stderr.strip().splitlines()) == 1
    bad = tmp_path / "broken.ndpi"
    bad.write_bytes(b"\x00" * 64)
    code, _, stderr = _cli(capsys, "explain-slide", "--run", str(fake_run), "--slide", str(bad), "--out", str(out),
                           "--device", "cpu", "--quiet")
    assert code == 2 and "not a whole-slide file OpenSlide can read" in stderr
    code, _, stderr = _cli(capsys, "explain-slide", "--run", str(fake_run), "--slide", str(tmp_path / "nope.svs"),
                           "--out", str(out), "--device", "cpu", "--quiet")
    assert code == 2 and "no such slide file" in stderr


@pytest.mark.parametrize("cmd", ["explain-slide", "explain"])
def test_help(cmd, capsys):
    code, stdout, _ = _cli(capsys, cmd, "--help")
    assert code == 0 and "--device" in stdout and "--seed" in stdout


def test_explain_slide_default_out_is_where_the_page_looks(slide_tiff, helpers, tmp_path, capsys):
    from interp_core.slides.job import read_progress, results_dir
    run = helpers.make_run(tmp_path / "run")
    code, stdout, stderr = _cli(capsys, "explain-slide", "--run", str(run), "--slide", str(slide_tiff),
                                "--attribution", "gradcam", "--device", "cpu", "--quiet")
    assert code == 0, stderr
    out = results_dir(run, slide_tiff, level=0, method="gradcam")
    assert json.loads(stdout)["out"] == str(out.resolve()) and out.parent.parent == run / "slides"
    assert json.loads(stdout)["reused"] is False
    assert read_progress(out)["complete"] and (out / "tiles.geojson").is_file()
    # run again: the finished folder is reused, nothing recomputed
    code, stdout, stderr = _cli(capsys, "explain-slide", "--run", str(run), "--slide", str(slide_tiff),
                                "--attribution", "gradcam", "--device", "cpu", "--quiet")
    assert code == 0 and json.loads(stdout)["reused"] is True


def test_a_damaged_summary_is_recomputed(slide_tiff, fake_run, tmp_path, capsys):
    """A finished folder whose summary.json cannot be read is computed again, not reused."""
    out = tmp_path / "again"
    args = ("explain-slide", "--run", str(fake_run), "--slide", str(slide_tiff), "--out", str(out),
            "--level", "1", "--limit-tiles", "3", "--device", "cpu", "--quiet")
    code, _, stderr = _cli(capsys, *args)
    assert code == 0, stderr
    first = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text("{not json")
    code, _, stderr = _cli(capsys, *args)
    assert code == 0, stderr
    again = json.loads((out / "summary.json").read_text())
    assert again["tiles"] == first["tiles"] and not again.get("reused")
    assert np.isfinite(np.load(out / "probs.npy", allow_pickle=False)).any()
