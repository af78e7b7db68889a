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
    from interp_core.wsi import write_pyramid_tiff
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


def test_slide_page_tiles_a_whole_slide_file(app_tree):
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    _clean(at)
    at.switch_page("pages/slide.py").run()
    _clean(at)
    at.segmented_control(key="slide.source").set_value("file").run()
    _clean(at)
    assert at.selectbox(key="slide.file").value == str(app_tree / "slides" / "case.tiff")
    assert at.selectbox(key="slide.level").options == ["0: 200x136 px", "1: 100x68 px"]
    at.selectbox(key="slide.method").set_value("saliency").run()
    _clean(at)
    captions = " ".join(c.value for c in at.caption)
    # 16-pixel tiles (the run's input): 9 x 13 = 117; glass for x < 72 leaves columns 4..12 (column 4
    # holds 8 of 16 tissue columns, above min_tissue 10%) in all 9 rows: 81 tissue tiles
    assert "case.tiff: 200x136 pixels" in captions and "81 of 117 tiles computed" in captions
    assert len(at.get("plotly_chart")) == 1
    at.selectbox(key="slide.level").set_value(1).run()
    _clean(at)
    captions = " ".join(c.value for c in at.caption)
    assert "case.tiff: 100x68 pixels" in captions and "of 35 tiles computed" in captions
    at.number_input(key="slide.max_tiles").set_value(5).run()
    _clean(at)
    assert "5 of 35 tiles computed" in " ".join(c.value for c in at.caption)
    at.text_input(key="slide.path").input(str(app_tree / "missing.svs")).run()
    _clean(at)
    assert any("no such" in e.value for e in at.error)
