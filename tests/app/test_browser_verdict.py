"""Browser tests of issue 17 (the verdict dashboard): a real ``streamlit run`` server on a copy of the
shipped sample data, Debian's chromium via Playwright, one test per page this issue changed
(Metrics, Explore, Report, Consistency, Train), each driving the new views and saving screenshots
under ``tests/app/screenshots/`` (the README ones are copied to ``docs/screenshots/``).

Evaluation results already computed beside the shipped runs (``eval_cache/``, e.g. by
``bench/verdict_shipped.py``) are copied with the data, so Metrics shows every test tile at once;
on a fresh clone the test computes them on fewer tiles to stay quick.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests._fixtures.browser import CHROMIUM, CHROMIUM_ARGS, settle, streamlit_server

REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(__file__).resolve().parent / "screenshots"
DOCS = REPO / "docs" / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"),
    pytest.mark.skipif(not (REPO / "sample_data" / "runs" / "synthetic-he").is_dir(), reason="no shipped runs"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``(url, cached)`` of a server on a copy of the shipped data (``cached``: results were copied)."""
    tmp = tmp_path_factory.mktemp("verdict-browser")
    sample = tmp / "sample_data"
    shutil.copytree(REPO / "sample_data", sample, ignore=shutil.ignore_patterns("checkpoint", "attributions"))
    cached = any(sample.glob("runs/synthetic-he/*/eval_cache/*.json"))
    env = {**os.environ, "INTERP_SAMPLE_DATA": str(sample), "INTERP_RUNS_DIR": str(tmp / "runs"),
           "INTERP_DATA_DIR": str(tmp / "data"), "PYTHONPATH": str(REPO)}
    with streamlit_server(tmp, env) as url:
        yield url, cached


@pytest.fixture()
def page(server):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1440, "height": 900}, accept_downloads=True)
        yield pg
        browser.close()


def check(page, name: str) -> None:
    exc = page.locator('[data-testid="stException"]')
    assert exc.count() == 0, f"{name}: {exc.first.inner_text()[:500]}"
    assert "Something went wrong" not in page.locator('[data-testid="stMain"]').inner_text(), name


def shoot(page, name: str, *, full: bool = True, docs: str | None = None) -> Path:
    """A screenshot of the main area (grown to its height when ``full``), optionally copied to the docs."""
    if full:
        height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
        page.set_viewport_size({"width": 1440, "height": int(min(max(900, height + 40), 6000))})
    time.sleep(1.0)
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    if docs:
        from PIL import Image
        DOCS.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").save(DOCS / docs, optimize=True)
    page.set_viewport_size({"width": 1440, "height": 900})
    return path


def clip_from(page, text: str, name: str, height: int = 1100, docs: str | None = None, above: int = 20) -> Path:
    """A screenshot of ``height`` pixels of the page starting ``above`` pixels over the first element
    holding ``text``."""
    total = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1440, "height": int(min(max(900, total + 40), 8000))})
    time.sleep(1.0)
    box = page.get_by_text(text, exact=False).first.bounding_box()
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), clip={"x": 250, "y": max(0, box["y"] - above), "width": 1180, "height": height})
    if docs:
        from PIL import Image
        DOCS.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").save(DOCS / docs, optimize=True)
    page.set_viewport_size({"width": 1440, "height": 900})
    return path


def _set_tiles(page, label: str, n: int) -> None:
    box = page.get_by_test_id("stNumberInputField").and_(page.get_by_label(label, exact=True))
    box.fill(str(n))
    box.press("Enter")
    settle(page)


TILES = "Tiles (N of the split, each class in turn)"


def test_metrics_states_what_retraining_improved_and_worsened(server, page):
    url, cached = server
    page.goto(f"{url}/metrics")
    settle(page)
    check(page, "metrics")
    if not cached:
        _set_tiles(page, TILES, 60)
    compute = page.get_by_role("button", name=re.compile("Compute for"))
    if compute.count():
        compute.click()
        settle(page, timeout=600)
    check(page, "metrics after compute")
    main = page.locator('[data-testid="stMain"]')
    text = main.inner_text()
    assert "Did retraining help?" in text
    assert re.search(r"scaat against baseline-erm \(\d+ tiles, paired; 95% intervals\)", text), text[:2000]
    assert re.search(r"ece against baseline-erm", text)
    assert "Better" in text or "Worse" in text or "no clear change" in text
    worse = main.locator('span', has_text=re.compile("^Worse$"))
    if worse.count():  # worse is written in red
        colour = worse.first.evaluate("e => getComputedStyle(e).color")
        r, g, b = (int(v) for v in re.findall(r"\d+", colour)[:3])
        assert r > 150 and g < 120 and b < 120, colour
    assert "±" not in text
    assert page.locator('[data-testid="stPlotlyChart"]').count() >= 6
    clip_from(page, "Did retraining help?", "metrics-verdict", height=1250, docs="metrics-verdict.png")
    shoot(page, "metrics-full")


def test_explore_shows_change_maps_and_clickable_thumbnails(server, page):
    url, _ = server
    page.goto(f"{url}/explore")
    settle(page)
    check(page, "explore")
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert "change: scaat - baseline-erm" in text and "change: ece - baseline-erm" in text
    assert "shares of the row's largest value" in text and "centred on 0" in text
    tile_box = page.get_by_role("combobox", name="Tile shown")
    shown = tile_box.input_value()
    # click the 4th thumbnail of the gallery (a clickable picture, not the button under it)
    grid = page.locator('[data-testid="stPlotlyChart"]').first
    grid.scroll_into_view_if_needed()
    box = grid.locator(".nsewdrag").first.bounding_box()
    cell = box["width"] / 12
    page.mouse.click(box["x"] + 3.5 * cell, box["y"] + box["height"] / 2)
    settle(page)
    check(page, "explore after a thumbnail click")
    after = tile_box.input_value()
    assert after != shown and after.startswith("#3 "), (shown, after)
    # a tumour tile (marked evidence): the share of relevance inside it is given under every map
    tile_box.click()
    tile_box.fill("#150 ")
    time.sleep(0.5)
    page.keyboard.press("Enter")
    settle(page)
    check(page, "explore on a tumour tile")
    assert "Relevance" in page.locator('[data-testid="stMain"]').inner_text()
    assert "inside the evidence" in page.locator('[data-testid="stMain"]').inner_text()
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download this figure (PNG)").click()
    png = SHOTS / "explore-download.png"
    SHOTS.mkdir(parents=True, exist_ok=True)
    dl.value.save_as(str(png))
    from PIL import Image
    assert Image.open(png).size[0] > 600  # tile + 3 models + 2 change maps + scales
    # the README's picture: the tile's title, its predictions, the maps and the change maps
    clip_from(page, "Per-tile metrics under each map", "explore-change", height=1150, docs="explore-change.png",
              above=380)
    shoot(page, "explore-full")


def test_report_opens_with_the_verdict(server, page):
    url, cached = server
    page.goto(f"{url}/report")
    settle(page)
    check(page, "report")
    if not cached:
        _set_tiles(page, TILES, 60)
    page.get_by_role("button", name="Build the report").click()
    settle(page, timeout=600)
    check(page, "report built")
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert "Report ready" in text and "scaat against baseline-erm" in text
    page.get_by_text("Preview the report here").click()
    settle(page)
    frame = page.frame_locator("iframe").first
    head = frame.locator("h2").first.inner_text()
    assert head.startswith("Did retraining help? (against baseline-erm)"), head
    assert frame.locator("table.changes tr").count() > 10
    page.locator("iframe").first.scroll_into_view_if_needed()
    time.sleep(1.5)
    page.set_viewport_size({"width": 1440, "height": 1300})
    page.locator("iframe").first.scroll_into_view_if_needed()
    time.sleep(1.0)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("iframe").first.screenshot(path=str(SHOTS / "report-verdict.png"))
    from PIL import Image
    DOCS.mkdir(parents=True, exist_ok=True)
    Image.open(SHOTS / "report-verdict.png").convert("RGB").save(DOCS / "report-verdict.png", optimize=True)


def test_consistency_background_and_ece_section(server, page):
    url, _ = server
    page.goto(f"{url}/consistency")
    settle(page)
    check(page, "consistency")
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert "tinted blue, outlined" in text and "Weights, last refresh" in text
    box = page.get_by_role("combobox", name="ECE model")
    assert box.input_value() == "synthetic-he / ece"
    for _ in range(3):  # the dropdown can close again when the section below finishes drawing
        box.click()
        try:
            page.get_by_role("listbox").wait_for(timeout=5000)
            break
        except Exception:
            page.keyboard.press("Escape")
            settle(page)
    listed = page.get_by_role("listbox").inner_text()
    page.keyboard.press("Escape")
    assert "synthetic-he / ece" in listed and "ihc" not in listed and "biased" not in listed, listed
    shoot(page, "consistency")


def test_train_finished_job_opens_metrics_against_its_parent(server, page):
    url, _ = server
    page.goto(f"{url}/train")
    settle(page)
    check(page, "train")
    assert page.get_by_role("combobox", name="Start from").input_value() == "baseline-erm"  # no dataset prefix
    ep = page.get_by_test_id("stNumberInputField").and_(page.get_by_label("Epochs", exact=True))
    ep.fill("1")
    ep.press("Enter")
    settle(page)
    page.get_by_role("button", name="Start training").click()
    deadline = time.monotonic() + 400
    while "Final validation accuracy" not in page.locator('[data-testid="stMain"]').inner_text():
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(2)
    settle(page)
    shoot(page, "train-finished")
    page.get_by_role("button", name=re.compile("Compare with baseline-erm on Metrics")).click()
    settle(page, timeout=600)
    check(page, "metrics from train")
    assert "Metrics across models" in page.locator("h1").first.inner_text()
    assert page.get_by_role("combobox", name="Compare against (reference)").input_value() == \
        "synthetic-he / baseline-erm"
    chips = page.locator('[data-testid="stSidebar"] [data-testid="stMultiSelect"]').inner_text()
    assert "baseline-erm" in chips and "(yours)" in chips
    widths = page.evaluate("""() => [...document.querySelectorAll('[data-testid="stSidebar"] [data-tag] > span')]
        .map(e => [e.textContent, e.scrollWidth - e.clientWidth])""")
    assert len(widths) == 2 and any("(yours)" in t for t, _ in widths), widths
    assert all(d <= 1 for _, d in widths), widths  # every run name is shown whole, none cut with "..."
    shoot(page, "metrics-from-train")


def test_explore_reference_filter_upload_grid_and_png(server, page, tmp_path):
    """The Explore flow a pathologist walks: another reference for the change columns, a class filter
    that moves the tile shown, a large upload cut into the model's tiles where a click picks one, and
    the PNG download (tile, predictions, colour scales and relevance shares)."""
    import numpy as np
    from PIL import Image
    url, _ = server
    page.goto(f"{url}/explore")
    settle(page)
    ref = page.get_by_role("combobox", name="Compare against (reference)")
    assert ref.input_value() == "synthetic-he / baseline-erm"
    ref.click()
    ref.fill("synthetic-he / scaat")  # typed: a redraw of the page can close an open dropdown
    time.sleep(0.5)
    page.keyboard.press("Enter")
    settle(page)
    check(page, "explore, reference scaat")
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert "change: baseline-erm - scaat" in text and "change: ece - scaat" in text
    assert "share of the row's maximum" in text
    # the class filter moves the tile shown to a tile of that class
    tile_box = page.get_by_role("combobox", name="Tile shown")
    assert "normal" in tile_box.input_value()
    page.locator('[data-testid="stMultiSelect"]', has_text="normal").get_by_role("button", name="Remove normal") \
        .first.click()
    settle(page)
    assert "tumor" in tile_box.input_value(), tile_box.input_value()
    # a large upload: the whole image with the tile grid; a click picks a tile
    tiles = sorted((REPO / "sample_data" / "data" / "synthetic-he" / "test" / "tumor").glob("*.png"))[:6]
    big = np.vstack([np.hstack([np.asarray(Image.open(t).convert("RGB")) for t in tiles[r * 3:(r + 1) * 3]])
                     for r in range(2)])  # 2 x 3 tiles of 64 px
    path = tmp_path / "large-upload.png"
    Image.fromarray(big).save(path)
    page.get_by_text("Upload an image", exact=True).click()
    settle(page)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(path))
    settle(page)
    check(page, "explore, large upload")
    assert "click a tile to explain it" in page.locator('[data-testid="stMain"]').inner_text()
    choice = page.get_by_role("combobox", name="Tile of the upload")
    before = choice.input_value()
    grid = page.locator('[data-testid="stPlotlyChart"]').first
    grid.scroll_into_view_if_needed()
    box = grid.locator(".nsewdrag").first.bounding_box()
    target = "row 2, column 3" if not before.startswith("row 2, column 3") else "row 1, column 1"
    r, c = (1, 2) if target == "row 2, column 3" else (0, 0)
    page.mouse.click(box["x"] + (c + 0.5) * box["width"] / 3, box["y"] + (r + 0.5) * box["height"] / 2)
    settle(page)
    check(page, "explore, upload tile clicked")
    assert choice.input_value().startswith(target), (before, choice.input_value())
    assert ref.input_value() == "synthetic-he / scaat"  # the reference chosen is kept across the upload
    assert "change: baseline-erm - scaat" in page.locator('[data-testid="stMain"]').inner_text()
    shoot(page, "explore-upload")
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download this figure (PNG)").click()
    png = SHOTS / "explore-upload-download.png"
    dl.value.save_as(str(png))
    w, h = Image.open(png).size
    assert w > 1000 and h > 600, (w, h)  # tile + 3 models + 2 change maps + 2 scales; predictions + 2 methods
