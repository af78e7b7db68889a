"""The hardening tests drive the same app as ``tests/app``: fixtures ``app_env`` and ``h`` come from
``tests/conftest.py``; ``app_tree`` is imported here too, so this folder gets its own session tree
(its tests expect runs with no evaluation cached by other folders' tests), and every test here
runs with torch capped at 2 threads."""
from __future__ import annotations

from tests._fixtures.dashboard import _threads, app_tree  # noqa: F401  (fixtures: _threads is autouse)
