"""Tiles per second and peak memory of the sharded dataset explain job (``explain --data``).

    OMP_NUM_THREADS=1 python bench/explain_shards.py [--n 2048] [--size 64] [--shard-size 256]

Writes a synthetic ImageFolder split of ``--n`` random tiles (PNG, ``--size`` pixels) and a run of
smallcnn with random weights to a temporary folder, then runs ``explain_dataset`` (saliency) in a
fresh subprocess per setting and reports its wall time, tiles/s and peak RSS (``ru_maxrss`` of the
child). The same job with twice the tiles shows whether memory stays bounded (it should not grow
with the dataset, only with the shard size). Also times resuming a finished job (all shards skipped).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from interp_core.evaluation.explain_dataset import explain_dataset
t0 = time.perf_counter()
info = explain_dataset({run!r}, {data!r}, "test", {out!r}, method="saliency", shard_size={shard}, batch_size=64,
                       device="cpu")
dt = time.perf_counter() - t0
print(json.dumps({{"seconds": dt, "n": info["n_tiles"], "written": info["shards_written"],
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def make_split(root: Path, n: int, size: int) -> None:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", n)):
        for k, name in enumerate(("normal", "tumor")):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count // 2):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i:06d}.png")


def make_run(root: Path, size: int) -> None:
    import torch
    from interp_core.models import create_model
    from interp_core.runs import save_model_weights, write_json
    torch.manual_seed(0)
    cfg = {"format_version": 1, "arch": "smallcnn", "num_classes": 2, "classes": ["normal", "tumor"],
           "image_size": size, "objective": "erm"}
    write_json(root / "config.json", cfg)
    save_model_weights(create_model("smallcnn", 2), root / "model.safetensors", cfg)


def child(run: Path, data: Path, out: Path, shard: int) -> dict:
    code = CHILD.format(root=str(ROOT), run=str(run), data=str(data), out=str(out), shard=shard)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2048, help="tiles in the smaller job (the larger has twice as many)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=256)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_run(tmp / "run", a.size)
        print(f"smallcnn saliency, {a.size}px tiles, shard {a.shard_size}, OMP_NUM_THREADS="
              f"{os.environ.get('OMP_NUM_THREADS', '1')}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"{'tiles':>6} {'job':>7} {'seconds':>8} {'tiles/s':>8} {'peak RSS MB':>11} {'shards MB':>9}")
        for n in (a.n, 2 * a.n):
            data = tmp / f"d{n}"
            make_split(data, n, a.size)
            out = tmp / f"o{n}"
            r = child(tmp / "run", data, out, a.shard_size)
            mb = sum(f.stat().st_size for f in out.glob("shard_*.npz")) / 1e6
            print(f"{r['n']:>6} {'fresh':>7} {r['seconds']:>8.2f} {r['n'] / r['seconds']:>8.1f} {r['rss_mb']:>11.0f} {mb:>9.1f}")
            r = child(tmp / "run", data, out, a.shard_size)
            print(f"{r['n']:>6} {'resume':>7} {r['seconds']:>8.2f} {'-':>8} {r['rss_mb']:>11.0f} {'':>9}"
                  f"  ({r['written']} shards redone)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
