from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from interp_core.errors import RunError, TrainingDiverged
from interp_core.runs import load_run, load_tensors, read_history
from interp_core.testing import make_tiny_dataset
from interp_core.training import TrainConfig, train
from interp_core.training.objectives import register_objective
from interp_core.training.objectives.erm import ERM

ROOT = Path(__file__).resolve().parents[2]
QUIET = dict(progress=False, log=lambda m: None)


def test_run_directory_contents(tiny_run):
    for name in ("config.json", "model.safetensors", "history.jsonl", "checkpoint/latest.json"):
        assert (tiny_run / name).is_file(), name
    hist = read_history(tiny_run)
    assert [h["epoch"] for h in hist] == [1, 2]
    for key in ("train_loss", "val_loss", "val_accuracy", "epoch_seconds", "lr"):
        assert key in hist[0]
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["arch"] == "smallcnn" and cfg["classes"] == ["a", "b"] and cfg["lr"] == 1e-3
    run = load_run(tiny_run)
    assert not run.model.training
    # the best-by-validation weights are what model.safetensors holds
    best = max(hist, key=lambda h: (h["val_accuracy"], -h["val_loss"]))
    assert hist[-1]["best_epoch"] == best["epoch"]


def test_same_seed_same_weights_and_finished_run(tiny_data, tmp_path):
    a = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "a"), epochs=1, batch_size=8, seed=3), **QUIET)
    b = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "b"), epochs=1, batch_size=8, seed=3), **QUIET)
    wa, wb = load_tensors(tmp_path / "a/model.safetensors"), load_tensors(tmp_path / "b/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    again = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "a"), epochs=1, batch_size=8, seed=3), **QUIET)
    assert again.already_finished
    with pytest.raises(RunError, match="different settings .*epochs"):
        train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "a"), epochs=4, batch_size=8, seed=3), **QUIET)
    with pytest.raises(RunError, match="different settings .*precision"):
        train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "a"), epochs=1, batch_size=8, seed=3,
                          precision="bf16"), **QUIET)
    assert a.history and b.history


def test_a_run_stored_before_the_precision_setting_existed_still_resumes(tiny_data, tmp_path):
    """config.json without ``precision``/``sync_bn`` (older runs) means the defaults, not a mismatch."""
    import json
    cfg = dict(data=str(tiny_data), out=str(tmp_path / "old"), epochs=1, batch_size=8, seed=3)
    train(TrainConfig(**cfg), **QUIET)
    path = tmp_path / "old" / "config.json"
    stored = json.loads(path.read_text())
    for k in ("precision", "sync_bn"):
        stored.pop(k, None)
    path.write_text(json.dumps(stored))
    assert train(TrainConfig(**cfg), **QUIET).already_finished


def test_init_fine_tunes_with_lower_lr(tiny_data, tiny_run, tmp_path):
    res = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "ft"), epochs=1, batch_size=8,
                            init=str(tiny_run)), **QUIET)
    cfg = json.loads((res.run_dir / "config.json").read_text())
    assert cfg["lr"] == 1e-4 and cfg["arch"] == "smallcnn" and cfg["init"] == str(tiny_run.resolve())
    with pytest.raises(RunError, match="differs from the --init run"):
        train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "ft2"), epochs=1, arch="resnet18",
                          init=str(tiny_run)), **QUIET)


@register_objective
class _NaNAfterFirstEpoch(ERM):
    name = "test-nan"

    def batch_loss(self, model, batch, ctx):
        loss, extras = super().batch_loss(model, batch, ctx)
        return (loss * float("nan") if ctx.epoch >= 1 else loss), extras


def test_nan_loss_stops_and_keeps_last_good_weights(tiny_data, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match="non-finite loss at epoch 2"):
        train(TrainConfig(data=str(tiny_data), out=str(out), epochs=3, batch_size=8, objective="test-nan"), **QUIET)
    run = load_run(out)  # the epoch-1 weights still load and are finite
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    assert json.loads((out / "progress.json").read_text())["state"] == "diverged"


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    data = make_tiny_dataset(tmp_path / "d", n_per_class=96, size=48)
    args = ["-m", "interp_core", "train", "--data", str(data), "--objective", "erm", "--epochs", "3",
            "--batch-size", "8", "--seed", "5", "--device", "cpu", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "INTERP_PROGRESS_EVERY": "0"}
    full = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "full")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen([sys.executable, *args, "--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prog = tmp_path / "killed" / "progress.json"
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        try:
            p = json.loads(prog.read_text())
        except (OSError, json.JSONDecodeError):
            p = {}
        if p.get("epoch") == 1 and p.get("phase") == "train" and 2 <= p.get("step", 0) < p.get("steps", 0) - 2:
            proc.send_signal(signal.SIGKILL)
            killed_at = p
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert killed_at is not None, "the run finished before it could be killed mid-epoch"
    assert len(read_history(tmp_path / "killed")) == 1
    resumed = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "killed")], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1" in resumed.stderr
    wa = load_tensors(tmp_path / "full/model.safetensors")
    wb = load_tensors(tmp_path / "killed/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ca = load_tensors(tmp_path / "full/checkpoint/epoch_0003/model.safetensors")
    cb = load_tensors(tmp_path / "killed/checkpoint/epoch_0003/model.safetensors")
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    assert [h["epoch"] for h in read_history(tmp_path / "killed")] == [1, 2, 3]


def test_fine_tuning_skips_the_fresh_model_warmups(tiny_data, tiny_run, tmp_path):
    """Warm-ups count the model's epochs, --init runs' included: a trained baseline is attacked at
    full budget (SCAAT) and reweighted from the first epoch (ECE)."""
    s = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "s"), epochs=1, batch_size=8, init=str(tiny_run),
                          objective="scaat"), **QUIET)
    assert json.loads((s.run_dir / "config.json").read_text())["prior_epochs"] == 2
    assert s.history[0]["eps"] == pytest.approx(8 / 255)
    e = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "e"), epochs=1, batch_size=8, init=str(tiny_run),
                          objective="ece"), **QUIET)
    assert e.history[0]["refreshed"] == 1.0
    fresh = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "f"), epochs=1, batch_size=8,
                              objective="scaat"), **QUIET)
    assert fresh.history[0]["eps"] < 8 / 255


def test_runs_inside_the_repository_record_relative_paths(tiny_data, tmp_path, monkeypatch):
    """A run and its dataset inside the repository record the dataset and init run relative to the
    run folder (a shipped run means the same on every clone); a run recorded with absolute paths
    (older runs) still resumes, and the recorded paths resolve to the same folders."""
    import shutil
    from interp_core import runs
    repo = tmp_path / "repo"
    data = repo / "sample_data" / "data" / "tiny"
    shutil.copytree(tiny_data, data)
    monkeypatch.setattr(runs, "REPO_ROOT", repo.resolve())
    base = repo / "sample_data" / "runs" / "tiny" / "base"
    train(TrainConfig(data=str(data), out=str(base), epochs=1, batch_size=8), **QUIET)
    ft = base.parent / "ft"
    args = dict(data=str(data), out=str(ft), epochs=2, batch_size=8, init=str(base))
    train(TrainConfig(**args), **QUIET)
    cfg = json.loads((ft / "config.json").read_text())
    assert cfg["data"] == "../../../data/tiny" and cfg["init"] == "../base"
    assert runs.recorded_path(cfg, "data", ft) == data.resolve()
    assert runs.recorded_path(cfg, "init", ft) == base.resolve()
    assert runs.recorded_path(cfg, "weights", ft) is None
    # an older run stored absolute paths: same folders, so it is the same run (resumes / finishes)
    cfg.update(data=str(data.resolve()), init=str(base.resolve()))
    (ft / "config.json").write_text(json.dumps(cfg))
    assert train(TrainConfig(**args), **QUIET).already_finished
    # outside the repository the path stays absolute
    assert runs.portable_path(tiny_data, ft) == str(tiny_data.resolve())
