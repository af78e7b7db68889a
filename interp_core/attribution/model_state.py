"""The model state attributions are computed in, entered and left without the caller noticing.

Attributions need eval mode (BatchNorm running statistics, no dropout) and gradients with respect
to the input only. The caller may be training (train mode, parameters with ``.grad`` pending an
optimizer step), so everything is put back on exit: every submodule's ``training`` flag (a model
can be in train mode with some submodules frozen in eval), each parameter's ``requires_grad`` and
its ``.grad`` tensor. Hooks are the attribution methods' own business (Captum removes its hooks).

A per-model re-entrant lock serialises attributions on one model: the dashboard shares cached
models across sessions (threads) and mode switches are not thread-safe.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterator

from torch import nn

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock guarding ``model``'s mode and hooks during attribution."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = threading.RLock()
            _LOCKS[model] = lock
        return lock


@contextlib.contextmanager
def attribution_state(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode with every parameter frozen (``requires_grad=False``) inside; the caller's state after.

    Freezing the parameters both guarantees their ``.grad`` is never touched and skips the
    weight-gradient computations in backward (only input gradients are needed).
    """
    with model_lock(model):
        modes = [(m, m.training) for m in model.modules()]
        params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
        try:
            model.eval()
            for p, _, _ in params:
                p.requires_grad_(False)
            yield model
        finally:
            for m, training in modes:
                m.training = training
            for p, requires_grad, grad in params:
                p.requires_grad_(requires_grad)
                p.grad = grad
