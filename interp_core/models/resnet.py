"""ResNet-18 adapted to small tiles: 3x3 stride-1 stem, no max-pool (64x64 in -> 8x8 features).

No pretrained weights can be downloaded here; ``weights=PATH`` loads a user's own safetensors file.
"""
from __future__ import annotations

from torch import nn
from torchvision.models import resnet18 as tv_resnet18

from .base import TileClassifier
from .registry import register_model


@register_model("resnet18", "ResNet-18 with a 3x3 stride-1 stem and no max-pool, for small tiles")
def resnet18(num_classes: int) -> TileClassifier:
    """ResNet-18 body (torchvision), small-tile stem, GAP + linear head."""
    net = tv_resnet18(weights=None)
    net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    features = nn.Sequential(net.conv1, net.bn1, nn.ReLU(inplace=False), net.layer1, net.layer2, net.layer3, net.layer4)
    # torchvision's BasicBlock uses inplace ReLU; harmless for hooks on the block output.
    model = TileClassifier(features, 512, num_classes)
    model.arch = "resnet18"
    return model
