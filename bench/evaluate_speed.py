"""Wall and CPU time of ``evaluate`` (every default metric) on 500 tiles of 64x64 with smallcnn.

    python bench/evaluate_speed.py [--n 500] [--threads 2] [--run sample_data/runs/synthetic-he/baseline-erm]

Generates ``--n`` synthetic-he test tiles (with masks, so the localisation metrics run) into
``bench/out/evaluate_speed_data`` once, then times ``evaluate_run`` end to end (loading, accuracy,
saliency, sparseness, complexity, deletion and insertion with 32 steps, the three localisation
metrics, explanation consistency) and, on one batch of 64, each part alone, so the share of each
metric in the total is visible. Target from the issue: under a minute on two CPU cores. Prints
the load average too: other processes on a 2-core machine change wall times a lot.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from interp_core import metrics as M  # noqa: E402
from interp_core.attribution import attribute  # noqa: E402
from interp_core.consistency.options import ConsistencyOptions  # noqa: E402
from interp_core.consistency.score import explanation_consistency, inference_copy  # noqa: E402
from interp_core.data import open_split  # noqa: E402
from interp_core.data.generate import make_dataset  # noqa: E402
from interp_core.evaluation.evaluate import EvalSettings, evaluate_run  # noqa: E402
from interp_core.runs import load_run  # noqa: E402


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--run", default=str(ROOT / "sample_data/runs/synthetic-he/baseline-erm"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = ROOT / "bench/out/evaluate_speed_data" / f"n{args.n}"
    if not (data / "test").is_dir():
        make_dataset("synthetic-he", data, n_train=4, n_val=4, n_test=args.n, seed=0)
    wall, cpu, res = timed(lambda: evaluate_run(args.run, data, EvalSettings(), device=torch.device("cpu")))
    print(f"evaluate_run on {res['n_tiles']} tiles, {args.threads} threads: {wall:.1f} s wall, {cpu:.1f} s CPU "
          f"(target < 60 s wall); load average {os.getloadavg()[0]:.1f}")

    model = load_run(args.run, torch.device("cpu")).model.eval()
    ds = open_split(data, "test")
    items = [ds[i] for i in range(64)]
    x = torch.stack([it["image"] for it in items])
    y = torch.tensor([int(it["label"]) for it in items])
    mask = torch.stack([it["mask"] for it in items])[:, 0] > 0
    with torch.no_grad():
        t = model(x).argmax(1)
    fast = inference_copy(model)
    a = attribute(model, x, "saliency", target=t)
    g = torch.Generator().manual_seed(0)
    parts = {
        "saliency maps": lambda: attribute(model, x, "saliency", target=t),
        "sparseness + complexity": lambda: (M.sparseness(a), M.complexity(a)),
        "deletion (32 steps)": lambda: M.deletion_auc(fast, x, a, t),
        "insertion (32 steps)": lambda: M.insertion_auc(fast, x, a, t),
        "localisation (3 metrics)": lambda: (M.pointing_game(a, mask), M.relevance_mass_accuracy(a, mask),
                                             M.relevance_rank_accuracy(a, mask)),
        "explanation consistency": lambda: [explanation_consistency(fast, x[i:i + 32], y[i:i + 32], generator=g,
                                                                    **ConsistencyOptions().consistency_kwargs())
                                            for i in range(0, 64, 32)],
    }
    rows = []
    for name, fn in parts.items():
        fn()  # warm-up
        rows.append((name, *timed(fn)[:2]))
    total = sum(r[1] for r in rows)
    print(f"\none batch of 64 tiles, {args.threads} threads:")
    print(f"{'part':28s} {'wall [s]':>9s} {'CPU [s]':>8s} {'share':>6s}")
    for name, w, c in rows:
        print(f"{name:28s} {w:9.3f} {c:8.3f} {w / total:6.0%}")


if __name__ == "__main__":
    main()
