"""``attribute()``: one entry point for every attribution method; validates, batches, reduces.

The maths lives in the method modules (one per method, registered in ``registry.METHODS``); this
module only checks the input, puts the model in attribution state, splits the batch into chunks
and turns each method's raw output into a ``[B, H, W]`` map.
"""
from __future__ import annotations

import numbers
from typing import Any, Sequence, Union

import torch
from torch import nn

from .._utils.validation import positive_int
from ..errors import InterpError
from ..models.folding import eval_forward_module
from .model_state import attribution_state
from .registry import IMAGES_PER_PASS, MethodInfo, get_method

Target = Union[None, int, Sequence[int], torch.Tensor]



def attribute(model: nn.Module, x: torch.Tensor, method: str, target: Target = None, *, signed: bool = False,
              batch_size: int | None = None, **options: Any) -> torch.Tensor:
    """Attribution maps ``[B, H, W]`` (float32, on ``x``'s device) of ``model`` for images ``x``.

    ``x``: float images ``[B, 3, H, W]`` in [0, 1]; a single image ``[3, H, W]`` is accepted and
    gives ``[1, H, W]`` (the output is always batched). ``method``: a name of ``METHODS``
    (``list_methods()``). ``target``: class index per image (int, sequence or LongTensor ``[B]``);
    ``None`` means the class the model predicts in eval mode. ``options``: the method's options
    (``METHODS[method].options`` lists them with defaults); an unknown one is an error.

    Channel reduction (METHODS.md 1): per-channel maps become ``sum_c |a_c|``, or the plain
    ``sum_c a_c`` when ``signed=True`` and the method is signed (``METHODS[m].signed``);
    ``signed`` has no effect on methods whose maps are non-negative by definition.

    Computed on the model's device, in eval mode with the parameters frozen (methods that only
    evaluate the model as a function run on its BatchNorm-folded, channels-last equivalent), in chunks of
    ``batch_size`` images (default: ``IMAGES_PER_PASS`` divided by the samples per image); the
    caller's train/eval modes, ``requires_grad`` flags and ``.grad`` tensors are restored after.
    The maps are detached: no gradient flows back to ``x`` or the model.
    Neither chunking nor batch composition changes a map: the stochastic methods seed each image
    from the seed and the image's own pixels (``seeding``).
    """
    info = get_method(method)
    opts = _merge_options(info, options)
    x = _check_images(x)
    chunk = _chunk_size(info, opts, batch_size)
    b, _, h, w = x.shape
    if b == 0:
        return torch.zeros(0, h, w, device=x.device)
    device, dtype = _model_device_dtype(model, x)
    keep_sign = bool(signed) and info.signed
    with attribution_state(model), torch.inference_mode(False), torch.enable_grad():
        if info.check_model is not None:
            info.check_model(model, opts)
        targets = _check_target(target, b, _num_classes(model, x[:1].to(device=device, dtype=dtype).clone()))
        if info.prepare is not None:
            opts = info.prepare(model, x, opts)
        # a black-box method gets the same function with BatchNorm folded, on channels-last input
        run = eval_forward_module(model) if info.black_box else model
        layout = torch.channels_last if info.black_box else torch.contiguous_format
        maps = []
        for start in range(0, b, chunk):
            rows = slice(start, min(start + chunk, b))
            xc = x[rows].to(device=device, dtype=dtype).contiguous(memory_format=layout).clone(
                memory_format=torch.preserve_format)
            tc = _predict(run, xc) if targets is None else targets[rows].to(device)
            raw = info.compute(run, xc, tc, **_rows_of(info, opts, rows, b))
            maps.append(_reduce(raw, keep_sign).detach().to(device=x.device, dtype=torch.float32))
    return torch.cat(maps)


def _merge_options(info: MethodInfo, options: dict) -> dict:
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        valid = f"valid options: {', '.join(info.options)}" if info.options else "it takes no options"
        raise InterpError(f"unknown option(s) {', '.join(map(repr, unknown))} for attribution method "
                          f"{info.name!r}; {valid}")
    return {**info.options, **options}


def _check_images(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InterpError(f"expected images as a torch.Tensor [B, 3, H, W], got {type(x).__name__}")
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] < 1 or x.shape[3] < 1:
        hint = "; channels-last? use x.permute(0, 3, 1, 2)" if x.dim() == 4 and x.shape[-1] == 3 else ""
        raise InterpError(f"expected images of shape [B, 3, H, W] or [3, H, W], got {list(x.shape)}{hint}")
    if not x.is_floating_point():
        raise InterpError(f"expected float images with values in [0, 1], got {x.dtype}; use x.float() / 255")
    if not torch.isfinite(x).all():
        raise InterpError("the images contain NaN or infinite values")
    return x


def _chunk_size(info: MethodInfo, opts: dict, batch_size: int | None) -> int:
    if batch_size is not None:
        return positive_int(batch_size, "batch_size")
    samples = opts.get(info.samples_option) if info.samples_option else 1
    samples = samples if isinstance(samples, numbers.Integral) and samples >= 1 else 1
    return max(1, IMAGES_PER_PASS // int(samples))


def predict_and_attribute(model: nn.Module, x: torch.Tensor, method: str, target: int | None = None,
                          **options: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch predicted, then explained: ``(probabilities float32 [B, C], explained classes
    int64 [B], maps [B, H, W])``.

    The classes are ``target`` for every image, or each image's predicted class when None. The
    shared step of the dataset explain job and the slide explainer (both in eval mode, parameters
    frozen, via ``attribution_state``).
    """
    with attribution_state(model):
        with torch.no_grad():
            p = torch.softmax(model(x).float(), dim=1)
        t = p.argmax(1) if target is None else torch.full((len(x),), int(target), device=p.device, dtype=torch.long)
        maps = attribute(model, x, method, t, **options)
    return p, t, maps


def _model_device_dtype(model: nn.Module, x: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return x.device, x.dtype


def _num_classes(model: nn.Module, probe: torch.Tensor) -> int:
    n = getattr(model, "num_classes", None)
    if isinstance(n, numbers.Integral) and not isinstance(n, bool):
        return int(n)
    with torch.no_grad():
        out = model(probe)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise InterpError("attribution needs a model returning logits [B, num_classes]")
    return int(out.shape[1])


def _check_target(target: Target, batch: int, num_classes: int) -> torch.Tensor | None:
    if target is None:
        return None
    if isinstance(target, bool):
        raise InterpError(f"target must be a class index, got {target!r}")
    if isinstance(target, numbers.Integral):
        t = torch.full((batch,), int(target), dtype=torch.long)
    else:
        try:
            t = torch.as_tensor(target)
        except (TypeError, ValueError, RuntimeError):
            raise InterpError(f"target must be a class index or one index per image, got {target!r}") from None
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise InterpError(f"target must hold integer class indices, got dtype {t.dtype}")
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() != 1 or t.shape[0] != batch:
            raise InterpError(f"target must be one class index or one per image ({batch}), got shape {list(t.shape)}")
        t = t.long()
    bad = (t < 0) | (t >= num_classes)
    if bad.any():
        raise InterpError(f"target class {int(t[bad][0])} is out of range: the model has {num_classes} classes, "
                          f"valid targets are 0..{num_classes - 1}")
    return t


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def _rows_of(info: MethodInfo, opts: dict, rows: slice, batch: int) -> dict:
    """Options for one chunk: per-image tensors (leading dim ``batch``) are sliced to the chunk's rows."""
    out = dict(opts)
    for name in info.per_sample_options:
        v = out.get(name)
        if isinstance(v, torch.Tensor) and v.dim() == 4 and v.shape[0] == batch and batch > 1:
            out[name] = v[rows]
    return out


def _reduce(raw: torch.Tensor, keep_sign: bool) -> torch.Tensor:
    """``[b, C, H, W]`` -> ``sum_c a_c`` (signed) or ``sum_c |a_c|``; a one-map ``[b, H, W]`` -> itself or ``|a|``."""
    if raw.dim() == 4:
        return raw.sum(1) if keep_sign else raw.abs().sum(1)
    if raw.dim() == 3:
        return raw if keep_sign else raw.abs()
    raise RuntimeError(f"attribution method returned shape {list(raw.shape)}; expected [b, C, H, W] or [b, H, W]")
