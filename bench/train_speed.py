"""Training and inference throughput (images/second) of each registered architecture.

Usage: python bench/train_speed.py [--size 64] [--batch 64] [--steps 10] [--device auto]
Measured on random tiles (data loading excluded) so architectures compare like for like.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from interp_core._utils.device import pick_device, describe_device  # noqa: E402
from interp_core.models import create_model, list_models  # noqa: E402


def bench(arch: str, size: int, batch: int, steps: int, device: torch.device) -> tuple[float, float]:
    torch.manual_seed(0)
    model = create_model(arch, 2).to(device)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    model.train()
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    train_ips = batch * steps / (time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
    infer_ips = batch * steps / (time.perf_counter() - t0)
    return train_ips, infer_ips


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    dev = pick_device(a.device)
    print(f"device: {describe_device(dev)}; tiles {a.size}x{a.size}, batch {a.batch}")
    print(f"{'arch':<10} {'train img/s':>12} {'inference img/s':>16}")
    for arch in sorted(list_models()):
        tr, inf = bench(arch, a.size, a.batch, a.steps, dev)
        print(f"{arch:<10} {tr:>12.0f} {inf:>16.0f}")


if __name__ == "__main__":
    main()
