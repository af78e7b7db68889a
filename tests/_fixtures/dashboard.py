"""Fixtures of the dashboard tests: a tiny sample-data tree (datasets with and without masks and
groups, a baseline, its SCAAT and ECE retrains) and AppTest helpers.

``tests/conftest.py`` registers ``app_tree``, ``app_env`` and ``h`` for every test folder (the
session tree is built once per session); the autouse ``_threads`` is imported only by the
``conftest.py`` of the folders that drive the app (``tests/app``, ``tests/hardening``).

The app finds its data through ``INTERP_SAMPLE_DATA`` / ``INTERP_RUNS_DIR`` / ``INTERP_DATA_DIR``,
so the tests never touch the repository's ``sample_data/`` or ``runs/``.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app.py"  # tests/_fixtures/ -> repository root
TIMEOUT = 180


def _train(data: Path, out: Path, objective: str, epochs: int, init: Path | None = None, **opts) -> Path:
    from interp_core.training import TrainConfig, train
    train(TrainConfig(data=str(data), out=str(out), objective=objective, epochs=epochs, batch_size=8,
                      init=str(init) if init else None, objective_options=opts),
          progress=False, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def app_tree(tmp_path_factory) -> Path:
    """``ROOT/sample_data/{data,runs}``, ``ROOT/runs`` (user runs, empty) and ``ROOT/data`` (user data)."""
    from interp_core.testing import make_tiny_dataset
    root = tmp_path_factory.mktemp("app")
    data = root / "sample_data" / "data"
    he = make_tiny_dataset(data / "synthetic-he", n_per_class=8, size=32, classes=("normal", "tumor"))
    make_tiny_dataset(root / "data" / "plain", n_per_class=6, size=32, classes=("normal", "tumor"),
                      masks=False, groups=False, splits=("train", "test"), seed=1)
    runs = root / "sample_data" / "runs" / "synthetic-he"
    base = _train(he, runs / "baseline", "erm", 3)
    _train(he, runs / "scaat", "scaat", 1, init=base)
    _train(he, runs / "ece", "ece", 1, init=base, warmup_epochs=0, steps=1)
    (root / "runs").mkdir()
    return root


@pytest.fixture()
def app_env(app_tree, monkeypatch) -> Path:
    """Point the app at the tiny tree (user runs reset for every test)."""
    user_runs = app_tree / "runs"
    for p in user_runs.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    monkeypatch.setenv("INTERP_SAMPLE_DATA", str(app_tree / "sample_data"))
    monkeypatch.setenv("INTERP_RUNS_DIR", str(user_runs))
    monkeypatch.setenv("INTERP_DATA_DIR", str(app_tree / "data"))
    import streamlit as st
    st.cache_data.clear()
    st.cache_resource.clear()
    return app_tree


def new_app():
    from streamlit.testing.v1 import AppTest
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT)


def open_page(page: str | None = None):
    """A fresh AppTest on ``pages/<page>.py`` (or Home), run once and checked."""
    at = new_app().run()
    assert_clean(at)
    if page:
        at.switch_page(f"pages/{page}.py").run()
        assert_clean(at)
    return at


def assert_clean(at) -> None:
    """No exception box and no 'something went wrong' error on the page."""
    assert not at.exception, [e.value for e in at.exception]
    bad = [e.value for e in at.error if "Something went wrong" in str(e.value)]
    assert not bad, bad


def wait_until(at, predicate, timeout: float = 120.0, every: float = 1.0):
    """Re-run the app until ``predicate(at)`` holds (for background jobs)."""
    deadline = time.monotonic() + timeout
    while True:
        at.run()
        assert_clean(at)
        if predicate(at):
            return at
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the app")
        time.sleep(every)


class Helpers:
    """The helpers above as a fixture (test modules cannot import conftest under importlib mode)."""

    new_app = staticmethod(new_app)
    open_page = staticmethod(open_page)
    assert_clean = staticmethod(assert_clean)
    wait_until = staticmethod(wait_until)


@pytest.fixture()
def h(app_env, monkeypatch) -> Helpers:
    """Helpers, with the app pointed at the tiny tree and AppTest in ``st.navigation`` mode.

    A real server leaves the legacy ``pages/`` mode for good at its first run (``ui.shell``);
    AppTest resets that before every run, which would cost each run an extra rerun that drops
    button clicks. Its PagesManager is therefore told once per run that navigation is in use
    (``test_legacy_pages_mode_reruns_through_app`` covers the unpatched path).
    """
    from streamlit.runtime.pages_manager import PagesManager

    class NavigationPagesManager(PagesManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            PagesManager.uses_pages_directory = False

    monkeypatch.setattr("streamlit.testing.v1.app_test.PagesManager", NavigationPagesManager)
    yield Helpers()
    PagesManager.uses_pages_directory = None


@pytest.fixture(autouse=True)
def _threads():
    """Torch threads capped at 2 during a test and restored after (autouse where imported)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(n)
