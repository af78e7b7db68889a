"""Write the sample data sets (``python -m interp_core make-data KIND``) in the ImageFolder layout.

::

    DIR/{train,val,test}/{class}/{id}.png            RGB tiles
    DIR/masks/{train,val,test}/{class}/{id}.png      'L' 0/255 evidence masks (all zero: none)
    DIR/artifact_masks/{split}/{class}/{id}.png      synthetic-he-biased only: the pen-mark region
                                                     (synthetic-he-bgbias has none: its bias is
                                                     the whole context, not a region)
    DIR/groups.csv                                   split,class_name,file,group
    DIR/tiles.csv                                    ihc only: where each tile was cut from, its DAB
                                                     fraction and whether it is ambiguous
    DIR/dataset.json                                 kind, seed, size, counts, classes, ...

Everything is a function of (kind, seed, size, counts): each tile draws from its own
``numpy.random.Generator(PCG64(SeedSequence([seed, split, index, stream])))``, so the same
arguments give byte-identical files, and synthetic-he-biased (synthetic-he-bgbias) has exactly
the tissue of synthetic-he with the same seed, plus the pen marks (the context looks). The data set is written to a temporary
folder next to ``out`` and renamed into place at the end, so an interrupted run leaves nothing
half-written.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from ..errors import InterpError
from . import ihc
from .synthetic_he import LOOKS, render_he_tile

GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")

GENERATORS: dict[str, str] = {
    "synthetic-he": "H&E-like tiles, normal vs tumor; a tumor tile holds a lesion whose region is the mask",
    "synthetic-he-biased": "synthetic-he plus an ink pen mark on 90% of tumor / 10% of normal tiles "
                           "(50/50 in test); groups.csv says class|artifact or class|clean",
    "synthetic-he-bgbias": "synthetic-he with the tissue around the lesion tinted 'warm' or 'cool' (a "
                           "background bias): the class's own look on 90% of train/val tiles (normal: warm, "
                           "tumor: cool), 50/50 in test; groups.csv says class|look",
    "ihc": "real tiles from scikit-image's immunohistochemistry image, dab_positive vs dab_negative, "
           "DAB pixels as mask, spatially disjoint splits",
}

# Shipped sizes (tiles per split, both classes together), chosen to keep the three shipped copies
# near 10 MB: a 64x64 tissue tile is about 9 KB as PNG. ihc is balanced too (the image allows it).
DEFAULT_COUNTS: dict[str, dict[str, int]] = {
    "synthetic-he": {"train": 480, "val": 100, "test": 200},
    "synthetic-he-biased": {"train": 480, "val": 100, "test": 200},
    "synthetic-he-bgbias": {"train": 480, "val": 100, "test": 200},
    "ihc": {"train": 480, "val": 200, "test": 200},  # 3/4 of each class ambiguous (see ihc.py)
}

# P(pen mark | class) per split for synthetic-he-biased: spurious in train/val, decorrelated in test.
ARTIFACT_RATES: dict[str, dict[str, float]] = {
    "train": {"tumor": 0.9, "normal": 0.1},
    "val": {"tumor": 0.9, "normal": 0.1},
    "test": {"tumor": 0.5, "normal": 0.5},
}

# synthetic-he-bgbias: P(the tile's context has its class's own look) per split, and each class's
# own look (an index into synthetic_he.LOOKS): class-correlated in train/val, independent in test.
LOOK_AGREE_RATES: dict[str, float] = {"train": 0.9, "val": 0.9, "test": 0.5}
CLASS_LOOK: dict[str, int] = {"normal": 0, "tumor": 1}

_SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
_STREAM_LABELS, _STREAM_ARTIFACT, _STREAM_TILE, _STREAM_PEN, _STREAM_LOOK, _STREAM_LOOK_TILE = 11, 12, 13, 14, 15, 16


def make_dataset(kind: str, out: str | Path, *, size: int = 64, n_train: int | None = None,
                 n_val: int | None = None, n_test: int | None = None, seed: int = 0,
                 progress: bool = False) -> dict:
    """Generate data set ``kind`` into ``out`` and return its ``dataset.json`` content.

    Counts are tiles per split (both classes together; default: the shipped sizes). An existing
    ``out`` is replaced only if it is a previous data set of ours (it has a ``dataset.json``);
    any other non-empty folder is refused.
    """
    if kind not in GENERATORS:
        raise InterpError(f"unknown data kind {kind!r}; choose one of {', '.join(GENERATORS)}")
    if not isinstance(size, (int, np.integer)) or not 16 <= size <= 1024:
        raise InterpError(f"tile size must be an integer between 16 and 1024, got {size!r}")
    counts = dict(DEFAULT_COUNTS[kind])
    for split, n in zip(SPLITS, (n_train, n_val, n_test)):
        if n is not None:
            if not isinstance(n, (int, np.integer)) or n < 2:
                raise InterpError(f"--n-{split} must be an integer of at least 2 (one tile per class), got {n!r}")
            counts[split] = int(n)
    seed = int(seed)
    if seed < 0:
        raise InterpError(f"seed must be non-negative, got {seed}")
    out = Path(os.path.abspath(out))  # so that "." or "dir/.." still has a parent and a name
    _check_target(out)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        writer = _Writer(tmp)
        bar = _progress_bar(sum(counts.values()), kind, progress)
        if kind == "ihc":
            meta = _write_ihc(writer, counts, size, seed, bar)
        else:
            meta = _write_synthetic(writer, counts, size, seed, biased=kind == "synthetic-he-biased",
                                    bgbias=kind == "synthetic-he-bgbias", bar=bar)
        bar.close()
        info = {
            "kind": kind,
            "description": GENERATORS[kind],
            "seed": seed,
            "size": int(size),
            "counts": writer.counts(),
            "classes": meta.pop("classes"),
            "generator_version": GENERATOR_VERSION,
            **meta,
        }
        writer.finish(info)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


# --------------------------------------------------------------------------- the synthetic sets


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent generator for one (seed, split, index, stream) key."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *keys])))


def _balanced_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n // 2`` zeros and ``n - n // 2`` ones in random order."""
    return rng.permutation(np.r_[np.zeros(n // 2, dtype=int), np.ones(n - n // 2, dtype=int)])


def _write_synthetic(writer: "_Writer", counts: dict[str, int], size: int, seed: int, biased: bool, bar,
                     bgbias: bool = False) -> dict:
    classes = ["normal", "tumor"]
    for split in SPLITS:
        code = _SPLIT_CODE[split]
        labels = _balanced_labels(_rng(seed, code, _STREAM_LABELS), counts[split])
        marked = np.zeros(len(labels), dtype=bool)
        if biased:
            art_rng = _rng(seed, code, _STREAM_ARTIFACT)
            for label, name in enumerate(classes):
                idx = np.flatnonzero(labels == label)
                k = int(round(ARTIFACT_RATES[split][name] * len(idx)))
                marked[art_rng.choice(idx, size=k, replace=False)] = True
        looks = np.zeros(len(labels), dtype=int)
        if bgbias:  # exactly round(rate * n_class) tiles of each class get the class's own look
            look_rng = _rng(seed, code, _STREAM_LOOK)
            for label, name in enumerate(classes):
                idx = np.flatnonzero(labels == label)
                own = np.zeros(len(idx), dtype=bool)
                own[look_rng.choice(len(idx), size=int(round(LOOK_AGREE_RATES[split] * len(idx))), replace=False)] = True
                looks[idx] = np.where(own, CLASS_LOOK[name], 1 - CLASS_LOOK[name])
        for i, label in enumerate(labels):
            pen = _rng(seed, code, i, _STREAM_PEN) if marked[i] else None
            look = int(looks[i]) if bgbias else None
            tile = render_he_tile(_rng(seed, code, i, _STREAM_TILE), size, tumor=bool(label), pen_rng=pen,
                                  look=look, look_rng=_rng(seed, code, i, _STREAM_LOOK_TILE) if bgbias else None)
            name = classes[label]
            if biased:
                assert not (tile.artifact & tile.lesion).any()
                group = f"{name}|{'artifact' if marked[i] else 'clean'}"
            elif bgbias:
                group = f"{name}|{LOOKS[looks[i]]}"
            else:
                group = name
            writer.add(split, name, f"{i:05d}", tile.image, tile.lesion, group,
                       artifact=tile.artifact if biased else None)
            bar.update(1)
    meta: dict = {"classes": classes}
    if biased:
        meta["artifact_rates"] = ARTIFACT_RATES
    if bgbias:
        meta["look_agree_rates"] = LOOK_AGREE_RATES
        meta["class_look"] = {name: LOOKS[k] for name, k in CLASS_LOOK.items()}
    return meta


# --------------------------------------------------------------------------- ihc


def _write_ihc(writer: "_Writer", counts: dict[str, int], size: int, seed: int, bar) -> dict:
    rows = []
    _, positive, _ = ihc.source_image()
    for split in SPLITS:
        rng = _rng(seed, _SPLIT_CODE[split], _STREAM_TILE)
        tiles = ihc.sample_tiles(rng, split, counts[split], size=size, augment=split == "train")
        for i, t in enumerate(tiles):
            name = ihc.CLASSES[t.label]
            file_id = f"{i:05d}"
            writer.add(split, name, file_id, t.image, t.mask, name)
            frac = float(positive[t.y0:t.y0 + ihc.CROP, t.x0:t.x0 + ihc.CROP].mean())
            rows.append([split, name, f"{split}/{name}/{file_id}.png", t.y0, t.x0, ihc.CROP, t.transform,
                         f"{frac:.4f}", int(ihc.is_hard(t.label, frac))])
            bar.update(1)
    writer.add_csv("tiles.csv", ["split", "class_name", "file", "y0", "x0", "crop", "transform", "dab_fraction",
                                 "ambiguous"], rows)
    return {
        "classes": list(ihc.CLASSES),
        "source": "skimage.data.immunohistochemistry() (512x512)",
        "regions": {k: list(v) for k, v in ihc.REGIONS.items()},
        "crop": ihc.CROP,
        "dab_threshold": ihc.DAB_THRESHOLD,
        "positive_fraction": ihc.POSITIVE_FRACTION,
        "negative_fraction": ihc.NEGATIVE_FRACTION,
        "hard_band": ihc.HARD_BAND,
        "hard_share": ihc.HARD_SHARE,
        "ihc_rule_version": 2,
        "augmented_splits": ["train"],
    }


# --------------------------------------------------------------------------- writing


class _Writer:
    """Writes tiles, masks and CSVs under a root and remembers what it wrote."""

    def __init__(self, root: Path):
        self.root = root
        self.groups: list[list[str]] = []
        self._counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
        self._extra_csv: dict[str, tuple[list[str], list[list]]] = {}

    def add(self, split: str, class_name: str, file_id: str, image: np.ndarray, mask: np.ndarray,
            group: str, artifact: np.ndarray | None = None) -> None:
        rel = f"{split}/{class_name}/{file_id}.png"
        _save_png(self.root / rel, image, "RGB")
        _save_png(self.root / "masks" / rel, mask.astype(np.uint8) * 255, "L")
        if artifact is not None:
            _save_png(self.root / "artifact_masks" / rel, artifact.astype(np.uint8) * 255, "L")
        self.groups.append([split, class_name, rel, group])
        c = self._counts[split]
        c[class_name] = c.get(class_name, 0) + 1

    def add_csv(self, name: str, header: list[str], rows: list[list]) -> None:
        self._extra_csv[name] = (header, rows)

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: dict(sorted(c.items())) for s, c in self._counts.items()}

    def finish(self, info: dict) -> None:
        _write_csv(self.root / "groups.csv", ["split", "class_name", "file", "group"], self.groups)
        for name, (header, rows) in self._extra_csv.items():
            _write_csv(self.root / name, header, rows)
        (self.root / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _save_png(path: Path, array: np.ndarray, mode: str) -> None:
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.ascontiguousarray(array))
    assert image.mode == mode, (image.mode, mode)
    image.save(path, format="PNG")


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def _check_target(out: Path) -> None:
    """Refuse a file, or a non-empty folder that is not a data set written by this module."""
    if out.exists() and not out.is_dir():
        raise InterpError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not _is_ours(out):
        raise InterpError(f"refusing to write into {out}: it is not empty and not a data set made by "
                          f"make-data (no valid dataset.json); choose an empty or new directory")


def _is_ours(out: Path) -> bool:
    try:
        info = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "generator_version" in info and info.get("kind") in GENERATORS


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``, swapping out a previous data set of ours."""
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr when ``enabled``, else a no-op with the same interface."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tile", leave=False)
