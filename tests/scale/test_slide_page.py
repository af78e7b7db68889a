"""AppTest of the Slide page on a whole-slide file: a pyramidal TIFF found under ``sample_data/slides``,
a pyramid level chosen, maps drawn; a bad path gives a one-line message."""
from __future__ import annotations

from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app.py"


@pytest.fixture()
def app_tree(tmp_path, monkeypatch, helpers, slide_image):
    """``ROOT/sample_data/{data/ihc, runs/ihc/fake, slides/case.tiff}``, the app pointed at it."""
    from streamlit.runtime.pages_manager import PagesManager

    from interp_core.testing import make_tiny_dataset
    from interp_core.slides.wsi import write_pyramid_tiff
    root = tmp_path / "sample_data"
    make_tiny_dataset(root / "data" / "ihc", n_per_class=4, size=16, classes=("normal", "tumor"))
    helpers.make_run(root / "runs" / "ihc" / "fake", image_size=16)
    write_pyramid_tiff(root / "slides" / "case.tiff", slide_image, n_levels=2, tile=32)
    (tmp_path / "runs").mkdir()
    monkeypatch.setenv("INTERP_SAMPLE_DATA", str(root))
    monkeypatch.setenv("INTERP_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("INTERP_DATA_DIR", str(tmp_path / "data"))
    import streamlit as st
    st.cache_data.clear()
    st.cache_resource.clear()

    class NavigationPagesManager(PagesManager):  # as tests/app/conftest.py: st.navigation mode in AppTest
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            PagesManager.uses_pages_directory = False

    monkeypatch.setattr("streamlit.testing.v1.app_test.PagesManager", NavigationPagesManager)
    yield root
    PagesManager.uses_pages_directory = None


def _clean(at):
    assert not at.exception, [e.value for e in at.exception]


def test_slide_page_shows_results_detail_and_refuses_paths_outside(app_tree, tmp_path):
    from streamlit.testing.v1 import AppTest

    from interp_core.slides.job import explain_slide_file, results_dir
    slide = app_tree / "slides" / "case.tiff"
    run = app_tree / "runs" / "ihc" / "fake"
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    _clean(at)
    at.switch_page("pages/slide.py").run()
    _clean(at)
    assert at.selectbox(key="slide.file").value == str(slide.resolve())
    assert at.selectbox(key="slide.level").options == ["0 (200x136)", "1 (100x68)"]
    assert at.selectbox(key="slide.run_a").value == str(run.resolve()) or at.selectbox(key="slide.run_a").value
    assert [b.label for b in at.button] == ["Explain the slide"]
    # results computed by the command in the folder the page looks in are reused (no button, overlays, export)
    out = results_dir(run, slide, level=0, method="saliency", tile_size=16, stride=16)
    explain_slide_file(run, slide, out, device="cpu")
    at.run()
    _clean(at)
    assert not [b for b in at.button if b.label == "Explain the slide"]
    assert any("200x136 px at level 0, no microns-per-pixel" in c.value for c in at.caption)
    # no server here, so no tile route: the page says the viewer is unavailable, why and what to do,
    # and shows the stitched maps of both runs instead; a tile is picked by row and column
    assert any("deep-zoom viewer is unavailable" in w.value and "serve.py" in w.value for w in at.warning), \
        [w.value for w in at.warning]
    shown = [c for img in at.image for c in img.captions]
    assert len(shown) == 2 and all("· done" in c for c in shown), shown
    at.number_input(key="slide.fallback_row").set_value(3)
    at.number_input(key="slide.fallback_col").set_value(5)
    at.button(key="slide.fallback_show").click().run()
    _clean(at)
    assert any("Tile row 3, column 5" in m.value for m in at.subheader)
    for show in ("probability", "entropy", "tissue", "saliency"):
        at.selectbox(key="slide.show").set_value(show).run()
        _clean(at)
    at.selectbox(key="slide.normalize").set_value("tile").run()
    _clean(at)
    # a click on a tile (the component's value) opens its detail
    at.session_state["slide.tile"] = (4, 8)
    at.run()
    _clean(at)
    assert any("Tile row 4, column 8" in m.value for m in at.subheader)
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 2
    # the level picker follows the slide: its labels are those of the slide now shown
    from interp_core.slides.wsi import write_pyramid_tiff
    other = app_tree / "slides" / "other.tiff"
    import numpy as np
    write_pyramid_tiff(other, np.full((64, 96, 3), 200, np.uint8), n_levels=1, tile=32)
    at.run()
    at.selectbox(key="slide.file").set_value(str(other.resolve())).run()
    _clean(at)
    assert at.selectbox(key="slide.level").options == ["0 (96x64)"]
    assert at.selectbox(key="slide.level").value == "0 (96x64)"
    at.selectbox(key="slide.file").set_value(str(slide.resolve())).run()
    # paths outside the slide folders are refused with a message
    outside = tmp_path / "elsewhere.tiff"
    outside.write_bytes(slide.read_bytes())
    for typed, msg in ((str(outside), "outside the slide folders"), ("../slides/case.tiff", "'..' segments"),
                       ("missing.svs", "no such slide file")):
        at.text_input(key="slide.path").input(typed).run()
        _clean(at)
        assert any(msg in e.value for e in at.error), (typed, [e.value for e in at.error])


def test_tile_route_for_st_app_and_the_fallback_reason(monkeypatch):
    """serve.py's route (st.App) marks the route mounted, so the page does not search the server; without
    it and without a server, ensure_routes fails and says why (the page shows that message)."""
    from ui import tile_server
    monkeypatch.setattr(tile_server, "_MOUNTED", False)
    monkeypatch.setattr(tile_server, "HOW", "")
    monkeypatch.setattr(tile_server, "FAILURE", "")
    assert tile_server.ensure_routes() is False  # no Streamlit server in this process
    assert "no running Streamlit server application" in tile_server.FAILURE
    (route,) = tile_server.routes()
    assert route.path == "/_interp/wsi/{path:path}" and route.methods >= {"GET"}
    assert tile_server.ensure_routes() is True and tile_server.HOW == "st.App"
    import ast
    tree = ast.parse((APP.parent / "serve.py").read_text())  # what `streamlit run` discovers: app = st.App(...)
    assert any(isinstance(n, ast.Assign) and n.targets[0].id == "app" and isinstance(n.value, ast.Call)
               and ast.unparse(n.value.func) == "st.App" and ast.unparse(n.value.args[0]) == "'app.py'"
               for n in tree.body)
