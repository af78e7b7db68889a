"""Model registry: ``create_model(name, num_classes)``, ``list_models()``."""
from __future__ import annotations

from . import resnet, smallcnn  # noqa: F401  (registration side effect)
from .base import TileClassifier
from .registry import create_model, list_models, register_model

__all__ = ["TileClassifier", "create_model", "list_models", "register_model"]
