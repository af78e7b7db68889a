"""Is a model saturated on the ``ihc`` sample data? ERM smallcnn baselines, 3 seeds (issue 12, item 4).

Trains the shipped ERM baseline's recipe (``bench/ship_runs.sh``'s ihc line: smallcnn, batch 16,
16 epochs, the best-validation-accuracy weights kept) from scratch per seed on a dataset, then
reports validation and test accuracy, and test accuracy on the ambiguous and the clear tiles
separately (``tiles.csv``'s ``ambiguous`` column, written by the ihc generator). Runs are cached
under ``bench/out/ihc_difficulty/`` by the data's content (a finished run is not retrained). Writes
``docs/results/ihc_difficulty.md`` (or ``--doc``) and ``bench/out/<doc name>.json``.

Usage: nice -n 10 env OMP_NUM_THREADS=1 python bench/ihc_difficulty.py [--data sample_data/data/ihc]
       [--seeds 0 1 2] [--epochs 16] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from interp_core.data import open_split  # noqa: E402
from interp_core.evaluation.predict import predict_loader  # noqa: E402
from interp_core.runs import load_run, run_status  # noqa: E402
from interp_core.training import TrainConfig, train  # noqa: E402

OUT = ROOT / "bench" / "out" / "ihc_difficulty"
DOC = ROOT / "docs" / "results" / "ihc_difficulty.md"


def split_accuracy(run: Path, data: Path, split: str, ambiguous: dict[str, bool]) -> dict[str, float]:
    """Accuracy of a run on one split: all tiles, ambiguous tiles, clear tiles."""
    loaded = load_run(run, torch.device("cpu"))
    ds = open_split(data, split, image_size=int(loaded.config["image_size"]))
    preds = predict_loader(loaded.model, DataLoader(ds, batch_size=128, shuffle=False), torch.device("cpu"))
    ok = (preds.pred == preds.labels).tolist()
    files = [r.file for r in ds.records]
    amb = [ambiguous[f] for f in files]
    out = {"all": sum(ok) / len(ok), "n": len(ok)}
    for name, want in (("ambiguous", True), ("clear", False)):
        sel = [o for o, a in zip(ok, amb) if a == want]
        out[name] = sum(sel) / len(sel) if sel else float("nan")
        out[f"n_{name}"] = len(sel)
    return out


def _ms(v: list[float]) -> str:
    if any(math.isnan(x) for x in v):
        return "nan"
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="sample_data/data/ihc")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--doc", default=str(DOC))
    p.add_argument("--title", default="ihc rule version 2, issue 12 item 4")
    a = p.parse_args()
    data = (ROOT / a.data).resolve() if not Path(a.data).is_absolute() else Path(a.data)
    info = json.loads((data / "dataset.json").read_text())
    ambiguous = {r["file"]: r.get("ambiguous") == "1" for r in csv.DictReader((data / "tiles.csv").open())}
    # the cache is keyed by the data's content, so regenerated data is never scored by stale runs
    digest = hashlib.sha1((data / "dataset.json").read_bytes() + (data / "tiles.csv").read_bytes()).hexdigest()[:8]
    rows = []
    for seed in a.seeds:
        t0 = time.time()
        run = OUT / f"{data.name}-{digest}-e{a.epochs}-b{a.batch_size}" / f"seed{seed}"
        if run_status(run).get("state") != "finished":  # the folder is keyed by the data's content
            train(TrainConfig(data=str(data), out=str(run), objective="erm", arch="smallcnn", epochs=a.epochs,
                              batch_size=a.batch_size, seed=seed, device="cpu"), progress=False, log=lambda m: None)
        hist = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]
        row = {"seed": seed, "best_epoch": hist[-1]["best_epoch"],
               "val": split_accuracy(run, data, "val", ambiguous),
               "test": split_accuracy(run, data, "test", ambiguous),
               "train_seconds": sum(h["epoch_seconds"] for h in hist)}
        rows.append(row)
        print(f"seed {seed}: val {row['val']['all']:.3f} test {row['test']['all']:.3f} "
              f"(ambiguous {row['test']['ambiguous']:.3f}, clear {row['test']['clear']:.3f}) {time.time() - t0:.0f}s",
              file=sys.stderr)
    counts = {s: sum(v.values()) for s, v in info["counts"].items()}
    n_amb = {s: sum(1 for f, amb in ambiguous.items() if amb and f.startswith(s + "/")) for s in counts}
    if "hard_share" in info:
        rule = (f"crop {info['crop']} px resized to {info['size']} px; negative if DAB fraction <= "
                f"{info['negative_fraction']}, positive if >= {info['positive_fraction']}; "
                f"{info['hard_share']:.0%} of each class ambiguous, i.e. within {info['hard_band']} of the gap")
    else:  # version 1 of the rule, kept for the before/after comparison
        rule = (f"version 1 of the rule: crop {info['crop']} px; negative if DAB fraction <= "
                f"{info['negative_fraction']}, positive if >= {info['positive_fraction']}; no ambiguous tiles")
    lines = [
        f"# ihc: how hard is the sample task? ({a.title})",
        "",
        f"Written by `bench/ihc_difficulty.py`. Data: `make-data ihc --seed {info['seed']}` ({rule}). "
        f"Tiles: train {counts['train']}, val {counts['val']} ({n_amb['val']} ambiguous), "
        f"test {counts['test']} ({n_amb['test']} ambiguous).",
        "",
        f"Model: ERM smallcnn from scratch, batch {a.batch_size}, {a.epochs} epochs, AdamW lr 1e-3 cosine "
        "(the trainer's defaults), best-validation-accuracy weights; one row per seed, CPU.",
        "",
        "| seed | best epoch | val accuracy | test accuracy | test, ambiguous tiles | test, clear tiles |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['best_epoch']} | {r['val']['all']:.3f} | {r['test']['all']:.3f} | "
                     f"{r['test']['ambiguous']:.3f} | {r['test']['clear']:.3f} |")
    lines.append(f"| mean ± sd | | {_ms([r['val']['all'] for r in rows])} | {_ms([r['test']['all'] for r in rows])} | "
                 f"{_ms([r['test']['ambiguous'] for r in rows])} | {_ms([r['test']['clear'] for r in rows])} |")
    lines += ["", "An accuracy of nan means the split holds no tile of that kind."]
    if "hard_share" in info:
        lines += ["", "The same recipe on the version-1 data (64-px crops, clear tiles only): "
                  "`docs/results/ihc_difficulty_v1.md`. Test tiles of one class overlap (the test region "
                  "is 320 x 160 source pixels), so the test split is less independent than its 200 tiles suggest."]
    lines.append("")
    Path(a.doc).parent.mkdir(parents=True, exist_ok=True)
    Path(a.doc).write_text("\n".join(lines))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT.parent / f"{Path(a.doc).stem}.json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
