"""A small 4-conv-block CNN for 64x64 tiles; last feature map at 1/4 of the input side."""
from __future__ import annotations

from torch import nn

from .base import TileClassifier
from .registry import register_model


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=False)]


@register_model("smallcnn", "4 conv blocks (16-32-64-64) with BatchNorm, GAP + linear; CAM at 1/4 resolution")
def smallcnn(num_classes: int, width: int = 16) -> TileClassifier:
    """4 conv blocks with BatchNorm, two 2x2 max-pools, global-average-pool + linear head."""
    w = width
    features = nn.Sequential(
        *_block(3, w), nn.MaxPool2d(2),
        *_block(w, 2 * w), nn.MaxPool2d(2),
        *_block(2 * w, 4 * w),
        *_block(4 * w, 4 * w),
    )
    model = TileClassifier(features, 4 * w, num_classes)
    model.arch = "smallcnn"
    return model
