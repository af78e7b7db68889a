"""Atomic file writes: a reader sees the old file or the new one, never a part.

One implementation for every file the package writes (JSON, safetensors, npz shards and pieces,
TIFF pyramids): a temporary file in the destination's folder (``.NAME.XXXX.tmp``), fsync,
``os.replace``. :func:`atomic_path` yields the temporary path for writers that need a file name
(``tifffile``); :func:`atomic_write` takes a callback writing to a binary file.
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

# -- atomic writes -------------------------------------------------------------------------
#: Test-only fault injection for the crash-safety tests (tests/hardening): when this environment
#: variable holds ``GLOB`` or ``GLOB#K``, the process SIGKILLs itself after the temp file of the
#: K-th (default first) atomic write whose destination path matches ``GLOB`` (``fnmatch``) is
#: complete and before it is renamed into place, i.e. at the worst moment of a write.
KILL_HOOK_ENV = "INTERP_TEST_KILL_BEFORE_REPLACE"
_hook_matches = 0


def _maybe_kill_before_replace(path: Path) -> None:
    spec = os.environ.get(KILL_HOOK_ENV)
    if not spec:
        return
    pattern, _, nth = spec.rpartition("#") if "#" in spec else (spec, "", "1")
    if fnmatch.fnmatch(str(path), pattern):
        global _hook_matches
        _hook_matches += 1
        if _hook_matches == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)


def is_temp_file(path: str | Path) -> bool:
    """True for the temp file of an atomic write (``.NAME.XXXX.tmp``); one is left behind only when a
    process was killed mid-write, and never holds anything a reader needs."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".tmp")


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files of interrupted atomic writes directly in ``folder``; return them.

    Only call it where no other process is writing at the same time (e.g. when a run resumes).
    """
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.iterdir():
            if is_temp_file(p) and p.is_file():
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
    return removed


@contextlib.contextmanager
def _replace_on_success(path: Path) -> Iterator[tuple[int, str]]:
    """``(fd, tmp)`` of a new temp file beside ``path``; renamed to ``path`` when the block succeeds.

    On any failure (disk full, read-only or missing folder, interruption) the temp file is removed
    and the destination is untouched; an ``OSError`` is re-raised naming ``path`` itself (the temp
    file's name would mean nothing to a user), so the CLI's one-line message says which file could
    not be written.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        yield fd, tmp
        _maybe_kill_before_replace(path)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write(path: str | Path, write: Callable[[Any], Any]) -> None:
    """``write(binary_file)`` into ``path`` atomically: temp file in the same folder, fsync,
    ``os.replace`` (readers see the old file or the new one, never a part)."""
    with _replace_on_success(Path(path)) as (fd, _):
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path`` for writers that need a file name (``tifffile``); when the block
    ends without error the file is fsynced and renamed to ``path``, else removed."""
    with _replace_on_success(Path(path)) as (fd, tmp):
        os.close(fd)
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
