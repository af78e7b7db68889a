"""Browser test: a real ``streamlit run`` server and Debian's chromium (via Playwright) open every
page, wait until Streamlit has finished running, check no exception box is shown and save a
screenshot of each page to ``tests/app/screenshots/``.

With the shipped sample data (``sample_data/runs`` present) the server works on a copy of it
and the Explore and Metrics screenshots are also copied to ``docs/screenshots/`` for the README;
without it, a copy of the tiny test tree is used and the docs are left alone.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests._fixtures.browser import CHROMIUM, CHROMIUM_ARGS, settle, streamlit_server

REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(__file__).resolve().parent / "screenshots"
DOCS = REPO / "docs" / "screenshots"
PAGES = ["home", "explore", "consistency", "metrics", "train", "slide", "report"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                       "(`make test` installs it with apt-get install chromium)"),
]


def _shipped_runs() -> bool:
    from interp_core.runs import find_runs
    return bool(find_runs(REPO / "sample_data" / "runs")) and (REPO / "sample_data" / "data").is_dir()


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    """``(base_url, shipped, cold_start_seconds)`` of a fresh server on a free port."""
    tmp = tmp_path_factory.mktemp("browser")
    shipped = _shipped_runs()
    source = REPO / "sample_data" if shipped else request.getfixturevalue("app_tree") / "sample_data"
    sample = tmp / "sample_data"  # a copy: the evaluation caches the test writes stay out of the source
    shutil.copytree(source, sample, ignore=shutil.ignore_patterns("eval_cache", "checkpoint"))
    env = {**os.environ, "INTERP_SAMPLE_DATA": str(sample), "INTERP_RUNS_DIR": str(tmp / "runs"),
           "INTERP_DATA_DIR": str(tmp / "data"), "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    with streamlit_server(tmp, env) as url:
        yield url, shipped, time.monotonic() - t0


def shoot(page, name: str) -> Path:
    """A screenshot of the whole main area (the viewport is grown to the content's height)."""
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1440, "height": int(min(max(900, height + 40), 4000))})
    time.sleep(0.8)
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1440, "height": 900})
    return path


def check(page, name: str) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, f"{name}: {exceptions.first.inner_text()[:500]}"
    assert "Something went wrong" not in page.locator('[data-testid="stMain"]').inner_text(), name


def test_every_page_renders_in_chromium(server):
    from playwright.sync_api import sync_playwright
    url, shipped, cold = server
    timings = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        for name in PAGES:
            t = time.monotonic()
            page.goto(f"{url}/" + ("" if name == "home" else name))
            settle(page)
            timings[name] = time.monotonic() - t
            check(page, name)
            shoot(page, name if name != "metrics" else "metrics-before")
            if name == "home":
                timings["cold start to first page"] = cold + timings["home"]
                page.get_by_role("button", name="Show me").click()  # the guided example opens Explore
                settle(page)
                check(page, "guided example")
                assert "Explore a tile" in page.locator("h1").first.inner_text()
                assert page.locator('[data-testid="stImage"] img').count() >= 5
                shoot(page, "explore-guided")
            elif name == "metrics":
                if not shipped:  # the shipped data keeps the default, every tile of the test split
                    box = page.get_by_test_id("stNumberInputField").and_(
                        page.get_by_label("Tiles (N of the split, each class in turn)", exact=True))
                    box.fill("10")
                    box.press("Enter")
                    settle(page)
                page.get_by_role("button", name="Compute for").click()
                settle(page, timeout=600)
                check(page, "metrics after compute")
                assert page.locator('[data-testid="stPlotlyChart"]').count() >= 6
                shoot(page, "metrics")
        browser.close()
    print("\nbrowser timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    if shipped:  # README screenshots: lossless, without the alpha channel
        from PIL import Image
        DOCS.mkdir(parents=True, exist_ok=True)
        for src, dst in (("explore-guided.png", "explore.png"), ("metrics.png", "metrics.png")):
            Image.open(SHOTS / src).convert("RGB").save(DOCS / dst, optimize=True)
