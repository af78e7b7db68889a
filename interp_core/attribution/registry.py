"""Attribution-method registry: name -> ``MethodInfo`` (metadata for the UI plus the compute function).

Each method module registers itself with ``@register_method``; the package ``__init__`` imports
them in display order. ``METHODS`` maps straight onto a select box and the ``--attribution`` flag.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .._registry import Registry
from ..errors import InterpError

COSTS = ("fast", "medium", "slow")
IMAGES_PER_PASS = 64
"""Default internal batch, in images per forward pass: a chunk holds ``IMAGES_PER_PASS // s``
images for a method that evaluates ``s`` samples per image (IG's ``n_steps``, SmoothGrad's
``n_samples``), so IG and SmoothGrad do not exhaust memory [ours]."""


@dataclass(frozen=True)
class MethodInfo:
    """What the UI and ``attribute()`` need to know about one attribution method.

    ``signed``: the raw map carries a meaningful sign (kept with ``attribute(..., signed=True)``).
    ``cost``: "fast" (one or two passes per image), "medium" (about 10-20), "slow" (more, or
    growing with the image size). ``needs_gradients``: uses backpropagation (occlusion and CAM
    do not). ``options``: the method's options and their defaults; anything else is rejected.
    ``samples_option``: the option that multiplies the forward passes per image (``n_steps``,
    ``n_samples``), used to size the default internal batch. ``per_sample_options``: options
    that may be a tensor with one row per image, sliced with the batch. ``black_box``: the method
    only evaluates the model as a function of its input (forward passes and input gradients, no
    hooks on its layers), so ``attribute()`` may hand it an equivalent, faster module
    (:func:`interp_core.models.folding.eval_forward_module`).
    """

    name: str
    description: str
    signed: bool
    cost: str
    needs_gradients: bool
    options: Mapping[str, Any]
    compute: Callable[..., torch.Tensor] = field(repr=False, compare=False)
    samples_option: str | None = None
    per_sample_options: tuple[str, ...] = ()
    prepare: Callable[[nn.Module, torch.Tensor, dict], dict] | None = field(default=None, repr=False, compare=False)
    check_model: Callable[[nn.Module, dict], None] | None = field(default=None, repr=False, compare=False)
    black_box: bool = False


_METHODS: Registry[MethodInfo] = Registry("attribution method")
METHODS: dict[str, MethodInfo] = _METHODS.entries
"""Name -> :class:`MethodInfo`, in display order (the registry's live dict; register with :func:`register_method`)."""


def register_method(name: str, *, description: str, signed: bool, cost: str, needs_gradients: bool,
                    options: Mapping[str, Any] | None = None, samples_option: str | None = None,
                    per_sample_options: tuple[str, ...] = (),
                    prepare: Callable[[nn.Module, torch.Tensor, dict], dict] | None = None,
                    check_model: Callable[[nn.Module, dict], None] | None = None,
                    black_box: bool = False) -> Callable:
    """Decorator registering ``compute(model, x, target, **options)`` under ``name``.

    ``compute`` gets one chunk of images on the model's device (model in eval mode, parameters
    frozen) and a LongTensor of targets, and returns ``[b, C, H, W]`` (per-channel, reduced by
    ``attribute``) or ``[b, H, W]`` (one map). ``prepare(model, x, options)`` runs once on the
    whole batch to validate and convert options; ``check_model(model, options)`` raises
    ``InterpError`` when the method does not apply to the model.
    """
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}")

    def wrap(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        _METHODS.add(name, MethodInfo(
            name=name, description=description, signed=signed, cost=cost, needs_gradients=needs_gradients,
            options=MappingProxyType(dict(options or {})), samples_option=samples_option,
            per_sample_options=per_sample_options, compute=fn, prepare=prepare, check_model=check_model,
            black_box=black_box))
        return fn

    return wrap


def get_method(name: str) -> MethodInfo:
    """The registered method ``name``, or an ``InterpError`` listing the valid names."""
    return _METHODS.get(name)


def seed_option(method: str, seed: int | None) -> dict[str, int]:
    """``{"seed": seed}`` for a method that takes a seed (the stochastic ones), else ``{}``.

    Lets a caller pass one seed to any method without tripping the unknown-option check.
    """
    return {"seed": seed} if seed is not None and "seed" in get_method(method).options else {}


def identity_options(method: str, seed: int | None) -> dict[str, Any]:
    """The options that identify stored results of ``method`` (explain jobs, the evaluation cache):
    ``seed_option`` plus a default ``baseline`` other than black (0), so results computed before the
    default changed (occlusion used black) are never taken for today's."""
    opts: dict[str, Any] = dict(seed_option(method, seed))
    base = get_method(method).options.get("baseline")
    if isinstance(base, str) and base != "zeros":
        opts["baseline"] = base
    return opts


def list_methods() -> dict[str, str]:
    """Method names with a one-line description each, in display order."""
    return {name: info.description for name, info in METHODS.items()}


def applicable_methods(model: nn.Module) -> list[str]:
    """Names of the methods that work on ``model`` with default options (e.g. ``cam`` needs a GAP + linear head)."""
    names = []
    for name, info in METHODS.items():
        if info.check_model is not None:
            try:
                info.check_model(model, dict(info.options))
            except InterpError:
                continue
        names.append(name)
    return names
