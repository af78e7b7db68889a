"""Training objectives registry: ``erm`` and, when their modules exist, ``sgt``, ``scaat``, ``ece``."""
from __future__ import annotations

import importlib

from .base import EpochContext, Objective, StepContext, get_objective, objective_names, options_from_dict, register_objective

for _name in ("erm", "sgt", "scaat", "ece"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _e:  # a module still being written
        if _e.name != f"{__name__}.{_name}":
            raise

__all__ = ["EpochContext", "Objective", "StepContext", "get_objective", "objective_names", "options_from_dict",
           "register_objective"]
