"""Shared fixtures: tiny datasets and runs, built once per session in a temp folder, and the
dashboard fixtures ``app_tree`` / ``app_env`` / ``h`` (``tests/_fixtures/dashboard.py``)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(min(2, os.cpu_count() or 1))

from tests._fixtures.dashboard import app_env, app_tree, h  # noqa: E402,F401  (fixtures; needs ROOT on sys.path)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from interp_core.testing import make_tiny_dataset
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "ds", n_per_class=16, size=32)


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    from interp_core.training import TrainConfig, train
    out = tmp_path_factory.mktemp("runs") / "erm"
    train(TrainConfig(data=str(tiny_data), out=str(out), epochs=2, batch_size=8), progress=False, log=lambda m: None)
    return out
