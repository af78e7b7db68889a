"""Time per epoch of each training objective relative to ERM, measured side by side in one run.

Usage: python bench/objective_speed.py [--arch smallcnn] [--width 32] [--size 64] [--batch 64]
           [--steps 8] [--rounds 3] [--threads N] [--device auto] [--objectives erm sgt scaat ece]
           [--scaat '{"steps": 2}'] [--sgt '{}'] [--ece '{}']
An entry of --objectives may carry its own options, to compare variants in the same run:
    --objectives erm sgt scaat 'scaat={"eval_precision": "bfloat16"}'

Every objective trains a copy of the same initial model on the same random batches: its
``begin_epoch`` (ECE's consistency refresh happens there) and then ``--steps`` batches of
``batch_loss`` + backward + AdamW step, as the training loop does them (data loading and
validation excluded: they cost every objective the same). The epoch index is 1, so SCAAT's eps
warm-up (1 epoch by default) is over and ECE refreshes; for ECE an epoch 2 (no refresh under its
default schedule) is timed too, and an extra row gives the average over its schedule,
``(refresh epoch + (refresh_every - 1) * plain epoch) / refresh_every``. Rounds are interleaved across objectives
so load from other processes hits all of them alike; the table shows the median over rounds of
wall time and of this process's CPU time, and their ratios to ``erm``. Objectives that are not
registered (a module not written yet) are skipped with a note.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from interp_core.device import autocast, describe_device, memory_format, pick_device  # noqa: E402
from interp_core.errors import InterpError  # noqa: E402
from interp_core.models import create_model  # noqa: E402
from interp_core.training.objectives import (  # noqa: E402
    EpochContext,
    StepContext,
    get_objective,
    objective_names,
    options_from_dict,
)


def make_batches(n_batches: int, batch: int, size: int, num_classes: int, device: torch.device,
                 seed: int) -> list[dict[str, torch.Tensor]]:
    """Random tiles in [0,1] with labels and dataset indices, already on ``device``."""
    g = torch.Generator().manual_seed(seed)
    fmt = memory_format(device)
    out = []
    for i in range(n_batches):
        x = torch.rand(batch, 3, size, size, generator=g)
        out.append({"image": x.to(device).contiguous(memory_format=fmt),
                    "label": torch.randint(0, num_classes, (batch,), generator=g).to(device),
                    "index": torch.arange(i * batch, (i + 1) * batch).to(device)})
    return out


def run_epoch(name: str, options: dict, model0: torch.nn.Module, batches: list[dict[str, torch.Tensor]],
              device: torch.device, run_dir: Path, seed: int, epoch: int = 1) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one epoch of ``name`` over ``batches`` from a copy of ``model0``."""
    cls = get_objective(name)
    num_train = sum(len(b["label"]) for b in batches)
    objective = cls(options_from_dict(cls, options), num_train)
    model = copy.deepcopy(model0).train().to(memory_format=memory_format(device))  # as the training loop
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(seed)

    def step(i: int, batch: dict[str, torch.Tensor]) -> None:
        ctx = StepContext(epoch=epoch, step=i, steps_per_epoch=len(batches), device=device, generator=gen)
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            loss, _ = objective.batch_loss(model, batch, ctx)
        loss.backward()
        opt.step()
        loss.item()

    step(0, batches[0])  # untimed: optimizer state, one-off set-up (e.g. BatchNorm folding)
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    objective.begin_epoch(EpochContext(epoch=epoch, total_epochs=epoch + 1, model=model, train_eval_loader=batches,
                                       device=device, run_dir=run_dir, generator=gen,
                                       sample_ids=[str(i) for i in range(num_train)], progress=False))
    model.train()
    for i, batch in enumerate(batches):
        step(i, batch)
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="smallcnn")
    p.add_argument("--width", type=int, default=32, help="smallcnn width (ignored for other architectures)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="batches per timed epoch")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the median is shown")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objectives", nargs="+", default=["erm", "sgt", "scaat", "ece"])
    for name in ("erm", "sgt", "scaat", "ece"):
        p.add_argument(f"--{name}", default="{}", help=f"JSON of {name} options")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    names: list[str] = []  # labels: "scaat" or 'scaat={"steps": 2}'
    options: dict[str, dict] = {}
    objective_of: dict[str, str] = {}
    for item in a.objectives:
        name, _, opts = item.partition("=")
        if name not in objective_names():
            print(f"note: objective {name!r} is not registered here; skipped", file=sys.stderr)
            continue
        names.append(item)
        objective_of[item] = name
        options[item] = json.loads(opts) if opts else json.loads(getattr(a, name, "{}") or "{}")
    if "erm" not in names:
        raise SystemExit("erm is needed as the reference")
    torch.manual_seed(a.seed)
    kwargs = {"width": a.width} if a.arch == "smallcnn" else {}
    model0 = create_model(a.arch, 2, **kwargs).to(device).to(memory_format=memory_format(device))
    batches = make_batches(a.steps, a.batch, a.size, 2, device, a.seed)
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    plain: dict[str, list[tuple[float, float]]] = {}  # ECE epochs without a refresh
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for n in list(names):
                try:
                    times[n].append(run_epoch(objective_of[n], options[n], model0, batches, device, Path(tmp),
                                              a.seed + r))
                    if objective_of[n] == "ece":  # epoch 2: past the default schedule's first refresh
                        plain.setdefault(n, []).append(run_epoch("ece", options[n], model0, batches, device,
                                                                 Path(tmp), a.seed + r, epoch=2))
                except InterpError as e:
                    print(f"note: {n} failed ({e}); skipped", file=sys.stderr)
                    names.remove(n)
    print(f"device: {describe_device(device)}; {a.arch}{f' width {a.width}' if kwargs else ''}, "
          f"tiles {a.size}x{a.size}, batch {a.batch}, {a.steps} steps per epoch, {a.rounds} rounds (median)")
    ref_wall = statistics.median(t[0] for t in times["erm"])
    ref_cpu = statistics.median(t[1] for t in times["erm"])
    print(f"{'objective':<10} {'options':<34} {'s/epoch':>8} {'x erm':>6} {'cpu s':>7} {'cpu x erm':>9}")
    for n in names:
        wall = statistics.median(t[0] for t in times[n])
        cpu = statistics.median(t[1] for t in times[n])
        opts = json.dumps(options[n]) if options[n] else "defaults"
        print(f"{objective_of[n]:<10} {opts:<34} {wall:>8.2f} {wall / ref_wall:>6.2f} {cpu:>7.2f} {cpu / ref_cpu:>9.2f}")
        if n in plain:  # ECE: a refresh epoch above; the schedule's average over refresh and plain epochs
            cls = get_objective("ece")
            every = int(options_from_dict(cls, options[n]).refresh_every)
            p_wall = statistics.median(t[0] for t in plain[n])
            p_cpu = statistics.median(t[1] for t in plain[n])
            avg_wall = (wall + (every - 1) * p_wall) / every
            avg_cpu = (cpu + (every - 1) * p_cpu) / every
            label = f"avg, refresh every {every}"
            print(f"{'  ece':<10} {label:<34} {avg_wall:>8.2f} {avg_wall / ref_wall:>6.2f} {avg_cpu:>7.2f} "
                  f"{avg_cpu / ref_cpu:>9.2f}")


if __name__ == "__main__":
    main()
