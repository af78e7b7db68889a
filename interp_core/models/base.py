"""The common shape of every classifier here: normalise -> features -> global-average-pool -> linear.

Inputs are images in ``[0, 1]`` (normalisation lives inside the model, so attribution,
perturbation and clamping all happen in image space). ``features`` ends with the last conv
block (after its ReLU): Grad-CAM hooks it, and because the head is GAP + linear, CAM applies.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InterpError


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` with the statistics stored as buffers (saved with weights)."""

    def __init__(self, mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.25, 0.25, 0.25)):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TileClassifier(nn.Module):
    """``head(gap(features(normalize(x))))``; ``arch`` names the registry entry that built it."""

    arch: str = "?"

    def __init__(self, features: nn.Module, feature_channels: int, num_classes: int):
        super().__init__()
        self.normalize = Normalize()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(feature_channels, num_classes)
        self.num_classes = num_classes

    cam_layer_name: str | None = None  # set_cam_layer(); None: ``features``

    def set_cam_layer(self, name: str | None) -> None:
        """Use the module called ``name`` (as in ``named_modules()``) for Grad-CAM; None: ``features``."""
        if name:
            if name not in dict(self.named_modules()):
                raise InterpError(f"no module {name!r} in {self.arch} (names as in named_modules())")
        self.cam_layer_name = name or None

    @property
    def cam_layer(self) -> nn.Module:
        """The module whose output is the last convolutional feature map (for Grad-CAM/CAM)."""
        return self.get_submodule(self.cam_layer_name) if self.cam_layer_name else self.features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map ``[B, C, h, w]`` of images ``x`` in ``[0, 1]``."""
        return self.features(self.normalize(x))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits from a feature map."""
        return self.head(torch.flatten(self.pool(feats), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
