"""The flags of each ``python -m interp_core`` command (``add_<command>(subparsers)`` returns its
parser); :mod:`interp_core.cli` binds them to the commands."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ._utils.device import DEVICE_CHOICES
from .models import is_known_arch, list_models
from .training.objectives import get_objective, objective_names
from .training.objectives.base import field_type


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="compute device (default: auto = cuda, mps, cpu)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cam_layer_arg(p: argparse.ArgumentParser) -> None:
    """``--cam-layer``, shared by evaluate, explain and explain-slide."""
    p.add_argument("--cam-layer", default=None, metavar="NAME",
                   help="Grad-CAM layer, a name as in named_modules() of the timm/torchvision network "
                        "(e.g. blocks.11.norm1; default: found automatically)")


# -- make-data -------------------------------------------------------------------------------


def _objective_fields() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """Union of every objective's options: field name -> (a field, objectives using it)."""
    fields: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for name in objective_names():
        for f in dataclasses.fields(get_objective(name).Options):
            if f.name in fields:
                fields[f.name][1].append(name)
            else:
                fields[f.name] = (f, [name])
    return fields


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _add_objective_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("objective options (apply to the objectives named in brackets)")
    for name, (f, users) in sorted(_objective_fields().items()):
        defaults, helps = [], []
        for u in users:
            uf = {x.name: x for x in dataclasses.fields(get_objective(u).Options)}[name]
            defaults.append(f"{u}: {_field_default(uf)}")
            h = uf.metadata.get("help", "") if uf.metadata else ""
            if h and h not in [x.split(": ", 1)[-1] for x in helps]:
                helps.append(f"{u}: {h}")
        help_text = helps[0].split(": ", 1)[1] if len(helps) == 1 else "; ".join(helps)
        types = set()
        for u in users:
            uf = {x.name: x for x in dataclasses.fields(get_objective(u).Options)}[name]
            types.add(field_type(uf))
        ftype = float if types <= {int, float} and float in types else types.pop() if len(types) == 1 else str
        if ftype is bool:
            g.add_argument(f"--{name.replace('_', '-')}", dest=f"opt_{name}", default=None,
                           type=lambda s: s.lower() in ("1", "true", "yes", "on"), metavar="BOOL",
                           help=f"{help_text} [{', '.join(users)}] (default {'; '.join(defaults)})")
        else:
            conv = ftype if ftype in (int, float) else str
            g.add_argument(f"--{name.replace('_', '-')}", dest=f"opt_{name}", default=None, type=conv,
                           metavar=name.upper(),
                           help=f"{help_text} [{', '.join(users)}] (default {'; '.join(defaults)})".replace("%", "%%"))


def _arch_name(name: str) -> str:
    """argparse type for ``--arch``: a registered name, timm/NAME or torchvision/NAME."""
    if not is_known_arch(name):
        raise argparse.ArgumentTypeError(f"unknown architecture {name!r}; choose one of "
                                         f"{', '.join(sorted(list_models()))}, or timm/NAME or torchvision/NAME")
    return name


def add_make_data(sub: Any) -> argparse.ArgumentParser:
    """The ``make-data`` command's flags."""
    m = sub.add_parser("make-data", help="generate a sample dataset (synthetic-he, synthetic-he-biased, synthetic-he-bgbias, ihc)")
    m.add_argument("kind", help="synthetic-he | synthetic-he-biased | synthetic-he-bgbias | ihc")
    m.add_argument("--out", required=True, help="output dataset folder")
    m.add_argument("--size", type=int, default=64, help="tile side in pixels (default 64)")
    m.add_argument("--n-train", type=int, default=None, help="training tiles (default: the shipped size)")
    m.add_argument("--n-val", type=int, default=None, help="validation tiles")
    m.add_argument("--n-test", type=int, default=None, help="test tiles")
    common(m)
    return m


def add_train(sub: Any) -> argparse.ArgumentParser:
    """The ``train`` command's flags."""
    t = sub.add_parser("train", help="train or fine-tune a model (resumes an unfinished --out)")
    t.add_argument("--data", required=True, help="dataset folder (DESIGN.md layout) or MedMNIST .npz")
    t.add_argument("--objective", choices=objective_names(), default="erm", help="training objective (default erm)")
    t.add_argument("--arch", type=_arch_name, default=None, metavar="ARCH",
                   help=f"architecture: {', '.join(sorted(list_models()))}, timm/NAME or torchvision/NAME "
                        "(random weights, never downloaded) (default smallcnn, or the --init run's)")
    t.add_argument("--epochs", type=int, required=True, help="number of epochs")
    t.add_argument("--out", required=True, help="run directory to create or resume")
    t.add_argument("--init", default=None, help="start from this run's weights (fine-tuning; lr default 1e-4)")
    t.add_argument("--weights", default=None, help="initial weights from your own .safetensors file (timm/ and "
                                                   "torchvision/ architectures: also a .pt/.pth/.bin state dict, read "
                                                   "with weights_only=True; another class count's head is replaced)")
    t.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3 from scratch, 1e-4 with --init)")
    t.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="optimizer (default adamw)")
    t.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay (default 1e-4)")
    t.add_argument("--schedule", choices=("cosine", "constant"), default="cosine", help="lr schedule (default cosine)")
    t.add_argument("--image-size", type=int, default=None, help="resize tiles to this side (default: as stored)")
    t.add_argument("--val-fraction", type=float, default=0.2, help="share of train carved for val when no val split")
    t.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    t.add_argument("--max-grad-norm", type=float, default=None, help="clip gradients to this norm (default off)")
    t.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="autocast precision (default auto: bf16, or fp16 with loss scaling, on CUDA; fp32 elsewhere; "
                        "bf16 also runs on the CPU; fp16 needs CUDA)")
    t.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="NHWC memory layout (default auto: on CUDA and the CPU, where it is faster)")
    t.add_argument("--compile", action="store_true", help="wrap the training model in torch.compile")
    t.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    t.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the whole global batch, as one process computes "
                        "them (one extra all-reduce per BatchNorm layer); default: each process its own share")
    common(t)
    _add_objective_flags(t)
    return t


def add_import_model(sub: Any) -> argparse.ArgumentParser:
    """The ``import-model`` command's flags."""
    im = sub.add_parser("import-model", help="a run directory from your own weights for a timm or torchvision "
                                             "architecture (then explain, evaluate, train --init, ... accept it)")
    im.add_argument("--arch", required=True, type=_arch_name, help="timm/NAME or torchvision/NAME, e.g. timm/resnet50")
    im.add_argument("--weights", required=True, help="state dict: .safetensors, or .pt/.pth/.bin (read with "
                                                     "torch.load(weights_only=True): no code is run)")
    im.add_argument("--classes", nargs="+", required=True, help="class names in the order of the model's outputs")
    im.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the architecture's)")
    im.add_argument("--mean", type=float, nargs="+", default=None, help="normalisation mean, 1 or 3 values "
                                                                        "(default: timm's pretrained_cfg)")
    im.add_argument("--std", type=float, nargs="+", default=None, help="normalisation std, 1 or 3 values")
    im.add_argument("--interpolation", choices=("bilinear", "bicubic", "nearest"), default=None,
                    help="how tiles of another size are resized (default: the architecture's)")
    im.add_argument("--out", required=True, help="run directory to create")
    common(im)
    return im


def add_evaluate(sub: Any) -> argparse.ArgumentParser:
    """The ``evaluate`` command's flags."""
    e = sub.add_parser("evaluate", help="accuracy and explanation-quality metrics of a run on a dataset")
    e.add_argument("--run", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument("--attribution", default="saliency", help="attribution method for the explanation metrics")
    e.add_argument("--limit", type=int, default=None,
                   help="only a stratified subset of N tiles, taken round-robin over the classes (quick look)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--expensive", action="store_true",
                   help="also compute the slow metrics (max-sensitivity, model randomisation)")
    cam_layer_arg(e)
    e.add_argument("--out", default=None, help="write metrics.json here instead of stdout")
    e.add_argument("--predictions", default=None, help="also write per-tile predictions to this CSV")
    e.add_argument("--attributions", default=None, metavar="DIR",
                   help="reuse the saliency maps of a finished `explain --data` job in DIR (same run, data, split "
                        "and --attribution; it must hold every tile evaluated) instead of computing them")
    common(e)
    return e


def add_explain(sub: Any) -> argparse.ArgumentParser:
    """The ``explain`` command's flags."""
    x = sub.add_parser("explain", help="attribution maps: one image (--image), or a whole dataset split in "
                                       "resumable shards (--data)")
    x.add_argument("--run", required=True)
    src = x.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="one image: write its map to --out (.png overlay or .npy)")
    src.add_argument("--data", help="a dataset folder or .npz: write every tile's map of --split to the "
                                    "folder --out as shard_NNNNN.npz + manifest.json (re-run to resume)")
    x.add_argument("--split", default="test", choices=("train", "val", "test"), help="with --data (default test)")
    x.add_argument("--attribution", default="saliency")
    x.add_argument("--target", default=None, help="class name or index (default: predicted)")
    x.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (PNG, --image)")
    cam_layer_arg(x)
    x.add_argument("--shard-size", type=int, default=256, help="tiles per shard (--data; default 256)")
    x.add_argument("--batch-size", type=int, default=64, help="tiles per forward pass (--data; default 64)")
    x.add_argument("--limit", type=int, default=None, help="only a stratified subset of N tiles (--data)")
    x.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (--data; default 0)")
    x.add_argument("--out", required=True, help="--image: OUT.png (overlay) or OUT.npy (raw map); "
                                                "--data: output folder")
    common(x)
    return x


def add_explain_slide(sub: Any) -> argparse.ArgumentParser:
    """The ``explain-slide`` command's flags."""
    ws = sub.add_parser("explain-slide", help="tile a whole-slide image (OpenSlide formats, TIFF, PNG, JPEG) and "
                                              "write per-tile prediction and stitched saliency maps")
    ws.add_argument("--run", required=True)
    ws.add_argument("--slide", required=True, help=".svs, .ndpi, .mrxs, tiled .tif/.tiff, ... or a plain image")
    ws.add_argument("--out", default=None, help="output folder (PNG and .npy maps, tiles.geojson, summary.json); "
                    "default RUN/slides/<slide>-<hash>/L<level>-<method>-t<tile>-s<stride>, where the Slide page "
                    "looks too. Rerunning on a folder resumes it")
    ws.add_argument("--level", type=int, default=0, help="pyramid level to tile (default 0, full resolution)")
    ws.add_argument("--tile-size", type=int, default=None,
                    help="tile side in pixels of that level (default: the run's input size; else resized to it)")
    ws.add_argument("--stride", type=int, default=None, help="step between tiles (default: the tile size)")
    ws.add_argument("--attribution", default="saliency")
    cam_layer_arg(ws)
    ws.add_argument("--batch-size", type=int, default=64)
    ws.add_argument("--min-tissue", type=float, default=0.1,
                    help="skip tiles with less than this share of tissue (default 0.1)")
    ws.add_argument("--limit-tiles", type=int, default=None, help="compute only the first N tissue tiles")
    ws.add_argument("--map-side", type=int, default=1024, help="longer side of the output maps in pixels (default 1024)")
    ws.add_argument("--workers", type=int, default=0, help="DataLoader worker processes reading tiles (default 0)")
    ws.add_argument("--normalize", choices=["slide", "tile", "none"], default="slide",
                    help="saliency.npy/png: one scale for the slide (default) or each tile's own max "
                         "(both are written as saliency_slide.npy and saliency_tile.npy)")
    ws.add_argument("--tile-map-size", type=int, default=None,
                    help="keep each tile's map at this side (default: as computed, the model's input size)")
    ws.add_argument("--piece-tiles", type=int, default=512, help="tissue tiles per resumable piece (default 512)")
    common(ws)
    return ws


def add_compare(sub: Any) -> argparse.ArgumentParser:
    """The ``compare`` command's flags."""
    c = sub.add_parser("compare", help="self-contained HTML report comparing runs on a dataset")
    c.add_argument("--runs", nargs="+", required=True)
    c.add_argument("--data", required=True)
    c.add_argument("--split", default="test", choices=("train", "val", "test"))
    c.add_argument("--attribution", default="saliency")
    c.add_argument("--limit", type=int, default=200)
    c.add_argument("--out", required=True, help="report.html")
    c.add_argument("--reference", default=None,
                   help="the run the others are compared with (default: the one they were fine-tuned from)")
    common(c)
    return c
