"""Shared protocol of the effect benchmarks (``scaat_effect.py``, ``ece_effect.py``).

For each dataset and seed: (a) ``erm`` for N epochs from scratch; then, from (a), M more epochs
of each objective under test, with (b) ``erm`` fine-tuned for M epochs as the control with the
same budget. Every run is evaluated on the test split; the table gives mean ± std over seeds and
each objective's difference to the control. Runs are cached under ``bench/out/`` (a finished
run is not retrained), so re-running a benchmark only recomputes what changed.
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from interp_core.evaluation.evaluate import EvalSettings, cached_evaluate  # noqa: E402
from interp_core.training import TrainConfig, train  # noqa: E402

OUT = ROOT / "bench" / "out"


def run_protocol(dataset: Path, seeds: list[int], objectives: dict[str, dict[str, Any]], *, n_epochs: int,
                 m_epochs: int, tag: str, attribution: str = "saliency", limit: int | None = None,
                 batch_size: int = 64) -> dict[str, dict[str, list[float]]]:
    """Train and evaluate; return ``{variant: {metric: [value per seed]}}``."""
    results: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        base = OUT / tag / dataset.name / f"seed{seed}"
        t0 = time.time()
        a = base / "a-erm"
        train(TrainConfig(data=str(dataset), out=str(a), objective="erm", epochs=n_epochs, seed=seed,
                          batch_size=batch_size), progress=False, log=lambda m: None)
        variants = {"(a) erm": a}
        for name, spec in {"(b) erm control": {"objective": "erm"}, **objectives}.items():
            out = base / name.split(" ", 1)[1].replace(" ", "-")
            if spec.get("options"):  # a variant gets its own run directory, the others are reused
                out = out.with_name(out.name + "-" + hashlib.sha1(
                    json.dumps(spec["options"], sort_keys=True).encode()).hexdigest()[:8])
            train(TrainConfig(data=str(dataset), out=str(out), init=str(a), epochs=m_epochs, seed=seed,
                              batch_size=batch_size, objective=spec["objective"],
                              objective_options=spec.get("options", {})), progress=False, log=lambda m: None)
            variants[name] = out
        for name, run in variants.items():
            row = results.setdefault(name, {})
            for k, v in {**metric_means(run, dataset, attribution, limit), "epoch_seconds": epoch_seconds(run)}.items():
                row.setdefault(k, []).append(v)
        print(f"[{tag}] {dataset.name} seed {seed}: {time.time() - t0:.0f}s", file=sys.stderr)
    return results


def metric_means(run: Path, dataset: Path, attribution: str = "saliency", limit: int | None = None) -> dict[str, float]:
    """``{metric: mean}`` of the run's (cached) evaluation on the test split, seed 0."""
    r = cached_evaluate(run, dataset, EvalSettings(attribution=attribution, limit=limit, seed=0))
    return {k: float(v["mean"]) for k, v in r.items() if isinstance(v, dict) and v.get("mean") is not None}


def epoch_seconds(run: Path) -> float:
    """Mean wall-clock seconds per epoch of a run, from its ``history.jsonl``."""
    hist = [json.loads(l) for l in (run / "history.jsonl").read_text().splitlines() if l.strip()]
    return statistics.mean(h["epoch_seconds"] for h in hist)


def train_quietly(**config: Any) -> Path:
    """``train(TrainConfig(**config))`` without progress output (a finished run is not retrained)."""
    train(TrainConfig(**config), progress=False, log=lambda m: None)
    return Path(config["out"])


def run_from_scratch(dataset: Path, seeds: list[int], objectives: dict[str, dict[str, Any]], *, epochs: int, tag: str,
                     attribution: str = "saliency", batch_size: int = 64) -> dict[str, dict[str, list[float]]]:
    """The paper's setting: every objective trained from scratch for ``epochs`` with the same seed,
    against ``(b) erm control`` trained the same way."""
    results: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        base = OUT / tag / dataset.name / f"seed{seed}"
        t0 = time.time()
        for name, spec in {"(b) erm control": {"objective": "erm"}, **objectives}.items():
            out = base / name.split(" ", 1)[1].replace(" ", "-")
            if spec.get("options"):
                out = out.with_name(out.name + "-" + hashlib.sha1(
                    json.dumps(spec["options"], sort_keys=True).encode()).hexdigest()[:8])
            train(TrainConfig(data=str(dataset), out=str(out), epochs=epochs, seed=seed, batch_size=batch_size,
                              objective=spec["objective"], objective_options=spec.get("options", {})),
                  progress=False, log=lambda m: None)
            r = cached_evaluate(out, dataset, EvalSettings(attribution=attribution, seed=0))
            row = results.setdefault(name, {})
            for k, v in r.items():
                if isinstance(v, dict) and "mean" in v and v["mean"] is not None:
                    row.setdefault(k, []).append(float(v["mean"]))
        print(f"[{tag}] {dataset.name} seed {seed}: {time.time() - t0:.0f}s", file=sys.stderr)
    return results


def _ms(v: list[float]) -> str:
    if not v:
        return "–"
    m = statistics.mean(v)
    s = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{m:.3f} ± {s:.3f}"


def _delta(v: list[float], c: list[float]) -> str:
    if not v or not c or len(v) != len(c):
        return ""
    d = [x - y for x, y in zip(v, c)]
    m = statistics.mean(d)
    s = statistics.stdev(d) if len(d) > 1 else 0.0
    return f" ({m:+.3f}±{s:.3f})"


def markdown_table(results: dict[str, dict[str, list[float]]], metrics: list[str], control: str = "(b) erm control") -> str:
    """Rows = variants, columns = metrics; mean ± std over seeds, (paired difference to the control)."""
    head = "| run | " + " | ".join(metrics) + " |\n|---|" + "---|" * len(metrics) + "\n"
    rows = []
    for name, row in results.items():
        cells = []
        for m in metrics:
            cell = _ms(row.get(m, []))
            if name not in (control, "(a) erm"):
                cell += _delta(row.get(m, []), results.get(control, {}).get(m, []))
            cells.append(cell)
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def save(tag: str, payload: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{tag}.json"
    path.write_text(json.dumps(payload, indent=2, default=lambda o: None if isinstance(o, float) and math.isnan(o) else o))
    return path
