"""The explanation-quality half of ``evaluate``: attribution maps for a dataset, streamed in
batches, scored with every metric of METHODS.md section 4 that the data allows.

Which attribution form each metric reads is the metric's own (see ``interp_core.metrics.METRICS``);
the maps are computed for the model's predicted class, the consistency for the true class (as in
METHODS.md section 3). With ``maps`` (a finished ``explain_dataset`` job) the maps are read from
its shards by dataset index instead of computed; every other computation is unchanged.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .. import metrics as M
from ..attribution import attribute, seed_option
from ..consistency.score import ConsistencyOptions, default_batch_size, explanation_consistency, inference_copy
from .explain_dataset import StoredMaps

ProgressFn = Callable[[int, int], None]


def explanation_metrics(model: nn.Module, ds, idx: list[int], pred: torch.Tensor, s, *, device: torch.device,
                        progress: bool | ProgressFn = False,
                        maps: StoredMaps | None = None,
                        consistency: ConsistencyOptions | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-metric ``{"mean","std","n"}`` and details (mean deletion/insertion curves, randomisation table).

    Attribution maps come from ``model`` itself (hook-based methods need its modules); the
    forward-only work (deletion, insertion, the consistency attack: about 70 forward passes per
    tile) runs on an :func:`~interp_core.consistency.score.inference_copy` of it, the same function with
    BatchNorm folded and channels-last layout, in cache-sized chunks on the CPU.

    ``maps``: stored maps (``explain_dataset.StoredMaps``, already checked against this evaluation)
    used instead of ``attribute(...)``, matched to the tiles by dataset index; details then say
    where they came from and on how many tiles the stored map explains another class than ``pred``
    (a near tie predicted differently; the metrics still score ``pred``).

    ``consistency``: the explanation-consistency settings (default: :class:`ConsistencyOptions`'s;
    ``evaluate`` passes an ECE run's own, see ``consistency_options_for``); stored in the details.
    """
    loader = DataLoader(Subset(ds, idx), batch_size=s.batch_size, shuffle=False)
    values: dict[str, list[torch.Tensor]] = {}
    del_curves, ins_curves, fractions = [], [], None
    rand_layers, rand_tables = None, []
    gen = torch.Generator().manual_seed(s.seed)
    cons_opts = consistency or ConsistencyOptions()
    fast = inference_copy(model)
    chunk = default_batch_size(device)
    done, total = 0, len(idx)
    mismatched = 0
    bar = tqdm(total=total, desc=f"explanation metrics ({s.attribution})", file=sys.stderr, leave=False,
               disable=not (progress is True), dynamic_ncols=True)

    def add(name: str, v: torch.Tensor) -> None:
        values.setdefault(name, []).append(v.detach().float().cpu())

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
        add("sparseness", M.sparseness(a))
        add("complexity", M.complexity(a))
        d = M.deletion_auc(fast, x, a, target, n_steps=s.n_steps)
        i = M.insertion_auc(fast, x, a, target, n_steps=s.n_steps)
        add("deletion_auc", d.auc)
        add("insertion_auc", i.auc)
        add("symmetric_relevance_gain", M.symmetric_relevance_gain(fast, x, a, target, n_steps=s.n_steps,
                                                                   morf_auc=d.auc).srg)
        del_curves.append(d.curve.cpu())
        ins_curves.append(i.curve.cpu())
        fractions = d.fractions.cpu()
        if "mask" in batch:
            mask = batch["mask"].to(device)[:, 0] > 0
            add("pointing_game", M.pointing_game(a, mask))
            add("relevance_mass_accuracy", M.relevance_mass_accuracy(a, mask))
            add("relevance_rank_accuracy", M.relevance_rank_accuracy(a, mask))
        if "artifact" in batch:
            add("artifact_mass", M.artifact_mass(a, batch["artifact"].to(device)[:, 0] > 0))
        x_cl = x.contiguous(memory_format=torch.channels_last)
        for lo in range(0, len(x), chunk):
            c = explanation_consistency(fast, x_cl[lo:lo + chunk], y[lo:lo + chunk], **cons_opts.consistency_kwargs(),
                                        generator=gen)
            add("explanation_consistency", c.score)
            add("attack_flip_rate", c.pred_changed.float())
        if s.expensive:
            add("max_sensitivity", M.max_sensitivity(model, x, target, method=s.attribution, seed=s.seed))
            r = M.model_randomisation(model, x, target, method=s.attribution, seed=s.seed)
            add("model_randomisation", r.score)
            rand_layers = r.layers
            rand_tables.append(r.per_layer.cpu())
        done += len(x)
        bar.update(len(x))
        if callable(progress):
            progress(done, total)
    bar.close()
    out = {name: M.summarise(torch.cat(v)) for name, v in values.items()}
    details: dict[str, Any] = {"attribution": s.attribution, "consistency_settings": cons_opts.consistency_kwargs(),
                               "per_tile": {name: [None if math.isnan(x) else x for x in torch.cat(v).double().tolist()]
                                            for name, v in values.items()}}
    if maps is not None:
        details["attribution_maps"] = {"folder": str(maps.out), "fingerprint": maps.fingerprint,
                                       "target_mismatches": mismatched, "storage": "float16 * scales"}
    if del_curves:
        details["curves"] = {"fractions": fractions.tolist(),
                             "deletion": torch.cat(del_curves).mean(0).tolist(),
                             "insertion": torch.cat(ins_curves).mean(0).tolist()}
    if rand_tables:
        table = torch.cat(rand_tables, dim=1)
        details["model_randomisation_layers"] = {
            "layers": rand_layers, "spearman_mean": torch.nanmean(table, dim=1).tolist()}
    return out, details
