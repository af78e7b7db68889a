"""MedMNIST ``.npz`` adapter (e.g. PathMNIST): ``{split}_images`` and ``{split}_labels`` arrays.

Produces the same ``TileDataset`` interface as the ImageFolder loader; sample ids are
``{split}/{index:06d}``. Loaded with ``allow_pickle=False`` (object arrays are refused).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import SPLITS, TileDataset, TileRecord

#: Class names of the MedMNIST sets people use here; others get ``class_{i}``.
KNOWN_CLASSES = {
    "pathmnist": ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth_muscle",
                  "normal_colon_mucosa", "cancer_stroma", "colorectal_adenocarcinoma"],
}


class NpzTileDataset(TileDataset):
    """A split of a MedMNIST-style npz file held in memory (these files are small)."""

    def __init__(self, path: Path, split: str, images: np.ndarray, labels: np.ndarray, classes: list[str], **kw):
        records = [TileRecord(f"{split}/{i:06d}", int(lab)) for i, lab in enumerate(labels)]
        super().__init__(path.parent, split, classes, records, **kw)
        self.path = path
        self._images = images

    def read_image(self, i: int) -> np.ndarray:
        img = self._images[i]
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        return np.ascontiguousarray(img[..., :3])


def load_npz_split(path: str | Path, split: str, **kw) -> NpzTileDataset:
    """Open one split of a MedMNIST ``.npz`` (``val`` is required to exist in the file)."""
    path = Path(path)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            ik, lk = f"{split}_images", f"{split}_labels"
            if ik not in keys or lk not in keys:
                raise DataError(f"{path}: no {ik!r}/{lk!r} arrays (found {', '.join(sorted(keys)) or 'none'})")
            images, labels = z[ik], z[lk]
            all_labels = np.concatenate([z[f"{s}_labels"].reshape(-1) for s in SPLITS if f"{s}_labels" in keys])
    except DataError:
        raise
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable npz file ({e})") from None
    labels = labels.reshape(-1).astype(np.int64)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        raise DataError(f"{path}: {split}_images must be uint8 [N,H,W] or [N,H,W,3] with one label each; "
                        f"got {images.dtype} {images.shape} and {labels.shape[0]} labels")
    if len(images) == 0:
        raise DataError(f"{path}: split {split!r} is empty")
    n_classes = int(all_labels.max()) + 1
    stem = path.stem.lower().split("_")[0]
    names = KNOWN_CLASSES.get(stem)
    classes = names if names and len(names) == n_classes else [f"class_{i}" for i in range(n_classes)]
    return NpzTileDataset(path, split, images, labels, classes, **kw)
