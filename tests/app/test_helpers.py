"""The dashboard's Streamlit-free helpers: figures, upload fitting, the run catalog, per-tile glue."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from interp_core.viz import figures, images
from interp_core.errors import InterpError


# -- figures ---------------------------------------------------------------------------------------
def test_compose_png_places_panels_and_scales_small_tiles():
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((8, 8, 3), np.uint8)
    blue[..., 2] = 255
    png = images.compose_png([[images.Panel(red, "a"), images.Panel(blue, "b")]], scale=4)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    cell, gap, title_h, top = 32, 10, 20, 6  # 8 px x scale 4; layout constants of compose_png
    y = top + title_h + cell // 2
    assert tuple(img[y, gap + cell // 2]) == (255, 0, 0)
    assert tuple(img[y, gap + cell + gap + cell // 2]) == (0, 0, 255)
    assert img.shape[1] == gap + 2 * cell + gap + gap  # margins and the gap between the two cells


def test_compose_png_refuses_an_empty_figure():
    with pytest.raises(InterpError):
        images.compose_png([[]])


def test_colorbar_runs_from_the_top_colour_to_the_bottom_colour():
    from interp_core.attribution import colorize
    bar = images.colorbar_png_array("viridis", 0.0, 2.0, length=100, thickness=10)
    top, bottom = colorize(np.array([1.0]), "viridis")[0], colorize(np.array([0.0]), "viridis")[0]
    assert np.allclose(bar[22, 5] / 255.0, top, atol=0.02)  # 22 = the label band above the bar
    assert np.allclose(bar[22 + 99, 5] / 255.0, bottom, atol=0.02)


def test_short_labels_drop_a_shared_dataset_prefix_only():
    assert figures.short_labels(["he / baseline", "he / scaat"]) == ["baseline", "scaat"]
    assert figures.short_labels(["he / baseline", "ihc / baseline"]) == ["he / baseline", "ihc / baseline"]
    assert figures.short_labels(["he / a"]) == ["he / a"]
    assert figures.short_labels(["yours / a", "he / a"]) == ["yours / a", "he / a"]


def test_metric_titles_state_the_better_direction():
    assert figures.metric_title("deletion_auc") == "Deletion AUC (lower is better)"
    assert figures.metric_title("insertion_auc") == "Insertion AUC (higher is better)"
    assert figures.metric_title("worst_group_accuracy").endswith("(higher is better)")
    assert figures.metric_title("attack_flip_rate").endswith("(lower is better)")


def test_metric_summaries_keep_metric_entries_in_display_order():
    result = {"run": "x", "n_tiles": 3, "deletion_auc": {"mean": 0.2, "std": 0.1, "n": 3},
              "accuracy": {"mean": 1.0, "std": 0.0, "n": 3}, "details": {"curves": {}},
              "zzz_custom": {"mean": 0.5, "std": 0.0, "n": 3}}
    assert list(figures.metric_summaries(result)) == ["accuracy", "deletion_auc", "zzz_custom"]


def test_plotly_figures_carry_units_and_directions():
    bar = figures.metric_bar_figure("sparseness", ["he / a", "he / b"], [0.3, None], [0.1, None])
    assert "higher is better" in bar.layout.title.text and "0-1" in bar.layout.title.text
    assert list(bar.data[0].x) == ["a", "b"] and bar.data[0].text[1] == "n/a"
    curves = figures.curves_figure("deletion", [0, 0.5, 1], {"a": [1, 0.5, 0.1]})
    assert list(curves.data[0].x) == [0, 50, 100] and "lower area" in curves.layout.title.text
    hist = figures.history_figure("val_accuracy", {"a": [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2}]})
    assert list(hist.data[0].y) == [0.5] and "higher is better" in hist.layout.title.text
    shifted = figures.history_figure("val_accuracy", {"a": [{"epoch": 1, "val_accuracy": 0.5}]}, offsets={"a": 3})
    assert list(shifted.data[0].x) == [4]
    with pytest.raises(InterpError):
        figures.curves_figure("sideways", [0, 1], {})


def test_slide_figure_draws_nan_cells_transparent():
    heat = np.array([[0.1, np.nan], [0.5, 1.0]])
    fig = figures.slide_figure(np.zeros((8, 8, 3), np.uint8), heat, title="t", zmin=0, zmax=1)
    z = fig.data[1].z
    assert z[0][1] is None and z[1][1] == 1.0
    assert fig.data[1].dx == 4 and fig.data[0].source.startswith("data:image/png;base64,")


# -- uploads ---------------------------------------------------------------------------------------
def test_fit_to_input_keeps_resizes_or_tiles():
    from interp_core.evaluation.tile_analysis import fit_to_input
    assert fit_to_input(np.zeros((64, 64, 3), np.uint8), 64).mode == "as is"
    small = fit_to_input(np.zeros((90, 100, 3), np.uint8), 64)
    assert small.mode == "resized" and small.tiles[0].shape == (64, 64, 3) and "100x90" in small.note
    big = fit_to_input(np.zeros((200, 300, 3), np.uint8), 64)
    assert big.mode == "tiled" and big.grid == (4, 5) and len(big.tiles) == 20
    assert (big.tiles[-1][8:, :] == 255).all()  # bottom-right tile: 200 = 3*64 + 8 rows of image, rest white
    assert fit_to_input(np.zeros((200, 300, 3), np.uint8), 64, "resize").mode == "resized"
    assert fit_to_input(np.zeros((90, 100, 3), np.uint8), 64, "tile").grid == (2, 2)
    with pytest.raises(InterpError):
        fit_to_input(np.zeros((9, 9, 3), np.uint8), 8, "crop")


# -- catalog ---------------------------------------------------------------------------------------
def test_runs_map_to_datasets_by_folder_name_from_any_clone_path(app_tree, tmp_path, monkeypatch):
    from interp_core import catalog
    sample = tmp_path / "sample_data"
    shutil.copytree(app_tree / "sample_data", sample)
    cfg_path = sample / "runs" / "synthetic-he" / "scaat" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["data"] = "/some/other/machine/sample_data/data/synthetic-he"
    cfg["init"] = "/some/other/machine/sample_data/runs/synthetic-he/baseline"
    cfg_path.write_text(json.dumps(cfg))
    monkeypatch.setenv("INTERP_SAMPLE_DATA", str(sample))
    monkeypatch.setenv("INTERP_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("INTERP_DATA_DIR", str(tmp_path / "data"))
    runs = {r.name: r for r in catalog.list_runs()}
    assert runs["scaat"].dataset == "synthetic-he" and runs["scaat"].data_path == (sample / "data" / "synthetic-he")
    assert runs["scaat"].label == "synthetic-he / scaat"
    ordered = catalog.compatible_runs(list(runs.values()), ["normal", "tumor"], "synthetic-he")
    assert [r.objective for r in ordered] == ["erm", "scaat", "ece"]
    assert catalog.compatible_runs(list(runs.values()), ["a", "b"]) == []
    assert [r.name for r in catalog.default_runs(ordered, "synthetic-he", n=2)] == ["baseline", "scaat"]
    everything = list(runs.values())
    assert catalog.parent_epochs(runs["scaat"], everything) == 3  # the baseline's epochs, found by name
    assert catalog.parent_epochs(runs["ece"], everything) == 3  # init path exists as given
    assert catalog.parent_epochs(runs["baseline"], everything) == 0


def test_new_run_dir_refuses_escapes_and_finished_runs(app_tree, monkeypatch):
    from interp_core import catalog
    root = app_tree / "sample_data" / "runs" / "synthetic-he"
    monkeypatch.setenv("INTERP_RUNS_DIR", str(root))
    for bad in ("../x", "/abs", "", "a b", ".hidden", "a/b"):
        with pytest.raises(InterpError):
            catalog.new_run_dir(bad)
    with pytest.raises(InterpError, match="already exists"):
        catalog.new_run_dir("baseline")
    assert catalog.new_run_dir("fresh-run") == (root / "fresh-run").resolve()


# -- per-tile glue -----------------------------------------------------------------------------------
def test_tile_metrics_skip_the_pointing_game_without_evidence(app_tree):
    from interp_core.runs import load_run
    from interp_core.evaluation import tile_analysis as compute
    run = load_run(app_tree / "sample_data" / "runs" / "synthetic-he" / "baseline")
    img = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    a = compute.explain_tile(run.model, img, 32, "saliency", 1)
    assert a.shape == (32, 32) and a.dtype == np.float32
    empty = compute.tile_metrics(run.model, img, 32, a, 1, np.zeros((32, 32), bool))
    assert empty["pointing_game"] is None and 0.0 <= empty["deletion_auc"] <= 1.0
    peak = np.unravel_index(np.argmax(a), a.shape)
    mask = np.zeros((32, 32), bool)
    mask[peak] = True
    assert compute.tile_metrics(run.model, img, 32, a, 1, mask)["pointing_game"] == 1.0
    assert compute.tile_metrics(run.model, img, 32, a, 1, None)["pointing_game"] is None


def test_least_consistent_picks_the_lowest_scores_of_a_refresh():
    from interp_core.consistency.history import ConsistencyHistory, least_consistent
    hist = ConsistencyHistory(["a", "b", "c", "d"], np.zeros(4, int), np.array([0, 1]),
                              np.array([[0.1, 0.2, 0.3, 0.4], [0.9, 0.2, 0.5, 0.1]], np.float32),
                              np.ones((2, 4), np.float32), None)
    assert least_consistent(hist, 2) == [3, 1]
    assert least_consistent(hist, 2, refresh=0) == [0, 1]
