"""Name-to-constructor registry (timm style): maps onto the ``--arch`` flag and a select box."""
from __future__ import annotations

from typing import Callable

from torch import nn

from .._registry import Registry
from ..errors import InterpError
from .zoo import create_zoo_model, is_zoo_name, zoo_exists

_MODELS: Registry[Callable[..., nn.Module]] = Registry("architecture", sort_names=True,
                                                      hint="or timm/NAME or torchvision/NAME")
_REGISTRY: dict[str, Callable[..., nn.Module]] = _MODELS.entries
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str = "") -> Callable:
    """Decorator registering ``fn(num_classes, **kw) -> TileClassifier`` under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS.add(name, fn)
        _DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().splitlines()[0]
        return fn

    return wrap


def list_models() -> dict[str, str]:
    """Registered architecture names with a one-line description each."""
    return dict(_DESCRIPTIONS)


def get_model(name: str) -> Callable[..., nn.Module]:
    """The constructor registered as ``name`` (``fn(num_classes, **kw)``), or an ``InterpError``
    listing the valid names. To build a model (also ``timm/NAME``), use :func:`create_model`."""
    return _MODELS.get(name)


def is_known_arch(name: str) -> bool:
    """A registered name, or ``timm/NAME`` / ``torchvision/NAME`` of an existing architecture."""
    return name in _REGISTRY or zoo_exists(name)


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build an architecture with freshly initialised weights: a registered name, or any timm or
    torchvision classifier as ``timm/NAME`` / ``torchvision/NAME`` (never downloaded; ``kwargs``
    are then ``mean``, ``std``, ``image_size``, ``interpolation``)."""
    if int(num_classes) < 2:
        raise InterpError(f"a classifier needs at least 2 classes, got {num_classes}")
    if is_zoo_name(name):
        return create_zoo_model(name, int(num_classes), **kwargs)
    return get_model(name)(num_classes=int(num_classes), **kwargs)
