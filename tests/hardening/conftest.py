"""The dashboard fixtures of ``tests/app/conftest.py`` (tiny data tree, ``h`` helpers), made visible
here by import: the hardening tests drive the same app. When both folders run in one session the
session-scoped tree is built once per folder (a few seconds); moving those fixtures to
``tests/conftest.py`` would share it."""
from __future__ import annotations

from tests.app.conftest import Helpers, _threads, app_env, app_tree, h  # noqa: F401  (fixtures)
