"""The GPU path's switches, forced onto the CPU where they can run here.

- ``--precision``: bf16 autocast runs on the CPU (checked: the model's matmuls really run in
  bfloat16, and training ends close to, not equal to, fp32); fp16 needs CUDA's GradScaler and is
  a one-line error on the CPU.
- ``--channels-last on``: the NHWC code path on the CPU; same function, so the weights equal the
  contiguous run's up to rounding.
- pinned memory and non-blocking copies: on for CUDA only (``device.loader_transfer``).
- ``--compile``: inductor needs about a minute here for its first compile of the tiny CNN
  (measured 62 s on this 2-core machine), too slow for a test; the flag's wiring is tested with
  ``--compile-backend eager`` (dynamo captures the graph, runs it eagerly: same numbers), and
  dynamo's capture counter proves the model went through torch.compile.
"""
from __future__ import annotations

import json

import pytest
import torch

from interp_core.cli import main
from interp_core._utils.device import autocast, loader_transfer, memory_format, needs_grad_scaler, resolve_precision
from interp_core.errors import InterpError
from interp_core.models import create_model
from interp_core.runs import load_tensors
from interp_core.testing import make_tiny_dataset
from interp_core.training import TrainConfig, train

CPU = torch.device("cpu")
COMMON = dict(epochs=1, batch_size=8, optimizer="sgd", lr=0.05, seed=1, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("switches") / "ds", n_per_class=8, size=16)


@pytest.fixture(scope="module")
def fp32_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32") / "run"
    train(TrainConfig(data=str(data), out=str(out), **COMMON), progress=False, log=lambda m: None)
    return out


def _final(run) -> dict[str, torch.Tensor]:
    return load_tensors(run / "checkpoint" / "epoch_0001" / "model.safetensors")


def _max_diff(a, b) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def test_precision_resolution():
    assert resolve_precision(CPU, "auto") == "fp32"
    assert resolve_precision(CPU, "bf16") == "bf16"
    with pytest.raises(InterpError, match="fp16 needs a CUDA GPU"):
        resolve_precision(CPU, "fp16")
    with pytest.raises(InterpError, match="unknown precision"):
        resolve_precision(CPU, "fp8")
    assert not needs_grad_scaler(CPU, "bf16")


def test_bf16_autocast_runs_on_the_cpu():
    model = create_model("smallcnn", 2).eval()
    x = torch.rand(2, 3, 16, 16)
    with autocast(CPU, precision="bf16"):
        assert model(x).dtype == torch.bfloat16
    with autocast(CPU, precision="fp32"):
        assert model(x).dtype == torch.float32
    with autocast(CPU):  # default: no autocast on the CPU
        assert model(x).dtype == torch.float32


def test_bf16_training_on_the_cpu_is_close_to_fp32(data, fp32_run, tmp_path):
    out = tmp_path / "bf16"
    train(TrainConfig(data=str(data), out=str(out), precision="bf16", **COMMON), progress=False, log=lambda m: None)
    a, b = _final(out), _final(fp32_run)
    diff = _max_diff(a, b)
    assert 0 < diff < 0.05  # bf16 keeps 8 bits of mantissa: different rounding, same training
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"


def test_fp16_on_the_cpu_is_a_one_line_error(data, tmp_path, capsys):
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--epochs", "1", "--device", "cpu",
                 "--precision", "fp16", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "fp16" in err and len(err.splitlines()) == 1


def test_channels_last_on_and_off_on_the_cpu_is_the_same_function(data, fp32_run, tmp_path):
    assert memory_format(CPU, "on") == torch.channels_last
    assert memory_format(CPU, "auto") == torch.channels_last  # faster with oneDNN
    assert memory_format(CPU, "off") == torch.contiguous_format
    assert memory_format(torch.device("cuda"), "auto") == torch.channels_last
    assert memory_format(torch.device("cuda"), "off") == torch.contiguous_format
    assert memory_format(torch.device("mps"), "auto") == torch.contiguous_format
    out = tmp_path / "nchw"  # fp32_run used the default (channels-last on the CPU)
    train(TrainConfig(data=str(data), out=str(out), channels_last="off", **COMMON), progress=False, log=lambda m: None)
    assert _max_diff(_final(out), _final(fp32_run)) < 1e-5


def test_pinned_memory_and_non_blocking_copies_on_cuda_only():
    assert loader_transfer(torch.device("cuda")) == {"pin_memory": True, "non_blocking": True}
    assert loader_transfer(CPU) == {"pin_memory": False, "non_blocking": False}


def test_compile_flag_wires_through_torch_compile(data, fp32_run, tmp_path):
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    out = tmp_path / "compiled"
    code = main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "8",
                 "--optimizer", "sgd", "--lr", "0.05", "--seed", "1", "--device", "cpu", "--compile",
                 "--compile-backend", "eager", "--quiet"])
    assert code == 0
    assert counters["stats"]["calls_captured"] > 0  # the training forward went through dynamo
    assert _max_diff(_final(out), _final(fp32_run)) < 1e-5
    assert json.loads((out / "config.json").read_text())["compile"] is True
