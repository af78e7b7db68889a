"""Content hashes of files, read in 1 MB chunks (one implementation for weights, datasets, runs)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def file_digest(path: str | Path, algorithm: str = "sha1") -> str:
    """Hex digest of a file's content with ``algorithm`` (any ``hashlib`` name)."""
    h = hashlib.new(algorithm)
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha1(path: str | Path) -> str:
    """Hex SHA-1 of a file's content."""
    return file_digest(path, "sha1")
