"""Peak memory of ``evaluate_run`` on 500 vs 5,000 generated 64x64 tiles (issue #7, item 5).

Each measurement runs in a fresh process (the peak RSS, ``ru_maxrss``, is a per-process high-water
mark); the baseline is the RSS after the imports and the model load, before evaluating. Streaming
evaluation should give the same peak for both sizes; loading every tile first would add about
``N * 3 * 64 * 64 * 4`` bytes (49 KB per tile, 245 MB for 5,000).

    OMP_NUM_THREADS=1 python bench/memory.py                  # predictions and accuracy
    OMP_NUM_THREADS=1 python bench/memory.py --explanations   # plus every explanation metric (slow)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prepare(root: Path, n: int) -> tuple[Path, Path]:
    """A dataset with ``n`` 64x64 test tiles (and a small train split), and a 1-epoch run on it."""
    from interp_core.testing import make_tiny_dataset
    from interp_core.training import TrainConfig, train
    data = root / f"tiles-{n}"
    if not (data / "test").is_dir():
        make_tiny_dataset(data, n_per_class=n // 2, size=64, splits=("test",), groups=False, seed=1)
        make_tiny_dataset(data, n_per_class=16, size=64, splits=("train",), groups=False, seed=2)
    run = root / "run"
    if not (run / "model.safetensors").is_file():
        train(TrainConfig(data=str(data), out=str(run), epochs=1, batch_size=16, device="cpu"), progress=False,
              log=lambda m: None)
    return data, run


def measure(data: str, run: str, n: int, explanations: bool) -> dict:
    """Evaluate ``n`` tiles in this process; RSS before and peak after, and the time."""
    import torch

    from interp_core.evaluation.evaluate import EvalSettings, evaluate_run
    from interp_core.runs import load_run
    torch.set_num_threads(1)
    loaded = load_run(run, "cpu")
    base = _rss_mb()
    t0 = time.perf_counter()
    res = evaluate_run(loaded, data, EvalSettings(split="test", limit=n, batch_size=64, explanations=explanations),
                       device=torch.device("cpu"))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return {"tiles": res["n_tiles"], "explanations": explanations, "rss_before_mb": round(base, 1),
            "peak_rss_mb": round(peak, 1), "seconds": round(seconds, 1),
            "tiles_per_second": round(res["n_tiles"] / seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="/tmp/interp_bench_memory", help="where the tiles are generated")
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 5000])
    p.add_argument("--explanations", action="store_true", help="also the explanation metrics (slow)")
    p.add_argument("--measure", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--run", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.measure is not None:
        print(json.dumps(measure(a.data, a.run, a.measure, a.explanations)))
        return
    root = Path(a.root)
    data, run = prepare(root, max(a.sizes))
    rows = []
    for n in a.sizes:
        cmd = [sys.executable, __file__, "--measure", str(n), "--data", str(data), "--run", str(run)]
        cmd += ["--explanations"] if a.explanations else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    a0, b0 = rows[0], rows[-1]
    grow = b0["peak_rss_mb"] - b0["rss_before_mb"] - (a0["peak_rss_mb"] - a0["rss_before_mb"])
    print(f"\n{'tiles':>6} {'RSS before':>11} {'peak RSS':>9} {'seconds':>8} {'tiles/s':>8}")
    for r in rows:
        print(f"{r['tiles']:>6} {r['rss_before_mb']:>9.1f}MB {r['peak_rss_mb']:>7.1f}MB {r['seconds']:>8.1f} "
              f"{r['tiles_per_second']:>8.1f}")
    print(f"peak growth from {a0['tiles']} to {b0['tiles']} tiles: {grow:+.1f} MB "
          f"(loading all tiles at once would add ~{(b0['tiles'] - a0['tiles']) * 3 * 64 * 64 * 4 / 2**20:.0f} MB)")


if __name__ == "__main__":
    main()
