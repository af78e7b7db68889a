"""The Home page's "Add your model" form: parse its fields and make a run with ``import-model``.

No Streamlit here: the page reads the widgets and calls :func:`import_from_form`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from interp_core.errors import InterpError
from interp_core.models.import_model import import_model
from interp_core.models.weights import SUFFIXES

from interp_core import catalog

#: Architecture suggestions for the form (any timm/NAME or torchvision/NAME works).
EXAMPLES = ("timm/resnet50", "timm/efficientnet_b0", "timm/convnext_tiny", "timm/vit_small_patch16_224",
            "timm/swin_tiny_patch4_window7_224", "torchvision/resnet50", "torchvision/vit_b_16")


def parse_numbers(text: str, what: str) -> list[float] | None:
    """``"0.5, 0.5 0.5"`` -> ``[0.5, 0.5, 0.5]``; empty -> None (the architecture's own)."""
    text = (text or "").replace(",", " ").strip()
    if not text:
        return None
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        raise InterpError(f"{what}: expected 1 or 3 numbers, got {text!r}") from None
    if len(values) not in (1, 3):
        raise InterpError(f"{what}: expected 1 or 3 numbers, got {len(values)}")
    return values


def parse_classes(text: str) -> list[str]:
    """Class names separated by commas (or new lines), in the order of the model's outputs."""
    return [c.strip() for c in (text or "").replace("\n", ",").split(",") if c.strip()]


def import_from_form(*, name: str, arch: str, classes: str, weights_path: str = "", upload_name: str = "",
                     upload_bytes: bytes | None = None, image_size: int = 0, mean: str = "", std: str = "",
                     interpolation: str = "") -> dict[str, Any]:
    """Make the run ``runs/NAME`` from the form's fields; the weights come from an upload
    (``upload_name`` + ``upload_bytes``) or a path on this machine. Returns ``import_model``'s summary."""
    out = catalog.new_run_dir(name)
    mean_v, std_v = parse_numbers(mean, "mean"), parse_numbers(std, "std")
    if (mean_v is None) != (std_v is None):
        raise InterpError("give mean and std together, or neither (the architecture's own)")
    kwargs = dict(image_size=int(image_size) or None, mean=mean_v, std=std_v, interpolation=interpolation or None)
    if upload_bytes is not None:
        suffix = Path(upload_name or "").suffix.lower()
        if suffix not in SUFFIXES:
            raise InterpError(f"{upload_name!r}: weights must end in {', '.join(SUFFIXES)}")
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / f"{Path(upload_name).stem or 'weights'}{suffix}"
            f.write_bytes(upload_bytes)
            return import_model(arch.strip(), f, parse_classes(classes), out, **kwargs)
    if not (weights_path or "").strip():
        raise InterpError("choose a weights file to upload, or give its path on this machine")
    return import_model(arch.strip(), Path(weights_path.strip()).expanduser(), parse_classes(classes), out, **kwargs)
