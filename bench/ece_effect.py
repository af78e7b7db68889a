"""Does explanation-consistency reweighting help worst-group accuracy and move saliency off the
artifact, without losing accuracy on clean data? (issue: ECE, point 5)

For each dataset and seed: (a) erm N epochs; (b) erm fine-tuned M more (control); (e) ece and
(c) scaat fine-tuned from (a) for M epochs. Prints markdown tables and writes
bench/out/ece_effect.json.

Usage: python bench/ece_effect.py [--seeds 0 1 2] [--n-epochs 8] [--m-epochs 3]
"""
from __future__ import annotations

import argparse
import json

from effect import ROOT, markdown_table, run_from_scratch, run_protocol, save

METRICS = {
    "synthetic-he-biased": ["accuracy", "worst_group_accuracy", "artifact_mass", "explanation_consistency",
                            "sparseness", "relevance_mass_accuracy", "epoch_seconds"],
    "synthetic-he": ["accuracy", "explanation_consistency", "pointing_game", "relevance_mass_accuracy",
                     "relevance_rank_accuracy", "sparseness", "epoch_seconds"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(METRICS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--n-epochs", type=int, default=8)
    p.add_argument("--m-epochs", type=int, default=3)
    p.add_argument("--ece", default="{}", help="JSON of ece options, e.g. '{\"beta\": 0.1}'")
    p.add_argument("--batch-size", type=int, default=64, help="(ihc: use 16, as bench/ship_runs.sh does)")
    p.add_argument("--from-scratch", type=int, default=0, metavar="EPOCHS",
                   help="instead of fine-tuning: train erm and ece from scratch for EPOCHS (the paper's setting)")
    p.add_argument("--tag", default="ece_effect")
    p.add_argument("--no-scaat", action="store_true", help="skip the SCAAT arm on the biased set")
    p.add_argument("--study", action="store_true",
                   help="issue 13's study instead (bench/ece_study.py): ERM control, ECE (every epoch and default "
                        "schedule) and JTT on the biased sets, from scratch (--from-scratch epochs, default 8) and "
                        "fine-tuned (--n-epochs, --m-epochs); per-seed files under docs/results/ece_study/")
    p.add_argument("--settings", nargs="+", default=["finetune", "scratch"], help="(--study) which settings")
    p.add_argument("--tables-only", action="store_true", help="(--study) only rewrite the table from the files")
    a = p.parse_args()
    if a.study:
        from ece_study import refresh_mechanism, run_study, write_tables
        if a.tables_only:
            refresh_mechanism()
            print("written", write_tables())
            return
        datasets = a.datasets if a.datasets != list(METRICS) else ["synthetic-he-bgbias", "synthetic-he-biased"]
        run_study(datasets, a.seeds, scratch_epochs=a.from_scratch or 8, n_epochs=a.n_epochs, m_epochs=a.m_epochs,
                  settings=tuple(a.settings))
        refresh_mechanism()
        write_tables()
        print((ROOT / "docs" / "results" / "ece_study" / "README.md").read_text())
        return
    payload = {"args": vars(a), "tables": {}}
    for name in a.datasets:
        objectives = {"(e) ece": {"objective": "ece", "options": json.loads(a.ece)}}
        if name == "synthetic-he-biased" and not a.no_scaat:
            objectives["(c) scaat"] = {"objective": "scaat"}
        if a.from_scratch:
            res = run_from_scratch(ROOT / "sample_data" / "data" / name, a.seeds, objectives, epochs=a.from_scratch,
                                   tag=a.tag + "_scratch", batch_size=a.batch_size)
        else:
            res = run_protocol(ROOT / "sample_data" / "data" / name, a.seeds, objectives, n_epochs=a.n_epochs,
                               m_epochs=a.m_epochs, tag=a.tag, batch_size=a.batch_size)
        payload["tables"][name] = res
        setting = f"from scratch, {a.from_scratch} epochs" if a.from_scratch else f"N={a.n_epochs}, M={a.m_epochs}"
        print(f"\n### {name} (test split, {len(a.seeds)} seeds, {setting}, batch {a.batch_size})\n")
        print(markdown_table(res, METRICS.get(name, METRICS["synthetic-he"])))
    print("written", save(a.tag + ("_scratch" if a.from_scratch else ""), payload))


if __name__ == "__main__":
    main()
