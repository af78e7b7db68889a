"""Two browser sessions on one ``streamlit run`` server at the same time (issue #7, item 4): each
opens different pages while the other's script is running; both render without errors and each
shows its own page (no state crosses between them).

Reuses the server fixture and the helpers of ``tests/app/test_browser.py``.
"""
from __future__ import annotations

import time

import pytest

from tests.app.test_browser import CHROMIUM, CHROMIUM_ARGS, check, server, settle  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"),
]

#: (page path, title) pairs each session walks through, at the same time as the other.
ROUTE_A = [("explore", "Explore a tile"), ("slide", "Slide: deep zoom, two runs linked")]
ROUTE_B = [("consistency", "Explanation consistency"), ("train", "Retrain a model")]


def _title(page) -> str:
    return page.locator('[data-testid="stMain"] h1').first.inner_text()


def test_two_sessions_at_once_both_render(server):
    from playwright.sync_api import sync_playwright
    url, _, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        a = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        b = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        for (path_a, title_a), (path_b, title_b) in zip(ROUTE_A, ROUTE_B):
            t0 = time.monotonic()
            a.goto(f"{url}/{path_a}")  # returns once the page has loaded; its script runs on
            b.goto(f"{url}/{path_b}")  # the server while the other session starts its own
            settle(a)
            settle(b)
            check(a, f"session A {path_a}")
            check(b, f"session B {path_b}")
            assert title_a in _title(a) and title_b in _title(b), (_title(a), _title(b))
            print(f"\n{path_a} + {path_b} together: {time.monotonic() - t0:.1f}s")
        browser.close()
