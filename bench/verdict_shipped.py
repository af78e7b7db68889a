"""Did retraining help the shipped runs? The dashboard's verdict, written to ``docs/results/verdict_shipped.md``.

For each shipped dataset: every run evaluated on the whole test split with the given attribution
method (cached in ``RUN/eval_cache/``, the same entries the Metrics page reads), then each retrain
compared tile by tile with the run it was fine-tuned from (``interp_core.evaluation.verdict``: paired
differences, 95% percentile bootstrap over tiles, 2000 resamples, seed 0).

Usage: python bench/verdict_shipped.py [--datasets ...] [--method saliency] [--out docs/results/verdict_shipped.md]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from interp_core.evaluation import verdict as V  # noqa: E402
from interp_core.data import open_split  # noqa: E402
from interp_core.evaluation.evaluate import EvalSettings, cached_evaluate  # noqa: E402
from interp_core.runs import find_runs, read_config  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["synthetic-he", "synthetic-he-biased", "ihc"])
    p.add_argument("--method", default="saliency")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "verdict_shipped.md"))
    a = p.parse_args()
    lines = ["# Did retraining help? The shipped runs against the run they were fine-tuned from", "",
             f"Produced by `bench/verdict_shipped.py` (attribution `{a.method}`, whole test split). Each row: "
             "the paired per-tile change `retrain - reference` with its 95% percentile bootstrap interval "
             f"({V.N_BOOT} resamples of the tiles, seed 0); *better*/*worse* when the interval excludes 0, in "
             "the metric's direction. One training seed per run: the intervals cover the test tiles, not "
             "the training's randomness.", ""]
    rows = []
    for name in a.datasets:
        data = ROOT / "sample_data" / "data" / name
        runs = {str(r): read_config(r) for r in find_runs(ROOT / "sample_data" / "runs" / name)}
        ref = V.default_reference(runs)
        # limit = the split's size: the settings the Metrics page uses for "every tile", so it reuses these results
        s = EvalSettings(split="test", attribution=a.method, limit=len(open_split(data, "test")))
        results = {k: cached_evaluate(k, data, s, progress=False) for k in runs}
        lines += [f"## {name} (reference: {Path(ref).name})", ""]
        for k in runs:
            if k == ref:
                continue
            ch = V.compare(results[k], results[ref], run=Path(k).name, reference_name=Path(ref).name)
            lines += [V.verdict_sentence(ch, bold=lambda t: f"**{t}**"), "",
                      "| metric | direction | reference | retrain | change [95% CI] | tiles | verdict |",
                      "|---|---|---|---|---|---|---|"]
            for c in ch:
                lines.append(f"| {V.metric_name(c.metric)} | {c.as_row()['direction']} | {c.before:.3f} | "
                             f"{c.after:.3f} | {c.text()} | {c.n} | {c.call} |")
                rows.append({"dataset": name, **c.as_row(), "run": Path(k).name, "reference": Path(ref).name})
            lines.append("")
    lines.append(V.verdict_note(len({r["metric"] for r in rows})))
    Path(a.out).write_text("\n".join(lines) + "\n")
    Path(a.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
