"""ECE's debiasing claim against the ERM control and JTT (issue 13), run by
``python bench/ece_effect.py --study``.

For each dataset (``synthetic-he-bgbias``, ``synthetic-he-biased``), setting and seed:

- ``scratch``: every arm trained from scratch for ``E`` epochs with the same seed: ``erm``
  (control), ``ece-every1`` (``--refresh-every 1``), ``ece-default`` (the shipped default
  schedule), ``jtt`` (T, lambda_up chosen on seed 0's validation accuracy, no group labels).
- ``finetune``: ``base`` = ERM for ``N`` epochs, then ``M`` more epochs of each arm from it:
  ``erm`` (control), ``ece-every1``, ``ece-default``, ``jtt`` (T = 0: the baseline's own training
  errors are the error set; lambda_up chosen on seed 0's validation accuracy).

Every arm is evaluated on the test split (accuracy, per-group, agree / disagree / gap, worst
group). The mechanism: for every ECE refresh, the AUROC of ``1 - E`` for "training tile is in a
minority (bias-conflicting) group"; for comparison the AUROC of the ERM error signal
``1 - p(true class)`` of the ERM model the refresh starts from (``finetune``: the baseline) or of
the same-seed ERM control (``scratch``) and of JTT's identifier. One JSON per (dataset, setting,
seed, arm) under ``docs/results/ece_study/`` (no machine paths), and ``docs/results/ece_study/
README.md`` generated from those files by :func:`write_tables`.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from interp_core.data import open_split  # noqa: E402
from interp_core.evaluation.evaluate import EvalSettings, cached_evaluate, training_aligned_groups  # noqa: E402
from interp_core.metrics.bias import auroc, consistency_groups, minority_mask  # noqa: E402
from interp_core.runs import load_run  # noqa: E402
from interp_core.training import TrainConfig, train  # noqa: E402
from interp_core.training.objectives.jtt import true_class_probability  # noqa: E402

OUT = ROOT / "bench" / "out" / "ece_study"
RESULTS = ROOT / "docs" / "results" / "ece_study"
METRICS = ["accuracy", "agree_accuracy", "disagree_accuracy", "agree_disagree_gap", "worst_group_accuracy"]
JTT_GRID_T = (2, 3)
JTT_GRID_LAMBDA = (3.0, 6.0, 20.0)


def _quiet(msg: str) -> None:
    pass


def _train(data: Path, out: Path, seed: int, epochs: int, objective: str = "erm", options: dict | None = None,
           init: Path | None = None, batch_size: int = 64):
    return train(TrainConfig(data=str(data), out=str(out), objective=objective, objective_options=options or {},
                             epochs=epochs, seed=seed, batch_size=batch_size, init=str(init) if init else None,
                             device="cpu"), progress=False, log=_quiet)


def _history(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "history.jsonl").read_text().splitlines() if l.strip()]


def _train_groups(data: Path) -> tuple[list[str], np.ndarray, dict[int, str]]:
    """Training tile ids, minority mask (aligned by id) and the aligned groups."""
    ds = open_split(data, "train")
    aligned = training_aligned_groups(data)
    return ds.ids, minority_mask(ds.labels, ds.groups, aligned), aligned


def _erm_signal_auroc(run: Path, data: Path, minority_by_id: dict[str, bool], within: bool = False):
    """AUROC of ``1 - p(true class)`` of ``run``'s model on the training tiles for the minority
    (with ``within``: also ``{class: AUROC}`` among each class's tiles)."""
    loaded = load_run(run, torch.device("cpu"))
    ds = open_split(data, "train", image_size=loaded.config["image_size"])
    loader = torch.utils.data.DataLoader(ds, batch_size=256, shuffle=False)
    p_true, _, _ = true_class_probability(loaded.model.eval(), loader, torch.device("cpu"), len(ds))
    return _aurocs(1 - p_true.numpy(), np.array([minority_by_id[i] for i in ds.ids]), np.array(ds.labels), within)


def _aurocs(score: np.ndarray, minority: np.ndarray, labels: np.ndarray, within: bool):
    a = auroc(score, minority)
    if not within:
        return a
    return a, {int(c): auroc(score[labels == c], minority[labels == c]) for c in sorted(set(labels.tolist()))}


def refresh_mechanism(root: Path = RESULTS) -> None:
    """Recompute the mechanism fields of every result file from its run folder under
    ``bench/out/ece_study`` (when present), so files written before a new field existed gain it:
    ECE's per-refresh rows (:func:`interp_core.metrics.bias.refresh_minority_auroc`), the ERM error
    signal's AUROC overall and within each class, JTT's identifier likewise."""
    for f in sorted(root.glob("*/*/seed*/*.json")):
        p = json.loads(f.read_text())
        run = OUT / p["dataset"] / p["setting"] / f"seed{p['seed']}" / p["arm"]
        data = ROOT / "sample_data" / "data" / p["dataset"]
        if not (run / "model.safetensors").is_file():
            continue
        ids, minority, _ = _train_groups(data)
        minority_by_id = dict(zip(ids, minority.tolist()))
        if p.get("objective") == "ece":
            p["mechanism"] = _ece_mechanism(run, data)
        if p["arm"] in ("erm", "base-erm"):
            p["erm_signal_auroc_train"], p["erm_signal_auroc_within_class"] = _erm_signal_auroc(
                run, data, minority_by_id, within=True)
        if p.get("objective") == "jtt":
            z = np.load(run / "jtt_errors.npz", allow_pickle=False)
            m = np.array([minority_by_id[str(i)] for i in z["sample_ids"]])
            p["mechanism"] = _jtt_mechanism(run, minority_by_id)
            p["mechanism"]["auroc_within_class"] = _aurocs(1 - z["p_true"].astype(np.float64), m,
                                                           z["labels"].astype(np.int64), True)[1]
        _record(f, p)


def _ece_mechanism(run: Path, data: Path) -> list[dict]:
    """Per refresh: AUROC of ``1 - E`` for the minority groups, spread of ``E`` and of the weights
    (:func:`interp_core.metrics.bias.consistency_groups`)."""
    return consistency_groups(run, data)["per_refresh"]


def _jtt_mechanism(run: Path, minority_by_id: dict[str, bool]) -> dict:
    z = np.load(run / "jtt_errors.npz", allow_pickle=False)
    minority = np.array([minority_by_id[str(i)] for i in z["sample_ids"]])
    err = z["error"].astype(bool)
    return {
        "identify_epochs": int(z["identify_epochs"]),
        "error_set_size": int(err.sum()),
        "error_set_minority_share": float(minority[err].mean()) if err.any() else None,
        "minority_base_rate": float(minority.mean()),
        "auroc_1_minus_p_true": auroc(1 - z["p_true"].astype(np.float64), minority),
    }


def _evaluate(run: Path, data: Path) -> dict[str, Any]:
    r = cached_evaluate(run, data, EvalSettings(explanations=False, seed=0))
    out = {k: r[k]["mean"] for k in METRICS if k in r}
    out["group_accuracy"] = {g: v["mean"] for g, v in r["details"].get("group_accuracy", {}).items()}
    out["n_test"] = r["n_tiles"]
    return out


def _record(path: Path, payload: dict) -> None:
    """Write ``payload`` as JSON atomically (several seeds may run in parallel processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def choose_jtt(data: Path, setting: str, *, epochs: int, base: Path | None, seed: int = 0) -> dict:
    """Grid over (T, lambda_up) on ``seed``'s validation accuracy (no group labels); the winner
    is the highest best-validation accuracy, ties to the smaller lambda_up then smaller T."""
    grid_t = JTT_GRID_T if setting == "scratch" else (0,)
    trials = []
    for t in grid_t:
        for lam in JTT_GRID_LAMBDA:
            out = OUT / data.name / setting / f"seed{seed}" / f"jtt-grid-T{t}-l{lam:g}"
            _train(data, out, seed, epochs, "jtt", {"identify_epochs": t, "lambda_up": lam}, init=base)
            best_val = max(h["val_accuracy"] for h in _history(out))  # what the saved best-by-val weights scored
            trials.append({"identify_epochs": t, "lambda_up": lam, "best_val_accuracy": best_val})
    best = max(trials, key=lambda d: (d["best_val_accuracy"], -d["lambda_up"], -d["identify_epochs"]))
    return {"chosen": {"identify_epochs": best["identify_epochs"], "lambda_up": best["lambda_up"]},
            "selected_by": "best validation accuracy (no group labels), seed 0", "trials": trials}


def run_study(datasets: list[str], seeds: list[int], *, scratch_epochs: int, n_epochs: int, m_epochs: int,
              settings: tuple[str, ...] = ("finetune", "scratch")) -> None:
    for name in datasets:
        data = ROOT / "sample_data" / "data" / name
        ids, minority, aligned = _train_groups(data)
        minority_by_id = dict(zip(ids, minority.tolist()))
        for setting in settings:
            t0 = time.time()
            res_dir = RESULTS / name / setting
            epochs = scratch_epochs if setting == "scratch" else m_epochs
            jtt_choice_file = res_dir / "jtt_selection.json"
            for seed in seeds:
                run_base = OUT / name / setting / f"seed{seed}"
                base = None
                if setting == "finetune":
                    base = run_base / "base-erm"
                    _train(data, base, seed, n_epochs)
                    _record(res_dir / f"seed{seed}" / "base-erm.json", {
                        "dataset": name, "setting": setting, "seed": seed, "arm": "base-erm", "epochs": n_epochs,
                        "test": _evaluate(base, data),
                        "erm_signal_auroc_train": _erm_signal_auroc(base, data, minority_by_id)})
                if not jtt_choice_file.exists():
                    _record(jtt_choice_file, choose_jtt(data, setting, epochs=epochs, base=base, seed=seeds[0]))
                jtt_opts = json.loads(jtt_choice_file.read_text())["chosen"]
                arms = {
                    "erm": ("erm", {}),
                    "ece-every1": ("ece", {"refresh_every": 1}),
                    "ece-default": ("ece", {}),
                    "jtt": ("jtt", jtt_opts),
                }
                for arm, (objective, opts) in arms.items():
                    run = run_base / arm
                    _train(data, run, seed, epochs, objective, opts, init=base)
                    hist = _history(run)
                    payload: dict[str, Any] = {
                        "dataset": name, "setting": setting, "seed": seed, "arm": arm, "objective": objective,
                        "options": opts, "epochs": epochs, "init": "base-erm" if base else None,
                        "prior_epochs": n_epochs if base else 0,
                        "aligned_groups": {str(k): v for k, v in aligned.items()},
                        "test": _evaluate(run, data),
                        "epoch_seconds_mean": statistics.mean(h["epoch_seconds"] for h in hist),
                    }
                    if objective == "ece":
                        payload["mechanism"] = _ece_mechanism(run, data)
                    if objective == "jtt":
                        payload["mechanism"] = _jtt_mechanism(run, minority_by_id)
                    if arm == "erm":
                        payload["erm_signal_auroc_train"] = _erm_signal_auroc(run, data, minority_by_id)
                    _record(res_dir / f"seed{seed}" / f"{arm}.json", payload)
                print(f"[ece_study] {name} {setting} seed {seed} done ({time.time() - t0:.0f}s)", file=sys.stderr)
    write_tables()


# --------------------------------------------------------------------------- tables from the files


def _ms(v: list[float]) -> str:
    v = [x for x in v if x is not None]
    if not v:
        return "–"
    s = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.3f} ± {s:.3f}"


def _paired(v: list, c: list) -> str:
    d = [a - b for a, b in zip(v, c) if a is not None and b is not None]
    if not d or len(v) != len(c):
        return ""
    s = statistics.stdev(d) if len(d) > 1 else 0.0
    return f" ({statistics.mean(d):+.3f}±{s:.3f})"


def load_results(root: Path = RESULTS) -> dict[tuple[str, str], dict[str, list[dict]]]:
    """``{(dataset, setting): {arm: [payload per seed, sorted by seed]}}`` from the JSON files."""
    out: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for f in sorted(root.glob("*/*/seed*/*.json")):
        p = json.loads(f.read_text())
        out.setdefault((p["dataset"], p["setting"]), {}).setdefault(p["arm"], []).append(p)
    for arms in out.values():
        for v in arms.values():
            v.sort(key=lambda p: p["seed"])
    return out


def target_check(arms: dict[str, list[dict]], arm: str) -> str:
    """Issue 13's target for ``arm`` against ``erm`` (paired by seed, means over seeds)."""
    c, e = arms.get("erm"), arms.get(arm)
    if not c or not e or len(c) != len(e):
        return "n/a"
    m = lambda runs, k: statistics.mean(r["test"][k] for r in runs)  # noqa: E731
    gap_c, gap_e = m(c, "agree_disagree_gap"), m(e, "agree_disagree_gap")
    shrink = (gap_c - gap_e) / gap_c if gap_c else float("nan")
    wg = m(e, "worst_group_accuracy") - m(c, "worst_group_accuracy")
    acc = m(e, "accuracy") - m(c, "accuracy")
    ok = shrink >= 0.30 and wg > 0 and acc >= -0.01
    return (f"gap shrink {shrink:+.1%} (target >= +30%), worst group {wg:+.3f} (target > 0), "
            f"accuracy {acc:+.3f} (target >= -0.010): {'MET' if ok else 'MISSED'}")


def write_tables(root: Path = RESULTS) -> Path:
    """Write ``root/README.md``: per dataset and setting, a table of test metrics (mean ± std over
    seeds, paired difference to the ERM control), the target check and the mechanism AUROCs."""
    res = load_results(root)
    lines = ["# ECE study: debiasing against the ERM control and JTT (generated by bench/ece_study.py)", "",
             "Test split; mean ± std over seeds; in brackets the paired difference to `erm` (same seed). "
             "gap = agree - disagree accuracy (lower is better). Every number comes from the JSON files "
             "next to this one (one per dataset / setting / seed / arm).", ""]
    for (name, setting), arms in sorted(res.items()):
        seeds = sorted({p["seed"] for v in arms.values() for p in v})
        lines += [f"## {name}, {setting} (seeds {', '.join(map(str, seeds))})", ""]
        sel = root / name / setting / "jtt_selection.json"
        if sel.exists():
            s = json.loads(sel.read_text())
            lines += [f"JTT: T = {s['chosen']['identify_epochs']}, lambda_up = {s['chosen']['lambda_up']:g}, "
                      f"chosen by {s['selected_by']}.", ""]
        lines += ["| arm | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
        order = [a for a in ("base-erm", "erm", "ece-every1", "ece-default", "jtt") if a in arms]
        for arm in order:
            cells = []
            for k in METRICS:
                v = [p["test"].get(k) for p in arms[arm]]
                cell = _ms(v)
                if arm not in ("erm", "base-erm") and "erm" in arms:
                    cell += _paired(v, [p["test"].get(k) for p in arms["erm"]])
                cells.append(cell)
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
        for arm in ("ece-every1", "ece-default", "jtt"):
            if arm in arms:
                lines.append(f"- target, {arm}: {target_check(arms, arm)}")
        lines.append("")
        lines += ["Mechanism (training split; minority = bias-conflicting groups): AUROC of `1 - E` per refresh "
                  "(mean ± std over seeds), against the AUROC of ERM's error signal `1 - p(true)`.", ""]
        aligned = next((p["aligned_groups"] for v in arms.values() for p in v if p.get("aligned_groups")), {})
        names = {int(k): g.split("|")[0] for k, g in aligned.items()}

        def within(rows: list[dict], key: str) -> str:
            per = [r.get(key) for r in rows if r.get(key)]
            if not per:
                return ""
            labs = sorted({int(k) for d in per for k in d})
            return " [within class: " + ", ".join(
                f"{names.get(c, c)} {statistics.mean(d[str(c)] if str(c) in d else d[c] for d in per):.2f}"
                for c in labs) + "]"

        for arm in ("ece-every1", "ece-default"):
            if arm not in arms:
                continue
            by_epoch: dict[int, list[dict]] = {}
            for p in arms[arm]:
                for row in p.get("mechanism", []):
                    by_epoch.setdefault(row["refresh_epoch"], []).append(row)
            cells = [f"epoch {ep}: {_ms([r['auroc_1_minus_E'] for r in rows])}{within(rows, 'auroc_within_class')} "
                     f"(E 5-95%: {statistics.mean(r['E_p05'] for r in rows):.2f}-{statistics.mean(r['E_p95'] for r in rows):.2f}; "
                     f"weight minority/aligned {statistics.mean(r['weight_mean_minority'] for r in rows):.2f}/"
                     f"{statistics.mean(r['weight_mean_aligned'] for r in rows):.2f})"
                     for ep, rows in sorted(by_epoch.items())]
            lines.append(f"- {arm}, AUROC of `1 - E` per refresh: " + "; ".join(cells))
        for arm in ("base-erm", "erm"):
            if arm in arms and all("erm_signal_auroc_train" in p for p in arms[arm]):
                lines.append(f"- ERM error signal `1 - p(true)` of `{arm}` (end of its training): "
                             f"{_ms([p['erm_signal_auroc_train'] for p in arms[arm]])}"
                             f"{within(arms[arm], 'erm_signal_auroc_within_class')}")
        if "jtt" in arms:
            m = [p["mechanism"] for p in arms["jtt"]]
            lines.append(f"- JTT identifier (T = {m[0]['identify_epochs']}): AUROC of `1 - p(true)` "
                         f"{_ms([x['auroc_1_minus_p_true'] for x in m])}{within(m, 'auroc_within_class')}; error set "
                         f"{_ms([x['error_set_size'] for x in m])} tiles, minority share "
                         f"{_ms([x['error_set_minority_share'] for x in m])} (base rate {m[0]['minority_base_rate']:.2f})")
        lines.append("")
    path = root / "README.md"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
