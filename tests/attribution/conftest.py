"""Tiny seeded models and images for the attribution tests."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from interp_core._utils.device import torch_threads
from interp_core.models import create_model


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a small shared CPU, OpenMP threads spin against other processes and
    these tiny workloads run up to 10x slower with two threads than with one."""
    with torch_threads(1):
        yield


def make_tiny_cnn(seed: int = 0, num_classes: int = 3) -> nn.Module:
    """smallcnn of width 4 with seeded weights and non-trivial BatchNorm running statistics.

    The running statistics differ from any batch's, so a map computed in train mode differs from
    one computed in eval mode: the tests can tell which mode was used.
    """
    torch.manual_seed(seed)
    model = create_model("smallcnn", num_classes, width=4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


@pytest.fixture
def tiny_cnn() -> nn.Module:
    return make_tiny_cnn()


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 16, 16, generator=g)
