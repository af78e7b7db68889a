"""One intra-op thread for the metric tests: the tensors are tiny, and on a busy 2-core machine
two OpenMP threads make every small op wait for the other core (~40 ms per conv instead of ~0.3 ms)."""
from __future__ import annotations

import pytest

from interp_core._utils.device import torch_threads


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield
