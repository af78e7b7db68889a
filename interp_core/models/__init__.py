"""Model registry: ``create_model(name, num_classes)``, ``list_models()``."""
from __future__ import annotations

from . import resnet, smallcnn  # noqa: F401  (registration side effect)
from .base import TileClassifier
from .registry import create_model, get_model, is_known_arch, list_models, register_model
from .zoo import ZooClassifier, is_zoo_name, zoo_defaults

__all__ = ["TileClassifier", "ZooClassifier", "create_model", "get_model", "is_known_arch", "is_zoo_name", "list_models",
           "register_model", "zoo_defaults"]
