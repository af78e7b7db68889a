"""Training objectives registry: ``erm``, ``sgt``, ``scaat``, ``ece`` and ``jtt`` (importing registers them)."""
from __future__ import annotations

from . import ece, erm, jtt, scaat, sgt  # noqa: F401  (registration side effect)
from .base import (EpochContext, Objective, StepContext, get_objective, list_objectives, objective_names,
                   options_from_dict, register_objective)

__all__ = ["EpochContext", "Objective", "StepContext", "get_objective", "list_objectives", "objective_names",
           "options_from_dict", "register_objective"]
