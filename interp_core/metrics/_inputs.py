"""Input checking and coercion shared by the metrics: maps, masks, targets, attribution methods.

Every user mistake becomes an :class:`InterpError` with a one-line message naming the offending
shapes or values.
"""
from __future__ import annotations

from typing import Callable, Iterator, Union

import torch
from torch import nn

from ..attribution import attribute
from ..errors import InterpError
from .._utils.modes import eval_mode  # noqa: F401  (re-exported)

AttributionFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Method = Union[str, AttributionFn]


def _shape(t: torch.Tensor) -> str:
    return "[" + ",".join(str(s) for s in t.shape) + "]"


def as_map(a: torch.Tensor, name: str = "attribution") -> torch.Tensor:
    """An attribution map as a float tensor ``[B,H,W]``.

    ``[B,H,W]`` is kept as is; ``[B,1,H,W]`` is squeezed; ``[B,C,H,W]`` with ``C > 1`` becomes
    ``sum_c |a_c|`` (the channel reduction of METHODS.md section 1, which makes the map absolute).
    """
    if not isinstance(a, torch.Tensor):
        raise InterpError(f"{name} must be a torch.Tensor, got {type(a).__name__}")
    if a.ndim == 4:
        a = a[:, 0] if a.shape[1] == 1 else a.abs().sum(1)
    elif a.ndim != 3:
        raise InterpError(f"{name} must have shape [B,H,W] or [B,C,H,W], got {_shape(a)}")
    if not a.is_floating_point():
        a = a.float()
    if not bool(torch.isfinite(a).all()):
        raise InterpError(f"{name} contains NaN or inf values")
    return a


def as_mask(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """A mask as a bool tensor ``[B,H,W]`` (nonzero = inside); ``[B,1,H,W]`` is squeezed."""
    if not isinstance(mask, torch.Tensor):
        raise InterpError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise InterpError(f"{name} must have shape [B,H,W] or [B,1,H,W], got {_shape(mask)}")
    return mask != 0


def map_and_mask(a: torch.Tensor, mask: torch.Tensor, mask_name: str = "mask") -> tuple[torch.Tensor, torch.Tensor]:
    """Coerce a map and a mask and check they match; the error names both original shapes."""
    a_shape, m_shape = _shape(a), _shape(mask)
    a2, m2 = as_map(a), as_mask(mask, mask_name)
    if a2.shape != m2.shape:
        raise InterpError(f"attribution shape {a_shape} and {mask_name} shape {m_shape} differ")
    return a2, m2.to(a2.device)


def map_for_images(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Coerce a map and check it covers the images ``x`` ``[B,C,H,W]`` pixel for pixel."""
    check_images(x)
    a2 = as_map(a)
    if a2.shape != (x.shape[0], *x.shape[-2:]):
        raise InterpError(f"attribution shape {_shape(a)} does not match images shape {_shape(x)} "
                          f"(expected [{x.shape[0]},{x.shape[-2]},{x.shape[-1]}])")
    return a2.to(x.device)


def check_images(x: torch.Tensor) -> None:
    """Images must be a float tensor ``[B,C,H,W]``."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        got = _shape(x) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InterpError(f"images must be a float tensor [B,C,H,W], got {got}")


def work_dtype(device: torch.device) -> torch.dtype:
    """float64 for the cheap reductions, except on MPS which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


@torch.no_grad()
def resolve_target(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None) -> torch.Tensor:
    """Target classes ``[B]`` (long, on ``x``'s device): given, broadcast from an int, or predicted.

    The prediction is taken with the model in eval mode; the caller's mode is restored.
    """
    b = x.shape[0]
    if target is None:
        with eval_mode(model):
            return model(x).argmax(1)
    t = torch.as_tensor(target, device=x.device).long()
    if t.ndim == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise InterpError(f"target must be an int or a tensor [{b}], got shape {_shape(t)}")
    n_classes = getattr(model, "num_classes", None)
    if n_classes is not None and bool(((t < 0) | (t >= n_classes)).any()):
        raise InterpError(f"target classes must lie in [0, {n_classes - 1}], got {t.tolist()}")
    return t


def resolve_method(method: Method, **options) -> AttributionFn:
    """A callable ``(model, x, target) -> [B,H,W]`` for a method name or callable.

    A name is passed to ``interp_core.attribution.attribute`` with ``options``.
    """
    if callable(method):
        if options:
            return lambda model, x, target: method(model, x, target, **options)
        return method
    if not isinstance(method, str):
        raise InterpError(f"method must be an attribution method name or a callable, got {type(method).__name__}")
    def fn(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return attribute(model, x, method, target=target, **options)

    return fn


def generator_from(seed: int | torch.Generator | None) -> torch.Generator:
    """A CPU generator: the one given, or a new one seeded with ``seed`` (default 0)."""
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g
