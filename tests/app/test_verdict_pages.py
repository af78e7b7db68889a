"""AppTest tests of issue 17: the verdict against a reference run on Metrics, Report and Explore, and the
readability fixes of the pages (intervals instead of ± SD, Grad-CAM notes, user-language messages)."""
from __future__ import annotations

import re
from pathlib import Path


def _computed_metrics(h, limit: int = 10):
    at = h.open_page("metrics")
    at.number_input(key="metrics.limit").set_value(limit).run()
    if any(b.key == "metrics.compute" for b in at.button):  # not computed by an earlier test of the session
        at.button(key="metrics.compute").click().run()
    h.assert_clean(at)
    return at


def _keys(at) -> list[str]:
    return list(at.sidebar.multiselect(key="sidebar.runs").value)


def _md(at) -> str:
    return "\n".join(m.value for m in at.markdown)


# -- Metrics: item 1 (change against a reference) and item 2 (honest charts) -------------------------
def test_metrics_verdict_against_the_run_the_others_started_from(h):
    at = _computed_metrics(h)
    ref = at.selectbox(key="metrics.reference")
    assert Path(ref.value).name == "baseline"  # config.json's init of scaat and ece
    md = _md(at)
    assert any(s.value == "Did retraining help?" for s in at.subheader)
    for run in ("scaat", "ece"):
        assert re.search(rf"\*\*{run}\*\* against baseline \(10 tiles, paired; 95% intervals\)", md), md
    assert "baseline** against" not in md  # the reference is not compared with itself
    changes = at.dataframe[0].value
    assert set(changes["model"]) == {"scaat", "ece"}
    assert set(changes["verdict"]) <= {"better", "worse", "no clear change"}
    assert {"accuracy", "worst-group accuracy"} <= {m.lower() for m in changes["metric"]}
    assert changes["change [95% interval]"].str.fullmatch(r"[+-]\d\.\d{3,8} \[[+-]\d\.\d{3,8}, [+-]\d\.\d{3,8}\]").all()
    assert changes["better is"].str.contains("lower is better").any()  # e.g. deletion AUC
    chart = at.get("plotly_chart")[0].proto.spec
    assert "Change against baseline" in chart and "95% interval" in chart
    assert any("bootstrap" in c.value and "one interval in twenty" in c.value for c in at.caption)


def test_metrics_reference_can_be_changed(h):
    at = _computed_metrics(h)
    ref = at.selectbox(key="metrics.reference")
    assert ref.options == ["synthetic-he / baseline", "synthetic-he / scaat", "synthetic-he / ece"]
    ref.set_value(next(k for k in (ref.value, *_keys(at)) if Path(k).name == "scaat")).run()
    h.assert_clean(at)
    md = _md(at)
    assert "**baseline** against scaat" in md and "**ece** against scaat" in md
    assert set(at.dataframe[0].value["model"]) == {"baseline", "ece"}


def test_metrics_values_have_intervals_not_standard_deviations(h):
    at = _computed_metrics(h)
    values = at.dataframe[1].value
    assert list(values.columns[:2]) == ["metric", "better"]
    acc = values[values["metric"] == "Accuracy"].iloc[0]
    cells = [acc[c] for c in values.columns[2:]]
    assert len(cells) == 3 and all(re.fullmatch(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", c) for c in cells), cells
    assert not any("±" in str(v) for v in values.to_numpy().ravel())
    text = " ".join(c.value for c in at.caption)
    assert "Wilson" in text and "not the spread" in text and "always use Grad-CAM" in text
    specs = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("Explanation consistency" in s and "whatever the method chosen" in s for s in specs)
    assert not any("standard deviation" in s for s in specs)


def test_metrics_messages_speak_the_users_language(h):
    at = h.open_page("metrics")
    at.number_input(key="metrics.limit").set_value(6).run()
    info = " ".join(i.value for i in at.info)
    assert "resumes where it stopped" in info and "attributions/" not in info and "eval_cache" not in _md(at)
    at.button(key="metrics.compute").click().run()
    again = h.open_page("metrics")
    again.number_input(key="metrics.limit").set_value(6).run()
    captions = " ".join(c.value for c in again.caption)
    assert "Saliency maps computed earlier were reused" in captions
    assert "float16" not in captions and "shard" not in captions


def test_metrics_resume_keeps_models_finished_before_an_interruption(h, app_env):
    """Maps and results are stored as they are computed: a model finished before the tab closed is not
    computed again, and its maps are reused."""
    from interp_core.evaluation.evaluate import EvalSettings, evaluate_with_stored_maps
    runs = app_env / "sample_data" / "runs" / "synthetic-he"
    data = app_env / "sample_data" / "data" / "synthetic-he"
    evaluate_with_stored_maps(runs / "scaat", data, EvalSettings(split="test", limit=7))  # "before the tab closed"
    at = h.open_page("metrics")
    at.number_input(key="metrics.limit").set_value(7).run()
    info = " ".join(i.value for i in at.info)
    assert "baseline" in info and "ece" in info and "scaat" not in info.split("with these settings")[0]


def test_metrics_resume_inside_a_models_metrics_phase(h, app_env, monkeypatch):
    """A tab closed while a model's metrics were being scored: the page says how far it got and the
    next computation continues from there (the resume itself is checked in tests/scale/test_metrics_resume.py)."""
    import dataclasses

    import pytest

    from interp_core.evaluation.evaluate import EvalSettings, evaluate_with_stored_maps

    # the tiny test split (16 tiles) fits in one batch of 64: batches of 4 so a tab can close between two
    defaults = EvalSettings.__init__.__defaults__
    i = [f.name for f in dataclasses.fields(EvalSettings)].index("batch_size")
    monkeypatch.setattr(EvalSettings.__init__, "__defaults__", (*defaults[:i], 4, *defaults[i + 1:]))

    class Closed(Exception):
        pass

    def close_tab(phase: str, done: int, total: int) -> None:
        if phase == "metrics" and done >= 8:
            raise Closed

    runs = app_env / "sample_data" / "runs" / "synthetic-he"
    data = app_env / "sample_data" / "data" / "synthetic-he"
    s = EvalSettings(split="test", limit=15)
    with pytest.raises(Closed):
        evaluate_with_stored_maps(runs / "ece", data, s, progress=close_tab)
    assert len(list((runs / "ece" / "eval_cache").glob("*.partial.npz"))) == 1
    at = h.open_page("metrics")
    at.number_input(key="metrics.limit").set_value(15).run()
    h.assert_clean(at)
    info = " ".join(i.value for i in at.info)
    assert "Metrics scored earlier are kept and will be reused: synthetic-he / ece (8 of 15 tiles)" in info, info
    assert "npz" not in info and "partial" not in info
    at.button(key="metrics.compute").click().run()
    h.assert_clean(at)
    assert "Did retraining help?" in [x.value for x in at.subheader]
    assert not list((runs / "ece" / "eval_cache").glob("*.partial.npz"))  # finished: the progress file is gone


# -- Report: item 1 (verdict at the top, change table, random examples, colour scales, no paths) ------
def test_report_opens_with_the_verdict_and_writes_no_machine_path(h, app_env):
    at = h.open_page("report")
    assert Path(at.selectbox(key="report.reference").value).name == "baseline"
    at.number_input(key="report.limit").set_value(10).run()
    at.button(key="report.build").click().run()
    h.assert_clean(at)
    md = _md(at)
    assert "**scaat** against baseline" in md and "**ece** against baseline" in md
    doc = at.session_state["report.result"]["html"].decode()
    top = doc.index("Did retraining help? (against baseline)")
    assert top < doc.index("<h2>Metrics</h2>") < doc.index("<h2>Examples</h2>")
    assert "<table class='changes'>" in doc and "change [95% interval]" in doc
    assert "±" not in doc and re.search(r"<td>\d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\]</td>", doc)
    assert str(app_env) not in doc and "/tmp/" not in doc  # no absolute path of this machine
    assert doc.count("class='cbar'") == 6  # a colour scale on every row of maps
    assert "drawn at random (seed 0)" in doc
    assert "<th>Sparseness (Gini)</th>" in doc and "<th>sparseness</th>" not in doc  # readable metric names


# -- Explore: item 1 (change column, relevance shares) and item 4 ---------------------------------------
def test_explore_shows_a_change_map_per_method_against_the_reference(h):
    at = h.open_page("explore")
    caps = [c for img in at.image for c in img.captions]
    changes = [c for c in caps if c.startswith("change: ")]
    assert changes == ["change: scaat - baseline", "change: ece - baseline"] * 2  # saliency, gradcam
    assert caps.count("change") == 2 and caps.count("share of the row's maximum") == 2
    assert any("centred on 0" in c.value for c in at.caption)
    assert any("**Change** columns" in c.value for c in at.caption)
    assert sum("inside the evidence" in c.value for c in at.caption) >= 3


def test_explore_reference_picker_sets_the_change_columns(h):
    at = h.open_page("explore")
    ref = at.selectbox(key="explore.reference")
    assert Path(ref.value).name == "baseline"  # default: the run the others were retrained from
    ref.set_value(next(k for k in _keys(at) if Path(k).name == "scaat")).run()
    h.assert_clean(at)
    caps = [c for img in at.image for c in img.captions]
    assert [c for c in caps if c.startswith("change: ")] == ["change: baseline - scaat", "change: ece - scaat"] * 2
    assert any("minus synthetic-he / scaat's (the reference chosen above)" in c.value for c in at.caption)


def test_explore_png_has_tile_predictions_colour_scales_and_relevance_shares(h, monkeypatch):
    import io

    from PIL import Image

    from interp_core.viz import images
    calls = []
    real = images.compose_png

    def spy(rows, **kw):
        png = real(rows, **kw)
        calls.append((rows, kw, png))
        return png

    monkeypatch.setattr(images, "compose_png", spy)
    at = h.open_page("explore")
    h.assert_clean(at)
    assert any(b.proto.label == "Download this figure (PNG)" for b in at.get("download_button"))
    rows, kw, png = calls[-1]
    assert kw["row_labels"] == ["predictions", "saliency", "gradcam"]
    tile_row = rows[0]
    assert [p.title for p in tile_row] == ["tile", "synthetic-he / baseline", "synthetic-he / scaat",
                                           "synthetic-he / ece"]
    assert all(re.search(r"normal: \d+\.\d%", p.caption) and "(predicted)" in p.caption for p in tile_row[1:])
    for row in rows[1:]:
        maps, changes = row[:3], row[3:]
        assert all(re.match(r"\d+% in evidence\n", p.caption) for p in maps), [p.caption for p in maps]
        assert all("sparseness" in p.caption and "pointing game" in p.caption for p in maps)  # shares kept
        assert [p.title for p in changes] == ["change scaat", "change ece"]
    assert kw["colorbars"][0] is None and all(b is not None and b.shape[0] > 100 for b in kw["colorbars"][1:])
    assert "white outline: evidence" in kw["title"]
    img = Image.open(io.BytesIO(png))
    cell = 96  # 32 px tiles enlarged 3x
    assert img.height >= 3 * (cell + 20 + 4 + 15 * 5)  # three rows, five caption lines under the maps
    assert img.width >= 6 * cell + max(b.shape[1] for b in kw["colorbars"][1:])  # 5 panels + bars


def test_explore_colour_bars_read_as_share_of_max(h):
    at = h.open_page("explore")
    bars = [img for img in at.image if "share of the row's maximum" in img.captions]
    assert len(bars) == 2  # one per method: the numbers are shares of the row's maximum, not raw gradients
    assert any("shares of the row's largest value" in c.value for c in at.caption)


def test_explore_gallery_filter_updates_the_tile_shown(h):
    at = h.open_page("explore")
    tile = at.selectbox(key="explore.tile")
    assert "normal" in tile.options[tile.index]
    at.multiselect(key="explore.classes").set_value(["tumor"]).run()
    h.assert_clean(at)
    tile = at.selectbox(key="explore.tile")
    assert "tumor" in tile.options[tile.index]


def test_explore_occlusion_states_its_neutral_baseline(h):
    at = h.open_page("explore")
    at.multiselect(key="explore.methods").set_value(["occlusion"]).run()
    h.assert_clean(at)
    assert any("blurred tile" in c.value and "not with black" in c.value for c in at.caption)


def test_metrics_page_states_the_same_occlusion_baseline_as_explore(h):
    from interp_core.evaluation import tile_analysis as compute
    at = h.open_page("metrics")
    at.selectbox(key="metrics.method").set_value("occlusion").run()
    h.assert_clean(at)
    assert any(compute.METHOD_NOTES["occlusion"] in c.value and "blurred tile" in c.value for c in at.caption)


def test_relevance_shares_and_change_map_by_hand():
    import numpy as np

    from interp_core.evaluation import tile_analysis as compute
    a = np.array([[1.0, 3.0], [0.0, -2.0]], np.float32)
    ev = np.array([[False, True], [False, False]])
    art = np.array([[True, False], [False, True]])
    s = compute.relevance_shares(a, ev, art)
    assert s["evidence"] == 3 / 4 and s["artifact"] == 1 / 4  # max(a, 0) = [1, 3, 0, 0]
    assert compute.relevance_shares(a, None, np.zeros((2, 2), bool)) == {"evidence": None, "artifact": None}
    d = compute.change_map(np.array([[2.0, 0.0]]), np.array([[1.0, 1.0]]))
    assert d.tolist() == [[0.0, -1.0]]  # [1, 0] - [1, 1]



# -- Consistency: item 3 ---------------------------------------------------------------------------------
def test_consistency_ece_section_lists_only_the_selected_datasets_runs(h, app_env):
    import shutil
    other = app_env / "sample_data" / "runs" / "plain" / "ece-other"
    shutil.copytree(app_env / "sample_data" / "runs" / "synthetic-he" / "ece", other,
                    ignore=shutil.ignore_patterns("eval_cache", "attributions"))
    import json
    cfg = json.loads((other / "config.json").read_text())
    cfg["data"] = str(app_env / "data" / "plain")  # an ECE run of another dataset
    (other / "config.json").write_text(json.dumps(cfg))
    try:
        at = h.open_page("consistency")
        opts = at.selectbox(key="consistency.ece_run").options
        assert opts == ["synthetic-he / ece"], opts
        labels = {m.label: m.value for m in at.metric}
        lo, hi = (float(v) for v in labels["Weights, last refresh"].split(" to "))
        assert 0 < lo <= 1 <= hi
        assert any("tinted blue, outlined" in c for img in at.image for c in img.captions)
        spec = at.get("plotly_chart")[0].proto.spec
        assert "axis zoomed to the data" in spec
    finally:
        shutil.rmtree(other.parent)


def test_background_view_and_consistency_axis_by_hand():
    import json

    import numpy as np

    from interp_core.viz.figures import consistency_distribution_figure
    from interp_core.evaluation import tile_analysis as compute
    img = np.full((4, 4, 3), 250, np.uint8)  # white tile: a white background mask would not show
    bg = np.zeros((4, 4), bool)
    bg[:2] = True
    out = compute.background_view(img, bg)
    assert (out[2:] == 250).all() and (out[:2, :, 2] > out[:2, :, 0]).all() and (out[:2] != 250).any()
    fig = consistency_distribution_figure([0], np.array([[0.98, 0.99, 1.0]]))
    lo, hi = json.loads(fig.to_json())["layout"]["yaxis"]["range"]
    assert 0.97 < lo < 0.98 and 1.0 < hi < 1.01


# -- Train: item 5 ---------------------------------------------------------------------------------------
def test_train_finished_job_shows_accuracy_and_opens_metrics_against_its_parent(h, app_env):
    at = h.open_page("train")
    at.selectbox(key="train.objective").set_value("erm").run()
    assert at.selectbox(key="train.init").options[1:] == ["baseline", "scaat", "ece"]  # the part that differs
    at.number_input(key="train.epochs").set_value(1).run()
    at.number_input(key="train.batch").set_value(8).run()
    at.text_input(key="train.name.erm").set_value("tuned").run()
    at.button(key="train.start").click().run()
    h.assert_clean(at)
    h.wait_until(at, lambda a: any("Final validation accuracy" in m.value for m in a.markdown), timeout=150, every=2)
    assert any(re.search(r"Final validation accuracy \*\*\d\.\d{3}\*\*", m.value) for m in at.markdown)
    button = next(b for b in at.button if b.key and b.key.startswith("train.compare."))
    assert button.label == "Compare with baseline on Metrics"
    button.click().run()
    h.assert_clean(at)
    assert at.title[0].value == "Metrics across models"
    runs = at.sidebar.multiselect(key="sidebar.runs").value
    assert [Path(r).name for r in runs] == ["baseline", "tuned"]
    assert Path(at.selectbox(key="metrics.reference").value).name == "baseline"
    assert at.sidebar.multiselect(key="sidebar.runs").options[-1] == "tuned (yours)"


def test_history_figure_draws_a_single_epoch_as_a_point_on_a_whole_epoch_axis():
    import json

    from interp_core.viz.figures import history_figure
    fig = json.loads(history_figure("val_accuracy", {"a": [{"epoch": 0, "val_accuracy": 0.8}]}).to_json())
    assert fig["data"][0]["mode"] == "markers"
    assert fig["layout"]["xaxis"]["range"] == [-1, 1] and fig["layout"]["xaxis"]["dtick"] == 1
    two = json.loads(history_figure("val_accuracy", {"a": [{"epoch": e, "val_accuracy": 0.8} for e in range(5)]})
                     .to_json())
    assert two["data"][0]["mode"] == "lines+markers" and "range" not in two["layout"]["xaxis"]


def test_clicking_a_thumbnail_or_an_upload_tile_picks_it(monkeypatch):
    """A click on a clickable grid (the chart's selection event) becomes the tile shown, once."""
    import streamlit as st

    from ui import widgets
    state: dict = {"t": 0}
    monkeypatch.setattr(st, "session_state", state)
    reruns = []
    monkeypatch.setattr(st, "rerun", lambda: reruns.append(1))
    event = {"selection": {"points": [{"customdata": 2, "point_index": 10}]}}
    widgets.picked_thumbnail(event, "g", [5, 7, 9], "t")
    assert state["t"] == 9 and reruns == [1]
    state["t"] = 5  # picked another way afterwards: the old click does not override it
    widgets.picked_thumbnail(event, "g", [5, 7, 9], "t")
    assert state["t"] == 5 and reruns == [1]
    widgets.picked_thumbnail({"selection": {"points": []}}, "g", [5, 7, 9], "t")  # deselected
    widgets.picked_thumbnail(event, "g", [5, 7, 9], "t")  # the same thumbnail clicked again
    assert state["t"] == 9


def test_explore_gallery_and_large_upload_are_clickable_grids(h):
    import io

    import numpy as np
    from PIL import Image
    at = h.open_page("explore")
    grids = [c for c in at.get("plotly_chart") if "click to show" in c.proto.spec]
    assert len(grids) == 1 and grids[0].proto.selection_mode  # the gallery, selectable by a click
    at.segmented_control(key="explore.source").set_value("upload").run()
    big = np.random.default_rng(0).integers(0, 255, (100, 70, 3), dtype=np.uint8)  # 32 px model: 4 x 3 tiles
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    at.file_uploader(key="explore.upload").upload("big.png", buf.getvalue(), "image/png").run()
    h.assert_clean(at)
    grids = [c for c in at.get("plotly_chart") if "click to show" in c.proto.spec]
    assert len(grids) == 1 and "column 3" in grids[0].proto.spec and "row 4" in grids[0].proto.spec
    assert any("click a tile to explain it" in c.value for c in at.caption)


def test_picker_labels_lead_with_the_part_that_differs():
    from interp_core.catalog import RunEntry, picker_label
    mk = lambda name, src, ds, rel="": RunEntry(Path("/r") / name, src, {}, ds, None, {}, rel or name)  # noqa: E731
    assert picker_label(mk("scaat", "shipped", "synthetic-he"), "synthetic-he") == "scaat"
    assert picker_label(mk("scaat", "shipped", "ihc"), "synthetic-he") == "scaat (ihc)"
    assert picker_label(mk("synthetic-he-scaat-20261129-2120", "yours", "synthetic-he"), "synthetic-he") == \
        "scaat-20261129-2120 (yours)"
    assert picker_label(mk("my-run", "yours", "ihc"), "synthetic-he") == "my-run (yours)"


def test_explore_outlines_the_artifact_and_gives_the_share_on_it(h, app_env, monkeypatch):
    import shutil

    from interp_core.viz import images
    calls = []
    real = images.compose_png
    monkeypatch.setattr(images, "compose_png", lambda rows, **kw: calls.append((rows, kw, None)) or real(rows, **kw))

    import numpy as np
    from PIL import Image
    src = app_env / "sample_data" / "data" / "synthetic-he"
    dst = app_env / "data" / "stamped"
    shutil.copytree(src, dst)
    try:
        for f in (dst / "test").rglob("*.png"):  # a "pen mark": the top-left quadrant of every test tile
            out = dst / "artifact_masks" / f.relative_to(dst)
            out.parent.mkdir(parents=True, exist_ok=True)
            m = np.zeros(Image.open(f).size[::-1], np.uint8)
            m[: m.shape[0] // 2, : m.shape[1] // 2] = 255
            Image.fromarray(m).save(out)
        at = h.open_page("explore")
        at.sidebar.selectbox(key="sidebar.dataset").set_value("stamped").run()
        at.sidebar.multiselect(key="sidebar.runs").set_value(
            [str(app_env / "sample_data" / "runs" / "synthetic-he" / r) for r in ("baseline", "scaat")]).run()
        h.assert_clean(at)
        assert any("Cyan outline" in c.value for c in at.caption)
        shares = [c.value for c in at.caption if "on the artifact" in c.value]
        assert len(shares) == 4, shares  # 2 models x (saliency, gradcam)
        assert all(re.search(r"\d+% on the artifact", v) for v in shares)
        png_rows, png_kw, _ = calls[-1]
        assert all(re.search(r"\d+% on artifact", p.caption) for row in png_rows[1:] for p in row[:2])
        assert "cyan outline: artifact" in png_kw["title"]
    finally:
        shutil.rmtree(dst)


# -- readable charts (item 2, found walking the pages in a browser) -------------------------------------
def test_charts_label_every_bar_keep_labels_inside_and_name_grad_cam():
    import json

    import numpy as np

    from interp_core.viz import figures, verdict_figures
    from interp_core.evaluation.verdict import Change
    mk = lambda m, run: Change(m, run, "base", 0.9, 0.95, 0.05, 0.02, 0.08, 50, True)  # noqa: E731
    fig = json.loads(verdict_figures.change_figure([mk("accuracy", "scaat"), mk("explanation_consistency", "scaat")]).to_json())
    titles = [a["text"] for a in fig["layout"]["annotations"] if a["text"]]
    assert titles[0] == "Accuracy (higher is better)"
    assert "always Grad-CAM, whatever the method chosen" in titles[1]
    bars = json.loads(figures.group_accuracy_figure({"a": {"normal": {"mean": 0.97, "n": 9},
                                                          "tumor": {"mean": 0.84, "n": 9}}}).to_json())
    assert bars["data"][0]["text"] == ["0.970", "0.840"] and bars["data"][0]["textposition"] == "outside"
    assert bars["layout"]["yaxis"]["range"][1] > 1.05  # room above a bar at 1 for its label
    vals = json.loads(verdict_figures.value_figure("accuracy", ["a", "b", "c"],
                                           [(0.90, 0.85, 0.93), (0.95, 0.93, 0.96), (0.88, 0.86, 0.90)]).to_json())
    assert [t["textposition"] for t in vals["data"]] == ["top center", "top left", "top right"]
    cons = np.r_[np.zeros(5), np.linspace(0.8, 0.99, 200)][None]  # a few tiles at 0 and the bulk at 0.8-0.99
    dist = json.loads(figures.consistency_distribution_figure([1], cons).to_json())
    lo, hi = dist["layout"]["yaxis"]["range"]
    assert 0.5 < lo < 0.8 and 0.99 < hi < 1.02  # the boxes keep their spread
    assert "5 tile value(s) below the axis (lowest 0.00)" in dist["layout"]["title"]["text"]
    assert "Grad-CAM" in dist["layout"]["title"]["text"]
    loss = json.loads(figures.history_figure("train_loss", {"a": [{"epoch": 1, "train_loss": 0.55}]}).to_json())
    assert loss["layout"]["yaxis"]["range"] == [0, 1.25 * 0.55] and loss["data"][0]["mode"] == "markers"
