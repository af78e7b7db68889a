"""``python -m interp_core``: make-data, train, import-model, evaluate, explain, explain-slide, compare.

Thin: parse flags, call the library, print JSON. Every user mistake becomes a one-line
``error: ...`` on stderr and exit code 2; set ``INTERP_DEBUG=1`` to see tracebacks.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from ._utils.device import DEVICE_CHOICES, pick_device
from .data.generate import make_dataset
from .errors import InterpError
from .evaluation.evaluate import EvalSettings, evaluate_run
from .evaluation.explain import explain_image
from .evaluation.explain_dataset import explain_dataset
from .models import is_known_arch, list_models
from .models.import_model import import_model
from .runs import load_run, write_json
from .slides.job import explain_slide_file, results_dir
from .training import TrainConfig, train
from .training.objectives import get_objective, objective_names
from .training.objectives.base import field_type
from .viz.report import build_report

EXIT_USER_ERROR = 2


def _emit(obj: Any, out: str | None) -> None:
    if out:
        write_json(out, obj)
        print(json.dumps({"written": str(out)}))
    else:
        print(json.dumps(obj, indent=2, default=str))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="compute device (default: auto = cuda, mps, cpu)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _cam_layer_arg(p: argparse.ArgumentParser) -> None:
    """``--cam-layer``, shared by evaluate, explain and explain-slide."""
    p.add_argument("--cam-layer", default=None, metavar="NAME",
                   help="Grad-CAM layer, a name as in named_modules() of the timm/torchvision network "
                        "(e.g. blocks.11.norm1; default: found automatically)")


# -- make-data -------------------------------------------------------------------------------
def cmd_make_data(a: argparse.Namespace) -> int:
    info = make_dataset(a.kind, a.out, size=a.size, n_train=a.n_train, n_val=a.n_val, n_test=a.n_test,
                        seed=a.seed, progress=not a.quiet)
    _emit(info, None)
    return 0


# -- train -----------------------------------------------------------------------------------
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


def cmd_train(a: argparse.Namespace) -> int:
    valid = {f.name for f in dataclasses.fields(get_objective(a.objective).Options)}
    opts, wrong = {}, []
    for k, v in vars(a).items():
        if k.startswith("opt_") and v is not None:
            (opts.__setitem__(k[4:], v) if k[4:] in valid else wrong.append("--" + k[4:].replace("_", "-")))
    if wrong:
        raise InterpError(f"option(s) {', '.join(wrong)} do not apply to objective {a.objective!r}")
    cfg = TrainConfig(data=a.data, out=a.out, objective=a.objective, objective_options=opts, arch=a.arch,
                      epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, optimizer=a.optimizer,
                      weight_decay=a.weight_decay, schedule=a.schedule, seed=a.seed, init=a.init,
                      weights=a.weights, image_size=a.image_size, val_fraction=a.val_fraction,
                      workers=a.workers, device=a.device, max_grad_norm=a.max_grad_norm,
                      precision=a.precision, channels_last=a.channels_last, compile=a.compile,
                      compile_backend=a.compile_backend, sync_bn=a.sync_bn)
    res = train(cfg, progress=not a.quiet)
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 alone reports
        return 0
    _emit({"run": str(res.run_dir.resolve()), "already_finished": res.already_finished,
           "epochs": len(res.history), "best_epoch": res.best_epoch,
           "best_val_accuracy": res.best_val_accuracy,
           "last": res.history[-1] if res.history else None}, None)
    return 0


def cmd_import_model(a: argparse.Namespace) -> int:
    if (a.mean is None) != (a.std is None):
        raise InterpError("give --mean and --std together (or neither: the architecture's own)")
    _emit(import_model(a.arch, a.weights, a.classes, a.out, image_size=a.image_size, mean=a.mean, std=a.std,
                       interpolation=a.interpolation), None)
    return 0


def _run_arg(a: argparse.Namespace, device: Any = "cpu") -> Any:
    """``a.run`` as a path, or loaded with ``--cam-layer`` applied when one is given."""
    if not getattr(a, "cam_layer", None):
        return a.run
    return load_run(a.run, pick_device(device) if isinstance(device, str) else device, cam_layer=a.cam_layer)


# -- evaluate / explain / compare ----------------------------------------------------------
def cmd_evaluate(a: argparse.Namespace) -> int:
    settings = EvalSettings(split=a.split, attribution=a.attribution, limit=a.limit, batch_size=a.batch_size,
                            expensive=a.expensive, seed=a.seed)
    result = evaluate_run(_run_arg(a, a.device), a.data, settings, device=pick_device(a.device), progress=not a.quiet,
                          predictions_csv=a.predictions, attributions=a.attributions)
    if a.cam_layer:
        result["cam_layer"] = a.cam_layer
    _emit(result, a.out)
    return 0


def cmd_explain(a: argparse.Namespace) -> int:
    if a.data is not None:  # dataset mode: sharded, resumable
        info = explain_dataset(_run_arg(a, a.device), a.data, a.split, a.out, method=a.attribution, shard_size=a.shard_size,
                               batch_size=a.batch_size, device=a.device, limit=a.limit, target=a.target,
                               seed=a.seed, workers=a.workers, progress=not a.quiet)
        _emit({"out": str(Path(a.out).resolve()), "n_tiles": info["n_tiles"], "n_shards": info["n_shards"],
               "shards_written": info["shards_written"], "complete": info["complete"],
               "seconds": round(info["seconds"], 3)}, None)
        return 0
    info = explain_image(_run_arg(a, a.device), a.image, a.out, method=a.attribution, target=a.target, device=a.device,
                         alpha=a.alpha, seed=a.seed)
    _emit(info, None)
    return 0


def cmd_explain_slide(a: argparse.Namespace) -> int:
    bar = None
    progress = None
    if not a.quiet:
        from tqdm import tqdm
        bar = tqdm(unit="tile", desc="explain-slide", file=sys.stderr, dynamic_ncols=True)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
    try:
        if a.out is None:
            if not Path(a.run, "config.json").is_file():
                raise InterpError(f"{a.run}: not a run folder (no config.json)")
            a.out = str(results_dir(a.run, a.slide, level=a.level, method=a.attribution, tile_size=a.tile_size,
                                    stride=a.stride))
        info = explain_slide_file(a.run, a.slide, a.out, level=a.level, tile_size=a.tile_size, stride=a.stride,
                                  method=a.attribution, batch_size=a.batch_size, min_tissue=a.min_tissue,
                                  device=a.device, limit_tiles=a.limit_tiles, map_side=a.map_side,
                                  workers=a.workers, seed=a.seed, normalize=a.normalize,
                                  tile_map_size=a.tile_map_size, piece_tiles=a.piece_tiles, progress=progress,
                                  cam_layer=a.cam_layer)
    finally:
        if bar is not None:
            bar.close()
    _emit({"out": str(Path(a.out).resolve()), "tiles": info["tiles"], "class_counts": info["class_counts"],
           "tiles_per_second": info["timings"]["tiles_per_second"], "reused": bool(info.get("reused"))}, None)
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    info = build_report(a.runs, a.data, a.out, split=a.split, attribution=a.attribution, limit=a.limit,
                        device=a.device, progress=not a.quiet, seed=a.seed, reference=a.reference)
    _emit(info, None)
    return 0


# -- parser ---------------------------------------------------------------------------------
def _arch_name(name: str) -> str:
    """argparse type for ``--arch``: a registered name, timm/NAME or torchvision/NAME."""
    if not is_known_arch(name):
        raise argparse.ArgumentTypeError(f"unknown architecture {name!r}; choose one of "
                                         f"{', '.join(sorted(list_models()))}, or timm/NAME or torchvision/NAME")
    return name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m interp_core", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("make-data", help="generate a sample dataset (synthetic-he, synthetic-he-biased, synthetic-he-bgbias, ihc)")
    m.add_argument("kind", help="synthetic-he | synthetic-he-biased | synthetic-he-bgbias | ihc")
    m.add_argument("--out", required=True, help="output dataset folder")
    m.add_argument("--size", type=int, default=64, help="tile side in pixels (default 64)")
    m.add_argument("--n-train", type=int, default=None, help="training tiles (default: the shipped size)")
    m.add_argument("--n-val", type=int, default=None, help="validation tiles")
    m.add_argument("--n-test", type=int, default=None, help="test tiles")
    _common(m)
    m.set_defaults(func=cmd_make_data)

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
    _common(t)
    _add_objective_flags(t)
    t.set_defaults(func=cmd_train)

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
    _common(im)
    im.set_defaults(func=cmd_import_model)

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
    _cam_layer_arg(e)
    e.add_argument("--out", default=None, help="write metrics.json here instead of stdout")
    e.add_argument("--predictions", default=None, help="also write per-tile predictions to this CSV")
    e.add_argument("--attributions", default=None, metavar="DIR",
                   help="reuse the saliency maps of a finished `explain --data` job in DIR (same run, data, split "
                        "and --attribution; it must hold every tile evaluated) instead of computing them")
    _common(e)
    e.set_defaults(func=cmd_evaluate)

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
    _cam_layer_arg(x)
    x.add_argument("--shard-size", type=int, default=256, help="tiles per shard (--data; default 256)")
    x.add_argument("--batch-size", type=int, default=64, help="tiles per forward pass (--data; default 64)")
    x.add_argument("--limit", type=int, default=None, help="only a stratified subset of N tiles (--data)")
    x.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (--data; default 0)")
    x.add_argument("--out", required=True, help="--image: OUT.png (overlay) or OUT.npy (raw map); "
                                                "--data: output folder")
    _common(x)
    x.set_defaults(func=cmd_explain)

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
    _cam_layer_arg(ws)
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
    _common(ws)
    ws.set_defaults(func=cmd_explain_slide)

    c = sub.add_parser("compare", help="self-contained HTML report comparing runs on a dataset")
    c.add_argument("--runs", nargs="+", required=True)
    c.add_argument("--data", required=True)
    c.add_argument("--split", default="test", choices=("train", "val", "test"))
    c.add_argument("--attribution", default="saliency")
    c.add_argument("--limit", type=int, default=200)
    c.add_argument("--out", required=True, help="report.html")
    c.add_argument("--reference", default=None,
                   help="the run the others are compared with (default: the one they were fine-tuned from)")
    _common(c)
    c.set_defaults(func=cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    debug = os.environ.get("INTERP_DEBUG") == "1"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except InterpError as e:
        print(f"error: {e}", file=sys.stderr)
        if debug:
            raise
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into `head`
        return 0
    except OSError as e:  # disk full, read-only folder, permission denied: say which file
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        if debug:
            raise
        return EXIT_USER_ERROR
    except MemoryError:
        print("error: out of memory; try a smaller --batch-size or --limit", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the one place a bug is reported instead of a traceback
        if debug:
            raise
        print(f"internal error: {type(e).__name__}: {e} (set INTERP_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
