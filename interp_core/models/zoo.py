"""Any timm or torchvision classification architecture as ``timm/NAME`` or ``torchvision/NAME``.

The network is built with random weights (``pretrained=False``: nothing is ever downloaded) and
wrapped in :class:`ZooClassifier`, which takes images in ``[0, 1]`` and normalises them inside
(``normalize`` buffers), as every model of the project does. Normalisation, input size and
interpolation come from timm's ``pretrained_cfg`` (ImageNet statistics, 224 px and bilinear for
torchvision) unless given, and are stored in the run's ``config.json`` (``arch_options``).

Module names (``--cam-layer``) are those of ``named_modules()`` of the network timm or
torchvision builds (``blocks.11.norm1``), i.e. without the wrapper's ``net.`` prefix; the
wrapper's own names (``net.blocks.11.norm1``) are accepted too.

Grad-CAM's layer, when none is named: for a CNN the last spatial feature map (the module
producing timm's ``forward_features`` output; for torchvision the last module with a spatial
``[B, C, h, w]`` output before pooling); for a token model (ViT, DeiT, Swin, ...) the first
norm of the last block (``blocks.-1.norm1``), as pytorch-grad-cam's tutorial does, because the
final norm's patch tokens get no gradient from a class-token head. :meth:`ZooClassifier.cam_reshape`
turns a layer's output into ``[B, C, h, w]``: token sequences lose their class/register tokens
and are laid on the patch grid; Swin's ``[B, H, W, C]`` maps are permuted.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import InterpError
from .base import Normalize

PREFIXES = ("timm/", "torchvision/")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)


def is_zoo_name(name: str) -> bool:
    """True for ``timm/NAME`` and ``torchvision/NAME`` (whether NAME exists is checked on build)."""
    return isinstance(name, str) and name.startswith(PREFIXES) and len(name.split("/", 1)[1]) > 0


def zoo_exists(name: str) -> bool:
    """True when ``name`` is a timm or torchvision classification architecture known here."""
    if not is_zoo_name(name):
        return False
    lib, arch = name.split("/", 1)
    if lib == "timm":
        import timm
        return bool(timm.is_model(arch))
    import torchvision
    return arch in torchvision.models.list_models(module=torchvision.models)


def zoo_defaults(name: str) -> dict[str, Any]:
    """``{"mean", "std", "image_size", "interpolation"}`` of an architecture (timm's
    ``pretrained_cfg``; ImageNet statistics, 224 px, bilinear for torchvision)."""
    lib, arch = _split(name)
    if lib == "timm":
        import timm
        cfg = timm.get_pretrained_cfg(arch)
        cfg = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else (cfg or {})
        size = cfg.get("input_size") or (3, 224, 224)
        interp = cfg.get("interpolation") or "bilinear"
        return {"mean": list(cfg.get("mean") or IMAGENET_MEAN), "std": list(cfg.get("std") or IMAGENET_STD),
                "image_size": int(size[-1]), "interpolation": interp if interp in INTERPOLATIONS else "bilinear"}
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "image_size": 224, "interpolation": "bilinear"}


def _split(name: str) -> tuple[str, str]:
    if not is_zoo_name(name):
        raise InterpError(f"{name!r} is not of the form timm/NAME or torchvision/NAME")
    if not zoo_exists(name):
        lib, arch = name.split("/", 1)
        raise InterpError(f"unknown {lib} architecture {arch!r}"
                          + (" (timm.list_models() lists them)" if lib == "timm" else
                             " (torchvision.models.list_models() lists them)"))
    lib, arch = name.split("/", 1)
    return lib, arch


def _three(values: Sequence[float] | None, what: str) -> tuple[float, float, float] | None:
    if values is None:
        return None
    v = tuple(float(x) for x in values)
    if len(v) == 1:
        v = v * 3
    if len(v) != 3 or not all(math.isfinite(x) for x in v):
        raise InterpError(f"{what} needs 1 or 3 finite numbers, got {list(values)}")
    if what == "std" and min(v) <= 0:
        raise InterpError(f"std must be positive, got {list(v)}")
    return v  # type: ignore[return-value]


def create_zoo_model(name: str, num_classes: int, *, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, image_size: int | None = None,
                     interpolation: str | None = None) -> "ZooClassifier":
    """Build ``timm/NAME`` or ``torchvision/NAME`` with random weights and ``num_classes`` outputs."""
    lib, arch = _split(name)
    d = zoo_defaults(name)
    mean_t = _three(mean, "mean") or tuple(d["mean"])
    std_t = _three(std, "std") or tuple(d["std"])
    size = int(d["image_size"] if image_size is None else image_size)
    if not 8 <= size <= 4096:
        raise InterpError(f"image_size must be between 8 and 4096 pixels, got {size}")
    interp = interpolation or d["interpolation"]
    if interp not in INTERPOLATIONS:
        raise InterpError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interp!r}")
    try:
        net = _build_timm(arch, num_classes, size) if lib == "timm" else _build_torchvision(arch, num_classes, size)
    except InterpError:
        raise
    except Exception as e:  # noqa: BLE001 - an architecture refusing the size or class count
        raise InterpError(f"could not build {name} for {num_classes} classes at {size} px: {type(e).__name__}: {e}") from None
    model = ZooClassifier(net, lib, num_classes, mean_t, std_t, size, interp)
    model.arch = name
    return model


def _build_timm(arch: str, num_classes: int, size: int) -> nn.Module:
    import timm
    try:  # token models (ViT, Swin, ...) fix their position grid at construction
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, img_size=size)
    except TypeError:  # CNNs take any size and no img_size argument
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)


def _build_torchvision(arch: str, num_classes: int, size: int) -> nn.Module:
    import torchvision
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if arch.startswith("vit_"):
        kwargs["image_size"] = size
    if arch in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    return torchvision.models.get_model(arch, **kwargs)


class ZooClassifier(nn.Module):
    """``net(normalize(x))`` for images ``x`` in ``[0, 1]``; ``net`` is the timm/torchvision model."""

    arch: str = "?"

    def __init__(self, net: nn.Module, library: str, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 image_size: int, interpolation: str):
        super().__init__()
        self.normalize = Normalize(tuple(mean), tuple(std))
        self.net = net
        self.library = library
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.interpolation = interpolation
        self.cam_layer_name: str | None = None  # None: found automatically
        self._auto_layer: str | None = None
        self._gap_linear = self._check_gap_linear() if library == "timm" else False

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    @property
    def is_token_model(self) -> bool:
        """True for transformers whose features are token sequences or NHWC maps (ViT, Swin, ...)."""
        net = self.net
        if getattr(net, "output_fmt", "NCHW") == "NHWC":
            return True
        if hasattr(net, "patch_embed") and (hasattr(net, "blocks") or hasattr(net, "layers")):
            return True
        cls = type(net).__name__
        return cls in ("VisionTransformer", "SwinTransformer")

    @property
    def token_layout(self) -> str:
        """``"NHWC"`` when 4-D activations are laid out ``[B, H, W, C]`` (Swin), else ``"NCHW"``."""
        net = self.net
        if getattr(net, "output_fmt", None) == "NHWC" or type(net).__name__ == "SwinTransformer":
            return "NHWC"
        return "NCHW"

    def _check_gap_linear(self) -> bool:
        """Whether ``forward_head(F) == classifier(mean_hw F)`` for NCHW features (a GAP + linear
        head, where CAM applies): checked numerically on a random feature map."""
        net = self.net
        if self.is_token_model or not hasattr(net, "forward_head") or not hasattr(net, "get_classifier"):
            return False
        fc = net.get_classifier()
        if not isinstance(fc, nn.Linear):
            return False
        was = net.training
        net.eval()
        try:
            with torch.no_grad():
                g = torch.Generator().manual_seed(0)
                feats = torch.randn(2, fc.in_features, 3, 3, generator=g).to(fc.weight)
                ok = torch.allclose(net.forward_head(feats), fc(feats.mean((2, 3))), atol=1e-4, rtol=1e-4)
        except Exception:  # noqa: BLE001 - any head that does not take such a map is not GAP + linear
            ok = False
        finally:
            net.train(was)
        return bool(ok)

    # CAM and the consistency attack use forward_features/forward_head/head when the head allows
    def __getattr__(self, name: str) -> Any:
        if name in ("forward_features", "forward_head"):
            if self.__dict__.get("library") == "timm" and self.__dict__.get("_gap_linear"):
                return getattr(self, f"_{name}")
            raise AttributeError(name)
        return super().__getattr__(name)

    def _forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(self.normalize(x))

    def _forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(feats)

    @property
    def head(self) -> nn.Linear | None:
        """The linear classifier when the head is global-average-pool + linear (CAM applies), else None."""
        return self.net.get_classifier() if self._gap_linear else None

    # -- Grad-CAM layer ---------------------------------------------------------------------
    def resolve_layer(self, name: str) -> nn.Module:
        """The module called ``name`` in the network's ``named_modules()`` (or the wrapper's)."""
        for root in (self.net, self):
            try:
                return root.get_submodule(name)
            except AttributeError:
                continue
        names = [n for n, _ in self.net.named_modules() if n]
        raise InterpError(f"no module {name!r} in {self.arch}; e.g. {', '.join(names[-5:])} "
                          f"({len(names)} names, as in named_modules())")

    def set_cam_layer(self, name: str | None) -> None:
        """Use module ``name`` for Grad-CAM (None: the automatic choice); checked now."""
        if name:
            self.resolve_layer(name)
        self.cam_layer_name = name or None

    @property
    def auto_cam_layer_name(self) -> str:
        """The automatically chosen Grad-CAM layer's name (see the module docstring)."""
        if self._auto_layer is None:
            self._auto_layer = self._find_cam_layer()
        return self._auto_layer

    @property
    def cam_layer(self) -> nn.Module:
        return self.resolve_layer(self.cam_layer_name or self.auto_cam_layer_name)

    def _find_cam_layer(self) -> str:
        names = [n for n, _ in self.net.named_modules() if n]
        if self.is_token_model:
            norms = [n for n in names if n.endswith((".norm1", ".ln_1"))]
            if norms:
                return norms[-1]
        return self._last_spatial_module()

    def _last_spatial_module(self) -> str:
        """Run one small forward pass with hooks: the module producing timm's ``forward_features``
        output (the last to finish, i.e. the outermost), else the last to finish with a spatial
        ``[B, C, h, w]`` output (h*w > 1) that is not a pooling layer."""
        order: list[tuple[str, torch.Tensor]] = []
        hooks = []
        for n, m in self.net.named_modules():
            if n:
                hooks.append(m.register_forward_hook(lambda mod, i, o, n=n: order.append((n, o))))
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                x = torch.zeros(1, 3, self.image_size, self.image_size,
                                device=self.normalize.mean.device, dtype=self.normalize.mean.dtype)
                feats = self.net.forward_features(self.normalize(x)) if hasattr(self.net, "forward_features") else None
                if feats is None:
                    self.net(self.normalize(x))
        finally:
            for h in hooks:
                h.remove()
            self.train(was)
        mods = dict(self.net.named_modules())
        if feats is not None:
            same = [n for n, o in order if o is feats]
            if same:
                return same[-1]
        spatial = [n for n, o in order if isinstance(o, torch.Tensor) and o.dim() == 4 and o.shape[-1] * o.shape[-2] > 1
                   and not isinstance(mods[n], _POOLS)]
        if not spatial:
            raise InterpError(f"{self.arch}: no spatial feature map found for Grad-CAM at {self.image_size} px; "
                              "name one with --cam-layer")
        return spatial[-1]

    def cam_reshape(self, t: torch.Tensor) -> torch.Tensor:
        """A layer's output as ``[B, C, h, w]``: tokens ``[B, N, C]`` without the class/register
        tokens on the patch grid; Swin's ``[B, H, W, C]`` permuted; ``[B, C, h, w]`` unchanged."""
        if t.dim() == 4:
            return t.permute(0, 3, 1, 2) if self.token_layout == "NHWC" else t
        if t.dim() != 3:
            raise InterpError(f"Grad-CAM needs a spatial or token layer; this one gives shape {list(t.shape)}")
        n_prefix = getattr(self.net, "num_prefix_tokens", None)
        if n_prefix is None:
            n_prefix = 1 if type(self.net).__name__ == "VisionTransformer" else 0  # torchvision ViT: class token
        tokens = t[:, int(n_prefix):]
        grid = getattr(getattr(self.net, "patch_embed", None), "grid_size", None)
        if grid is not None and int(grid[0]) * int(grid[1]) == tokens.shape[1]:
            h, w = int(grid[0]), int(grid[1])
        else:
            h = w = int(round(math.sqrt(tokens.shape[1])))
            if h * w != tokens.shape[1]:
                raise InterpError(f"cannot lay {tokens.shape[1]} tokens on a square grid (after dropping "
                                  f"{n_prefix} class/register tokens); name another --cam-layer")
        return tokens.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    def layer_choices(self, max_depth: int = 3) -> list[str]:
        """Module names worth offering for Grad-CAM (automatic choice first): containers and norms
        up to ``max_depth`` dots deep, without activations and dropouts."""
        skip = (nn.Dropout, nn.ReLU, nn.GELU, nn.SiLU, nn.Identity, *_POOLS)
        head = {id(m) for m in self.net.modules() if isinstance(m, nn.Linear) and m.out_features == self.num_classes}
        out = [self.auto_cam_layer_name]
        for n, m in self.net.named_modules():
            if n and n.count(".") < max_depth and not isinstance(m, skip) and id(m) not in head and n not in out:
                out.append(n)
        return out


def options_for_config(model: ZooClassifier) -> dict[str, Any]:
    """The ``arch_options`` that rebuild ``model`` (stored in config.json)."""
    return {"mean": [round(float(v), 6) for v in model.normalize.mean.flatten()],
            "std": [round(float(v), 6) for v in model.normalize.std.flatten()],
            "image_size": int(model.image_size), "interpolation": model.interpolation}
