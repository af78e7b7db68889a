"""Tile datasets: the ImageFolder + masks + groups layout of DESIGN.md, read lazily.

``load_split(root, split)`` returns a ``TileDataset`` whose items are dicts::

    {"image": float [3,H,W] in [0,1], "label": long, "index": long,
     "mask": float [1,H,W] (only when the dataset has masks),
     "artifact": float [1,H,W] (only when it has artifact masks)}

Class indices are the sorted class-folder names of the train split. A missing ``val`` split is
carved from ``train`` deterministically (stratified, seeded). Training augmentation (flips and
90-degree rotations, applied to image and masks alike) is a pure function of
``(seed, epoch, index)`` so that a resumed run sees exactly the same batches.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset

from ..errors import DataError
from .image_io import load_mask, load_rgb

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TileRecord:
    """One tile: its path relative to the dataset root (its id), label and optional side files."""

    file: str
    label: int
    group: str | None = None


class TileDataset(Dataset):
    """A split of a tile dataset; images are read from disk when an item is requested.

    Tiles of another side than ``image_size`` are resized with ``interpolation`` (the model's:
    ``bilinear``, ``bicubic`` or ``nearest``; antialiased), masks with nearest neighbours.
    """

    interpolation: str = "bilinear"

    def __init__(self, root: Path, split: str, classes: list[str], records: list[TileRecord], *,
                 image_size: int | None = None, augment: bool = False, seed: int = 0,
                 has_masks: bool = False, has_artifacts: bool = False):
        self.root = Path(root)
        self.split = split
        self.classes = classes
        self.records = records
        self.image_size = image_size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.has_masks = has_masks
        self.has_artifacts = has_artifacts
        self.notes: list[str] = []

    # -- metadata ------------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        return [r.file for r in self.records]

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    @property
    def groups(self) -> list[str] | None:
        if all(r.group is None for r in self.records):
            return None
        return [r.group or "unknown" for r in self.records]

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw for this epoch (see module docstring)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    # -- reading -------------------------------------------------------------------------
    def read_image(self, i: int) -> np.ndarray:
        """Tile ``i`` as uint8 ``[H, W, 3]`` at its stored size."""
        return load_rgb(self.root / self.records[i].file, name=self.records[i].file).array

    def _side_mask(self, folder: str, i: int, hw: tuple[int, int]) -> np.ndarray:
        path = self.root / folder / self.records[i].file
        if not path.is_file():
            return np.zeros(hw, dtype=bool)
        return load_mask(path, expected_hw=hw)

    def read_mask(self, i: int) -> np.ndarray | None:
        """Evidence mask of tile ``i`` as bool ``[H, W]`` at the stored size, or None."""
        if not self.has_masks:
            return None
        return self._side_mask("masks", i, self.read_image(i).shape[:2])

    def read_artifact(self, i: int) -> np.ndarray | None:
        """Artifact mask of tile ``i`` (e.g. a pen mark) as bool ``[H, W]``, or None without artifact masks."""
        if not self.has_artifacts:
            return None
        return self._side_mask("artifact_masks", i, self.read_image(i).shape[:2])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        arr = self.read_image(i)
        hw = arr.shape[:2]
        image = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
        extra: dict[str, torch.Tensor] = {}
        if self.has_masks:
            extra["mask"] = torch.from_numpy(self._side_mask("masks", i, hw)).float()[None]
        if self.has_artifacts:
            extra["artifact"] = torch.from_numpy(self._side_mask("artifact_masks", i, hw)).float()[None]
        if self.image_size is not None and hw != (self.image_size, self.image_size):
            size = [self.image_size, self.image_size]
            mode = TF.InterpolationMode(self.interpolation)
            image = TF.resize(image, size, interpolation=mode, antialias=mode != TF.InterpolationMode.NEAREST).clamp_(0, 1)
            extra = {k: (TF.resize(v, size, interpolation=TF.InterpolationMode.NEAREST) > 0.5).float()
                     for k, v in extra.items()}
        if self.augment:
            image, extra = self._augment(i, image, extra)
        item = {"image": image, "label": torch.tensor(self.records[i].label), "index": torch.tensor(i)}
        item.update(extra)
        return item

    def _augment(self, i: int, image: torch.Tensor, extra: dict[str, torch.Tensor]):
        h = hashlib.blake2b(f"{self.seed}:{self.epoch}:{i}".encode(), digest_size=2).digest()
        code = int.from_bytes(h, "little")
        k, flip = code % 4, (code >> 2) % 2

        def tf(t: torch.Tensor) -> torch.Tensor:
            t = torch.rot90(t, k, dims=(-2, -1))
            return torch.flip(t, dims=(-1,)) if flip else t

        return tf(image).contiguous(), {n: tf(v).contiguous() for n, v in extra.items()}


# ----------------------------------------------------------------------------------------
def list_images(folder: Path) -> list[Path]:
    """The image files of a class folder, as the loader takes them (image suffixes, no hidden files), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def class_dirs(split_dir: Path) -> list[str]:
    """The class folder names of a split folder (no hidden ones), sorted."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def dataset_classes(root: str | Path) -> list[str]:
    """Sorted class-folder names of the train split (the class index order)."""
    root = Path(root)
    train = root / "train"
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if not train.is_dir():
        raise DataError(f"{root}: no 'train' split folder (expected {root}/train/<class>/<image>.png)")
    classes = class_dirs(train)
    if len(classes) < 2:
        raise DataError(f"{train}: found {len(classes)} class folder(s); a classifier needs at least 2")
    return classes


def _read_groups(root: Path) -> dict[str, str]:
    path = root / "groups.csv"
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = {"file", "group"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
            for row in reader:
                out[row["file"]] = row["group"]
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    return out


def _records_for(root: Path, split: str, classes: list[str], groups: dict[str, str]) -> list[TileRecord]:
    split_dir = root / split
    found = class_dirs(split_dir)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{split_dir}: class folder(s) {', '.join(unknown)} not in the train split's classes")
    records: list[TileRecord] = []
    for label, name in enumerate(classes):
        cdir = split_dir / name
        if not cdir.is_dir():
            continue
        files = list_images(cdir)
        if not files:
            raise DataError(f"{cdir}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
        for p in files:
            rel = p.relative_to(root).as_posix()
            records.append(TileRecord(rel, label, groups.get(rel)))
    if not records:
        raise DataError(f"{split_dir}: split has no images")
    return records


def _carve_val(records: list[TileRecord], fraction: float, seed: int) -> tuple[list[TileRecord], list[TileRecord]]:
    """Deterministic stratified split of train records into (train, val)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    labels = sorted({r.label for r in records})
    for lab in labels:
        rs = [r for r in records if r.label == lab]
        order = rng.permutation(len(rs))
        n_val = int(round(len(rs) * fraction)) if len(rs) > 1 else 0
        chosen = set(order[:n_val].tolist())
        for j, r in enumerate(rs):
            (val if j in chosen else train).append(r)
    return train, val


def load_split(root: str | Path, split: str, *, image_size: int | None = None, augment: bool = False,
               seed: int = 0, val_fraction: float = 0.2) -> TileDataset:
    """Open one split of an ImageFolder dataset (DESIGN.md layout); see the module docstring."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    root = Path(root)
    classes = dataset_classes(root)
    groups = _read_groups(root)
    if split in ("train", "val") and not (root / "val").is_dir():
        train, val = _carve_val(_records_for(root, "train", classes, groups), val_fraction, seed)
        records = train if split == "train" else val
        if not records:
            raise DataError(f"{root}: too few training images to carve a validation split")
    elif not (root / split).is_dir():
        raise DataError(f"{root}: no {split!r} split folder")
    else:
        records = _records_for(root, split, classes, groups)
    ds = TileDataset(root, split, classes, records, image_size=image_size, augment=augment, seed=seed,
                     has_masks=(root / "masks").is_dir(), has_artifacts=(root / "artifact_masks").is_dir())
    return ds


def infer_image_size(ds: TileDataset) -> int:
    """The side of the first tile (tiles are square in this project; non-square ones are resized)."""
    arr = ds.read_image(0)
    return int(max(arr.shape[:2]))
