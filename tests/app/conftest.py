"""The dashboard tests: fixtures ``app_tree``, ``app_env``, ``h`` come from ``tests/conftest.py``
(defined in ``tests/_fixtures/dashboard.py``); every test here runs with torch capped at 2 threads."""
from __future__ import annotations

from tests._fixtures.dashboard import _threads  # noqa: F401  (autouse fixture)
