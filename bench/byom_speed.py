"""Bring-your-own-model speed, each figure a ratio to a bare forward pass of the same model, all
measured side by side in one run (median over rounds, interleaved).

Usage: nice -n 10 python bench/byom_speed.py [--size 224] [--rounds 3] [--threads 1]
           [--eval-tiles 4] [--train-batch 4] [--train-steps 2] [--out docs/results/byom_speed.json]

- Explore latency: one tile, prediction + attribution map (``saliency`` and ``gradcam``), for a
  timm ResNet-50 and a ViT-S/16 at ``--size`` px, divided by one bare forward pass (batch 1,
  no_grad, eval mode) of the same model.
- evaluate throughput: ``evaluate_run`` (accuracy + saliency maps + sparseness, complexity,
  deletion/insertion AUC with 32 steps, localisation, consistency) on ``--eval-tiles`` generated
  tiles of ``--size`` px, seconds per tile divided by the bare forward's seconds per tile at the
  same batch size.
- SCAAT epoch over ERM: ``bench/objective_speed.py``'s ``run_epoch`` (``batch_loss`` + backward +
  AdamW step on random batches, no data loading, no validation) for the ResNet-50 at ``--size`` px.
Random weights (timm, ``pretrained=False``): speed does not depend on the values.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from interp_core.attribution import attribute  # noqa: E402
from interp_core.data.generate import make_dataset  # noqa: E402
from interp_core._utils.device import describe_device  # noqa: E402
from interp_core.evaluation.evaluate import EvalSettings, evaluate_run  # noqa: E402
from interp_core.models.import_model import import_model  # noqa: E402
from interp_core.runs import load_run, save_tensors  # noqa: E402
from objective_speed import make_batches, run_epoch  # noqa: E402

MODELS = {"resnet50": "timm/resnet50", "vit_s16": "timm/vit_small_patch16_224"}
METHODS = ("saliency", "gradcam")


def _timed(fn) -> tuple[float, float]:
    """``(wall seconds, this process's CPU seconds)`` of ``fn()``. With one torch thread the CPU
    time is the work done, whatever else the machine runs; the wall time is what a user waits."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def _forward(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def _explore(model: torch.nn.Module, x: torch.Tensor, method: str) -> None:
    """What the Explore page computes for one tile: probabilities, then the map of the predicted class."""
    with torch.no_grad():
        pred = int(torch.softmax(model(x), 1).argmax())
    attribute(model, x, method, target=pred)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-tiles", type=int, default=4)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "byom_speed.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device("cpu")
    results: dict = {"settings": vars(a) | {"out": Path(a.out).name}, "device": describe_device(dev),
                     "torch": torch.__version__, "python": platform.python_version(), "models": {}}
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(1, 3, a.size, a.size, generator=g)
    xb = torch.rand(a.eval_tiles, 3, a.size, a.size, generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_dataset("synthetic-he", tmp / "data", size=a.size, n_train=4, n_val=2, n_test=a.eval_tiles, seed=0)
        runs = {}
        for key, arch in MODELS.items():  # each model goes through import-model, as a user's would
            from interp_core.models import create_model
            net = create_model(arch, 2, image_size=a.size).net
            save_tensors(tmp / f"{key}.safetensors", net.state_dict())
            import_model(arch, tmp / f"{key}.safetensors", ["normal", "tumor"], tmp / key, image_size=a.size)
            runs[key] = load_run(tmp / key)
            _forward(runs[key].model, x1)  # warm-up (and the one-off BatchNorm folding of the gradient pass)
            for method in METHODS:
                _explore(runs[key].model, x1, method)
        t: dict[str, dict[str, list[tuple[float, float]]]] = {k: {} for k in MODELS}
        for r in range(a.rounds):
            for key, run in runs.items():
                m = run.model
                t[key].setdefault("forward_1", []).append(_timed(lambda: _forward(m, x1)))
                for method in METHODS:
                    t[key].setdefault(f"explore_{method}", []).append(_timed(lambda: _explore(m, x1, method)))
                t[key].setdefault("forward_batch", []).append(_timed(lambda: _forward(m, xb)))
                if r == 0 or a.rounds <= 2:  # evaluate is long: once per model (all rounds when few)
                    s = EvalSettings(split="test", attribution="saliency", batch_size=a.eval_tiles, seed=0)
                    t[key].setdefault("evaluate", []).append(
                        _timed(lambda: evaluate_run(run, tmp / "data", s, device=dev)))
                print(f"round {r + 1}/{a.rounds} {key}: " + ", ".join(f"{k} {v[-1][1]:.3f}s cpu" for k, v in t[key].items()),
                      file=sys.stderr, flush=True)
        # SCAAT over ERM, interleaved rounds, ResNet-50
        batches = make_batches(a.train_steps, a.train_batch, a.size, 2, dev, 0)
        model0 = runs["resnet50"].model
        epochs: dict[str, list[tuple[float, float]]] = {"erm": [], "scaat": []}
        for r in range(max(2, a.rounds - 1)):
            for obj in ("erm", "scaat"):
                wall, cpu = run_epoch(obj, {}, model0, batches, dev, tmp, seed=r)
                epochs[obj].append((wall, cpu))
                print(f"train round {r + 1} {obj}: {wall:.2f}s wall, {cpu:.2f}s cpu", file=sys.stderr, flush=True)
        # forward of the same training batch, for scale
        fwd_train = statistics.median(_timed(lambda: _forward(model0, batches[0]["image"]))[1] for _ in range(2))

    for key in MODELS:
        med = {k: statistics.median(c for _, c in v) for k, v in t[key].items()}  # CPU seconds
        wall = {k: statistics.median(w for w, _ in v) for k, v in t[key].items()}
        f1 = med["forward_1"]
        per_tile_fwd = med["forward_batch"] / a.eval_tiles
        per_tile_eval = med["evaluate"] / a.eval_tiles
        results["models"][key] = {
            "arch": MODELS[key], "size": a.size,
            "forward_1_s": f1,
            **{f"explore_{m}_s": med[f"explore_{m}"] for m in METHODS},
            **{f"explore_{m}_x_forward": med[f"explore_{m}"] / f1 for m in METHODS},
            "evaluate_s_per_tile": per_tile_eval, "evaluate_tiles_per_s": 1 / per_tile_eval,
            "forward_s_per_tile_batch": per_tile_fwd, "evaluate_x_forward": per_tile_eval / per_tile_fwd,
            "wall_s": wall,
        }
    erm = statistics.median(c for _, c in epochs["erm"])
    scaat = statistics.median(c for _, c in epochs["scaat"])
    results["scaat_resnet50"] = {"erm_epoch_s": erm, "scaat_epoch_s": scaat, "scaat_x_erm": scaat / erm,
                                 "wall_s": {k: [w for w, _ in v] for k, v in epochs.items()},
                                 "erm_epoch_x_forward": erm / (fwd_train * a.train_steps),
                                 "steps": a.train_steps, "batch": a.train_batch}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Bring-your-own-model speed (CPU, {a.threads} thread(s), {a.size} px)", "",
             f"Measured by `bench/byom_speed.py` in one run on {results['device']} (torch {results['torch']}); "
             f"median of {a.rounds} interleaved rounds (evaluate: one run per model); **CPU seconds of the process** "
             "with one torch thread (the machine was shared with other jobs, so wall times were noisy; they are in "
             "the JSON), each also as a ratio to a bare forward pass (no_grad, eval mode) of the same model. "
             "Raw numbers: `byom_speed.json`.", "",
             "| model | bare forward (1 tile) | Explore: saliency | Explore: Grad-CAM | evaluate, per tile |",
             "|---|---|---|---|---|"]
    for key, r in results["models"].items():
        lines.append(f"| {r['arch']} | {r['forward_1_s'] * 1000:.0f} ms | "
                     f"{r['explore_saliency_s'] * 1000:.0f} ms ({r['explore_saliency_x_forward']:.1f}x) | "
                     f"{r['explore_gradcam_s'] * 1000:.0f} ms ({r['explore_gradcam_x_forward']:.1f}x) | "
                     f"{r['evaluate_s_per_tile']:.2f} s ({r['evaluate_x_forward']:.0f}x the forward at batch "
                     f"{a.eval_tiles}) |")
    s = results["scaat_resnet50"]
    lines += ["", f"SCAAT epoch / ERM epoch, timm/resnet50 at {a.size} px, batch {a.train_batch}, "
                  f"{a.train_steps} steps: **{s['scaat_x_erm']:.2f}x** ({s['scaat_epoch_s']:.1f} s against "
                  f"{s['erm_epoch_s']:.1f} s; an ERM step is {s['erm_epoch_x_forward']:.1f}x a forward of its batch).",
              "", "Explore = the prediction forward plus the map of the predicted class for one tile. evaluate = "
                  "accuracy, saliency maps and every default metric (deletion/insertion with 32 steps each, "
                  "localisation on the masks, explanation consistency)."]
    md = out.with_suffix(".md")
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
