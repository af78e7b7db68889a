"""A job's process and its log, as seen from any process: alive (by pid and start time, so a
reused pid is never mistaken for the job), ended with which exit code, and the one-line error
its stderr log ends with. Linux ``/proc`` when there is one; existence only elsewhere."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import RunError
from ..runs import PROGRESS, read_json

def proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state letter, start time in clock ticks since boot)`` from ``/proc/<pid>/stat``, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    try:
        rest = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces or ')'
        return rest[0], int(rest[19])  # field 3 is the state, field 22 the start time
    except (ValueError, IndexError):
        return None


def process_alive(pid: int | None, start_ticks: int | None) -> bool:
    """True when ``pid`` runs and is the process started at ``start_ticks`` (not a zombie, not a reuse)."""
    if not pid:
        return False
    stat = proc_stat(pid)
    if stat is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no procfs (macOS): existence only, pid reuse not detectable
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state, ticks = stat
    if state in ("Z", "X", "x"):
        return False
    return start_ticks is None or ticks == start_ticks


NOT_OUR_CHILD = object()


def reap(pid: int) -> Any:
    """Ask the kernel about our child ``pid``: its exit code once it has ended (collecting it),
    None while it runs, ``NOT_OUR_CHILD`` when another process started it (or it was collected).

    For our own children this is authoritative: a child's pid cannot be reused before it is
    collected, and it is only collectable once every thread has exited (a multi-threaded
    process's main thread shows as a zombie in /proc earlier). Only the process that started a
    job can collect its exit code; other processes fall back to ``process_alive`` and the run's
    progress file.
    """
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return NOT_OUR_CHILD
    if got == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def process_ended(pid: int | None, start_ticks: int | None) -> tuple[bool, int | None]:
    """``(ended, exit code if known)`` of a job's process."""
    if not pid:
        return True, None
    r = reap(pid)
    if r is not NOT_OUR_CHILD:
        return r is not None, r
    return not process_alive(pid, start_ticks), None


def last_error_line(path: Path) -> str:
    """The CLI's one-line error from a stderr log: the last ``error: ...`` line (prefix dropped),
    else the last ``internal error`` line, else the last non-empty line."""
    lines = [ln.strip() for ln in tail_text(path, 64 * 1024).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error: "):
            return ln[len("error: "):]
    for ln in reversed(lines):
        if ln.startswith("internal error"):
            return ln
    return lines[-1] if lines else ""


def tail_text(path: Path, max_bytes: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes:
        text = text.split("\n", 1)[-1]  # drop the partial first line
    return text


def os_error_line(e: OSError, default: Path) -> str:
    """``PATH: reason`` of an OSError (the path it names, else ``default``)."""
    return f"{e.filename or default}: {e.strerror or e}"


def fresh_progress(rec: dict) -> dict:
    """The job's run's progress.json if written since the job started, else ``{}`` (a stale one from
    an earlier attempt on the same run directory says nothing about this job)."""
    p = read_progress(Path(rec["run_dir"]))
    updated, started = p.get("updated"), rec.get("started")
    if isinstance(updated, (int, float)) and isinstance(started, (int, float)) and updated >= started - 1.0:
        return p
    return {}


def read_progress(run_dir: Path) -> dict:
    try:
        p = read_json(run_dir / PROGRESS)
    except RunError:
        return {}
    return p if isinstance(p, dict) else {}
