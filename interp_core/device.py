"""Device choice, seeding and the CUDA-only speed switches, each in exactly one place."""
from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator

import numpy as np
import torch

from .errors import InterpError

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


def use_amp(device: torch.device) -> bool:
    """Mixed precision only on CUDA: CPU autocast is slower for these models and changes numerics."""
    return device.type == "cuda"


def autocast(device: torch.device, enabled: bool | None = None) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA, a no-op elsewhere."""
    on = use_amp(device) if enabled is None else (enabled and use_amp(device))
    if not on:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (tensor cores like NHWC), contiguous elsewhere."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


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
