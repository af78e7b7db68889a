"""Does SCAAT make saliency sparser and more faithful without losing accuracy? (issue: SCAAT, point 3)

For each dataset and seed: (a) erm N epochs; (b) erm fine-tuned M more (the control, same budget);
(c) scaat and (d) sgt fine-tuned from (a) for M epochs. Prints a markdown table (mean ± std over
seeds, paired difference to the control in brackets) and writes bench/out/scaat_effect.json.

Usage: python bench/scaat_effect.py [--seeds 0 1 2] [--n-epochs 8] [--m-epochs 3] [--datasets ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from effect import ROOT, markdown_table, run_protocol, save

METRICS = ["accuracy", "sparseness", "complexity", "deletion_auc", "insertion_auc", "pointing_game",
           "relevance_mass_accuracy", "relevance_rank_accuracy", "epoch_seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["synthetic-he", "ihc"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--n-epochs", type=int, default=8)
    p.add_argument("--m-epochs", type=int, default=3)
    p.add_argument("--scaat", default="{}", help="JSON of scaat options to try, e.g. '{\"kl_weight\": 2}'")
    p.add_argument("--batch-size", type=int, default=64, help="(ihc: use 16, as bench/ship_runs.sh does)")
    p.add_argument("--tag", default="scaat_effect")
    p.add_argument("--no-sgt", action="store_true", help="skip (d), e.g. when only trying scaat settings")
    a = p.parse_args()
    objectives = {"(c) scaat": {"objective": "scaat", "options": json.loads(a.scaat)}}
    if not a.no_sgt:
        objectives["(d) sgt"] = {"objective": "sgt"}
    payload = {"args": vars(a), "tables": {}}
    for name in a.datasets:
        res = run_protocol(ROOT / "sample_data" / "data" / name, a.seeds, objectives, n_epochs=a.n_epochs,
                           m_epochs=a.m_epochs, tag=a.tag, batch_size=a.batch_size)
        payload["tables"][name] = res
        print(f"\n### {name} (test split, {len(a.seeds)} seeds, N={a.n_epochs}, M={a.m_epochs}, batch {a.batch_size})\n")
        print(markdown_table(res, METRICS))
    print("written", save(a.tag, payload))


if __name__ == "__main__":
    main()
