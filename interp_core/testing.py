"""Test helpers shipped with the package (Captum style): tiny datasets and models for fast tests."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .cli import main


def make_tiny_dataset(root: str | Path, *, n_per_class: int = 8, size: int = 16, classes: tuple[str, ...] = ("a", "b"),
                      splits: tuple[str, ...] = ("train", "val", "test"), masks: bool = True, groups: bool = True,
                      seed: int = 0) -> Path:
    """A learnable toy ImageFolder dataset: class ``k`` has a bright square in quadrant ``k``.

    The square is the evidence mask. Groups: ``class|even`` / ``class|odd`` by tile number.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for split in splits:
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            if masks:
                (root / "masks" / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                img = (rng.random((size, size, 3)) * 80 + 40).astype(np.uint8)
                m = np.zeros((size, size), np.uint8)
                q = size // 2
                y0, x0 = (k // 2) * q, (k % 2) * q
                s = max(2, q // 2)
                oy, ox = rng.integers(0, q - s + 1, 2)
                m[y0 + oy:y0 + oy + s, x0 + ox:x0 + ox + s] = 255
                img[m > 0] = (230, 200 - 40 * k, 60 + 50 * k)
                rel = f"{split}/{name}/{i:04d}.png"
                Image.fromarray(img).save(root / rel)
                if masks:
                    Image.fromarray(m).save(root / "masks" / rel)
                rows.append((split, name, rel, f"{name}|{'even' if i % 2 == 0 else 'odd'}"))
    if groups:
        with (root / "groups.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["split", "class_name", "file", "group"])
            w.writerows(rows)
    return root


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300):
    """Run ``python -m interp_core ARGS`` in a subprocess from the repo root; return the CompletedProcess."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("INTERP_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "interp_core", *args], capture_output=True, text=True,
                          cwd=cwd or root, env=env, timeout=timeout)


def pattern_image(w: int = 256, h: int = 192, glass_cols: int = 96, seed: int = 0):
    """A slide-like uint8 RGB image: grey-white glass for ``x < glass_cols``, saturated random
    'tissue' (pink/purple) to the right, so a tissue mask has a known answer."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 245, np.uint8)
    tissue = np.stack([rng.integers(150, 230, (h, w)), rng.integers(40, 120, (h, w)),
                       rng.integers(120, 200, (h, w))], axis=-1).astype(np.uint8)
    img[:, glass_cols:] = tissue[:, glass_cols:]
    return img


def cli_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``python -m interp_core ARGS`` in this process (no interpreter start-up): ``(exit code,
    stdout, stderr)``, captured with pytest's ``capsys``."""

    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err

