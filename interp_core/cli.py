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

from ._utils.device import pick_device
from .data.generate import make_dataset
from . import cli_args as A
from .errors import InterpError
from .evaluation.evaluate import EvalSettings, evaluate_run
from .evaluation.explain import explain_image
from .evaluation.explain_dataset import explain_dataset
from .models.import_model import import_model
from .runs import load_run, write_json
from .slides.job import explain_slide_file, results_dir
from .training import TrainConfig, train
from .training.objectives import get_objective
from .viz.report import build_report

EXIT_USER_ERROR = 2


def _emit(obj: Any, out: str | None) -> None:
    if out:
        write_json(out, obj)
        print(json.dumps({"written": str(out)}))
    else:
        print(json.dumps(obj, indent=2, default=str))


def cmd_make_data(a: argparse.Namespace) -> int:
    info = make_dataset(a.kind, a.out, size=a.size, n_train=a.n_train, n_val=a.n_val, n_test=a.n_test,
                        seed=a.seed, progress=not a.quiet)
    _emit(info, None)
    return 0


# -- train -----------------------------------------------------------------------------------
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
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m interp_core", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = ((A.add_make_data, cmd_make_data), (A.add_train, cmd_train), (A.add_import_model, cmd_import_model),
                (A.add_evaluate, cmd_evaluate), (A.add_explain, cmd_explain), (A.add_explain_slide, cmd_explain_slide),
                (A.add_compare, cmd_compare))
    for add, command in commands:
        add(sub).set_defaults(func=command)
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
