"""Browser-test helpers shared by every Playwright test: Debian's chromium, a Streamlit server on a
free port (started, health-checked, stopped), and waiting for a page to finish running."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(tmp: Path, env: dict[str, str], script: str = "app.py") -> Iterator[str]:
    """``streamlit run SCRIPT`` (``app.py``, or ``serve.py``: the same app with the Slide page's tile route)
    with ``env`` on a free port (log in ``tmp/server.log``); yields its URL once ``/_stcore/health``
    answers, and stops the server on exit."""
    port = free_port()
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", script, "--server.port", str(port),
                             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def settle(page, timeout: float = 300.0) -> None:
    """Wait until the page has a title and Streamlit has stopped running (the status widget detached,
    then three quiet polls)."""
    page.wait_for_selector('[data-testid="stMain"] h1', timeout=timeout * 1000)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=timeout * 1000)
    quiet, deadline = 0, time.monotonic() + timeout
    while quiet < 3:
        if time.monotonic() > deadline:
            raise AssertionError("the page kept running")
        state = page.get_attribute('[data-testid="stApp"]', "data-test-script-state")
        busy = page.locator('[data-testid="stStatusWidget"]').count()
        quiet = quiet + 1 if state == "notRunning" and busy == 0 else 0
        time.sleep(0.4)


def wait_for(fn, timeout: float, what: str):
    """``fn()``'s first truthy value, polled every 0.5 s; an ``AssertionError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def viewer_frame(page, timeout: float = 60):
    """The Slide page's viewer iframe once both OpenSeadragon viewers have their slide."""
    def find():
        for f in page.frames:
            if "slide_viewer" in f.url:
                try:
                    if f.evaluate("() => !!(window.__viewers && window.__viewers.length === 2 && "
                                  "window.__viewers[0].world.getItemAt(0))"):
                        return f
                except Exception:  # noqa: BLE001 - the frame is still loading
                    pass
        return None
    return wait_for(find, timeout, "the viewer component")
