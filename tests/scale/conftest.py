"""Fixtures of the scaling tests: a tiny pyramidal TIFF slide and a run with fixed random weights
(no training: the tests check plumbing and equalities, not accuracy)."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from interp_core._utils.device import torch_threads
from interp_core.testing import pattern_image


pattern_slide = functools.partial(pattern_image, 200, 136, 72)


def make_run(root: Path, *, classes: tuple[str, ...] = ("normal", "tumor"), image_size: int = 16,
             seed: int = 0) -> Path:
    """A run folder (config.json + model.safetensors) of a width-4 smallcnn with seeded random weights."""
    from interp_core.models import create_model
    from interp_core.runs import save_model_weights, write_json
    torch.manual_seed(seed)
    m = create_model("smallcnn", len(classes), width=4)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
    cfg = {"format_version": 1, "arch": "smallcnn", "arch_options": {"width": 4}, "num_classes": len(classes),
           "classes": list(classes), "image_size": image_size, "objective": "erm", "data": "ihc"}
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "config.json", cfg)
    save_model_weights(m, root / "model.safetensors", cfg)
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def slide_image() -> np.ndarray:
    return pattern_slide()


@pytest.fixture(scope="session")
def slide_tiff(tmp_path_factory, slide_image) -> Path:
    """``slide_image`` as a 3-level tiled pyramidal TIFF (32-pixel tiles, mpp 0.5)."""
    from interp_core.slides.wsi import write_pyramid_tiff
    return write_pyramid_tiff(tmp_path_factory.mktemp("wsi") / "slide.tiff", slide_image, n_levels=3, tile=32,
                              mpp=0.5)


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "fake")


class Helpers:
    """The helpers above as a fixture (test modules cannot import conftest under importlib mode)."""

    pattern_slide = staticmethod(pattern_slide)
    make_run = staticmethod(make_run)


@pytest.fixture()
def helpers() -> Helpers:
    return Helpers()
