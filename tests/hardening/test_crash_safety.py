"""Crash safety of a training run (issue #7, item 3): ``kill -9`` at random points and in the middle
of checkpoint writes never leaves a run directory that fails to load, and ``train`` resumes it to
the same result as an uninterrupted run; NaN/inf in the loss or the gradients stops training with
the last good weights kept.

The deterministic kills use the test-only hook ``interp_core._utils.io.KILL_HOOK_ENV``: the training process
SIGKILLs itself after the temp file of a chosen write is complete and before it is renamed into
place (the worst moment of an atomic write).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from interp_core.errors import TrainingDiverged
from interp_core._utils.io import KILL_HOOK_ENV, is_temp_file
from interp_core.runs import load_run, load_tensors, read_history, read_json
from interp_core.testing import make_tiny_dataset
from interp_core.training import TrainConfig, train
from interp_core.training.checkpoint import latest_checkpoint, load_checkpoint
from interp_core.training.objectives import register_objective
from interp_core.training.objectives.erm import ERM

ROOT = Path(__file__).resolve().parents[2]
QUIET = dict(progress=False, log=lambda m: None)
#: History fields that are wall-clock measurements, not results.
TIMING = ("epoch_seconds",)


# -- kill -9 -------------------------------------------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "INTERP_PROGRESS_EVERY": "0", **extra}
    env.pop("INTERP_DEBUG", None)
    env.pop(KILL_HOOK_ENV, None)
    env.update(extra)
    return env


def _train_cmd(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "interp_core", "train", "--data", str(data), "--objective", "erm", "--epochs", "3",
            "--batch-size", "8", "--seed", "7", "--device", "cpu", "--quiet", "--out", str(out)]


def _results(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def _check_loadable(run: Path) -> None:
    """Whatever a kill left behind loads, or is absent; nothing is half-written."""
    for p in run.rglob("*"):
        if p.is_file() and not is_temp_file(p) and p.suffix == ".json":
            read_json(p)  # strict JSON, complete (raises RunError otherwise)
        if p.is_file() and not is_temp_file(p) and p.suffix == ".safetensors":
            assert load_tensors(p), p
    if (run / "model.safetensors").is_file():
        model = load_run(run).model
        assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())
    folder = latest_checkpoint(run)
    if folder is not None:
        from interp_core.models import create_model
        model = create_model("smallcnn", 2)
        opt = torch.optim.AdamW(model.parameters())
        state, _ = load_checkpoint(folder, model, opt)
        assert state["epoch_done"] == len(state["history"]) >= 1
    lines = (run / "history.jsonl").read_text().splitlines() if (run / "history.jsonl").is_file() else []
    assert all(json.loads(ln) for ln in lines)  # written atomically: no torn last line either


def _kill_after(proc: subprocess.Popen, run: Path, delay: float) -> str:
    """SIGKILL ``proc`` ``delay`` seconds after its run directory got its config (training started)."""
    deadline = time.monotonic() + 120
    while not (run / "config.json").is_file():
        if proc.poll() is not None:
            return f"ended before the kill (code {proc.returncode})"
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return f"killed {delay:.2f}s after start" if proc.returncode == -signal.SIGKILL else f"ended ({proc.returncode})"


@pytest.mark.slow
def test_kill_9_anywhere_then_resume_equals_uninterrupted(tmp_path):
    data = make_tiny_dataset(tmp_path / "d", n_per_class=8, size=16)
    ref_dir, run = tmp_path / "ref", tmp_path / "run"
    ref = subprocess.run(_train_cmd(data, ref_dir), env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr

    rng = random.Random(1234)
    # Deterministic kills in the middle of writes, each one further into the run: the config (the
    # very first write), the epoch-1 best weights, a file of the epoch-2 checkpoint folder, the
    # checkpoint pointer, the history; then a seeded-random write, then seeded-random times.
    kills = [f"{run}/config.json",
             f"{run}/model.safetensors",
             f"{run}/checkpoint/epoch_0002/optimizer.safetensors",
             f"{run}/checkpoint/latest.json",
             f"{run}/history.jsonl"]
    log = []
    for hook in kills + [f"*#{rng.randint(1, 12)}"]:
        proc = subprocess.run(_train_cmd(data, run), env=_env(**{KILL_HOOK_ENV: hook}), capture_output=True,
                              text=True, timeout=300)
        log.append((hook, proc.returncode))
        assert proc.returncode in (-signal.SIGKILL, 0), f"{hook}: {proc.returncode} {proc.stderr[-800:]}"
        _check_loadable(run)
    assert all(code == -signal.SIGKILL for _, code in log[:len(kills)]), log
    for delay in (rng.uniform(0.0, 1.0), rng.uniform(0.0, 2.0)):
        proc = subprocess.Popen(_train_cmd(data, run), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        log.append((delay, _kill_after(proc, run, delay)))
        _check_loadable(run)

    final = subprocess.run(_train_cmd(data, run), env=_env(), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, f"{log}\n{final.stderr}"
    assert _results(read_history(run)) == _results(read_history(ref_dir)), log
    wa, wb = load_tensors(ref_dir / "model.safetensors"), load_tensors(run / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ from the uninterrupted run"
    assert json.loads((run / "progress.json").read_text())["state"] == "finished"
    assert not [p for p in run.rglob("*") if is_temp_file(p)], "stale temp files were not cleaned up on resume"


def test_kill_hook_kills_between_temp_file_and_rename(tmp_path):
    """The hook itself: the destination keeps its old content, the temp file holds the new one."""
    code = ("from interp_core.runs import write_json\n"
            f"write_json({str(tmp_path / 'a.json')!r}, {{'v': 1}})\n"
            f"write_json({str(tmp_path / 'a.json')!r}, {{'v': 2}})\n")
    p = subprocess.run([sys.executable, "-c", code], env=_env(**{KILL_HOOK_ENV: "*/a.json#2"}), timeout=120)
    assert p.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 1}
    tmps = [p for p in tmp_path.iterdir() if is_temp_file(p)]
    assert len(tmps) == 1 and json.loads(tmps[0].read_text()) == {"v": 2}


# -- NaN / inf -------------------------------------------------------------------------------------------
@register_objective
class _NaNGradientsInEpoch2(ERM):
    """ERM whose loss stays finite but whose gradients are NaN from the second epoch on:
    ``0 * sqrt(|w - w|)`` is 0 in the forward pass and ``0 * inf`` in the backward pass."""

    name = "test-nan-gradients"

    def batch_loss(self, model, batch, ctx):
        loss, extras = super().batch_loss(model, batch, ctx)
        if ctx.epoch >= 1:
            w = next(model.parameters())
            loss = loss + 0.0 * torch.sqrt((w - w.detach()).abs().sum())
        return loss, extras


@register_objective
class _InfLossInEpoch2(ERM):
    name = "test-inf-loss"

    def batch_loss(self, model, batch, ctx):
        loss, extras = super().batch_loss(model, batch, ctx)
        return (loss + float("inf") if ctx.epoch >= 1 and ctx.step == 1 else loss), extras


@pytest.mark.parametrize("objective,what", [("test-nan-gradients", "gradients"), ("test-inf-loss", "loss")])
def test_non_finite_loss_or_gradients_stop_with_the_last_good_weights(tmp_path, objective, what):
    data = make_tiny_dataset(tmp_path / "d", n_per_class=8, size=16)
    # the reference: one epoch of plain ERM with the same seed (epoch 1 of the bad objectives is ERM)
    train(TrainConfig(data=str(data), out=str(tmp_path / "good"), epochs=1, batch_size=8, seed=2), **QUIET)
    with pytest.raises(TrainingDiverged, match=f"non-finite {what} at epoch 2"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "bad"), epochs=3, batch_size=8, seed=2,
                          objective=objective), **QUIET)
    good, kept = load_tensors(tmp_path / "good/model.safetensors"), load_tensors(tmp_path / "bad/model.safetensors")
    assert all(torch.equal(good[k], kept[k]) for k in good), "the weights on disk are not the epoch-1 weights"
    assert all(torch.isfinite(t).all() for t in load_run(tmp_path / "bad").model.state_dict().values()
               if t.is_floating_point())
    progress = json.loads((tmp_path / "bad/progress.json").read_text())
    assert progress["state"] == "diverged" and what in progress["message"]
    assert [h["epoch"] for h in read_history(tmp_path / "bad")] == [1]
    assert latest_checkpoint(tmp_path / "bad").name == "epoch_0001"

