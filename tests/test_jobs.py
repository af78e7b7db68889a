"""Background training jobs (interp_core.jobs.queue): queue, states on disk, cancel, vanished processes.

Real ``train`` subprocesses on a 16-pixel toy dataset for the end-to-end cases; a fake
"interpreter" (a shell script that just sleeps) for the queue-mechanics cases, so they do not
pay torch's import time.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from interp_core.errors import InterpError
from interp_core.jobs.process import proc_stat, process_alive
from interp_core.jobs.queue import JOB_FILE, JobInfo, JobManager
from interp_core.runs import load_run, run_status, write_json
from interp_core.testing import make_tiny_dataset

TIMEOUT = 240


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("jobs") / "ds", size=16, n_per_class=8)


def train_args(data: Path, epochs: int = 1) -> list[str]:
    return ["--data", str(data), "--epochs", str(epochs), "--batch-size", "8", "--device", "cpu"]


def wait_for(mgr: JobManager, job_id: str, done, timeout: float = TIMEOUT) -> JobInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = mgr.get(job_id)
        if done(info):
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting on job {job_id}: {info}\n{mgr.log_tail(job_id)}")
        time.sleep(0.2)


def ended(info: JobInfo) -> bool:
    return not info.active


@pytest.fixture
def sleeper(tmp_path) -> tuple[str, Path]:
    """A fake interpreter: ignores its arguments, starts a child ``sleep`` (pid written to a file), waits."""
    pid_file = tmp_path / "grandchild.pid"
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > '{pid_file}'\nwait\n")
    script.chmod(0o755)
    return str(script), pid_file


def gone(pid: int) -> bool:
    """The process no longer runs (it may linger as a zombie of an init that does not reap)."""
    stat = proc_stat(pid)
    return stat is None or stat[0] in ("Z", "X")


# -- end to end ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_jobs_queue_then_both_finish(data, tmp_path):
    root, runs = tmp_path / "jobs", tmp_path / "runs"
    mgr = JobManager(root, max_running=1)
    a = mgr.submit(train_args(data), runs / "a")
    b = mgr.submit(train_args(data, epochs=2), runs / "b")
    assert (a.state, b.state) == ("running", "queued")
    assert b.pid is None and b.progress == {} and a.pid
    assert a.run_dir == (runs / "a").resolve()
    assert a.args == train_args(data)

    other = JobManager(root, max_running=1)  # another dashboard session on the same root
    assert [j.id for j in other.list()] == [b.id, a.id]  # newest first
    assert other.get(a.id).state in ("running", "finished")

    fa = wait_for(other, a.id, ended)
    fb = wait_for(mgr, b.id, ended)
    assert (fa.state, fa.returncode) == ("finished", 0), fa.message
    assert (fb.state, fb.returncode) == ("finished", 0), fb.message
    assert fb.started >= fa.ended  # max_running=1: b only started once a had ended
    assert fa.progress["state"] == "finished" and fb.progress["epochs"] == 2
    assert fa.fraction == 1.0

    for name, epochs in (("a", 1), ("b", 2)):
        run = load_run(runs / name)
        assert len(run.history) == epochs
        assert run_status(runs / name)["state"] == "finished"
    assert "epoch 2/2" in mgr.log_tail(b.id)
    assert json.loads((root / b.id / "stdout.log").read_text())["epochs"] == 2  # each job its own logs

    again = JobManager(root)  # state survives re-instantiation (e.g. a server restart)
    assert [(j.id, j.state, j.returncode) for j in again.list()] == [(b.id, "finished", 0), (a.id, "finished", 0)]
    with pytest.raises(InterpError, match="finished run"):
        again.submit(train_args(data), runs / "a")


@pytest.mark.slow
def test_cancel_running_job_kills_it_and_the_run_can_be_resubmitted(data, tmp_path):
    mgr = JobManager(tmp_path / "jobs", cancel_grace=5.0)
    run = tmp_path / "runs" / "long"
    job = mgr.submit(train_args(data, epochs=500), run)
    job = wait_for(mgr, job.id, lambda j: j.progress.get("state") == "running" or ended(j))
    assert job.state == "running", job.message
    assert job.progress["pid"] == job.pid and job.progress["epochs"] == 500
    assert 0.0 <= job.fraction < 1.0

    out = mgr.cancel(job.id)
    assert out.state == "cancelled" and out.ended is not None
    assert gone(job.pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(job.pid, 0)  # the whole process group
    assert run_status(run)["state"] == "stopped"  # no stale "running" left in the run
    assert JobManager(tmp_path / "jobs").get(job.id).state == "cancelled"

    resumed = mgr.submit(train_args(data, epochs=500), run)  # an unfinished run may be submitted again
    assert resumed.state == "running" and resumed.id != job.id
    assert mgr.cancel(resumed.id).state == "cancelled"


@pytest.mark.slow
def test_failing_job_reports_the_cli_error(tmp_path):
    mgr = JobManager(tmp_path / "jobs")
    job = mgr.submit(["--data", str(tmp_path / "no-such-data"), "--epochs", "1", "--device", "cpu"],
                     tmp_path / "runs" / "x")
    job = wait_for(mgr, job.id, ended)
    assert job.state == "failed" and job.returncode == 2
    assert job.message == f"{tmp_path / 'no-such-data'}: dataset folder not found"
    assert "dataset folder not found" in mgr.log_tail(job.id)


# -- queue mechanics (fake interpreter) ------------------------------------------------------------------
def test_queue_bound_and_run_dir_conflicts(sleeper, tmp_path):
    python, _ = sleeper
    mgr = JobManager(tmp_path / "jobs", max_running=1, max_queued=1, python=python, cancel_grace=2.0)
    j1 = mgr.submit(["--epochs", "1"], tmp_path / "r1")
    assert j1.state == "running"
    with pytest.raises(InterpError, match="already used by job"):
        mgr.submit(["--epochs", "1"], tmp_path / "r1")
    j2 = mgr.submit(["--epochs", "1"], tmp_path / "r2")
    assert j2.state == "queued"
    with pytest.raises(InterpError, match="queue is full"):
        mgr.submit(["--epochs", "1"], tmp_path / "r3")
    assert len(mgr.list()) == 2

    c2 = mgr.cancel(j2.id)  # a queued job is just cancelled
    assert c2.state == "cancelled" and c2.pid is None
    j3 = mgr.submit(["--epochs", "1"], tmp_path / "r3")  # room again
    assert j3.state == "queued"
    assert mgr.cancel(j1.id).state == "cancelled"
    assert mgr.get(j3.id).state == "running"  # the freed slot went to the queue
    mgr.cancel(j3.id)
    assert all(not j.active for j in mgr.list())


def test_cancel_kills_the_whole_process_group(sleeper, tmp_path):
    python, pid_file = sleeper
    mgr = JobManager(tmp_path / "jobs", python=python, cancel_grace=2.0)
    job = mgr.submit([], tmp_path / "r")
    deadline = time.monotonic() + 10
    while not (pid_file.is_file() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert not gone(grandchild)
    mgr.cancel(job.id)
    deadline = time.monotonic() + 5
    while not gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(job.pid) and gone(grandchild)


def test_submit_validation(sleeper, tmp_path):
    python, _ = sleeper
    mgr = JobManager(tmp_path / "jobs", python=python)
    with pytest.raises(InterpError, match="--out"):
        mgr.submit(["--epochs", "1", "--out", "x"], tmp_path / "r")
    with pytest.raises(InterpError, match="--out"):
        mgr.submit(["--out=x"], tmp_path / "r")
    with pytest.raises(InterpError, match="list of strings"):
        mgr.submit("--epochs 1", tmp_path / "r")  # type: ignore[arg-type]
    with pytest.raises(InterpError, match="no job"):
        mgr.get("nope")
    with pytest.raises(InterpError, match="no job"):
        mgr.get("../x")
    with pytest.raises(InterpError, match="max_running"):
        JobManager(tmp_path / "jobs", max_running=0)
    assert mgr.list() == []


def test_concurrent_sessions_never_exceed_the_bound(sleeper, tmp_path):
    """Eight sessions (threads, each its own manager) submit at once: exactly 1 running + 2 queued get in."""
    python, _ = sleeper
    root = tmp_path / "jobs"
    results: list[str] = []
    barrier = threading.Barrier(8)

    def session(i: int) -> None:
        m = JobManager(root, max_running=1, max_queued=2, python=python)
        barrier.wait()
        try:
            results.append(m.submit([], tmp_path / f"r{i}").state)
        except InterpError as e:
            results.append("refused" if "queue is full" in str(e) else str(e))

    threads = [threading.Thread(target=session, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["queued", "queued"] + ["refused"] * 5 + ["running"]
    mgr = JobManager(root, python=python, cancel_grace=2.0)
    jobs = mgr.list()
    assert len(jobs) == 3 and len({j.id for j in jobs}) == 3
    for j in jobs:
        json.loads((root / j.id / JOB_FILE).read_text())  # every state file intact
        mgr.cancel(j.id)
    assert all(j.state == "cancelled" for j in mgr.list())


# -- vanished processes ----------------------------------------------------------------------------------
def _fake_running_job(root: Path, job_id: str, run_dir: Path, pid: int, pid_start: int | None) -> None:
    now = time.time()
    (root / job_id).mkdir(parents=True)
    write_json(root / job_id / JOB_FILE, {
        "id": job_id, "run_dir": str(run_dir), "args": [], "state": "running", "created": now - 10,
        "started": now - 10, "ended": None, "pid": pid, "pid_start": pid_start, "returncode": None,
        "message": "", "command": None})


def test_alive_check_is_not_fooled_by_pid_reuse():
    me = os.getpid()
    ticks = proc_stat(me)[1]
    assert process_alive(me, ticks)
    assert not process_alive(me, ticks + 1)  # same pid, another process start: a reused pid
    p = subprocess.Popen(["true"])
    p.wait()
    assert not process_alive(p.pid, None)


def test_vanished_process_is_finished_or_failed_from_the_run(tmp_path):
    root = tmp_path / "jobs"
    done_run, cut_run = tmp_path / "done", tmp_path / "cut"
    stale_ticks = proc_stat(os.getpid())[1] + 12345  # our own pid, but "another" process: reused
    _fake_running_job(root, "20240101-000000-aaaaaa", done_run, os.getpid(), stale_ticks)
    write_json(done_run / "progress.json", {"state": "finished", "epoch": 1, "epochs": 1, "updated": time.time()})
    p = subprocess.Popen(["true"])
    p.wait()
    _fake_running_job(root, "20240101-000001-bbbbbb", cut_run, p.pid, None)
    write_json(cut_run / "progress.json", {"state": "running", "epoch": 0, "epochs": 3, "pid": p.pid,
                                           "updated": time.time()})

    jobs = {j.id: j for j in JobManager(root).list()}
    done, cut = jobs["20240101-000000-aaaaaa"], jobs["20240101-000001-bbbbbb"]
    assert done.state == "finished" and done.returncode is None
    assert cut.state == "failed" and "submit again to resume" in cut.message
    assert run_status(cut_run)["state"] == "stopped"


def test_relative_paths_are_made_absolute_for_the_job(sleeper, tmp_path, monkeypatch):
    python, _ = sleeper
    monkeypatch.chdir(tmp_path)
    mgr = JobManager(tmp_path / "jobs", python=python, cancel_grace=2.0)
    job = mgr.submit(["--data", "ds", "--init=runs/a", "--epochs", "1", "--quiet"], "runs/b")
    assert job.args == ["--data", str(tmp_path / "ds"), f"--init={tmp_path / 'runs/a'}", "--epochs", "1"]
    assert job.run_dir == tmp_path / "runs" / "b"
    cmd = json.loads((tmp_path / "jobs" / job.id / JOB_FILE).read_text())["command"]
    assert cmd[1:4] == ["-m", "interp_core", "train"] and cmd[-3:] == ["--out", str(tmp_path / "runs" / "b"), "--quiet"]
    mgr.cancel(job.id)


def test_fraction_from_progress_by_hand():
    j = JobInfo(id="x", run_dir=Path("r"), args=[], state="running", created=0.0,
                progress={"epoch": 1, "epochs": 4, "step": 5, "steps": 10})
    assert j.fraction == pytest.approx((1 + 5 / 10) / 4)
    assert JobInfo(id="x", run_dir=Path("r"), args=[], state="queued", created=0.0).fraction == 0.0
    assert JobInfo(id="x", run_dir=Path("r"), args=[], state="finished", created=0.0).fraction == 1.0
