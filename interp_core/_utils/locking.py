"""``flock`` locks on a folder's lock file, one implementation for every job that owns a folder
(explain shards, slide jobs, the training queue)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

_HELD = threading.local()  # lock files this thread holds (folder_lock is re-entrant per thread)


def lock_path(out: str | Path) -> Path:
    """The lock file of folder ``out``: ``.NAME.lock`` beside it (so deleting the folder keeps it)."""
    out = Path(out)
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def folder_lock(out: str | Path) -> Iterator[None]:
    """Exclusive use of the folder ``out`` across processes and threads (dashboard sessions):
    ``flock`` on :func:`lock_path`, so a second job on the same folder waits for the first
    instead of interleaving manifests or deleting its files. Re-entrant within a thread. Where
    the lock file cannot be created (a read-only folder) it proceeds unlocked: nothing can be
    written there anyway."""
    out = Path(out)
    key = str(out.resolve())
    held = getattr(_HELD, "keys", None)
    if held is None:
        held = _HELD.keys = set()
    if key in held:
        yield
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock_path(out), "a+")
    except OSError:
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
            fcntl.flock(f, fcntl.LOCK_UN)


def folder_locked(out: str | Path) -> bool:
    """True while some process (or another open file of this one) holds :func:`folder_lock` of ``out``."""
    lock = lock_path(out)
    if not lock.is_file():
        return False
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


@contextlib.contextmanager
def file_lock(path: str | Path, timeout: float, on_timeout: Callable[[], Exception]) -> Iterator[None]:
    """Exclusive ``flock`` on the file ``path`` (created if missing), polled every 20 ms for at most
    ``timeout`` seconds, then ``raise on_timeout()``. A fresh open file each time, so threads of
    one process exclude each other too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise on_timeout() from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock
