"""Before/after SCAAT on shipped tiles: gradient saliency of the shipped baseline and of its SCAAT
retrain on test tiles drawn at random (seeded), side by side with the lesion outlined, plus each
map's Gini sparseness and relevance mass. Writes ``docs/results/scaat_study/tiles_<dataset>.png``.

Usage: python bench/scaat_tiles.py [--dataset synthetic-he] [--n 4] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from interp_core import metrics as M  # noqa: E402
from interp_core.attribution import attribute  # noqa: E402
from interp_core.attribution.overlay import overlay, shared_range  # noqa: E402
from interp_core.data import open_split  # noqa: E402
from interp_core.runs import load_run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic-he")
    p.add_argument("--n", type=int, default=4, help="tiles drawn at random from the test split's tumour tiles")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="saliency")
    a = p.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    data = ROOT / "sample_data" / "data" / a.dataset
    runs = ROOT / "sample_data" / "runs" / a.dataset
    cpu = torch.device("cpu")
    models = {name: load_run(runs / name, cpu).model.eval() for name in ("baseline-erm", "scaat")}
    ds = open_split(data, "test", image_size=64)
    positive = len(ds.classes) - 1  # tumor / the positive class
    pool = [i for i, lab in enumerate(ds.labels) if lab == positive]
    rng = np.random.default_rng(a.seed)
    picks = sorted(rng.choice(pool, size=min(a.n, len(pool)), replace=False).tolist())
    fig, axes = plt.subplots(len(picks), 3, figsize=(7.5, 2.6 * len(picks)), squeeze=False)
    for row, i in enumerate(picks):
        item = ds[i]
        x = item["image"][None]
        mask = item.get("mask")
        maps = {n: attribute(m, x, a.method, target=torch.tensor([positive]))[0] for n, m in models.items()}
        lo, hi = shared_range([m.numpy() for m in maps.values()])
        axes[row][0].imshow(item["image"].permute(1, 2, 0).numpy())
        axes[row][0].set_title(f"test tile {i} ({ds.classes[positive]})", fontsize=8)
        for col, (name, amap) in enumerate(maps.items(), start=1):
            m2 = None if mask is None else mask[0].numpy()
            axes[row][col].imshow(overlay(item["image"], amap.numpy(), vmin=lo, vmax=hi, mask=m2))
            gini = float(M.sparseness(amap[None])[0])
            text = f"{name}: Gini {gini:.3f}"
            if mask is not None:
                text += f", on lesion {float(M.relevance_mass_accuracy(amap[None], mask > 0)[0]):.3f}"
            axes[row][col].set_title(text, fontsize=7)
        for ax in axes[row]:
            ax.axis("off")
    fig.suptitle(f"{a.dataset}: {a.method} maps before and after SCAAT\n(shipped runs; tiles drawn with seed {a.seed}; "
                 "shared colour scale per row, lesion outlined)", fontsize=8)
    fig.tight_layout()
    out = ROOT / "docs" / "results" / "scaat_study" / f"tiles_{a.dataset}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print("written", out.relative_to(ROOT), "tiles", picks)


if __name__ == "__main__":
    main()
