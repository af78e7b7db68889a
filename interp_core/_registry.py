"""One registry shape for attribution methods, metrics, models and objectives (timm style).

Each registry module keeps its public ``register_*`` / ``list_*`` / ``get_*`` verbs and stores its
entries in a :class:`Registry`: a name registered twice is refused, and an unknown name raises one
``InterpError`` that lists the known names.
"""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from .errors import InterpError

T = TypeVar("T")


class DuplicateRegistrationError(InterpError, ValueError):
    """A name was registered twice (a programming error; also a ``ValueError`` for old callers)."""


class Registry(Generic[T]):
    """Name -> entry, in registration order.

    ``kind`` names the entries in messages ("attribution method"); ``sort_names`` lists the names
    alphabetically instead of in registration order; ``hint`` is appended to the unknown-name
    message (e.g. other accepted spellings). ``entries`` is the live dict, exposed for modules
    whose public dict (``METHODS``, ``METRICS``) is this same object.
    """

    def __init__(self, kind: str, *, sort_names: bool = False, hint: str = "") -> None:
        self.kind = kind
        self.sort_names = sort_names
        self.hint = hint
        self.entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; a second registration of ``name`` is refused."""
        if not isinstance(name, str) or not name:
            raise DuplicateRegistrationError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self.entries:
            raise DuplicateRegistrationError(f"{self.kind} {name!r} is already registered; "
                                             "pick another name or remove the first registration")
        self.entries[name] = entry
        return entry

    def names(self) -> list[str]:
        """The registered names (alphabetical when ``sort_names``, else registration order)."""
        return sorted(self.entries) if self.sort_names else list(self.entries)

    def get(self, name: str) -> T:
        """The entry registered as ``name``, or an ``InterpError`` listing the known names."""
        if not isinstance(name, str) or name not in self.entries:
            hint = f", {self.hint}" if self.hint else ""
            raise InterpError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}{hint}")
        return self.entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.entries)
