"""Argument checks with one-line messages for a user, one implementation each."""
from __future__ import annotations

import numbers
from typing import Any

from ..errors import InterpError


def positive_int(value: Any, name: str, *, minimum: int = 1, error: type[Exception] = InterpError) -> int:
    """``value`` as an ``int >= minimum`` (a bool is refused), else ``error`` naming ``name``.

    ``minimum`` 1 (a size, a count) says "positive integer", 0 (workers, an index) "non-negative
    integer"; other minimums say "an integer >= m".
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        kind = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
        raise error(f"{name} must be {kind}, got {value!r}")
    return int(value)


def workers_count(value: Any, name: str = "workers") -> int:
    """A DataLoader worker count: a non-negative integer (0 reads in the calling process)."""
    return positive_int(value, name, minimum=0)
