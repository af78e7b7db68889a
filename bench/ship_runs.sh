#!/usr/bin/env bash
# Retrain the runs shipped in sample_data/runs/ with the project's own CLI (deterministic on the CPU).
# For each shipped dataset: an ERM baseline, then SCAAT, SGT and ECE fine-tuned from it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
N=${N:-8}   # baseline epochs
M=${M:-3}   # fine-tuning epochs
# ihc has only 120 training tiles: a smaller batch and more epochs give it enough optimiser steps.
for spec in "synthetic-he 64 $N" "synthetic-he-biased 64 $N" "ihc 16 $((2 * N))"; do
  read -r ds bs epochs <<<"$spec"
  data=sample_data/data/$ds
  out=sample_data/runs/$ds
  rm -rf "$out"  # retrain from nothing (train would otherwise find the finished runs and stop)
  $PY -m interp_core train --data "$data" --objective erm --epochs "$epochs" --batch-size "$bs" \
    --out "$out/baseline-erm" --seed 0 --device cpu --quiet
  for obj in scaat sgt ece; do
    # ECE refreshes every epoch here (the default is every 3rd), so the Consistency page has a
    # refresh per fine-tuning epoch to show
    extra=(); [ "$obj" = ece ] && extra=(--refresh-every 1)
    $PY -m interp_core train --data "$data" --objective "$obj" --init "$out/baseline-erm" --epochs "$M" \
      --batch-size "$bs" --out "$out/$obj" --seed 0 --device cpu --quiet "${extra[@]}"
  done
done
# the test-split evaluations of the baselines and SCAAT runs, read by the Home page
$PY bench/ship_evaluations.py
# the resumable checkpoints are not shipped (the runs are finished)
find sample_data/runs -type d -name checkpoint -prune -exec rm -rf {} +
