"""Two gloo processes against one on the CPU: training images/second at the same global batch.

Usage: python bench/ddp_speed.py [--n-per-class 256] [--size 64] [--batch 64] [--epochs 3]
       [--objective erm] [--arch smallcnn]
Each process gets OMP_NUM_THREADS=1, so "1 process" uses one core and "2 processes" two: the
ratio is the data-parallel scaling on this machine (ideal 2.0), the gap being gloo's all-reduce
of the gradients plus the per-step statistics sync (and, with --sync-bn, one all-gather and one
all-reduce per BatchNorm layer). Throughput is taken from the epochs after the first
(history.jsonl ``epoch_seconds``: training plus validation), so start-up and warm-up are excluded.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from interp_core.testing import make_tiny_dataset  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(data: Path, out: Path, procs: int, a: argparse.Namespace, extra: list[str]) -> dict:
    """Train once; return throughput (steady-state and wall clock)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = ["-m", "interp_core", "train", "--data", str(data), "--out", str(out), "--objective", a.objective,
            "--arch", a.arch, "--epochs", str(a.epochs), "--batch-size", str(a.batch), "--device", "cpu", "--quiet",
            *extra]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--master_port", str(_port()), *args]
    else:
        cmd = [sys.executable, *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    steady = hist[1:] or hist
    n_train = len(list((data / "train").rglob("*.png")))
    used = (n_train // a.batch) * a.batch
    secs = sum(h["epoch_seconds"] for h in steady)
    return {"processes": procs, "img_per_s": used * len(steady) / secs, "epoch_s": secs / len(steady),
            "wall_s": wall, "final_val_accuracy": hist[-1]["val_accuracy"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-per-class", type=int, default=256)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--objective", default="erm")
    p.add_argument("--arch", default="smallcnn")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ddp_speed_"))
    try:
        data = make_tiny_dataset(tmp / "data", n_per_class=a.n_per_class, size=a.size, splits=("train", "val"))
        rows = [("1 process", run(data, tmp / "single", 1, a, [])),
                ("2 processes", run(data, tmp / "ddp", 2, a, [])),
                ("2 processes --sync-bn", run(data, tmp / "ddp_sync", 2, a, ["--sync-bn"]))]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = rows[0][1]["img_per_s"]
    print(f"{a.objective}, {a.arch}, {2 * a.n_per_class} train tiles {a.size}x{a.size}, global batch {a.batch}, "
          f"{a.epochs} epochs, OMP_NUM_THREADS=1 per process, {os.cpu_count()} CPU cores")
    print(f"{'setting':<24}{'img/s':>9}{'speed-up':>10}{'epoch s':>9}{'wall s':>9}{'val acc':>9}")
    for name, r in rows:
        print(f"{name:<24}{r['img_per_s']:>9.0f}{r['img_per_s'] / base:>10.2f}{r['epoch_s']:>9.2f}"
              f"{r['wall_s']:>9.1f}{r['final_val_accuracy']:>9.3f}")


if __name__ == "__main__":
    main()
