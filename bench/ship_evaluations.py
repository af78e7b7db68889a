"""Store the test-split evaluations of the shipped baseline and SCAAT runs beside them
(``sample_data/runs/<dataset>/<run>/eval_cache/``), as the dashboard's Metrics page would, so the
Home page can state SCAAT's measured effect without computing anything. Called by
``bench/ship_runs.sh`` after training; the stored results name the run and data folders relative
to the repository (no machine paths).

Usage: python bench/ship_evaluations.py [--runs baseline-erm scaat] [--datasets synthetic-he]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from interp_core.evaluation.evaluate import CACHE_DIR, EvalSettings, cache_key, cached_evaluate  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", default=["baseline-erm", "scaat"])
    p.add_argument("--datasets", nargs="+", default=None, help="only these shipped datasets (default: all)")
    a = p.parse_args()
    s = EvalSettings()
    for ds_runs in sorted((ROOT / "sample_data" / "runs").iterdir()):
        if a.datasets and ds_runs.name not in a.datasets:
            continue
        data = ROOT / "sample_data" / "data" / ds_runs.name
        for name in a.runs:
            run = ds_runs / name
            if not (run / "model.safetensors").is_file() or not data.is_dir():
                continue
            cached_evaluate(run, data, s, progress=False)
            path = run / CACHE_DIR / f"{cache_key(run, data, s)}.json"
            result = json.loads(path.read_text())
            result["run"], result["data"] = str(run.relative_to(ROOT)), str(data.relative_to(ROOT))
            path.write_text(json.dumps(result, indent=1))
            print(f"{run.relative_to(ROOT)}: sparseness {result['sparseness']['mean']:.3f}, "
                  f"accuracy {result['accuracy']['mean']:.3f}")


if __name__ == "__main__":
    main()
