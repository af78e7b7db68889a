"""Exceptions with messages meant for a user, not a developer.

The CLI prints ``str(error)`` on one line and exits non-zero; the dashboard shows it in an
``st.error`` box. Anything else escaping is a bug.
"""
from __future__ import annotations


class InterpError(Exception):
    """Base class: a problem the user can fix (bad input, missing file, wrong option)."""


class DataError(InterpError):
    """A dataset or image on disk is missing, empty, unreadable or inconsistent."""


class RunError(InterpError):
    """A run directory or checkpoint is missing, invalid or for another model."""


class TrainingDiverged(InterpError):
    """The loss or gradients became NaN/inf; the last good weights were kept."""
