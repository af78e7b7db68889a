"""Datasets: ImageFolder (+ masks, groups) on disk, MedMNIST npz, synthetic generators."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .dataset import SPLITS, TileDataset, TileRecord, dataset_classes, infer_image_size, load_split
from .image_io import LoadedImage, load_mask, load_rgb
from .medmnist import load_npz_split


def open_split(source: str | Path, split: str, **kw) -> TileDataset:
    """Open a split from a dataset folder (DESIGN.md layout) or a MedMNIST ``.npz`` file.

    ``interpolation`` (keyword; default bilinear) resizes tiles whose side differs from ``image_size``.
    """
    interpolation = kw.pop("interpolation", None)
    p = Path(source)
    if p.suffix.lower() == ".npz":
        ds = load_npz_split(p, split, **kw)
    elif not p.exists():
        raise DataError(f"{p}: dataset not found")
    else:
        ds = load_split(p, split, **kw)
    if interpolation:
        if interpolation not in ("bilinear", "bicubic", "nearest"):
            raise DataError(f"unknown interpolation {interpolation!r}; choose bilinear, bicubic or nearest")
        ds.interpolation = interpolation
    return ds


__all__ = ["SPLITS", "TileDataset", "TileRecord", "LoadedImage", "dataset_classes", "infer_image_size",
           "load_split", "load_npz_split", "load_rgb", "load_mask", "open_split"]
