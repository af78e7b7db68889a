"""Device choice, seeding and the CUDA-only speed switches, each in exactly one place."""
from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator

import numpy as np
import torch

from ..errors import InterpError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name: str = "auto") -> torch.device:
    """Return the device to use: cuda, then mps, then cpu for ``auto``; a forced one is checked."""
    if name not in DEVICE_CHOICES:
        raise InterpError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InterpError("device 'cuda' was asked for but no CUDA GPU is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InterpError("device 'mps' was asked for but MPS is not available")
    return torch.device(name)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model lives: the device of its first parameter (else first buffer; CPU for neither)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    """A short human description, e.g. 'cpu (2 threads)' or 'cuda: NVIDIA A100'."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (all devices); return a CPU generator seeded the same.

    Deterministic algorithms are requested on the CPU path so the same seed gives the same run.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    g = torch.Generator()
    g.manual_seed(seed)
    return g


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHANNELS_LAST_MODES = ("auto", "on", "off")


def use_amp(device: torch.device) -> bool:
    """Mixed precision by default only on CUDA: CPU autocast is slower for these models and changes numerics."""
    return device.type == "cuda"


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """The training precision actually used: ``fp32``, ``bf16`` or ``fp16``.

    ``auto``: on CUDA bf16 where the GPU supports it, else fp16 (with a GradScaler); fp32
    elsewhere. ``bf16`` autocast works on CUDA and on the CPU (slower than fp32 on most CPUs
    without AMX, but it runs); ``fp16`` needs CUDA (its loss scaling, ``GradScaler``, is a CUDA
    tool here): an InterpError elsewhere, as is any mixed precision on MPS.
    """
    if precision not in PRECISIONS:
        raise InterpError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if not use_amp(device):
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise InterpError(f"--precision fp16 needs a CUDA GPU (loss scaling); on {device.type} use bf16 or fp32")
    if precision == "bf16" and device.type not in ("cuda", "cpu"):
        raise InterpError(f"--precision bf16 is supported on cuda and cpu, not {device.type}; use fp32")
    return precision


def autocast(device: torch.device, enabled: bool | None = None, precision: str = "auto") -> contextlib.AbstractContextManager:
    """Autocast for ``precision`` (see :func:`resolve_precision`); the default is bf16/fp16 on
    CUDA and a no-op elsewhere. ``enabled=False`` always gives a no-op."""
    if enabled is False:
        return contextlib.nullcontext()
    chosen = resolve_precision(device, precision)
    if chosen == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if chosen == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def needs_grad_scaler(device: torch.device, precision: str = "auto") -> bool:
    """True when training in fp16 on CUDA, where gradients need loss scaling (``GradScaler``)."""
    return device.type == "cuda" and resolve_precision(device, precision) == "fp16"


def memory_format(device: torch.device, channels_last: str = "auto") -> torch.memory_format:
    """The layout of image batches and of the training model: channels-last (NHWC) by default on
    CUDA (tensor cores) and on the CPU (oneDNN convolutions and pooling; a smallcnn epoch takes
    about 30% less time here, same losses to float rounding), contiguous on other devices
    (e.g. MPS); ``channels_last`` ``on``/``off`` forces it either way."""
    if channels_last not in CHANNELS_LAST_MODES:
        raise InterpError(f"unknown channels-last mode {channels_last!r}; choose one of {', '.join(CHANNELS_LAST_MODES)}")
    if channels_last == "on" or (channels_last == "auto" and device.type in ("cuda", "cpu")):
        return torch.channels_last
    return torch.contiguous_format


def loader_transfer(device: torch.device) -> dict[str, bool]:
    """``pin_memory`` for DataLoaders and ``non_blocking`` for ``.to(device)`` copies: both on
    for CUDA (page-locked host memory lets the copy overlap compute), off elsewhere (no effect
    on the CPU, and pinning needs a CUDA runtime)."""
    cuda = torch.device(device).type == "cuda"
    return {"pin_memory": cuda, "non_blocking": cuda}


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set the number of intra-op CPU threads."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
