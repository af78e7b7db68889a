"""Is explanation consistency saturated, and which attack settings spread it? (issue 13, point 5)

For a trained ERM model (the ``base-erm`` of ``bench/ece_study.py``'s fine-tune setting, seed
given), score every training tile with ECE's consistency under a grid of attack settings (budget
``eps``, PGD steps ``K``, background threshold ``tau``, heatmap similarity) and report, per
setting: the spread of ``E`` (5th / 50th / 95th percentile, interquartile range), the spread of
the resulting ECE weights (``v = 1 - E + 0.1``, mean 1: min, max, 95th / 5th percentile ratio),
the share of predictions the attack flipped, and the AUROC of ``1 - E`` for the minority
(bias-conflicting) training tiles. One JSON per (dataset, seed) under
``docs/results/ece_saturation/`` and a markdown table generated from them.

Usage: python bench/ece_saturation.py [--datasets ...] [--seeds 0] [--tables-only]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from interp_core.consistency.options import ConsistencyOptions  # noqa: E402
from interp_core.consistency.score import dataset_consistency  # noqa: E402
from interp_core.data import open_split  # noqa: E402
from interp_core.evaluation.evaluate import training_aligned_groups  # noqa: E402
from interp_core.metrics.bias import auroc, minority_mask  # noqa: E402
from interp_core.runs import load_run  # noqa: E402
from interp_core.training.objectives.ece import consistency_weights  # noqa: E402

RUNS = ROOT / "bench" / "out" / "ece_study"
RESULTS = ROOT / "docs" / "results" / "ece_saturation"

# (label, options): the default first, then one lever at a time, then combinations
GRID: list[tuple[str, dict]] = [
    ("default (eps 8, K 3, tau 0.5, cosine)", {}),
    ("eps 32", {"eps": 32 / 255}),
    ("eps 64", {"eps": 64 / 255}),
    ("eps 128", {"eps": 128 / 255}),
    ("K 10", {"steps": 10}),
    ("eps 64, K 10", {"eps": 64 / 255, "steps": 10}),
    ("tau 0.8", {"threshold": "0.8"}),
    ("tau mean", {"threshold": "mean"}),
    ("pearson", {"similarity": "pearson"}),
    ("topk_iou", {"similarity": "topk_iou"}),
    ("eps 64, tau 0.8", {"eps": 64 / 255, "threshold": "0.8"}),
    ("eps 64, tau 0.8, pearson", {"eps": 64 / 255, "threshold": "0.8", "similarity": "pearson"}),
    ("eps 64, tau 0.8, topk_iou", {"eps": 64 / 255, "threshold": "0.8", "similarity": "topk_iou"}),
]


def sweep(dataset: str, seed: int) -> Path:
    data = ROOT / "sample_data" / "data" / dataset
    run = RUNS / dataset / "finetune" / f"seed{seed}" / "base-erm"
    loaded = load_run(run, torch.device("cpu"))
    ds = open_split(data, "train", image_size=loaded.config["image_size"])
    minority = minority_mask(ds.labels, ds.groups, training_aligned_groups(data))
    labels = np.asarray(ds.labels)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=False)
    rows = []
    for label, opts in GRID:
        t0 = time.perf_counter()
        o = ConsistencyOptions(**opts)
        res = dataset_consistency(loaded.model, loader, o, device="cpu", generator=torch.Generator().manual_seed(0))
        e = np.empty(len(ds))
        e[res.indices.numpy()] = res.scores.numpy()
        changed = np.zeros(len(ds), dtype=bool)
        changed[res.indices.numpy()] = res.pred_changed.numpy()
        w = consistency_weights(torch.from_numpy(e)).numpy().astype(np.float64)
        q = np.quantile(e, [0.05, 0.25, 0.5, 0.75, 0.95])
        rows.append({
            "setting": label, "options": {k: (round(v * 255) if k == "eps" else v) for k, v in opts.items()},
            "E_p05": q[0], "E_p25": q[1], "E_p50": q[2], "E_p75": q[3], "E_p95": q[4], "E_iqr": q[3] - q[1],
            "weight_min": float(w.min()), "weight_max": float(w.max()),
            "weight_p95_over_p05": float(np.quantile(w, 0.95) / np.quantile(w, 0.05)),
            "pred_changed_share": float(changed.mean()),
            "auroc_1_minus_E": auroc(1 - e, minority),
            "auroc_within_class": {ds.classes[c]: auroc(1 - e[labels == c], minority[labels == c])
                                   for c in sorted(set(labels.tolist()))},
            "E_mean_minority": float(e[minority].mean()), "E_mean_aligned": float(e[~minority].mean()),
            "seconds": time.perf_counter() - t0,
        })
        print(f"[saturation] {dataset} seed {seed} {label}: E {q[0]:.3f}-{q[4]:.3f}, "
              f"AUROC {rows[-1]['auroc_1_minus_E']:.3f}", file=sys.stderr)
    out = RESULTS / dataset / f"seed{seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"dataset": dataset, "seed": seed, "model": "base-erm (ERM, 8 epochs)",
                               "eps_unit": "1/255", "n_train": len(ds), "minority_share": float(minority.mean()),
                               "rows": rows}, indent=2) + "\n")
    return out


def _within(rows: list[dict]) -> str:
    per = [r["auroc_within_class"] for r in rows if r.get("auroc_within_class")]
    if not per:
        return "–"
    return ", ".join(f"{c} {statistics.mean(d[c] for d in per):.2f}" for c in sorted(per[0]))


def write_table() -> Path:
    lines = ["# Consistency saturation: attack settings against the spread of E (generated by "
             "bench/ece_saturation.py)", "",
             "Training tiles scored by the fine-tune setting's ERM baseline (8 epochs); mean over the seeds "
             "present. E percentiles 5/50/95; weights v = 1 - E + 0.1 normalised to mean 1; AUROC of 1 - E "
             "for the minority (bias-conflicting) tiles.", ""]
    for d in sorted(RESULTS.glob("*/")):
        files = sorted(d.glob("seed*.json"))
        if not files:
            continue
        runs = [json.loads(f.read_text()) for f in files]
        lines += [f"## {d.name} (seeds {', '.join(str(r['seed']) for r in runs)})", "",
                  "| setting | E p05 | E p50 | E p95 | E IQR | weight min-max | w p95/p05 | flipped | AUROC 1-E "
                  "| AUROC within class |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for i, row in enumerate(runs[0]["rows"]):
            rs = [r["rows"][i] for r in runs]
            m = lambda k: statistics.mean(r[k] for r in rs)  # noqa: E731
            au = [r["auroc_1_minus_E"] for r in rs]
            spread = f" ± {statistics.stdev(au):.3f}" if len(au) > 1 else ""
            lines.append(f"| {row['setting']} | {m('E_p05'):.3f} | {m('E_p50'):.3f} | {m('E_p95'):.3f} | "
                         f"{m('E_iqr'):.3f} | {m('weight_min'):.2f}-{m('weight_max'):.2f} | "
                         f"{m('weight_p95_over_p05'):.2f} | {m('pred_changed_share'):.3f} | "
                         f"{statistics.mean(au):.3f}{spread} | {_within(rs)} |")
        lines.append("")
    path = RESULTS / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["synthetic-he-bgbias", "synthetic-he-biased"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--tables-only", action="store_true")
    a = p.parse_args()
    if not a.tables_only:
        for name in a.datasets:
            for seed in a.seeds:
                sweep(name, seed)
    print(write_table().read_text())


if __name__ == "__main__":
    main()
