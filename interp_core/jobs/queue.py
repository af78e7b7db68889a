"""Background training jobs: ``python -m interp_core train`` subprocesses with a bounded queue on disk.

Every job lives in its own folder ``ROOT/<job_id>/``: ``job.json`` (its state, written atomically),
``stdout.log`` and ``stderr.log``. The job's training writes into its own run directory, which no
other active job may use. All state is on disk and every change happens under an exclusive
``flock`` on ``ROOT/.lock``, so any number of ``JobManager`` objects, in threads (dashboard
sessions) or processes, can share one root without corrupting the queue; a manager holds no
state of its own except the configuration it was built with.

There is no background thread: states are brought up to date whenever ``list``, ``get``,
``refresh``, ``submit`` or ``cancel`` is called (the page polls). A refresh reaps finished
processes, marks jobs whose process vanished (e.g. the server restarted), and starts queued
jobs, oldest first, while fewer than ``max_running`` run.

A process counts as alive only when ``/proc/<pid>/stat`` shows the start time recorded when the
job started and it is not a zombie, so a reused pid is never mistaken for the job. A job whose
process died without a recorded exit code is ``finished`` when its run's ``progress.json`` says
so and ``failed`` otherwise; ``train`` resumes an unfinished run directory, so the user can submit
it again.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from .._utils.locking import file_lock
from .._utils.validation import positive_int
from ..errors import InterpError, RunError
from ..runs import PROGRESS, REPO_ROOT, read_json, run_status, write_json
from .process import fresh_progress, last_error_line, os_error_line, proc_stat, process_ended, read_progress, tail_text

JOB_FILE = "job.json"
STDOUT = "stdout.log"
STDERR = "stderr.log"
LOCK_FILE = ".lock"
STATES = ("queued", "running", "finished", "failed", "cancelled", "diverged")
ACTIVE = ("queued", "running")
#: Seconds between SIGTERM and SIGKILL when cancelling.
CANCEL_GRACE_S = 5.0
#: Seconds to wait for the lock before giving up with an error (a stuck holder is a bug).
LOCK_TIMEOUT_S = 30.0
#: ``train`` flags taking a path: made absolute against the caller's working directory, since the
#: job runs in the repository root.
PATH_FLAGS = ("--data", "--init", "--weights")


@dataclass
class JobInfo:
    """One training job as stored in ``job.json``, plus its run's current ``progress.json``.

    ``state``: queued | running | finished | failed | cancelled | diverged. ``args``: the ``train``
    flags as submitted (without ``--out``/``--quiet``). ``message``: why it failed (the CLI's
    one-line error) or was cancelled. ``progress``: the run's ``progress.json`` (``{}`` while
    queued, or while running before the new process wrote its own).
    """

    id: str
    run_dir: Path
    args: list[str]
    state: str
    created: float
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    returncode: int | None = None
    message: str = ""
    progress: dict = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.state in ACTIVE

    @property
    def fraction(self) -> float:
        """Share of the training done, in [0, 1], from ``progress`` (epochs and steps); 1 when finished."""
        if self.state == "finished":
            return 1.0
        p = self.progress
        try:
            epochs, epoch = int(p.get("epochs") or 0), int(p.get("epoch") or 0)
            steps, step = int(p.get("steps") or 0), int(p.get("step") or 0)
        except (TypeError, ValueError):
            return 0.0
        if epochs < 1:
            return 0.0
        return min(1.0, max(0.0, (epoch + (step / steps if steps > 0 else 0.0)) / epochs))


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().absolute()) if path else path


# -- manager ---------------------------------------------------------------------------------
class JobManager:
    """Submit, list and cancel ``train`` jobs whose state lives under ``root`` (see the module docstring).

    ``max_running``: jobs training at once (the others wait in the queue); ``max_queued``: jobs
    allowed to wait, beyond which ``submit`` refuses; ``python``: the interpreter that runs
    ``python -m interp_core train``.
    """

    def __init__(self, root: str | Path, *, max_running: int = 1, max_queued: int = 8, python: str = sys.executable,
                 cancel_grace: float = CANCEL_GRACE_S):
        max_running = positive_int(max_running, "max_running")
        max_queued = positive_int(max_queued, "max_queued", minimum=0)
        self.root = Path(root).resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InterpError(os_error_line(e, self.root)) from None
        self.max_running = max_running
        self.max_queued = max_queued
        self.python = python
        self.cancel_grace = float(cancel_grace)

    # -- public API --------------------------------------------------------------------------
    def submit(self, train_args: list[str], run_dir: str | Path) -> JobInfo:
        """Queue ``train *train_args --out run_dir --quiet`` and start it if a slot is free.

        Raises ``InterpError`` when the queue is full, ``run_dir`` belongs to an active job or
        holds a finished run, or ``train_args`` contains ``--out``. An existing unfinished run
        directory is accepted: ``train`` resumes it. The process runs in the repository root; the
        paths of ``--data``, ``--init`` and ``--weights`` are made absolute against the caller's
        working directory first, so they mean what they mean to the caller.
        """
        args = self._check_args(train_args)
        run = Path(run_dir).expanduser().resolve()
        try:
            return self._submit(args, run)
        except OSError as e:  # read-only folder, disk full: one line naming the file
            raise InterpError(os_error_line(e, self.root)) from None

    def _submit(self, args: list[str], run: Path) -> JobInfo:
        with self._locked():
            jobs = self._refresh_locked()
            for j in jobs:
                if j["state"] in ACTIVE and Path(j["run_dir"]) == run:
                    raise InterpError(f"{run}: already used by job {j['id']} ({j['state']})")
            if run.is_dir() and run_status(run).get("state") == "finished":
                raise InterpError(f"{run}: already a finished run; choose another run directory")
            if run.exists() and not run.is_dir():
                raise InterpError(f"{run}: exists and is not a directory")
            queued = sum(j["state"] == "queued" for j in jobs)
            running = sum(j["state"] == "running" for j in jobs)
            if running >= self.max_running and queued >= self.max_queued:
                raise InterpError(f"the job queue is full ({running} running, {queued} waiting); "
                                  "wait for a job to finish or cancel one")
            now = time.time()
            job_id = self._new_job_folder(now)
            rec = {"id": job_id, "run_dir": str(run), "args": args, "state": "queued", "created": now,
                   "started": None, "ended": None, "pid": None, "pid_start": None, "returncode": None,
                   "message": "", "command": None}
            try:
                self._save(rec)
            except BaseException:
                shutil.rmtree(self.root / job_id, ignore_errors=True)  # no job folder without its job.json
                raise
            jobs.append(rec)
            self._start_queued(jobs)
            return self._info(self._load(job_id))

    def list(self) -> list[JobInfo]:
        """Every job, newest first, after a refresh."""
        with self._locked():
            jobs = self._refresh_locked()
        jobs.sort(key=lambda j: (j["created"], j["id"]), reverse=True)
        return [self._info(j) for j in jobs]

    def get(self, job_id: str) -> JobInfo:
        """One job after a refresh; ``InterpError`` for an unknown id."""
        with self._locked():
            self._refresh_locked()
            return self._info(self._load(self._check_id(job_id)))

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel a job: a queued one is just marked; a running one gets SIGTERM (its whole process
        group), then SIGKILL if still alive after the grace period. Finished jobs are left as they are."""
        with self._locked():
            self._refresh_locked()
            rec = self._load(self._check_id(job_id))
            if rec["state"] == "queued":
                rec.update(state="cancelled", ended=time.time(), message="cancelled before it started")
                self._save(rec)
            elif rec["state"] == "running":
                code = self._terminate(rec["pid"], rec.get("pid_start"))
                rec.update(state="cancelled", ended=time.time(), returncode=code, message="cancelled by the user")
                self._save(rec)
                self._mark_run_stopped(rec)
            self._refresh_locked()  # hands the freed slot to the next queued job
            return self._info(self._load(job_id))

    def refresh(self) -> None:
        """Reap ended processes, mark vanished ones, start queued jobs while slots are free."""
        with self._locked():
            self._refresh_locked()

    def log_tail(self, job_id: str, n: int = 20) -> str:
        """The last ``n`` lines of the job's stderr log (epoch summaries, warnings, the error)."""
        self._check_id(job_id)
        lines = tail_text(self.root / job_id / STDERR, 256 * 1024).splitlines()
        return "\n".join(lines[-n:]) if n > 0 else ""

    # -- internals ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive ``flock`` on ROOT/.lock; a fresh open file each time, so threads exclude each other too."""
        def stuck() -> InterpError:
            return InterpError(f"{self.root}: the job queue is locked by another process for more "
                               f"than {LOCK_TIMEOUT_S:.0f} s")
        with file_lock(self.root / LOCK_FILE, LOCK_TIMEOUT_S, stuck):
            yield

    @staticmethod
    def _check_args(train_args: list[str]) -> list[str]:
        if isinstance(train_args, (str, bytes)) or not all(isinstance(a, str) for a in train_args):
            raise InterpError("train_args must be a list of strings (the flags after 'train')")
        args = list(train_args)
        for a in args:
            if a == "--out" or a.startswith("--out="):
                raise InterpError("train_args must not contain --out: the run directory is given separately")
        out: list[str] = []
        for i, a in enumerate(args):
            if a == "--quiet":
                continue
            flag, eq, value = a.partition("=")
            if eq and flag in PATH_FLAGS:
                a = f"{flag}={_absolute(value)}"
            elif i > 0 and args[i - 1] in PATH_FLAGS:
                a = _absolute(a)
            out.append(a)
        return out

    def _new_job_folder(self, now: float) -> str:
        """Create ``ROOT/<id>`` for a new job; ids sort by submission time and never collide."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
        while True:
            job_id = f"{stamp}-{secrets.token_hex(4)}"
            try:
                (self.root / job_id).mkdir()
                return job_id
            except FileExistsError:
                continue

    def _check_id(self, job_id: str) -> str:
        if not isinstance(job_id, str) or not job_id or "/" in job_id or "\x00" in job_id or job_id.startswith(".") \
                or not (self.root / job_id / JOB_FILE).is_file():
            raise InterpError(f"no job {job_id!r} in {self.root}")
        return job_id

    def _load(self, job_id: str) -> dict:
        return read_json(self.root / job_id / JOB_FILE)

    def _save(self, rec: dict) -> None:
        write_json(self.root / rec["id"] / JOB_FILE, rec)

    def _all(self) -> list[dict]:
        jobs = []
        for d in sorted(self.root.iterdir()):
            if d.name.startswith(".") or not (d / JOB_FILE).is_file():
                continue
            try:
                rec = read_json(d / JOB_FILE)
            except RunError:
                continue  # a foreign or damaged folder never breaks the queue
            if isinstance(rec, dict) and rec.get("id") == d.name and rec.get("state") in STATES:
                jobs.append(rec)
        return jobs

    def _refresh_locked(self) -> list[dict]:
        jobs = self._all()
        for rec in jobs:
            if rec["state"] == "running":
                self._update_running(rec)
        self._start_queued(jobs)
        return jobs

    def _update_running(self, rec: dict) -> None:
        """Finalise a running job whose process has ended (exit code known or not)."""
        done, code = process_ended(rec.get("pid"), rec.get("pid_start"))
        if not done:
            return
        progress = fresh_progress(rec)
        err = last_error_line(self.root / rec["id"] / STDERR)
        if code == 0 or (code is None and progress.get("state") == "finished"):
            rec.update(state="finished", message="")
        elif progress.get("state") == "diverged" and progress.get("message"):
            rec.update(state="diverged", message=str(progress["message"]))
        elif code is None:
            rec.update(state="failed", message=(err or "the training process ended unexpectedly") +
                       " (the process ended without an exit code, e.g. a server restart; submit again to resume)")
            self._mark_run_stopped(rec)
        else:
            rec.update(state="failed", message=err or f"training exited with code {code}")
            self._mark_run_stopped(rec)
        rec.update(returncode=code, ended=time.time())
        self._save(rec)

    def _start_queued(self, jobs: list[dict]) -> None:
        running = sum(j["state"] == "running" for j in jobs)
        for rec in sorted((j for j in jobs if j["state"] == "queued"), key=lambda j: (j["created"], j["id"])):
            if running >= self.max_running:
                break
            self._launch(rec)
            running += rec["state"] == "running"

    def _launch(self, rec: dict) -> None:
        folder = self.root / rec["id"]
        cmd = [self.python, "-m", "interp_core", "train", *rec["args"], "--out", rec["run_dir"], "--quiet"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        env.pop("INTERP_DEBUG", None)  # the job's error must stay the CLI's one-line message
        try:
            with open(folder / STDOUT, "ab") as out, open(folder / STDERR, "ab") as err:
                proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=err, start_new_session=True, close_fds=True)
        except OSError as e:
            rec.update(state="failed", ended=time.time(), message=f"could not start the training process: {e}",
                       command=cmd)
            self._save(rec)
            return
        stat = proc_stat(proc.pid)
        rec.update(state="running", started=time.time(), pid=proc.pid, pid_start=stat[1] if stat else None,
                   command=cmd)
        self._save(rec)
        # The exit code is collected by reap (os.waitpid) from whichever manager in this process
        # refreshes first; mark the Popen as handled so its finaliser does not race for it.
        proc.returncode = _UNREAPED

    def _terminate(self, pid: int | None, start_ticks: int | None) -> int | None:
        """SIGTERM the process group of ``pid``, SIGKILL after the grace period; the exit code if ours."""
        done, code = process_ended(pid, start_ticks)
        if done:
            return code
        for sig, wait in ((signal.SIGTERM, self.cancel_grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pid, sig)  # start_new_session=True: the group id is the pid
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                done, code = process_ended(pid, start_ticks)
                if done:
                    return code
                time.sleep(0.05)
        return None

    def _mark_run_stopped(self, rec: dict) -> None:
        """Replace a stale ``running`` progress.json written by this job's process by ``stopped``
        (``runs.run_status``'s state for an interrupted run), so run pickers do not show it as live."""
        run = Path(rec["run_dir"])
        progress = read_progress(run)
        if progress.get("state") == "running" and progress.get("pid") == rec.get("pid"):
            write_json(run / PROGRESS, {**progress, "state": "stopped", "message": rec.get("message", ""),
                                        "updated": time.time()})

    def _info(self, rec: dict) -> JobInfo:
        run = Path(rec["run_dir"])
        progress: dict = {}
        if rec["state"] == "running":
            p = read_progress(run)
            progress = p if p.get("pid") == rec.get("pid") else {}
        elif rec["state"] != "queued":
            progress = read_progress(run)
        return JobInfo(id=rec["id"], run_dir=run, args=list(rec["args"]), state=rec["state"],
                       created=rec["created"], started=rec.get("started"), ended=rec.get("ended"),
                       pid=rec.get("pid"), returncode=rec.get("returncode"), message=rec.get("message") or "",
                       progress=progress)


#: Placeholder return code given to a launched ``Popen`` so that its finaliser does not add it to
#: ``subprocess``'s list of children to collect (that would take the exit code before ``reap``).
_UNREAPED = -(1 << 30)


def job_to_dict(info: JobInfo) -> dict:
    """A JobInfo as plain JSON-able data (paths as strings)."""
    d = asdict(info)
    d["run_dir"] = str(info.run_dir)
    return d
