"""AppTest tests of every page of the dashboard, with the interactions the issue names."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(side: int = 40000) -> bytes:
    """A valid PNG header announcing ``side x side`` pixels, with almost no data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + data + chunk(b"IEND", b"")


def _overlays(at) -> list[str]:
    return [c for img in at.image for c in img.captions if "explains" in c]


def _title(at) -> str:
    return at.title[0].value if at.title else ""


# -- Navigation ---------------------------------------------------------------------------------
def test_legacy_pages_mode_reruns_through_app(app_env):
    """Streamlit's legacy ``pages/`` mode (a fresh server, or plain AppTest) still gets the shared
    sidebar and the navigation of ``app.py`` on every page."""
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=180).run()
    at.switch_page("pages/report.py").run()
    assert not at.exception
    assert at.title[0].value == "Report"
    assert at.sidebar.selectbox(key="sidebar.dataset").value == "synthetic-he"


# -- Home ---------------------------------------------------------------------------------------
def test_home_lists_device_datasets_and_runs(h):
    at = h.open_page()
    assert _title(at).startswith("Saliency explorer")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Computing on"] in ("CPU", "GPU")
    assert metrics["Datasets found"] == "2" and metrics["Trained models found"] == "3"
    assert any("saliency map" in m.value for m in at.markdown)
    assert any("Running on" in c.value for c in at.sidebar.caption)
    assert len(at.dataframe) == 2


def test_home_states_the_shipped_scaat_effect_read_from_stored_evaluations(h, app_env):
    from interp_core.evaluation.evaluate import CACHE_DIR, EvalSettings, cache_key, cached_evaluate
    data = app_env / "sample_data" / "data" / "synthetic-he"
    runs = app_env / "sample_data" / "runs" / "synthetic-he"
    s = EvalSettings()
    for r in ("baseline", "scaat"):
        (runs / r / CACHE_DIR / f"{cache_key(runs / r, data, s)}.json").unlink(missing_ok=True)
    at = h.open_page()
    assert not any("Measured on the shipped" in m.value for m in at.markdown)  # nothing stored: no claim
    base, scaat = (cached_evaluate(runs / r, data, s) for r in ("baseline", "scaat"))
    at = h.open_page()
    h.assert_clean(at)
    sentence = next(m.value for m in at.markdown if "Measured on the shipped" in m.value)
    g0, g1 = base["sparseness"]["mean"], scaat["sparseness"]["mean"]
    assert f"Gini sparseness {g1:.3f} vs {g0:.3f} ({g1 - g0:+.3f})" in sentence
    a0, a1 = base["accuracy"]["mean"], scaat["accuracy"]["mean"]
    assert f"accuracy {a1:.3f} vs {a0:.3f}" in sentence and "symmetric relevance gain" in sentence


def test_guided_example_opens_explore_with_baseline_and_scaat(h):
    at = h.open_page()
    at.button(key="home.guided.button").click().run()
    h.assert_clean(at)
    assert _title(at) == "Explore a tile"
    runs = at.sidebar.multiselect(key="sidebar.runs").value
    assert [Path(r).name for r in runs] == ["baseline", "scaat"]
    tile = at.selectbox(key="explore.tile")
    assert "tumor" in tile.options[tile.index]
    assert len(_overlays(at)) == 4  # 2 runs x (saliency, gradcam)
    assert at.get("download_button")


# -- Explore --------------------------------------------------------------------------------------
def test_explore_pick_tile_switch_method_and_controls(h):
    at = h.open_page("explore")
    assert len(_overlays(at)) == 3 * 2  # baseline, scaat, ece x saliency, gradcam
    first = at.image[-1].value
    at.button(key="explore.pick.test.3").click().run()
    h.assert_clean(at)
    assert at.selectbox(key="explore.tile").value == 3
    at.switch_page("pages/consistency.py").run()  # the chosen tile follows, and survives the trip
    h.assert_clean(at)
    assert at.selectbox(key="consistency.tile").value == 3
    at.switch_page("pages/explore.py").run()
    assert at.selectbox(key="explore.tile").value == 3
    at.multiselect(key="explore.methods").set_value(["input_x_gradient"]).run()
    h.assert_clean(at)
    assert len(_overlays(at)) == 3
    at.slider(key="explore.alpha").set_value(0.8).run()
    at.slider(key="explore.clip").set_value(95.0).run()
    at.selectbox(key="explore.target").set_value("tumor").run()
    h.assert_clean(at)
    assert all("explains tumor" in c for c in _overlays(at))
    assert at.image[-1].value != first
    captions = [c.value for c in at.caption]
    assert any("Sparseness" in c and "Deletion AUC" in c and "Pointing game" in c for c in captions)
    at.selectbox(key="explore.correctness").set_value("wrong").run()
    at.slider(key="explore.confidence").set_value((0.0, 0.6)).run()
    h.assert_clean(at)


def test_explore_dataset_without_masks_or_groups(h):
    at = h.open_page("explore")
    at.sidebar.selectbox(key="sidebar.dataset").set_value("plain").run()
    h.assert_clean(at)
    assert any("no evidence masks" in c.value for c in at.caption)
    assert any("Pointing game **n/a (no mask)**" in c.value for c in at.caption)
    assert len(_overlays(at)) == 6


@pytest.mark.parametrize("name,payload,expect", [
    ("corrupt.png", b"\x89PNG\r\n\x1a\nthis is not an image", "cannot be used"),
    ("empty.png", b"", "cannot be used"),
    ("bomb.png", _bomb_png(), "cannot be used"),
])
def test_explore_bad_uploads_get_a_message(h, name, payload, expect):
    at = h.open_page("explore")
    at.segmented_control(key="explore.source").set_value("upload").run()
    at.file_uploader(key="explore.upload").upload(name, payload, "image/png").run()
    h.assert_clean(at)
    assert any(expect in e.value for e in at.error), [e.value for e in at.error]
    assert not _overlays(at)
    at.segmented_control(key="explore.source").set_value("dataset").run()  # the page keeps working
    h.assert_clean(at)
    assert _overlays(at)


def test_explore_uploads_resized_tiled_and_16bit(h):
    at = h.open_page("explore")
    at.segmented_control(key="explore.source").set_value("upload").run()
    rng = np.random.default_rng(0)
    small = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
    at.file_uploader(key="explore.upload").upload("small.png", _png(small), "image/png").run()
    h.assert_clean(at)
    assert any("Resized from 50x40" in c.value for c in at.caption)
    assert len(_overlays(at)) == 6

    big = (rng.random((100, 140, 3)) * 255).astype(np.uint8)
    at.file_uploader(key="explore.upload").set_value(("big.png", _png(big), "image/png")).run()
    h.assert_clean(at)
    assert any("Cut into 4x5 tiles" in c.value for c in at.caption)
    at.selectbox(key="explore.upload_tile").set_value(7).run()
    h.assert_clean(at)
    assert len(_overlays(at)) == 6

    deep = (rng.random((32, 32)) * 65535).astype(np.uint16)
    at.file_uploader(key="explore.upload").set_value(("deep.png", _png(deep), "image/png")).run()
    h.assert_clean(at)
    assert any("8-bit" in i.value for i in at.info)
    assert len(_overlays(at)) == 6


# -- Consistency ------------------------------------------------------------------------------------
def test_consistency_page_attack_score_and_ece_history(h):
    at = h.open_page("consistency")
    scores = [m for m in at.metric if m.label == "Consistency score"]
    assert len(scores) == 3 and all(0.0 <= float(m.value) <= 1.0 for m in scores)
    assert len([m for m in at.metric if m.label == "Prediction changed"]) == 3
    captions = [c for img in at.image for c in img.captions]
    assert any("heatmap after" in c for c in captions) and any("amplified" in c for c in captions)
    assert at.get("plotly_chart"), "ECE consistency distribution"
    assert sum("weight" in c for c in captions) == 12  # least consistent training tiles
    at.slider(key="consistency.eps").set_value(16).run()
    at.slider(key="consistency.steps").set_value(1).run()
    at.toggle(key="consistency.mean_threshold").set_value(True).run()
    h.assert_clean(at)
    assert len([m for m in at.metric if m.label == "Consistency score"]) == 3


# -- Metrics ---------------------------------------------------------------------------------------
def test_metrics_compute_once_then_cached_on_disk(h, app_env):
    at = h.open_page("metrics")
    at.number_input(key="metrics.limit").set_value(10).run()
    assert any("Not computed yet" in i.value for i in at.info)
    at.button(key="metrics.compute").click().run()
    h.assert_clean(at)
    assert not any("Not computed yet" in i.value for i in at.info)
    table = at.dataframe[1].value  # [0] is the change against the reference
    assert len(table.columns) == 2 + 3
    assert {"Accuracy", "Sparseness (Gini)", "Deletion AUC", "Pointing game"} <= set(table["metric"])
    assert len(at.get("plotly_chart")) >= 10  # bars, curves, per class/group, training curves
    runs = app_env / "sample_data" / "runs" / "synthetic-he"
    assert all(list((runs / r / "eval_cache").glob("*.json")) for r in ("baseline", "scaat", "ece"))

    again = h.open_page("metrics")  # a new session: read from disk, nothing to compute
    again.number_input(key="metrics.limit").set_value(10).run()
    assert not any("Not computed yet" in i.value for i in again.info)
    assert not [b for b in again.button if b.key == "metrics.compute"]
    assert len(again.dataframe[1].value.columns) == 2 + 3


def test_metrics_without_groups_says_so(h):
    at = h.open_page("metrics")
    at.sidebar.selectbox(key="sidebar.dataset").set_value("plain").run()
    at.number_input(key="metrics.limit").set_value(10).run()
    at.sidebar.multiselect(key="sidebar.runs").set_value(at.sidebar.multiselect(key="sidebar.runs").value[:1]).run()
    at.button(key="metrics.compute").click().run()
    h.assert_clean(at)
    assert any("no groups" in i.value for i in at.info)
    assert "Pointing game" not in set(at.dataframe[0].value["metric"])


# -- Train -----------------------------------------------------------------------------------------
def _job_states(at) -> list[str]:
    return [m.value for m in at.markdown if " — " in m.value]


@pytest.mark.slow
def test_train_two_jobs_queue_finish_and_appear_in_pickers(h, app_env):
    at = h.open_page("train")
    at.selectbox(key="train.objective").set_value("erm").run()
    at.number_input(key="train.epochs").set_value(1).run()
    at.number_input(key="train.batch").set_value(8).run()
    for name in ("job-a", "job-b", "job-c"):
        at.text_input(key="train.name.erm").set_value(name).run()
        at.button(key="train.start").click().run()
        h.assert_clean(at)
        assert not at.error, [e.value for e in at.error]
    states = " ".join(_job_states(at))
    assert "job-a** — running" in states and "job-b** — queued" in states and "job-c** — queued" in states
    cancel = [b for b in at.button if b.key and b.key.startswith("train.cancel.")]
    assert len(cancel) == 3
    at.button(key=cancel[0].key).click().run()  # newest first: job-c, still queued
    h.assert_clean(at)

    def done(at) -> bool:
        s = " ".join(_job_states(at))
        return "job-a** — finished" in s and "job-b** — finished" in s

    h.wait_until(at, done, timeout=150, every=2)
    assert "job-c** — cancelled" in " ".join(_job_states(at))
    assert len(at.get("plotly_chart")) >= 2  # live loss / accuracy curves of the finished jobs
    at.run()
    options = at.sidebar.multiselect(key="sidebar.runs").options
    assert any("job-a" in o for o in options) and any("job-b" in o for o in options)
    assert (app_env / "runs" / "job-a" / "model.safetensors").is_file()


def test_train_refuses_bad_run_name(h):
    at = h.open_page("train")
    at.text_input(key="train.name.scaat").set_value("../escape").run()
    at.button(key="train.start").click().run()
    h.assert_clean(at)
    assert any("run name" in e.value for e in at.error)


# -- Slide and Report --------------------------------------------------------------------------------
def test_slide_page_explains_in_the_background(h, app_env):
    from interp_core.data.synthetic_wsi import write_synthetic_wsi
    slide = app_env / "sample_data" / "slides" / "syn.tiff"
    if not slide.is_file():
        write_synthetic_wsi(slide, width=512, height=512, seed=0, n_lesions=2, bank=4)
    at = h.open_page("slide")
    assert not at.error, [e.value for e in at.error] + [i.value for i in at.info]
    assert "baseline" in at.selectbox(key="slide.run_a").value and "scaat" in at.selectbox(key="slide.run_b").value
    at.button(key="slide.compute").click().run()
    h.assert_clean(at)
    h.wait_until(at, lambda a: len(a.get("download_button")) == 2, timeout=300)  # both GeoJSON exports
    at.selectbox(key="slide.show").set_value("probability").run()
    h.assert_clean(at)


def test_report_build_and_download(h):
    at = h.open_page("report")
    at.number_input(key="report.limit").set_value(10).run()
    at.button(key="report.build").click().run()
    h.assert_clean(at)
    assert any("Report ready" in s.value for s in at.success)
    assert at.get("download_button")


# -- Missing things ----------------------------------------------------------------------------------
PAGES = ["explore", "consistency", "metrics", "train", "slide", "report"]


def test_every_page_without_runs_explains_what_to_do(h, app_tree, tmp_path, monkeypatch):
    (tmp_path / "sample_data").mkdir()
    (tmp_path / "sample_data" / "data").symlink_to(app_tree / "sample_data" / "data")
    monkeypatch.setenv("INTERP_SAMPLE_DATA", str(tmp_path / "sample_data"))
    monkeypatch.setenv("INTERP_RUNS_DIR", str(tmp_path / "runs"))
    at = h.open_page()
    assert any("No trained model" in i.value for i in at.info)
    for page in PAGES:
        at.switch_page(f"pages/{page}.py").run()
        h.assert_clean(at)
        if page != "train":
            assert at.info or at.warning, page


def test_every_page_without_anything(h, tmp_path, monkeypatch):
    for var in ("INTERP_SAMPLE_DATA", "INTERP_RUNS_DIR", "INTERP_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    at = h.open_page()
    assert at.sidebar.warning
    for page in PAGES:
        at.switch_page(f"pages/{page}.py").run()
        h.assert_clean(at)
        assert at.info or at.warning, page


def test_npz_dataset_without_a_matching_model(h, tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_DATA_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    arrays = {f"{s}_{k}": v for s in ("train", "val", "test") for k, v in (
        ("images", (rng.random((6, 28, 28, 3)) * 255).astype(np.uint8)), ("labels", np.arange(6) % 3))}
    np.savez(tmp_path / "tri.npz", **arrays)
    at = h.open_page("explore")
    at.sidebar.selectbox(key="sidebar.dataset").set_value("tri").run()
    h.assert_clean(at)
    assert any("No trained model for **tri**" in w.value for w in at.sidebar.warning)
    assert any("Choose one or more models" in i.value for i in at.info)
