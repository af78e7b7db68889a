"""Time per epoch of each training objective relative to ERM, measured side by side in one run.

Usage: python bench/objective_speed.py [--arch smallcnn] [--width 32] [--size 64] [--batch 64]
           [--steps 8] [--rounds 3] [--threads 1 2] [--device auto] [--objectives erm sgt scaat ece]
           [--scaat '{"steps": 2}'] [--sgt '{}'] [--ece '{}'] [--out docs/results/objective_speed.md]
An entry of --objectives may carry its own options, to compare variants in the same run:
    --objectives erm scaat 'scaat={"mode": "fast"}' 'ece={"refresh_every": 1}' 'ece={"mode": "fast"}'

``--threads`` takes several counts: every round measures each count in turn (interleaved too),
and each count gets its own table, whose ratios are to ERM *at that thread count*. Besides ERM,
each table is also relative to the bare **forward/backward floor** (``x fwd/bwd``): one
train-mode forward and backward of the batch with no optimiser step, the least any objective
that trains on the batch can cost.

ECE in ``fast`` mode refreshes at every epoch; its first refresh (no carried perturbation yet)
and a later one (continuing the carried perturbations) are timed separately, and two average
rows give the mean epoch over a 3-epoch fine-tune (first + 2 later) and in the long run (later
refreshes only).

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

With ``--out X.md`` the same numbers are also written to ``X.json`` (one record per row: objective,
its options as given and fully resolved, the row's kind, seconds and ratios per thread count);
the Train page reads each mode's cost from it (:mod:`interp_core.training.mode_costs`). The
report states the load average before and after the run: on a shared machine only the ratios
within one table mean anything.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from interp_core._utils.device import autocast, describe_device, memory_format, pick_device  # noqa: E402
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


def run_floor(model0: torch.nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device
              ) -> tuple[float, float]:
    """(wall, CPU) seconds of the bare floor: one train-mode forward + backward per batch, no optimiser."""
    model = copy.deepcopy(model0).train().to(memory_format=memory_format(device))

    def step(batch: dict[str, torch.Tensor]) -> None:
        with autocast(device):
            out = model(batch["image"])
        out.float().logsumexp(1).sum().backward()

    step(batches[0])
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        step(batch)
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def run_epoch(name: str, options: dict, model0: torch.nn.Module, batches: list[dict[str, torch.Tensor]],
              device: torch.device, run_dir: Path, seed: int, epoch: int = 1,
              untimed_epochs: tuple[int, ...] = ()) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one epoch of ``name`` over ``batches`` from a copy of ``model0``;
    ``untimed_epochs``: epochs whose ``begin_epoch`` runs first, untimed (e.g. an earlier refresh)."""
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
    for e in untimed_epochs:
        objective.begin_epoch(EpochContext(epoch=e, total_epochs=epoch + 1, model=model, train_eval_loader=batches,
                                           device=device, run_dir=run_dir, generator=gen,
                                           sample_ids=[str(i) for i in range(num_train)], progress=False))
        model.train()
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


def _median(ts: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="smallcnn")
    p.add_argument("--width", type=int, default=32, help="smallcnn width (ignored for other architectures)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="batches per timed epoch")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the median is shown")
    p.add_argument("--threads", type=int, nargs="+", default=[0],
                   help="torch CPU thread counts, each measured in every round (default: torch's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objectives", nargs="+", default=["erm", "sgt", "scaat", 'scaat={"mode": "fast"}', "ece",
                                                       'ece={"refresh_every": 1}', 'ece={"mode": "fast"}'])
    p.add_argument("--out", default=None, help="also write the tables to this markdown file")
    for name in ("erm", "sgt", "scaat", "ece"):
        p.add_argument(f"--{name}", default="{}", help=f"JSON of {name} options")
    a = p.parse_args()
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
    threads = [t or torch.get_num_threads() for t in a.threads]
    # times[t][label] = [(wall, cpu) per round]; labels: objective entries, "floor", and ECE extras
    times: dict[int, dict[str, list[tuple[float, float]]]] = {t: {} for t in threads}

    def ece_mode(n: str) -> str:
        return str(options[n].get("mode", "exact"))

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for t in threads:
                torch.set_num_threads(t)
                rec = times[t]
                rec.setdefault("floor", []).append(run_floor(model0, batches, device))
                for n in list(names):
                    try:
                        rec.setdefault(n, []).append(run_epoch(objective_of[n], options[n], model0, batches, device,
                                                               Path(tmp), a.seed + r))
                        if objective_of[n] == "ece":
                            # exact: epoch 2 = no refresh under refresh_every > 1; fast: epoch 2 = a later
                            # refresh, continuing the perturbations carried from the untimed epoch-1 refresh
                            later = (1,) if ece_mode(n) == "fast" else ()
                            rec.setdefault(n + " #2", []).append(run_epoch(
                                "ece", options[n], model0, batches, device, Path(tmp), a.seed + r, epoch=2,
                                untimed_epochs=later))
                    except InterpError as e:
                        print(f"note: {n} failed ({e}); skipped", file=sys.stderr)
                        names.remove(n)
    lines = [f"device: {describe_device(device)}; {a.arch}{f' width {a.width}' if kwargs else ''}, "
             f"tiles {a.size}x{a.size}, batch {a.batch}, {a.steps} steps per epoch, {a.rounds} interleaved rounds "
             f"(median); threads {', '.join(map(str, threads))} measured in every round; load average "
             f"(1 min) {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores", ""]
    records: list[dict] = []
    for t in threads:
        rec = times[t]
        ref_wall, ref_cpu = _median(rec["erm"])
        floor_wall, floor_cpu = _median(rec["floor"])
        lines += [f"### {t} thread{'s' if t > 1 else ''}", "",
                  "| objective | options | s/epoch | x erm | x fwd/bwd | cpu x erm | cpu x fwd/bwd |", "|---|---|---|---|---|---|---|",
                  f"| floor | one train forward + backward per batch | {floor_wall:.2f} | {floor_wall / ref_wall:.2f} "
                  f"| 1.00 | {floor_cpu / ref_cpu:.2f} | 1.00 |"]

        records.append({"threads": t, "objective": "floor", "options": {}, "resolved_options": {}, "kind": "floor",
                        "label": "one train forward + backward per batch", "seconds": floor_wall,
                        "cpu_seconds": floor_cpu,
                        "x_erm": floor_wall / ref_wall, "x_floor": 1.0, "cpu_x_erm": floor_cpu / ref_cpu,
                        "cpu_x_floor": 1.0})
        current: list[str] = []  # the entry whose rows are being written

        def row(obj: str, label: str, wall: float, cpu: float, kind: str = "epoch") -> str:
            n = current[0]
            records.append({"threads": t, "objective": obj, "options": options[n],
                            "resolved_options": resolved(obj, options[n]), "kind": kind, "label": label,
                            "seconds": wall, "cpu_seconds": cpu, "x_erm": wall / ref_wall, "x_floor": wall / floor_wall,
                            "cpu_x_erm": cpu / ref_cpu, "cpu_x_floor": cpu / floor_cpu})
            return (f"| {obj} | {label} | {wall:.2f} | {wall / ref_wall:.2f} | {wall / floor_wall:.2f} "
                    f"| {cpu / ref_cpu:.2f} | {cpu / floor_cpu:.2f} |")

        for n in names:
            current[:] = [n]
            wall, cpu = _median(rec[n])
            opts = json.dumps(options[n]) if options[n] else "defaults"
            if objective_of[n] != "ece":
                lines.append(row(objective_of[n], opts, wall, cpu))
                continue
            w2, c2 = _median(rec[n + " #2"])
            if ece_mode(n) == "fast":
                lines.append(row("ece", f"{opts}: first refresh epoch", wall, cpu, "first refresh epoch"))
                lines.append(row("ece", f"{opts}: later refresh epoch", w2, c2, "later refresh epoch"))
                lines.append(row("ece", f"{opts}: avg, 3-epoch fine-tune", (wall + 2 * w2) / 3, (cpu + 2 * c2) / 3,
                                 "avg 3-epoch fine-tune"))
                lines.append(row("ece", f"{opts}: avg, long run (refresh every epoch)", w2, c2, "avg long run"))
            else:
                every = int(options_from_dict(get_objective("ece"), options[n]).refresh_every)
                lines.append(row("ece", f"{opts}: refresh epoch", wall, cpu, "refresh epoch"))
                lines.append(row("ece", f"{opts}: avg, refresh every {every}", (wall + (every - 1) * w2) / every,
                                 (cpu + (every - 1) * c2) / every, "avg schedule" if every > 1 else "avg long run"))
        lines.append("")
    lines += [READING, ""]
    text = "\n".join(lines)
    print(text)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        command = f"python bench/objective_speed.py {shlex.join(sys.argv[1:])}"
        out.write_text(f"# Epoch time per objective, exact vs fast\n\nGenerated by `{command}`.\n\n{text}\n")
        out.with_suffix(".json").write_text(json.dumps({
            "command": command, "device": describe_device(device), "arch": a.arch, "width": a.width, "size": a.size,
            "batch": a.batch, "steps": a.steps, "rounds": a.rounds, "threads": threads,
            "load_average_before": load_before[0], "rows": records}, indent=1) + "\n")


#: How to read the tables (no numbers: those are above).
READING = (
    "How to read: `x erm` and `cpu x erm` are wall and CPU time (this process) relative to ERM at the same "
    "thread count; `x fwd/bwd` relative to the bare floor (one train-mode forward and backward per batch, no "
    "optimiser step), the least any objective that trains on the batch can cost. Rounds are interleaved "
    "across objectives and thread counts, so load from other processes hits every row alike; with a load "
    "average near or above the core count the absolute seconds are inflated and only ratios within one "
    "table mean anything, and the 2-thread table measures contention more than parallel speed-up. ECE in "
    "`exact` mode refreshing every epoch (METHODS.md's schedule, `--refresh-every 1`) is its `refresh epoch` "
    "row; in `fast` mode every epoch past the warm-up is a refresh epoch.")


def resolved(objective: str, options: dict) -> dict:
    """``options`` with the objective's defaults filled in (JSON-ready)."""
    import dataclasses
    return json.loads(json.dumps(dataclasses.asdict(options_from_dict(get_objective(objective), options)), default=str))


if __name__ == "__main__":
    main()
