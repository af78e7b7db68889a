"""BatchNorm folding traces models with torch.fx, which patches ``nn.Module.__call__`` process-wide
while it runs; a forward pass in another thread (another dashboard session) must not be caught by it."""
from __future__ import annotations

import threading

import torch
from torch import nn

from interp_core.models import folding


def _net() -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(12):  # deep enough that one trace takes several thread switch intervals
        layers += [nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()


def _forwards_while_tracing(n_traces: int) -> list[BaseException]:
    other = _net()
    x = torch.rand(1, 3, 8, 8)
    errors: list[BaseException] = []
    stop = threading.Event()

    def session() -> None:
        while not stop.is_set():
            try:
                with torch.no_grad():
                    other(x)
            except BaseException as e:  # noqa: BLE001 - collected for the assertion
                errors.append(e)
                return

    t = threading.Thread(target=session)
    t.start()
    try:
        for _ in range(n_traces):
            folded = folding._fold_conv_bn(_net())
            assert folded is not None
    finally:
        stop.set()
        t.join()
    return errors


def test_a_forward_in_another_thread_is_not_routed_into_the_tracer():
    errors = _forwards_while_tracing(30)
    assert not errors, f"a concurrent forward pass failed during tracing: {errors[0]!r}"


def test_the_folded_module_still_computes_the_model():
    net = _net()
    x = torch.rand(2, 3, 8, 8)
    folded = folding._fold_conv_bn(net)
    assert folded is not net
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)
