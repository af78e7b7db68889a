"""A faster module for a model's eval-mode function: every Conv2d feeding only a BatchNorm is fused
with it, and inputs go in channels-last layout.

Used wherever the eval-mode model is only evaluated as a function, with or without input
gradients: the saliency and attack passes of SCAAT and SGT, and the gradient and occlusion
attribution methods. The parameters are shared with the model, not copied, and the folded
weights are recomputed from the live parameters at every call without autograd, so they always
match the current weights and no parameter gradient is ever requested.
"""
from __future__ import annotations

import threading
import weakref

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._utils.modes import eval_mode


def as_eval_input(x: torch.Tensor) -> torch.Tensor:
    """Detached ``x`` in channels-last layout (a copy unless it already is) for the eval-mode
    passes: oneDNN on CPUs and cuDNN on GPUs run convolutions and pooling faster on NHWC, and the
    layout propagates through the network. Values are unchanged."""
    x = x.detach()
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class _FoldedConvBN(nn.Module):
    """``bn(conv(x))`` for an eval-mode BatchNorm, computed as one convolution with folded weights:
    ``W' = W * s``, ``b' = b * s + beta - mu * s``, ``s = gamma / sqrt(var + eps)``.

    The folded weights are built without autograd from the live parameters at every call (cheap),
    so they always match the current weights and no parameter gradient is ever requested.
    Falls back to ``bn(conv(x))`` when the BatchNorm is in train mode or has no running statistics.
    """

    def __init__(self, conv: nn.Conv2d, bn: _BatchNorm):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.conv, self.bn
        if bn.training or bn.running_mean is None or bn.running_var is None:
            return bn(conv(x))
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.affine:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale
            if bn.affine:
                shift = shift + bn.bias
            weight = conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
            bias = shift if conv.bias is None else conv.bias * scale + shift
        return conv._conv_forward(x, weight.to(conv.weight.dtype), bias.to(conv.weight.dtype))


_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

_FOLDED: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], nn.Module | None]]" = weakref.WeakKeyDictionary()


def eval_forward_module(model: nn.Module) -> nn.Module:
    """A module computing ``model``'s eval-mode function faster: every Conv2d feeding only a
    BatchNorm is fused with it (:class:`_FoldedConvBN`). Used for the saliency and attack passes,
    which run in eval mode and need input gradients only.

    Built once per model with ``torch.fx``, traced in eval mode (the modules and parameters are
    shared, not copied), and rebuilt when the model's sub-modules, parameters or buffers are
    replaced. Returns ``model`` itself when it cannot be traced or has nothing to fold. Forward
    hooks on folded Conv/BatchNorm pairs do not fire inside these passes.
    """
    # Rebuilt when a sub-module, parameter or buffer object is replaced (e.g. ``model.to(device)``
    # swaps buffers, which the traced graph would otherwise keep reading from the old tensors).
    signature = (tuple(map(id, model.modules())) + tuple(map(id, model.parameters()))
                 + tuple(map(id, model.buffers())))
    cached = _FOLDED.get(model)
    if cached is not None and cached[0] == signature:
        return model if cached[1] is None else cached[1]
    folded = _fold_conv_bn(model)
    # ``None`` stands for "the model itself": a weak-keyed value must not reference its key, or
    # the entry (and the model) would never be freed
    _FOLDED[model] = (signature, None if folded is model else folded)
    return folded


_TRACE_LOCK = threading.Lock()


class _OwnThreadTracer(torch.fx.Tracer):
    """A ``torch.fx`` tracer that traces only calls made by the thread that runs it.

    ``Tracer.trace`` patches ``nn.Module.__call__`` for the whole process while it runs: a forward
    pass of another model in another thread (another dashboard session) would be routed into this
    tracer and fail ("module is not installed as a submodule"). Here such calls run the module as
    usual. One trace at a time (``_TRACE_LOCK``), since the patches themselves are process-wide.
    """

    def trace(self, root, concrete_args=None):  # type: ignore[override]
        self._owner = threading.get_ident()
        return super().trace(root, concrete_args)

    def call_module(self, m, forward, args, kwargs):  # type: ignore[override]
        if threading.get_ident() != getattr(self, "_owner", None):
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace(model)``, safe beside forward passes in other threads."""
    with _TRACE_LOCK:
        tracer = _OwnThreadTracer()
        graph = tracer.trace(model)
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)


def _fold_conv_bn(model: nn.Module) -> nn.Module:
    """``model`` itself when it has no BatchNorm (LayerNorm, GroupNorm: ViT, Swin, ConvNeXt) or
    cannot be traced; else the traced module with every plain Conv2d -> BatchNorm pair fused."""
    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        return model
    try:
        with eval_mode(model):  # Python branches on ``self.training`` are baked in as in eval mode
            gm = _trace(model)
    except Exception:  # dynamic control flow etc.: fall back to the plain model
        return model
    modules = dict(gm.named_modules())
    count = 0
    for node in list(gm.graph.nodes):
        # exactly a BatchNorm: subclasses such as timm's BatchNormAct2d add an activation after it
        if node.op != "call_module" or type(modules.get(node.target)) not in _PLAIN_BN:
            continue
        prev = node.args[0] if node.args else None
        if not (isinstance(prev, torch.fx.Node) and prev.op == "call_module" and len(prev.users) == 1
                and type(modules.get(prev.target)) is nn.Conv2d and len(prev.args) == 1 and not prev.kwargs
                and modules[prev.target].out_channels == modules[node.target].num_features):
            continue
        name = f"_folded_conv_bn_{count}"
        gm.add_submodule(name, _FoldedConvBN(modules[prev.target], modules[node.target]))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (prev.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        gm.graph.erase_node(prev)
        count += 1
    if count == 0:
        return model
    gm.graph.lint()
    gm.recompile()
    return gm
