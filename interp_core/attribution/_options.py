"""Validation of attribution options: one clear ``InterpError`` per bad value, shared by the methods."""
from __future__ import annotations

import numbers
from typing import Any

from .._utils.validation import positive_int as check_positive_int
from ..errors import InterpError


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1, or an error naming the option."""
    return check_positive_int(value, f"option {name!r}")


def nonnegative_float(name: str, value: Any) -> float:
    """``value`` as a finite float >= 0, or an error naming the option."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 <= float(value) < float("inf")):
        raise InterpError(f"option {name!r} must be a finite number >= 0, got {value!r}")
    return float(value)


def int_pair(name: str, value: Any) -> tuple[int, int]:
    """An int or a pair of ints (height, width), each >= 1."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return positive_int(name, value[0]), positive_int(name, value[1])
    if isinstance(value, (tuple, list)):
        raise InterpError(f"option {name!r} must be an int or a (height, width) pair, got {value!r}")
    v = positive_int(name, value)
    return v, v


def choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else an error listing them."""
    if value not in allowed:
        raise InterpError(f"option {name!r} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def blur_sigma(value: Any) -> float | None:
    """``None`` (size-dependent default) or a Gaussian blur sigma in pixels (>= 0)."""
    return None if value is None else nonnegative_float("blur_sigma", value)
