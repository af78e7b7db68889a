"""Browser test of the Slide page's deep-zoom viewer: a real ``streamlit run`` server (on a copy of the
shipped sample data) and Debian's chromium. It opens the shipped synthetic slide, explains it with the
default pair of runs in the background, zooms one viewer with the mouse wheel (deeper Deep Zoom
tiles are requested from the tile route and drawn), checks the other viewer followed, pans the
other one, clicks a tile for its detail and saves screenshots (``tests/app/screenshots/slide-*.png``;
the zoomed, linked viewers also to ``docs/screenshots/slide-viewer.png``)."""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests._fixtures.browser import CHROMIUM, CHROMIUM_ARGS, settle, streamlit_server, viewer_frame, wait_for

REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(__file__).resolve().parent / "screenshots"
DOCS = REPO / "docs" / "screenshots"
SLIDE = REPO / "sample_data" / "slides" / "synthetic-he.tiff"
VIEWER_JS = REPO / "ui" / "slide_viewer" / "node_modules" / "openseadragon" / "build" / "openseadragon"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                       "(`make test` installs it with apt-get install chromium)"),
    pytest.mark.skipif(not SLIDE.is_file() or not (REPO / "sample_data" / "runs" / "synthetic-he").is_dir(),
                       reason="needs the shipped synthetic slide and synthetic-he runs (make sample-data)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not (VIEWER_JS / "openseadragon.min.js").is_file():
        pytest.fail("OpenSeadragon is not installed: run `make viewer` (npm install in ui/slide_viewer)")
    tmp = tmp_path_factory.mktemp("slide-browser")
    sample = tmp / "sample_data"
    shutil.copytree(REPO / "sample_data", sample, ignore=shutil.ignore_patterns("eval_cache", "checkpoint", "slides"))
    (sample / "slides").mkdir()
    shutil.copy(SLIDE, sample / "slides" / SLIDE.name)
    for extra in (sample / "runs").glob("*/*/slides"):
        shutil.rmtree(extra)  # results computed in the source tree: this test computes its own
    env = {**os.environ, "INTERP_SAMPLE_DATA": str(sample), "INTERP_RUNS_DIR": str(tmp / "runs"),
           "INTERP_DATA_DIR": str(tmp / "data"), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("INTERP_SLIDES_DIR", None)
    with streamlit_server(tmp, env, script="serve.py") as url:  # st.App: the tile route without internals
        yield url


def check(page, name: str) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, f"{name}: {exceptions.first.inner_text()[:500]}"


VIEW = "(i) => { const v = window.__viewers[i].viewport; const c = v.getCenter(); return [v.getZoom(), c.x, c.y]; }"
DRAWN = ("(i) => window.__viewers[i].world.getItemAt(0).getTilesToDraw().map(t => t.tile.level)")
FULLY = "(i) => window.__viewers[i].world.getItemAt(0).getFullyLoaded()"


def shoot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"slide-{name}.png"
    page.screenshot(path=str(path))
    return path


def test_linked_deep_zoom_viewers(server):
    from playwright.sync_api import sync_playwright
    url = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1250})
        tiles: list[tuple[int, str]] = []  # (Deep Zoom level, kind) of every tile the viewers requested
        bad: list[str] = []

        def on_response(r):
            m = re.search(r"/_interp/wsi/[0-9a-f]+/(tiles|overlay/[0-9a-f]+)/(\d+)/\d+_\d+\.(jpeg|webp)", r.url)
            if m:
                tiles.append((int(m.group(2)), m.group(1).split("/")[0]))
                if r.status != 200:
                    bad.append(f"{r.status} {r.url}")

        page.on("response", on_response)
        t0 = time.monotonic()
        page.goto(f"{url}/slide")
        settle(page)
        check(page, "slide")
        frame = viewer_frame(page)
        wait_for(lambda: frame.evaluate(FULLY, 0), 60, "the slide's first tiles")
        first_view = time.monotonic() - t0
        assert "baseline-erm" in frame.locator("#title-0").inner_text()  # the default pair: baseline vs SCAAT
        assert "scaat" in frame.locator("#title-1").inner_text()
        assert frame.locator(".scalebar").first.inner_text().strip().endswith(("µm", "mm"))

        # explain in the background; the viewers fill in and say "done"
        page.get_by_role("button", name="Explain the slide").click()
        wait_for(lambda: "done" in frame.locator("#title-0").inner_text()
                 and "done" in frame.locator("#title-1").inner_text(), 600, "both explain-slide jobs")
        settle(page)
        check(page, "slide explained")
        frame = viewer_frame(page)
        wait_for(lambda: any(k == "overlay" for _, k in tiles), 60, "overlay tiles")
        shoot(page, "explained")

        # zoom the left viewer with the mouse wheel: deeper levels are requested and drawn
        top = max(lv for lv, k in tiles if k == "tiles")
        before = frame.evaluate(VIEW, 0)
        box = frame.locator("#osd-0").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5)
        for _ in range(12):
            page.mouse.wheel(0, -300)
            time.sleep(0.3)
        wait_for(lambda: frame.evaluate(FULLY, 0) and frame.evaluate(FULLY, 1), 60, "the zoomed tiles")
        time.sleep(1.0)
        after = frame.evaluate(VIEW, 0)
        assert after[0] > before[0] * 8, (before, after)
        deeper = [lv for lv, k in tiles if k == "tiles" and lv > top]
        assert deeper, f"no tile deeper than level {top} was requested: {sorted(set(tiles))}"
        assert max(frame.evaluate(DRAWN, 0)) > top and max(frame.evaluate(DRAWN, 1)) > top
        other = frame.evaluate(VIEW, 1)  # the right viewer followed
        assert other == pytest.approx(after, rel=1e-6, abs=1e-9)
        zoomed = shoot(page, "zoomed")

        # pan the right viewer by dragging: the left one follows
        box1 = frame.locator("#osd-1").bounding_box()
        cx, cy = box1["x"] + box1["width"] / 2, box1["y"] + box1["height"] / 2
        page.mouse.move(cx, cy)
        page.mouse.down()
        page.mouse.move(cx - 150, cy - 80, steps=10)
        page.mouse.up()
        time.sleep(1.5)
        left, right = frame.evaluate(VIEW, 0), frame.evaluate(VIEW, 1)
        assert right[1] > after[1] and right[2] > after[2]  # dragging left/up moves the view right/down
        assert left == pytest.approx(right, rel=1e-6, abs=1e-9)
        assert not bad, bad[:5]

        # zoom back out for the README screenshot; then click a tile: its detail opens below
        frame.evaluate("() => { window.__viewers[0].viewport.goHome(true); }")
        page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5)
        for _ in range(2):
            page.mouse.wheel(0, -300)
            time.sleep(0.4)
        wait_for(lambda: frame.evaluate(FULLY, 0) and frame.evaluate(FULLY, 1), 60, "tiles after zooming out")
        time.sleep(1.5)
        shoot(page, "linked")
        page.mouse.click(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5)
        settle(page)
        check(page, "tile detail")
        assert page.get_by_text(re.compile(r"Tile row \d+, column \d+")).count() == 1
        assert page.locator('[data-testid="stImage"] img').count() >= 4  # tile, two maps, change view
        assert page.get_by_role("button", name="Open this tile in Explore").count() == 1
        page.get_by_role("button", name="Open this tile in Explore").click()
        settle(page)
        check(page, "explore from slide")
        assert "Explore" in page.locator("h1").first.inner_text()
        browser.close()
    print(f"\nslide page: first view of the slide {first_view:.1f} s")
    from PIL import Image
    DOCS.mkdir(parents=True, exist_ok=True)
    im = Image.open(zoomed).convert("RGB")
    im = im.crop((300, 0, im.width, im.height))  # without the sidebar; 256 colours keep the file small
    im.quantize(256, method=Image.Quantize.MEDIANCUT).save(DOCS / "slide-viewer.png", optimize=True)
