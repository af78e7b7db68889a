"""Disk full and read-only folders (issue #7, item 3): ``train``, ``evaluate --out`` and job creation
stop with a one-line error naming the path, and leave nothing half-written behind.

Read-only: ``chmod`` when the tests run as an ordinary user; as root (where ``chmod`` does not stop
writes) the OS calls that create or replace files inside the folder are made to fail with EROFS.
Disk full: the file objects of atomic writes get a byte budget, after which ``write`` fails with
ENOSPC, so a real, partly written temp file exists on disk when the error happens.
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from interp_core.cli import main
from interp_core.errors import InterpError
from interp_core._utils.io import is_temp_file
from interp_core.runs import load_run, read_history
from interp_core.testing import make_tiny_dataset
from interp_core.training.checkpoint import latest_checkpoint


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("disk") / "ds", n_per_class=4, size=16)


def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> content hash of every file below ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if is_temp_file(p)]


def _one_line(capsys) -> str:
    """The CLI's error: exactly one ``error:`` line, the last line on stderr, and no traceback
    (``train`` logs a line per finished epoch before it)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err), err
    assert [ln for ln in err if "error" in ln.lower()] == [err[-1]], err
    return err[-1]


# -- fault injection ------------------------------------------------------------------------------
@contextlib.contextmanager
def read_only(folder: Path, monkeypatch) -> Iterator[None]:
    """Make ``folder`` (and everything below it) read-only for this process."""
    folder = folder.resolve()
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
        for p in modes:
            p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
        try:
            yield
        finally:
            for p, m in modes.items():
                p.chmod(stat.S_IMODE(m))
        return

    def inside(path) -> bool:
        p = Path(os.fsdecode(path)).absolute()
        return p == folder or folder in p.parents

    def erofs(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_mkdir, real_mkstemp, real_replace, real_open = os.mkdir, tempfile.mkstemp, os.replace, os.open

    def mkdir(path, *a, **k):
        if inside(path) and not Path(os.fsdecode(path)).exists():
            erofs(path)
        return real_mkdir(path, *a, **k)

    def mkstemp(suffix=None, prefix=None, dir=None, text=False):
        if dir is not None and inside(dir):
            erofs(Path(os.fsdecode(dir)) / f"{prefix or ''}XXXXXX{suffix or ''}")
        return real_mkstemp(suffix, prefix, dir, text)

    def replace(src, dst, *a, **k):
        if inside(dst):
            erofs(dst)
        return real_replace(src, dst, *a, **k)

    def os_open(path, flags, *a, **k):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            erofs(path)
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "open", os_open)
    try:
        yield
    finally:
        monkeypatch.undo()


class _FullDisk:
    """A file whose ``write`` stores at most ``budget`` bytes, then fails with ENOSPC."""

    def __init__(self, f, budget: int):
        self._f, self._budget = f, budget

    def write(self, data) -> int:
        room = max(0, self._budget)
        if len(data) > room:
            self._f.write(data[:room])
            self._f.flush()
            self._budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False


def disk_full(monkeypatch, pattern: str, budget: int = 64) -> list[str]:
    """Temp files of atomic writes whose path matches ``pattern`` run out of space after ``budget``
    bytes; returns the list of temp files that hit the limit (to check they existed)."""
    real_fdopen = os.fdopen
    hit: list[str] = []

    def fdopen(fd, *a, **k):
        f = real_fdopen(fd, *a, **k)
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return f
        if fnmatch.fnmatch(path, pattern):
            hit.append(path)
            return _FullDisk(f, budget)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    return hit


def _train(data: Path, out: Path, epochs: int = 2) -> int:
    return main(["train", "--data", str(data), "--epochs", str(epochs), "--batch-size", "4", "--out", str(out),
                 "--quiet", "--device", "cpu"])


# -- train ----------------------------------------------------------------------------------------
def test_train_into_a_read_only_folder(data, tmp_path, monkeypatch, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    with read_only(parent, monkeypatch):
        code = _train(data, parent / "run")
    line = _one_line(capsys)
    assert code == 2 and line.startswith("error: ") and str(parent / "run") in line, line
    assert "read-only" in line.lower() or "permission denied" in line.lower(), line
    assert not list(parent.iterdir())


def test_resume_in_a_read_only_run_leaves_it_untouched(data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        disk_full(mp, f"{run}/checkpoint/epoch_0002/.state.json.*.tmp")  # stop after epoch 1
        assert _train(data, run) == 2
    capsys.readouterr()
    before = _snapshot(run)
    with read_only(run, monkeypatch):
        code = _train(data, run)
    line = _one_line(capsys)
    assert code == 2 and str(run) in line and "config.json" in line, line
    assert _snapshot(run) == before and not _temp_files(run)


def test_disk_full_in_the_middle_of_a_checkpoint(data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    hit = disk_full(monkeypatch, f"{run}/checkpoint/epoch_0002/.optimizer.safetensors.*.tmp")
    code = _train(data, run)
    line = _one_line(capsys)
    assert hit, "the injected disk-full never happened"
    target = run / "checkpoint" / "epoch_0002" / "optimizer.safetensors"
    assert code == 2 and line == f"error: {target}: No space left on device", line
    assert not _temp_files(run), _temp_files(run)
    # no half-written checkpoint folder: the pointer and the only folder are epoch 1's
    assert [p.name for p in (run / "checkpoint").iterdir() if p.is_dir()] == ["epoch_0001"]
    assert latest_checkpoint(run).name == "epoch_0001"
    assert load_run(run).config["epochs"] == 2 and len(read_history(run)) == 1
    monkeypatch.undo()  # space is free again: the same command resumes and finishes
    assert _train(data, run) == 0
    assert [h["epoch"] for h in read_history(run)] == [1, 2]


@pytest.mark.parametrize("which", ["config.json", "model.safetensors", "history.jsonl", "progress.json"])
def test_disk_full_on_every_run_file_is_one_line_naming_it(data, tmp_path, monkeypatch, capsys, which):
    run = tmp_path / "run"
    disk_full(monkeypatch, f"{run}/.{which}.*.tmp", budget=8)
    code = _train(data, run, epochs=1)
    line = _one_line(capsys)
    assert code == 2 and line == f"error: {run / which}: No space left on device", line
    assert not _temp_files(run) and not (run / which).exists()


# -- evaluate --out ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run1(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("disk-run") / "r"
    assert _train(data, out, epochs=1) == 0
    return out


def _evaluate(run: Path, data: Path, out: Path) -> int:
    return main(["evaluate", "--run", str(run), "--data", str(data), "--limit", "4", "--out", str(out), "--quiet",
                 "--device", "cpu"])


def test_evaluate_out_disk_full(run1, data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "res" / "metrics.json"
    disk_full(monkeypatch, f"{out.parent}/.metrics.json.*.tmp", budget=100)
    code = _evaluate(run1, data, out)
    line = _one_line(capsys)
    assert code == 2 and line == f"error: {out}: No space left on device", line
    assert not out.exists() and not _temp_files(out.parent)


def test_evaluate_out_read_only(run1, data, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder, monkeypatch):
        code = _evaluate(run1, data, folder / "metrics.json")
    line = _one_line(capsys)
    assert code == 2 and str(folder / "metrics.json") in line, line
    assert not list(folder.iterdir())


# -- job creation -----------------------------------------------------------------------------------
def test_job_creation_in_a_read_only_jobs_folder(data, tmp_path, monkeypatch):
    from interp_core.jobs.queue import JobManager
    root = tmp_path / "jobs"
    mgr = JobManager(root, python="/bin/true")
    with read_only(root, monkeypatch):
        with pytest.raises(InterpError) as e:
            mgr.submit(["--data", str(data), "--epochs", "1"], tmp_path / "runs" / "a")
    msg = str(e.value)
    assert "\n" not in msg and str(root) in msg, msg
    assert not [p for p in root.iterdir() if p.name != ".lock"]  # no half-created job folder
    with read_only(tmp_path, monkeypatch):
        with pytest.raises(InterpError) as e:
            JobManager(tmp_path / "jobs2")
    assert str(tmp_path / "jobs2") in str(e.value)


def test_job_creation_with_a_full_disk(data, tmp_path, monkeypatch):
    from interp_core.jobs.queue import JobManager
    root = tmp_path / "jobs"
    mgr = JobManager(root, python="/bin/true")
    disk_full(monkeypatch, f"{root}/*/.job.json.*.tmp", budget=10)
    with pytest.raises(InterpError) as e:
        mgr.submit(["--data", str(data), "--epochs", "1"], tmp_path / "runs" / "a")
    msg = str(e.value)
    assert "\n" not in msg and "No space left on device" in msg and "job.json" in msg, msg
    assert not [p for p in root.iterdir() if p.name != ".lock"]  # the job folder was removed again
    monkeypatch.undo()
    assert mgr.list() == []
