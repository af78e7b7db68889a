"""The explanation-quality half of ``evaluate``: attribution maps for a dataset, streamed in
batches, scored with every metric of METHODS.md section 4 that the data allows.

The metric loop walks the metric registry (``interp_core.metrics.METRICS``: which inputs each metric
requires, whether it is expensive, which earlier result it reuses), as Quantus's ``evaluate`` does.
Which attribution form each metric reads is the metric's own;
the maps are computed for the model's predicted class, the consistency for the true class (as in
METHODS.md section 3). With ``maps`` (a finished ``explain_dataset`` job) the maps are read from
its shards by dataset index instead of computed; every other computation is unchanged.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .. import metrics as M
from ..attribution import attribute, seed_option
from ..consistency.options import ConsistencyOptions
from ..consistency.score import default_batch_size, explanation_consistency, inference_copy
from .metrics_checkpoint import checkpoint_ident, read_checkpoint, write_checkpoint
from .shards import StoredMaps

ProgressFn = Callable[[int, int], None]


def scored_metrics(expensive: bool) -> tuple[list[M.MetricInfo], list[M.MetricInfo]]:
    """The registered metrics an evaluation scores, as ``(cheap, expensive)`` in registration order:
    every metric that reads an attribution map (``a``) or attributes the model itself (``method``);
    the expensive ones only when asked for. Accuracy metrics are :func:`evaluate.accuracy_report`'s."""
    infos = [m for m in M.METRICS.values() if {"a", "method"} & set(m.requires)]
    return [m for m in infos if not m.expensive], [m for m in infos if m.expensive and expensive]


class _Sink:
    """Per-tile values of every metric, and the details some results carry (curves, per-layer tables)."""

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = {}
        self.curves: dict[str, list[torch.Tensor]] = {}
        self.fractions: torch.Tensor | None = None
        self.rand_layers: list[str] | None = None
        self.rand_tables: list[torch.Tensor] = []

    def restore(self, state: dict[str, Any]) -> None:
        """Start from the values of a progress file (:func:`.metrics_checkpoint.read_checkpoint`)."""
        self.values = {k: [torch.from_numpy(v)] for k, v in state["values"].items()}
        self.curves = {k: [torch.from_numpy(v)] for k, v in state["curves"].items()}
        self.fractions = torch.from_numpy(state["fractions"]) if state["fractions"] is not None else None
        if state["rand_table"] is not None:
            self.rand_layers, self.rand_tables = state["rand_layers"], [torch.from_numpy(state["rand_table"])]

    def add(self, name: str, v: torch.Tensor) -> None:
        self.values.setdefault(name, []).append(v.detach().float().cpu())

    def add_result(self, info: M.MetricInfo, result: Any) -> torch.Tensor:
        """Store ``info``'s headline values and what its result carries besides; returns the headline."""
        head = info.headline(result)
        self.add(info.name, head)
        if isinstance(result, M.PerturbationCurve):
            self.curves.setdefault(info.name.removesuffix("_auc"), []).append(result.curve.cpu())
            self.fractions = result.fractions.cpu()
        if isinstance(result, M.RandomisationResult):
            self.rand_layers = result.layers
            self.rand_tables.append(result.per_layer.cpu())
        return head

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.curves:
            out["curves"] = {"fractions": self.fractions.tolist(),
                             **{k: torch.cat(v).mean(0).tolist() for k, v in self.curves.items()}}
        if self.rand_tables:
            table = torch.cat(self.rand_tables, dim=1)
            out["model_randomisation_layers"] = {"layers": self.rand_layers,
                                                 "spearman_mean": torch.nanmean(table, dim=1).tolist()}
        return out


def score_batch(infos: list[M.MetricInfo], inputs: dict[str, Any], model: nn.Module, fast: nn.Module,
                sink: _Sink) -> None:
    """Every metric of ``infos`` on one batch (Quantus's ``evaluate`` loop): the metric gets the
    inputs it requires, ``model`` when it attributes the model itself (``method``) else the
    inference copy ``fast``, and the headline of each earlier metric it ``reuses``."""
    heads: dict[str, torch.Tensor] = {}
    for info in infos:
        if not info.available({**inputs, "model": model}):
            continue
        reused = {param: heads[other] for param, other in info.reuses.items() if other in heads}
        result = info.compute(**inputs, **reused, model=model if "method" in info.requires else fast)
        heads[info.name] = sink.add_result(info, result)


def explanation_metrics(model: nn.Module, ds, idx: list[int], pred: torch.Tensor, s, *, device: torch.device,
                        progress: bool | ProgressFn = False,
                        maps: StoredMaps | None = None,
                        consistency: ConsistencyOptions | None = None,
                        checkpoint: str | Path | None = None,
                        checkpoint_id: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-metric ``{"mean","std","n"}`` and details (mean deletion/insertion curves, randomisation table).

    The metrics are those of the registry (:func:`scored_metrics`), then the explanation consistency
    and the attack's flip rate. Attribution maps come from ``model`` itself (hook-based methods need
    its modules); the forward-only work (deletion, insertion, the consistency attack: about 70
    forward passes per tile) runs on an :func:`~interp_core.consistency.score.inference_copy` of it,
    the same function with BatchNorm folded and channels-last layout, in cache-sized chunks on the CPU.

    ``maps``: stored maps (``shards.StoredMaps``, already checked against this evaluation)
    used instead of ``attribute(...)``, matched to the tiles by dataset index; details then say
    where they came from and on how many tiles the stored map explains another class than ``pred``
    (a near tie predicted differently; the metrics still score ``pred``).

    ``consistency``: the explanation-consistency settings (default: :class:`ConsistencyOptions`'s;
    ``evaluate`` passes an ECE run's own, see ``consistency_options_for``); stored in the details.

    ``checkpoint``: an ``.npz`` progress file (:mod:`.metrics_checkpoint`) written after every batch;
    a later call with the same ``checkpoint_id`` and tiles continues after the last finished batch and
    returns exactly what one uninterrupted call returns. A file of other settings is ignored; one
    that cannot be written is skipped. The caller deletes it once the result is stored.
    """
    sink = _Sink()
    cheap, costly = scored_metrics(s.expensive)
    gen = torch.Generator().manual_seed(s.seed)
    cons_opts = consistency or ConsistencyOptions()
    done, total, mismatched = 0, len(idx), 0
    ident = checkpoint_ident(checkpoint_id, idx, s.batch_size, pred)
    state = read_checkpoint(checkpoint, ident) if checkpoint is not None else None
    if state is not None:  # continue after the batches finished by an earlier, interrupted call
        done, mismatched = state["done"], state["mismatched"]
        sink.restore(state)
        gen.set_state(torch.from_numpy(state["generator"]))
    loader = DataLoader(Subset(ds, idx[done:]), batch_size=s.batch_size, shuffle=False)
    fast = inference_copy(model)
    chunk = default_batch_size(device)
    bar = tqdm(total=total, initial=done, desc=f"explanation metrics ({s.attribution})", file=sys.stderr,
               leave=False, disable=not (progress is True), dynamic_ncols=True)
    for batch in loader:
        x = batch["image"].to(device)
        y = batch["label"].to(device)
        target = pred[done:done + len(x)].to(device)
        if maps is None:
            a = attribute(model, x, s.attribution, target=target, **seed_option(s.attribution, s.seed))
        else:
            stored, stored_target = maps.get(batch["index"].numpy())
            a = torch.from_numpy(stored).to(device)
            mismatched += int((torch.from_numpy(stored_target) != target.cpu()).sum())
        inputs = {"a": a, "x": x, "target": target, "n_steps": s.n_steps, "method": s.attribution, "seed": s.seed,
                  "mask": batch["mask"].to(device)[:, 0] > 0 if "mask" in batch else None,
                  "region": batch["artifact"].to(device)[:, 0] > 0 if "artifact" in batch else None}
        score_batch(cheap, inputs, model, fast, sink)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        for lo in range(0, len(x), chunk):
            c = explanation_consistency(fast, x_cl[lo:lo + chunk], y[lo:lo + chunk], **cons_opts.consistency_kwargs(),
                                        generator=gen)
            sink.add("explanation_consistency", c.score)
            sink.add("attack_flip_rate", c.pred_changed.float())
        score_batch(costly, inputs, model, fast, sink)
        done += len(x)
        bar.update(len(x))
        if checkpoint is not None and done < total:
            checkpoint = write_checkpoint(checkpoint, ident, done, total, mismatched, sink.values, sink.curves,
                                          sink.fractions, sink.rand_layers, sink.rand_tables, gen)
        if callable(progress):
            progress(done, total)
    bar.close()
    return _summary(sink, s, cons_opts, maps, mismatched)


def _summary(sink: _Sink, s, cons_opts: ConsistencyOptions, maps: StoredMaps | None,
             mismatched: int) -> tuple[dict[str, Any], dict[str, Any]]:
    out = {name: M.summarise(torch.cat(v)) for name, v in sink.values.items()}
    details: dict[str, Any] = {"attribution": s.attribution, "consistency_settings": cons_opts.consistency_kwargs(),
                               "per_tile": {name: [None if math.isnan(x) else x for x in torch.cat(v).double().tolist()]
                                            for name, v in sink.values.items()}}
    if maps is not None:
        details["attribution_maps"] = {"folder": str(maps.out), "fingerprint": maps.fingerprint,
                                       "target_mismatches": mismatched, "storage": "float16 * scales"}
    details.update(sink.details())
    return out, details
