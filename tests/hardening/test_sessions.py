"""Concurrency of dashboard sessions (issue #7, item 4): several sessions at once share no mutable
state, the job queue is bounded with a clear message, every job's files are its own, and the
cached (shared) models are not changed by attribution.

AppTest is not made for threads: every ``run()`` swaps the process-wide ``Runtime`` instance and
patches ``config.get_option`` for its duration, and the first session to finish would undo them
under the others. ``parallel_apptest`` installs both once for the whole test (one shared mock
runtime, as a real server has one runtime for all its sessions) and turns the per-run swaps into
no-ops; everything else of a session (its session state, script runner and thread) is its own,
as on a real server.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path
from unittest.mock import MagicMock

import numpy as np
import pytest
import torch

from interp_core.attribution import list_methods


# -- model state ----------------------------------------------------------------------------------
def model_fingerprint(model: torch.nn.Module) -> dict:
    """Everything attribution must leave as it was: weights and buffers (hash), modes, flags, grads."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return {"weights": h.hexdigest(),
            "training": [m.training for m in model.modules()],
            "requires_grad": [p.requires_grad for p in model.parameters()],
            "grads": [p.grad is not None for p in model.parameters()]}


def test_compute_path_leaves_the_model_untouched(tiny_run, tiny_data):
    """Every per-tile computation of the dashboard (``interp_core.evaluation.tile_analysis``) on a loaded run's model, with
    every attribution method: eval mode, requires_grad flags, no ``.grad``, identical weights."""
    from interp_core.runs import load_run
    from interp_core.evaluation import tile_analysis as compute
    model = load_run(tiny_run).model
    before = model_fingerprint(model)
    assert not any(before["training"]) and all(before["requires_grad"]) and not any(before["grads"])
    rng = np.random.default_rng(0)
    image = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[5:15, 5:15] = True
    compute.predict_probs(model, image, 32)
    for method in list_methods():
        a = compute.explain_tile(model, image, 32, method, 1)
        compute.tile_metrics(model, image, 32, a, 1, mask)
        assert model_fingerprint(model) == before, method
    compute.tile_consistency(model, image, 32, None, eps=8 / 255, steps=2, threshold="0.5")
    assert model_fingerprint(model) == before, "consistency"


# -- thread-safe AppTest ---------------------------------------------------------------------------
@pytest.fixture()
def parallel_apptest(h, monkeypatch):
    """AppTest sessions that can run in threads at the same time (see the module docstring)."""
    from streamlit.runtime import Runtime
    from streamlit.runtime.caching.storage.dummy_cache_storage import MemoryCacheStorageManager
    from streamlit.runtime.forward_msg_queue import ForwardMsgQueue  # noqa: F401  (import side effects)
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.testing.v1 import app_test, util
    from streamlit import config

    try:
        from streamlit.components.v2.component_manager import BidiComponentManager
    except ImportError:  # pragma: no cover
        BidiComponentManager = None
    from streamlit.runtime.dataframe_source_manager import DataframeSourceManager

    shared = MagicMock(spec=Runtime)
    shared.media_file_mgr = MediaFileManager(MemoryMediaFileStorage("/mock/media"))
    shared.dataframe_source_mgr = DataframeSourceManager()
    shared.cache_storage_manager = MemoryCacheStorageManager()
    if BidiComponentManager is not None:
        bidi = BidiComponentManager()
        bidi.discover_and_register_components(start_file_watching=False)
        shared.bidi_component_registry = bidi

    class _PerRunRuntime(Runtime):
        """What AppTest assigns its per-run mock to: a subclass, so the real Runtime keeps ``shared``."""

    monkeypatch.setattr(app_test, "Runtime", _PerRunRuntime)
    monkeypatch.setattr(Runtime, "_instance", shared)
    monkeypatch.setattr(app_test, "patch_config_options", lambda overrides: contextlib.nullcontext())
    monkeypatch.setattr(config, "get_option", util.build_mock_config_get_option({"global.appTest": True}))
    yield h


def _in_threads(*sessions):
    """Run each callable in its own thread, all started together; re-raise the first failure."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(sessions))

    def wrap(fn):
        def run():
            try:
                barrier.wait()
                fn()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a session hung"
    if errors:
        raise errors[0]


def _overlays(at) -> list[str]:
    return [c for img in at.image for c in img.captions if "explains" in c]


@pytest.mark.slow
def test_parallel_sessions_share_no_state(parallel_apptest, app_env):
    """Five sessions at once: two explore different tiles with different methods, one evaluates,
    two start training jobs. No value of one session appears in another, each job has its own
    folder and run, and the shared cached models are unchanged afterwards."""
    h = parallel_apptest
    sessions = {name: h.open_page(page) for name, page in
                (("explore_a", "explore"), ("explore_b", "explore"), ("metrics", "metrics"),
                 ("train_a", "train"), ("train_b", "train"))}
    from interp_core import catalog
    from ui import cache
    refs = [cache.ref(r, "auto") for r in catalog.list_runs(catalog.list_datasets())]
    models = {r.key: r.load() for r in refs}
    before = {k: model_fingerprint(m.model) for k, m in models.items()}

    def explore(at, tile: int, method: str):
        def go():
            at.button(key=f"explore.pick.test.{tile}").click().run()
            at.multiselect(key="explore.methods").set_value([method]).run()
            h.assert_clean(at)
        return go

    def metrics(at):
        def go():
            at.number_input(key="metrics.limit").set_value(6).run()
            at.button(key="metrics.compute").click().run()
            h.assert_clean(at)
        return go

    def train(at, name: str):
        def go():
            at.selectbox(key="train.objective").set_value("erm").run()
            at.number_input(key="train.epochs").set_value(1).run()
            at.number_input(key="train.batch").set_value(8).run()
            at.text_input(key="train.name.erm").set_value(name).run()
            at.button(key="train.start").click().run()
            h.assert_clean(at)
        return go

    s = sessions
    _in_threads(explore(s["explore_a"], 3, "input_x_gradient"), explore(s["explore_b"], 5, "gradcam"),
                metrics(s["metrics"]), train(s["train_a"], "conc-a"), train(s["train_b"], "conc-b"))

    a, b = s["explore_a"], s["explore_b"]
    assert a.selectbox(key="explore.tile").value == 3 and b.selectbox(key="explore.tile").value == 5
    assert a.session_state["explore.methods"] == ["input_x_gradient"]
    assert b.session_state["explore.methods"] == ["gradcam"]
    assert len(_overlays(a)) == 3 and len(_overlays(b)) == 3
    values = s["metrics"].dataframe[-1].value  # the Values table (a column per model), after the verdict's
    assert all(any(m in str(c) for c in values.columns) for m in ("baseline", "scaat", "ece")), list(values.columns)
    # what one session set is not in the others' state
    assert "metrics.limit" not in a.session_state and "metrics.limit" not in s["train_a"].session_state
    assert "explore.methods" not in s["metrics"].session_state and "explore.methods" not in s["train_b"].session_state
    ok_a = [m.value for m in s["train_a"].success]
    ok_b = [m.value for m in s["train_b"].success]
    assert any("conc-a" in m for m in ok_a) and not any("conc-b" in m for m in ok_a), ok_a
    assert any("conc-b" in m for m in ok_b) and not any("conc-a" in m for m in ok_b), ok_b

    from interp_core.jobs.queue import JobManager
    mgr = JobManager(catalog.jobs_root())
    deadline = time.monotonic() + 240
    while any(j.active for j in mgr.list()):
        assert time.monotonic() < deadline, [(j.run_dir.name, j.state, mgr.log_tail(j.id)) for j in mgr.list()]
        time.sleep(0.5)
    jobs = mgr.list()
    assert sorted(j.run_dir.name for j in jobs) == ["conc-a", "conc-b"]
    assert all(j.state == "finished" for j in jobs), [(j.state, j.message) for j in jobs]
    assert len({j.id for j in jobs}) == 2 and len({j.run_dir for j in jobs}) == 2
    for j in jobs:  # each job's bookkeeping and run are its own
        folder = catalog.jobs_root() / j.id
        assert {p.name for p in folder.iterdir()} == {"job.json", "stdout.log", "stderr.log"}
        assert (j.run_dir / "model.safetensors").is_file()
        assert j.run_dir.parent == catalog.user_runs_root()

    for key, loaded in models.items():  # the shared cached models: same objects, unchanged
        assert cache.ref(next(r for r in catalog.list_runs() if r.key == key), "auto").load() is loaded
        assert model_fingerprint(loaded.model) == before[key], key


def test_train_page_refuses_when_the_queue_is_full(h, app_env):
    """With one job running and the queue full (8 waiting), starting another gives a clear message
    and creates nothing."""
    from interp_core.jobs.process import proc_stat
    from interp_core.jobs.queue import JOB_FILE
    from interp_core.runs import write_json
    from interp_core import catalog
    root = catalog.jobs_root()
    root.mkdir(parents=True, exist_ok=True)
    sleeper = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        now = time.time()
        for i in range(9):
            job_id = f"20000101-00000{i}-fake{i:04d}"
            (root / job_id).mkdir()
            running = i == 0
            write_json(root / job_id / JOB_FILE, {
                "id": job_id, "run_dir": str(catalog.user_runs_root() / f"fake{i}"), "args": ["--epochs", "1"],
                "state": "running" if running else "queued", "created": now + i, "started": now if running else None,
                "ended": None, "pid": sleeper.pid if running else None,
                "pid_start": proc_stat(sleeper.pid)[1] if running else None, "returncode": None, "message": "",
                "command": None})
        before = sorted(p.name for p in root.iterdir() if p.name != ".lock")
        at = h.open_page("train")
        at.selectbox(key="train.objective").set_value("erm").run()
        at.text_input(key="train.name.erm").set_value("one-too-many").run()
        at.button(key="train.start").click().run()
        h.assert_clean(at)
        errors = [e.value for e in at.error]
        assert any("queue is full" in e and "1 running, 8 waiting" in e for e in errors), errors
        assert sorted(p.name for p in root.iterdir() if p.name != ".lock") == before
        assert not (catalog.user_runs_root() / "one-too-many").exists()
    finally:
        os.killpg(sleeper.pid, 9)
        sleeper.wait()
