"""A user's own weights for a timm/torchvision model: read safely, matched by name, head replaced.

Formats: ``.safetensors``, and PyTorch ``.pt``/``.pth``/``.bin`` files read with
``torch.load(weights_only=True)`` only: a file that needs more (pickled classes, code) is refused
with a message naming the file, and nothing in it is executed. Checkpoint wrappers
(``{"state_dict": ...}``, ``{"model": ...}``, ``{"model_state_dict": ...}``) and key prefixes
(``module.`` from DataParallel, ``model.``, the project's own ``net.``) are undone. A classifier
head for another class count is left freshly initialised and reported; any other difference names
the first tensor that differs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RunError
from ..runs import load_tensors

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")
PREFIXES = ("module.", "model.", "net.", "backbone.", "encoder.")
OWN_BUFFERS = ("normalize.mean", "normalize.std")
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (on the CPU), unwrapped from a checkpoint dictionary."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: weights file not found")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise RunError(f"{path}: unknown weights format {suffix or '(no suffix)'}; use {', '.join(SUFFIXES)}")
    if suffix == ".safetensors":
        return load_tensors(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - refused by the weights-only unpickler, truncated zip, not a torch file
        first = (str(e).splitlines() or [""])[0][:160]
        if type(e).__name__ == "UnpicklingError" or "Weights only load failed" in str(e):
            raise RunError(f"{path}: refused: loading it would need more than tensors (weights_only=True: "
                           f"{first}); save model.state_dict() or a .safetensors file") from None
        raise RunError(f"{path}: not a readable PyTorch state dict ({type(e).__name__}: {first})") from None
    return _unwrap(obj, path)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # {"state_dict": {...}}, {"model": {"state_dict": ...}}
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
        elif isinstance(obj, dict) and any(isinstance(obj.get(k), dict) for k in WRAPPER_KEYS[:3]):
            obj = next(obj[k] for k in WRAPPER_KEYS[:3] if isinstance(obj.get(k), dict))
        else:
            break
    if not isinstance(obj, dict):
        raise RunError(f"{path}: holds a {type(obj).__name__}, not a state dict (name -> tensor)")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise RunError(f"{path}: no tensors found (expected a state dict, name -> tensor)")
    return tensors


def strip_prefixes(tensors: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """Remove prefixes (``module.``, ``model.``, ``net.``, ...) shared by every key (the project's
    own ``normalize.*`` buffers aside), one after another (``module.model.``); of the versions seen,
    the one with most keys in ``wanted`` (the first on a tie, so nothing is stripped needlessly)."""
    seen = [dict(tensors)]
    for _ in range(4):
        cur = seen[-1]
        keys = [k for k in cur if k not in OWN_BUFFERS]
        p = next((p for p in PREFIXES if keys and all(k.startswith(p) for k in keys)), None)
        if p is None:
            break
        seen.append({(k[len(p):] if k.startswith(p) else k): v for k, v in cur.items()})
    return max(seen, key=lambda d: len(set(d) & wanted))


def classifier_name(net: nn.Module) -> str | None:
    """The module name of the network's final linear classifier (timm's ``get_classifier()``,
    else the last ``nn.Linear``)."""
    fc = net.get_classifier() if hasattr(net, "get_classifier") else None
    names = {id(m): n for n, m in net.named_modules()}
    if isinstance(fc, nn.Module) and id(fc) in names and names[id(fc)]:
        return names[id(fc)]
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def load_into_network(net: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> list[str]:
    """Load ``tensors`` into ``net`` (a timm/torchvision network); return notes for the user.

    The classifier's weight and bias are replaced (kept as initialised) when the file's class count
    differs; BatchNorm's ``num_batches_tracked`` may be absent; anything else must match exactly,
    or a ``RunError`` names the first differing tensor.
    """
    own = net.state_dict()
    tensors = strip_prefixes(tensors, set(own))
    tensors = {k: v for k, v in tensors.items() if k not in OWN_BUFFERS}
    notes: list[str] = []
    head = classifier_name(net)
    head_keys = {f"{head}.weight", f"{head}.bias"} if head else set()
    file_head = [k for k in head_keys if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)]
    if file_head:
        n_file = tensors[f"{head}.weight"].shape[0] if f"{head}.weight" in tensors else "?"
        for k in head_keys:
            tensors.pop(k, None)
        notes.append(f"classifier head {head} replaced: {Path(where).name} has {n_file} classes, the run has "
                     f"{own[f'{head}.weight'].shape[0]}; the new head is randomly initialised (fine-tune it with "
                     "train --init)")
    missing = [k for k in own if k not in tensors and not k.endswith("num_batches_tracked")
               and not (file_head and k in head_keys)]
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) of the model missing from the file, first {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} tensor(s) of the file unknown to the model, first {unexpected[0]}")
        raise RunError(f"{where}: weights do not fit this architecture: {'; '.join(parts)}")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise RunError(f"{where}: tensor {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise RunError(f"{where}: tensor {k} contains NaN or inf")
    net.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in tensors.items()}}, strict=True)
    return notes
