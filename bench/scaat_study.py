"""SCAAT study (issue 12): which settings make saliency visibly sparser and better localised, at
what cost in accuracy and faithfulness, paired against a same-budget ERM control.

Protocol (``bench/effect.py``'s): per dataset and seed, (a) ERM for ``N`` epochs from scratch; every
fine-tune arm starts from that (a) and trains ``M`` more epochs (lr 1e-4, the fine-tuning default),
against the control ``erm`` fine-tuned from the same (a) for the same ``M`` epochs with the same
seed. Arms with another budget have their own control (``control-8ep``: ERM fine-tuned 8 epochs;
``control-scratch``: ERM from scratch for ``N + M`` epochs). Every run is evaluated on the test split
(``evaluate``: saliency maps, 32 deletion steps, blurred baseline, seed 0; explanation metrics on a
stratified 100 of the test tiles to fit the CPU budget, accuracy on all of them); arms marked for it are
also evaluated with a second attribution method SCAAT does not train on (SmoothGrad).

Arms run one factor at a time from the defaults, in the order of ``ARMS``; then combinations.
Every finished arm writes ``docs/results/scaat_study/<dataset>/<arm>.json`` (its spec, per-seed
metrics per attribution method, paired differences are computed by the report); a rerun skips
arms whose file exists with the same spec and seeds, so a killed study resumes. The trained runs
are cached under ``bench/out/scaat_study/`` (not committed). The report
(``docs/results/scaat_study/README.md`` and ``frontier.png``) is rebuilt from the JSON files alone
with ``--report-only``.

Usage:
  python bench/scaat_study.py --datasets synthetic-he synthetic-he-biased [--arms default lambda10]
  python bench/scaat_study.py --report-only
  python bench/scaat_study.py --quick      # tiny end-to-end check (< 5 min), written under bench/out/
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effect import OUT, ROOT, epoch_seconds, metric_means, train_quietly

RESULTS = ROOT / "docs" / "results" / "scaat_study"
METRICS = ["accuracy", "sparseness", "relevance_mass_accuracy", "relevance_rank_accuracy", "pointing_game",
           "deletion_auc", "insertion_auc", "symmetric_relevance_gain", "complexity", "epoch_seconds"]
SHORT = {"accuracy": "acc", "sparseness": "Gini", "relevance_mass_accuracy": "rel. mass",
         "relevance_rank_accuracy": "rel. rank", "pointing_game": "pointing", "deletion_auc": "del AUC",
         "insertion_auc": "ins AUC", "symmetric_relevance_gain": "SRG", "complexity": "entropy",
         "epoch_seconds": "s/epoch", "worst_group_accuracy": "worst group", "artifact_mass": "artifact mass"}
BATCH = {"ihc": 16}  # as bench/ship_runs.sh for ihc
SECOND_ATTRIBUTION = "smoothgrad"


@dataclass(frozen=True)
class Arm:
    """One arm: ``objective`` with ``options``; ``epochs`` of fine-tuning from (a), or from scratch
    (``scratch``: ``N + epochs`` epochs, lr default); ``control`` is the arm it is paired with."""

    name: str
    objective: str = "scaat"
    options: dict = field(default_factory=dict, hash=False)
    epochs: int = 3
    scratch: bool = False
    control: str | None = "control"
    why: str = ""
    second_attribution: bool = False

    def spec(self) -> dict[str, Any]:
        return {"objective": self.objective, "options": self.options, "epochs": self.epochs,
                "scratch": self.scratch, "control": self.control}


def _scaat(name: str, why: str, control: str = "control", epochs: int = 3, scratch: bool = False,
           second: bool = False, **options: Any) -> Arm:
    return Arm(name, "scaat", options, epochs, scratch, control, why, second)


CONTROLS = [
    Arm("control", "erm", {}, 3, control=None, why="ERM fine-tuned 3 epochs from (a): the same budget"),
    Arm("control-8ep", "erm", {}, 8, control=None, why="ERM fine-tuned 8 epochs from (a)"),
    Arm("control-scratch", "erm", {}, 3, scratch=True, control=None, why="ERM from scratch, N + 3 epochs"),
]
# Phase 1: one factor at a time from the defaults at the study's start (STUDY_BASE: eps 8/255, K 1,
# q 0.1, rho 0.3-0.8, lambda 2, gradient saliency, 3 fine-tuning epochs).
PHASE1 = [
    _scaat("default", "today's defaults"),
    _scaat("lambda10", "KL weight 10", kl_weight=10.0),
    _scaat("q0.3-rho0.95", "larger region: q 0.3, rho_max 0.95", q=0.3, rho_max=0.95),
    _scaat("lambda20", "KL weight 20", kl_weight=20.0),
    _scaat("sal-gradcam", "region from Grad-CAM upsampled [ours]", saliency_method="gradcam"),
    _scaat("lambda5", "KL weight 5", kl_weight=5.0),
    _scaat("sal-mean", "region from the mean of gradient and Grad-CAM maps [ours]",
           saliency_method="mean_saliency_gradcam"),
    _scaat("sal-smoothgrad", "region from SmoothGrad (4 noisy copies) [ours]", saliency_method="smoothgrad"),
    _scaat("eps16", "eps 16/255", eps=16 / 255),
    _scaat("K3", "3 attack steps", steps=3),
    _scaat("lambda1", "KL weight 1", kl_weight=1.0),
    _scaat("q0.2", "q 0.2", q=0.2),
    _scaat("eps4", "eps 4/255", eps=4 / 255),
    _scaat("q0.05", "q 0.05", q=0.05),
    _scaat("q0.3", "q 0.3", q=0.3),
    _scaat("eps32", "eps 32/255", eps=32 / 255),
    _scaat("8ep", "8 fine-tuning epochs (vs ERM 8 epochs)", control="control-8ep", epochs=8),
    _scaat("scratch", "from scratch, N + 3 epochs (vs ERM the same)", control="control-scratch", scratch=True),
]
# Phase 2: combinations and [ours] ideas, chosen from phase 1 (reasons in the README).
PHASE2: list[Arm] = [
    _scaat("l20-q0.3-rho0.95", "combination: the two levers of phase 1 (KL weight, region size)", second=True,
           kl_weight=20.0, q=0.3, rho_max=0.95),
    _scaat("lambda40", "[ours] KL weight beyond the issue's range, to see where the gain stops", kl_weight=40.0),
]
# the order arms run in: the strongest levers first, then the combination, then the rest
ORDER = ["default", "lambda10", "q0.3-rho0.95", "lambda20", "l20-q0.3-rho0.95", "sal-gradcam", "lambda40",
         "lambda5", "sal-mean", "sal-smoothgrad", "eps16", "K3", "lambda1", "q0.2", "eps4", "q0.05", "q0.3",
         "eps32", "8ep", "scratch"]
ARMS = {a.name: a for a in CONTROLS + PHASE1 + PHASE2}
assert sorted(ORDER) == sorted(a.name for a in PHASE1 + PHASE2)


# -- running ------------------------------------------------------------------------------------------
def _json_safe(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def write_json(path: Path, payload: dict) -> None:
    """Atomic write (a killed study never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_json_safe) + "\n")
    os.replace(tmp, path)


def _run_dirs(out: Path, dataset: str, seed: int, arm: Arm) -> Path:
    return out / dataset / f"seed{seed}" / arm.name


#: SCAAT's defaults when the study started (METHODS.md's values); every scaat arm's ``options`` are
#: changes from these, so the arms keep their meaning after the study changed the defaults.
STUDY_BASE = {"kl_weight": 2.0, "q": 0.10, "rho_max": 0.8}


def train_arm(arm: Arm, data: Path, seed: int, n_epochs: int, out: Path) -> Path:
    """Train one arm for one seed (cached: a finished run is not retrained); returns the run dir."""
    bs = BATCH.get(data.name, 64)
    if arm.objective == "scaat":
        arm = Arm(arm.name, arm.objective, {**STUDY_BASE, **arm.options}, arm.epochs, arm.scratch, arm.control)
    base = out / data.name / f"seed{seed}"
    common = dict(data=str(data), seed=seed, batch_size=bs, device="cpu")
    if arm.scratch:
        return train_quietly(out=str(base / arm.name), objective=arm.objective, objective_options=arm.options,
                             epochs=n_epochs + arm.epochs, **common)
    a = train_quietly(out=str(base / "a-erm"), objective="erm", epochs=n_epochs, **common)
    return train_quietly(out=str(base / arm.name), objective=arm.objective, objective_options=arm.options,
                         epochs=arm.epochs, init=str(a), **common)


def accuracy_all(run: Path, data: Path) -> float:
    """Test-split accuracy on every tile (``evaluate`` without the explanation metrics)."""
    from interp_core.evaluation.evaluate import EvalSettings, cached_evaluate
    return float(cached_evaluate(run, data, EvalSettings(explanations=False, seed=0))["accuracy"]["mean"])


def run_arm(arm: Arm, data: Path, seeds: list[int], n_epochs: int, out: Path, results: Path,
            limit: int | None, attributions: list[str]) -> dict:
    """Train and evaluate ``arm`` on every seed; write and return its JSON (skipped when up to date)."""
    path = results / data.name / f"{arm.name}.json"
    want = {"spec": arm.spec(), "seeds": seeds, "n_epochs": n_epochs, "limit": limit}
    if path.is_file():
        old = json.loads(path.read_text())
        if {k: old.get(k) for k in want} == want and all(m in old["metrics"] for m in attributions):
            return old
    t0 = time.time()
    per: dict[str, dict[str, list[float]]] = {m: {} for m in attributions}
    for seed in seeds:
        run = train_arm(arm, data, seed, n_epochs, out)
        for method in attributions:
            values = metric_means(run, data, method, limit)
            if limit is not None:  # accuracy on the whole test split (cheap: no maps)
                values["accuracy"] = accuracy_all(run, data)
            if method == attributions[0]:
                values["epoch_seconds"] = epoch_seconds(run)
            for k, v in values.items():
                per[method].setdefault(k, []).append(v)
    payload = {"arm": arm.name, "dataset": data.name, "why": arm.why, **want, "metrics": per,
               "evaluation": {"split": "test", "n_steps": 32, "baseline": "blur", "eval_seed": 0},
               "seconds": round(time.time() - t0, 1)}
    write_json(path, payload)
    print(f"[scaat_study] {data.name} {arm.name}: {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    return payload


# -- report -------------------------------------------------------------------------------------------
TARGETS = {"sparseness": 0.05, "relevance_mass_accuracy": 0.05}  # paired mean diff >= this, every seed > 0


def _load(results: Path) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for f in sorted(results.glob("*/*.json")):
        d = json.loads(f.read_text())
        full = d["metrics"].get("saliency", {}).get("accuracy")
        for method, values in d["metrics"].items():  # accuracy does not depend on the maps: the
            if method != "saliency" and full:       # whole-split value, as in the saliency table
                values["accuracy"] = full
        out.setdefault(d["dataset"], {})[d["arm"]] = d
    return out


def paired(arm: dict, control: dict, metric: str, method: str = "saliency") -> list[float] | None:
    """Per-seed differences arm - control (seeds matched by value), or None when not comparable."""
    a, c = arm["metrics"].get(method, {}).get(metric), control["metrics"].get(method, {}).get(metric)
    if not a or not c:
        return None
    ca = dict(zip(control["seeds"], c))
    if not all(s in ca for s in arm["seeds"]):
        return None
    return [x - ca[s] for s, x in zip(arm["seeds"], a)]


def _ms(v: list[float], digits: int = 3) -> str:
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.{digits}f}±{sd:.{digits}f}"


def _signs(d: list[float]) -> str:
    """Sign agreement over seeds: ``3/3+`` (all higher), ``3/3-``, ``3/3=`` or e.g. ``2+ 1-``."""
    counts = {"+": sum(x > 0 for x in d), "-": sum(x < 0 for x in d), "=": sum(x == 0 for x in d)}
    for k, n in counts.items():
        if n == len(d):
            return f"{n}/{n}{k}"
    return " ".join(f"{n}{k}" for k, n in counts.items() if n)


def verdict(arm: dict, control: dict, method: str = "saliency") -> dict[str, Any]:
    """Which targets of issue 12 the arm meets against its control (mean paired differences)."""
    out: dict[str, Any] = {}
    for m, t in TARGETS.items():
        d = paired(arm, control, m, method)
        out[m] = bool(d) and statistics.mean(d) >= t and all(x > 0 for x in d)
    d = paired(arm, control, "symmetric_relevance_gain", method)
    out["symmetric_relevance_gain"] = bool(d) and statistics.mean(d) >= -0.005
    d = paired(arm, control, "accuracy", method)
    out["accuracy"] = bool(d) and statistics.mean(d) >= -0.01
    out["all"] = all(out.values())
    return out


def table(arms: dict[str, dict], method: str = "saliency", metrics: list[str] = METRICS) -> str:
    """Markdown: per arm, mean±sd over seeds, then paired diff±sd to its control and sign agreement."""
    head = ("| arm | vs | " + " | ".join(SHORT.get(m, m) for m in metrics) + " | targets |\n|---|---|"
            + "---|" * (len(metrics) + 1) + "\n")
    rows = []
    order = [a.name for a in ARMS.values()] + sorted(set(arms) - set(ARMS))
    for name in [n for n in order if n in arms]:
        d = arms[name]
        if method not in d["metrics"]:
            continue
        ctl = arms.get(d["spec"]["control"]) if d["spec"]["control"] else None
        cells = []
        for m in metrics:
            v = d["metrics"][method].get(m)
            if not v:
                cells.append("–")
                continue
            cell = _ms(v, 2 if m == "epoch_seconds" else 3)
            diff = paired(d, ctl, m, method) if ctl else None
            if diff:
                cell += f"<br>Δ {statistics.mean(diff):+.3f}±{(statistics.stdev(diff) if len(diff) > 1 else 0):.3f} " \
                        f"({_signs(diff)})"
            cells.append(cell)
        if ctl:
            v = verdict(d, ctl, method)
            met = "**all met**" if v["all"] else "missed: " + ", ".join(SHORT[k] for k, ok in v.items()
                                                                       if k != "all" and not ok)
        else:
            met = "(control)"
        rows.append(f"| {name} | {d['spec']['control'] or ''} | " + " | ".join(cells) + f" | {met} |")
    return head + "\n".join(rows) + "\n"


def frontier_png(data: dict[str, dict[str, dict]], path: Path) -> None:
    """Accuracy vs sparseness, paired differences to each arm's control, one panel per dataset;
    the Pareto frontier (no arm both more accurate and sparser) is drawn as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = sorted(data)
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 5.2), squeeze=False)
    for ax, ds in zip(axes[0], names):
        pts = []
        for name, d in data[ds].items():
            ctl = data[ds].get(d["spec"]["control"]) if d["spec"]["control"] else None
            if not ctl:
                continue
            da, dg = paired(d, ctl, "accuracy"), paired(d, ctl, "sparseness")
            if not da or not dg:
                continue
            pts.append((statistics.mean(da), statistics.mean(dg), name,
                        statistics.stdev(da) if len(da) > 1 else 0, statistics.stdev(dg) if len(dg) > 1 else 0))
        for x, y, n, sx, sy in pts:
            ax.errorbar(x, y, xerr=sx, yerr=sy, fmt="o", ms=4, alpha=0.7, capsize=2)
            ax.annotate(n, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = sorted([p for p in pts if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in pts)])
        if front:
            ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="Pareto frontier")
        ax.axhline(0.05, color="g", lw=0.8, ls=":", label="target Gini +0.05")
        ax.axvline(-0.01, color="r", lw=0.8, ls=":", label="accuracy -0.01")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel("Δ accuracy vs control (mean over seeds, ±sd)")
        ax.set_ylabel("Δ sparseness (Gini) vs control")
        ax.set_title(f"SCAAT arms, {ds}")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: Path, notes: str = "") -> Path:
    """Write ``README.md`` and ``frontier.png`` into ``results`` from its JSON files alone."""
    data = _load(results)
    parts = ["# SCAAT study (issue 12)\n",
             "Generated by `python bench/scaat_study.py --report-only` from the JSON files beside this page "
             "(one per dataset and arm). Protocol: `bench/scaat_study.py`'s docstring. Each cell: mean±sd over "
             "seeds; below it, the paired difference to the arm's control (`vs`) ±sd and the sign agreement over "
             "seeds (`3/3+`: all three seeds higher). Targets (issue 12): Δ Gini >= +0.05 and Δ relevance mass "
             ">= +0.05 with every seed positive, Δ SRG >= -0.005, Δ accuracy >= -0.01. Deletion AUC: lower is "
             "better; entropy: lower is simpler; SRG, insertion, Gini, relevance: higher is better. `s/epoch` was measured "
             "on a CPU shared with many other jobs: it is not a speed measurement (see `docs/results/objective_speed.md`).\n"]
    if notes:
        parts.append(notes + "\n")
    for ds in sorted(data):
        arms = data[ds]
        some = next(iter(arms.values()))
        limit = "" if some["limit"] is None else \
            f" (accuracy on all tiles, explanation metrics on {some['limit']} tiles, stratified)"
        parts.append(f"## {ds}\n\nSeeds {some['seeds']}, baseline (a) ERM {some['n_epochs']} epochs, test split"
                     f"{limit}, saliency maps.\n")
        extra = [m for m in ("worst_group_accuracy", "artifact_mass") if any(
            m in d["metrics"].get("saliency", {}) for d in arms.values())]
        parts.append(table(arms, "saliency", METRICS + extra))
        second = {n: d for n, d in arms.items() if SECOND_ATTRIBUTION in d["metrics"]}
        if len(second) > 1:
            parts.append(f"\n### {ds}, evaluated with {SECOND_ATTRIBUTION} maps (SCAAT trains on gradient saliency)\n")
            parts.append(table(second, SECOND_ATTRIBUTION, [m for m in METRICS if m != "epoch_seconds"]))
        parts.append("")
    parts.append("![accuracy vs sparseness](frontier.png)\n")
    results.mkdir(parents=True, exist_ok=True)
    frontier_png(data, results / "frontier.png")
    notes_file = results / "NOTES.md"
    if notes_file.is_file():
        parts.append(notes_file.read_text())
    path = results / "README.md"
    path.write_text("\n".join(parts))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["synthetic-he", "synthetic-he-biased"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--n-epochs", type=int, default=8, help="epochs of the ERM baseline (a)")
    p.add_argument("--arms", nargs="+", default=None, help="arms to run (default: all, in order)")
    p.add_argument("--limit", type=int, default=100,
                   help="explanation metrics on this many test tiles (stratified; 0 = all); accuracy on all")
    p.add_argument("--report-only", action="store_true", help="rebuild README.md and frontier.png from the files")
    p.add_argument("--quick", action="store_true", help="tiny end-to-end run (< 5 min) under bench/out/")
    a = p.parse_args()
    a.limit = a.limit or None
    results, out = RESULTS, OUT / "scaat_study"
    if a.quick:
        results, out = OUT / "scaat_study_quick" / "results", OUT / "scaat_study_quick" / "runs"
        a.datasets, a.seeds, a.n_epochs, a.limit = ["synthetic-he"], [0, 1], 2, 24
        a.arms = ["control", "default", "lambda10"]
    if not a.report_only:
        names = a.arms or ORDER  # controls run when an arm needs them
        unknown = set(names) - set(ARMS)
        if unknown:
            p.error(f"unknown arms {sorted(unknown)}; known: {', '.join(ARMS)}")
        for ds in a.datasets:
            data = ROOT / "sample_data" / "data" / ds
            for name in names:
                arm = ARMS[name]
                needed = [arm.control] if arm.control else []
                for n in needed + [name]:
                    second = n == name and arm.second_attribution or any(
                        b.second_attribution and b.control == n and b.name in names for b in ARMS.values())
                    methods = ["saliency"] + ([SECOND_ATTRIBUTION] if second and not a.quick else [])
                    run_arm(ARMS[n], data, a.seeds, a.n_epochs, out, results, a.limit, methods)
                report(results)
    print("written", report(results))


if __name__ == "__main__":
    main()
