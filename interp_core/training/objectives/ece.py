"""ECE: explanation-consistency sample reweighting (METHODS.md section 3; Wu et al. 2024).

At a refresh, every training sample gets its explanation consistency ``E_i`` (heatmap of the
true class before and after a background-only adversarial attack, :mod:`interp_core.consistency.score`)
and a weight ``v_i = 1 - E_i + beta`` normalised to mean 1 over the training set [paper: low
consistency -> more weight; the form is ours]. Until the next refresh the loss is
``mean_i v_i * CE(f(x_i), y_i)`` over the batch.

Schedule [ours]: ``warmup_epochs`` of plain training (weights 1), then a refresh every
``refresh_every`` epochs (default 3), the first one at the start of this run's first epoch past
the warm-up (:func:`refresh_due`; epochs count the model's, an ``--init`` run's included, so a
fine-tuned baseline refreshes at once). METHODS.md's default is 1; 3 is ours, for cost: a refresh
(K + 2 = 5 passes over the training set) costs about 2.5 ERM epochs on the CPU, so refreshing
every epoch makes ECE about 3.5x ERM, and every third epoch about 1.9x on average
(``bench/objective_speed.py``), the issue's "at most 2x" budget. ``--refresh-every 1`` gives
METHODS.md's schedule.

Side file ``RUN/consistency.npz`` (rewritten atomically after every refresh, readable with
``np.load(..., allow_pickle=False)``): ``sample_ids`` [N] str, ``labels`` [N] int64,
``refresh_epochs`` [R] int64, ``consistency`` [R,N] float32, ``weights`` [R,N] float32 (used from
that epoch on), ``pred_changed`` [R,N] bool (the attack flipped the prediction). Column ``j`` is
the sample with dataset index ``j``. ``refresh_epochs`` counts like the ``epoch`` field of
``history.jsonl`` (1-based): a refresh at the start of loop epoch ``e`` (0-based, as in
``EpochContext.epoch``) is recorded as ``e + 1``, the history line whose training it weighted.

Resume: the objective's state tensors hold every refresh (epochs, ``E`` rows, flips, labels),
and the npz is a pure function of that state. The first ``begin_epoch`` of a (resumed) objective
rewrites the npz from the state, dropping any row a killed run wrote after its last checkpoint;
an epoch already in the state is never refreshed again.

History extras (every epoch): ``refreshed`` (0/1), ``weight_min``, ``weight_mean``,
``weight_max``, ``weight_share_above_2x_mean``; on a refresh also ``consistency_mean``,
``consistency_min``, ``pred_changed_share`` and ``refresh_seconds``.

Under torchrun the refresh is split across ranks: each scores its share of the training set
(``EpochContext.train_eval_loader`` is sharded), the per-sample rows are all-gathered
(:func:`~interp_core.training.distributed.all_gather_rows`), so every rank computes the same
full weight vector; only rank 0 (the one with a ``run_dir``) writes ``consistency.npz``.

Cost: a refresh is ``K`` forward + input-only backward passes and one forward over the training
set, run as in :func:`interp_core.consistency.score.dataset_consistency` (BatchNorm folded,
channels-last, no-grad CAM, device-sized batches): about 2.5 ERM epochs on the CPU (smallcnn,
64x64 tiles, one thread, channels-last training), amortised by ``refresh_every``.

``mode = "fast"`` [ours] (``train --objective ece --mode fast``; docs/fast_modes.md): a refresh
at **every** epoch past the warm-up (METHODS.md's schedule; ``refresh_every`` is not used), made
cheap. What differs from METHODS.md section 3:

- step 3, the attack: the first refresh takes one PGD step from ``x`` (step size ``alpha`` of the
  exact attack, ``2.5 eps / K``) instead of ``K``; the perturbation each sample reached is
  carried (int8, :class:`~interp_core.training.sample_store.PerturbationStore`) and every later
  refresh continues it by one step (:func:`~interp_core.consistency.score.carried_consistency`,
  "free" warm start, Shafahi et al. 2019). ``E`` is scored at the carried perturbation (found
  at the previous refresh's weights, projected onto the current background), so after ``K``
  refreshes the attack has taken ``K`` steps in total;
- which samples are scored: the first refresh scores every sample; a later one re-scores a
  ``refresh_fraction`` share (default 0.5): half of it the samples with the lowest current ``E``
  (the ones with most weight), half the ones scored longest ago (ties by index), so every
  sample is re-scored at least every ``2 / refresh_fraction`` refreshes. The others keep their
  last ``E`` (and flip flag); ``consistency.npz`` has ``rescored`` [R,N] bool saying which were
  scored at each refresh (all true in exact mode);
- steps 1, 2, 4, 5 and 6 are unchanged (``H(x)`` in eval mode at the current weights).
Single process only (the carried perturbations are per process); the store costs one byte per
training pixel and channel.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...consistency.options import ConsistencyOptions
from ...consistency.score import (carried_consistency, dataset_consistency, default_batch_size, explanation_consistency,
                                 inference_copy, rebatch)
from ...consistency.history import CONSISTENCY_FILE, write_consistency
from ...errors import InterpError, TrainingDiverged
from ..distributed import all_gather_rows
from ..sample_store import PerturbationStore
from .base import EpochContext, Objective, StepContext, register_objective

ECE_MODES = ("exact", "fast")



def consistency_weights(consistency: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """``v_i = (1 - E_i + beta) / mean_j (1 - E_j + beta)`` [form ours]: mean 1, decreasing in ``E``.

    Falls back to uniform weights when every raw weight is 0 (``beta = 0`` and all ``E = 1``).
    Raises TrainingDiverged on non-finite consistency (a diverged model), so no NaN reaches the loss.
    """
    e = consistency.double()
    if not bool(torch.isfinite(e).all()):
        raise TrainingDiverged("explanation consistency is NaN/inf: the model has diverged")
    v = 1.0 - e + float(beta)
    mean = v.mean()
    if not float(mean) > 0:
        return torch.ones_like(consistency, dtype=torch.float32)
    return (v / mean).float()


def weight_stats(weights: torch.Tensor) -> dict[str, float]:
    """``weight_min``, ``weight_mean``, ``weight_max`` and ``weight_share_above_2x_mean`` (share of
    samples whose weight exceeds twice the mean), for history.jsonl."""
    mean = float(weights.mean())
    return {
        "weight_min": float(weights.min()),
        "weight_mean": mean,
        "weight_max": float(weights.max()),
        "weight_share_above_2x_mean": float((weights > 2 * mean).float().mean()),
    }


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean_i v_i * CE(logits_i, y_i)`` over the batch (not divided by ``sum v``: the weights
    already have mean 1 over the dataset, so the loss scale matches plain CE on average)."""
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    return (weights.to(ce.device, ce.dtype) * ce).mean()


def refresh_due(epoch: int, warmup_epochs: int, refresh_every: int, prior_epochs: int = 0) -> bool:
    """True when a refresh runs at the start of the model's ``epoch`` (0-based, an ``--init`` run's
    ``prior_epochs`` included) [schedule ours]: the first refresh at ``max(warmup_epochs,
    prior_epochs)`` (the first epoch past the warm-up that this run trains), then every
    ``refresh_every`` epochs."""
    first = max(int(warmup_epochs), int(prior_epochs))
    return epoch >= first and (epoch - first) % int(refresh_every) == 0


@register_objective
class ECE(Objective):
    """Explanation-consistency reweighting: weighted CE with weights refreshed from ``E``."""

    name = "ece"
    description = "explanation-consistency sample reweighting (weighted CE, periodic refresh)"

    @dataclass
    class Options(ConsistencyOptions):
        beta: float = field(default=0.1, metadata={"help": "[ours] weight offset: v = 1 - E + beta, then normalised to mean 1"})
        warmup_epochs: int = field(default=1, metadata={"help": (
            "[ours] the model's first epochs of plain cross-entropy before the first refresh "
            "(an --init run's epochs count, so fine-tuning a trained model refreshes at once)")})
        refresh_every: int = field(default=3, metadata={"help": (
            "[ours] epochs between consistency refreshes (METHODS.md: 1; 3 keeps ECE within about 2x "
            "ERM's time on the CPU, see the module docstring)")})
        refresh_batch_size: int = field(default=0, metadata={"help": (
            "batch size of the refresh pass; 0 = auto: 256 on CUDA, 32 on the CPU (measured fastest "
            "there: larger batches fall out of cache)")})
        mode: str = field(default="exact", metadata={"help": (
            "'exact' = METHODS.md section 3 refresh (K-step PGD from x for every sample); 'fast' [ours] = "
            "a refresh every epoch, the background perturbation carried per sample and advanced one step "
            "per refresh, a refresh_fraction share re-scored (lowest consistency and oldest scores first); "
            "see docs/fast_modes.md"), "choices": ECE_MODES,
            # its measured cost (Train page): interp_core.training.mode_costs, from docs/results/objective_speed.json
        })
        refresh_fraction: float = field(default=0.5, metadata={"help": (
            "[ours] fast mode: share of the training samples re-scored at each refresh after the first "
            "(half lowest consistency, half oldest score); 1 = all")})

        def validate(self) -> None:
            """Raise InterpError for values outside their domain."""
            super().validate()
            if not float(self.beta) >= 0:
                raise InterpError(f"beta must be >= 0, got {self.beta}")
            if int(self.warmup_epochs) < 0:
                raise InterpError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
            if int(self.refresh_every) < 1:
                raise InterpError(f"refresh_every must be >= 1, got {self.refresh_every}")
            if int(self.refresh_batch_size) < 0:
                raise InterpError(f"refresh_batch_size must be >= 1 (or 0 for auto), got {self.refresh_batch_size}")
            if self.mode not in ECE_MODES:
                raise InterpError(f"ece: mode must be one of {', '.join(ECE_MODES)}, got {self.mode!r}")
            if not 0 < float(self.refresh_fraction) <= 1:
                raise InterpError(f"refresh_fraction must be in (0, 1], got {self.refresh_fraction}")

    def __init__(self, options: "ECE.Options", num_train: int):
        super().__init__(options, num_train)
        options.validate()
        self.weights = torch.ones(num_train)  # current v, indexed by dataset index (CPU)
        self.refresh_epochs = torch.zeros(0, dtype=torch.long)  # [R]
        self.consistency = torch.zeros(0, num_train)  # [R, N]
        self.pred_changed = torch.zeros(0, num_train, dtype=torch.bool)  # [R, N]
        self.labels = torch.full((num_train,), -1, dtype=torch.long)
        self.rescored = torch.zeros(0, num_train, dtype=torch.bool)  # [R, N]: scored at that refresh
        self.store = PerturbationStore(num_train, float(options.eps)) if options.mode == "fast" else None
        self._weights_on: dict[torch.device, torch.Tensor] = {}
        self._npz_synced = False

    # -- per epoch -------------------------------------------------------------------------
    def begin_epoch(self, ctx: EpochContext) -> dict[str, float]:
        """Refresh the weights when the schedule says so (and not already done for this epoch);
        return the weight statistics (and, on a refresh, consistency statistics) for history."""
        opts = self.options
        extras: dict[str, float] = {}
        if not self._npz_synced:
            self._write_npz(ctx)  # resumed: make the file match the restored state
            self._npz_synced = True
        if self.store is not None and ctx.dist.enabled:
            raise InterpError("ece: mode 'fast' carries perturbations per process; run it in a single process")
        already = bool((self.refresh_epochs == ctx.epoch).any())
        every = 1 if self.store is not None else int(opts.refresh_every)  # fast: every epoch (METHODS.md)
        # the warm-up counts the model's epochs, --init runs' included (EpochContext.prior_epochs) [ours]
        refresh = refresh_due(ctx.prior_epochs + ctx.epoch, int(opts.warmup_epochs), every,
                              ctx.prior_epochs) and not already
        if refresh:
            extras.update(self._refresh(ctx))
        extras["refreshed"] = float(refresh)
        extras.update(weight_stats(self.weights))
        return extras

    def _refresh(self, ctx: EpochContext) -> dict[str, float]:
        if self.store is not None:
            return self._fast_refresh(ctx)
        start = time.perf_counter()
        result = dataset_consistency(
            ctx.model, ctx.train_eval_loader, self.options, device=ctx.device,
            batch_size=int(self.options.refresh_batch_size) or None, progress=ctx.progress,
            generator=ctx.generator, desc=f"ece refresh (epoch {ctx.epoch})")
        # torchrun: each rank scored its share; gather every rank's rows so all hold the full vector
        rows = torch.stack([result.indices.double(), result.scores.double(), result.pred_changed.double(),
                            result.labels.double()], dim=1) if result.indices.numel() else torch.zeros(0, 4, dtype=torch.float64)
        rows = all_gather_rows(rows, ctx.dist)
        idx, scores = rows[:, 0].long(), rows[:, 1].float()
        pred_changed, labels = rows[:, 2] > 0.5, rows[:, 3].long()
        e = torch.zeros(self.num_train)
        changed = torch.zeros(self.num_train, dtype=torch.bool)
        covered = torch.zeros(self.num_train, dtype=torch.bool)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_train):
            raise InterpError(f"training loader yielded index {int(idx.max())} outside 0..{self.num_train - 1}")
        e[idx] = scores
        changed[idx] = pred_changed
        covered[idx] = True
        self.labels[idx] = labels
        if not bool(covered.all()):
            raise InterpError(f"the training loader covered {int(covered.sum())} of {self.num_train} samples; "
                              "the ECE refresh needs every training sample")
        self.weights = consistency_weights(e, float(self.options.beta))  # raises on NaN
        self._weights_on.clear()
        self.refresh_epochs = torch.cat([self.refresh_epochs, torch.tensor([ctx.epoch], dtype=torch.long)])
        self.consistency = torch.cat([self.consistency, e[None].float()])
        self.pred_changed = torch.cat([self.pred_changed, changed[None]])
        self.rescored = torch.cat([self.rescored, torch.ones(1, self.num_train, dtype=torch.bool)])
        self._write_npz(ctx)
        return {
            "consistency_mean": float(e.mean()),
            "consistency_min": float(e.min()),
            "pred_changed_share": float(changed.float().mean()),
            "refresh_seconds": time.perf_counter() - start,
        }

    def _write_npz(self, ctx: EpochContext) -> None:
        """Write ``consistency.npz`` from the state (atomically); remove a stale file
        when the state has no refresh yet."""
        if ctx.run_dir is None:
            return
        path = Path(ctx.run_dir) / CONSISTENCY_FILE
        if len(self.refresh_epochs) == 0:
            if path.exists():
                path.unlink()
            return
        ids = list(ctx.sample_ids) if ctx.sample_ids else [str(i) for i in range(self.num_train)]
        if len(ids) != self.num_train:
            raise InterpError(f"{len(ids)} sample ids for {self.num_train} training samples")
        weights = torch.stack([consistency_weights(row, float(self.options.beta)) for row in self.consistency])
        write_consistency(path, sample_ids=ids, labels=self.labels.numpy(),
                          refresh_epochs=self.refresh_epochs.numpy() + 1,  # as history.jsonl
                          consistency=self.consistency.numpy(), weights=weights.numpy(),
                          pred_changed=self.pred_changed.numpy(), rescored=self.rescored.numpy())

    # -- per batch -------------------------------------------------------------------------
    def sample_weights(self, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Current weights ``v`` of the samples with dataset indices ``index``, on ``device``."""
        device = torch.device(device)
        w = self._weights_on.get(device)
        if w is None:
            w = self._weights_on[device] = self.weights.to(device)
        return w[index.to(device)]

    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        """``mean_i v_i * CE(f(x_i), y_i)`` with the weights of the last refresh (1 before it)."""
        logits = model(batch["image"])
        v = self.sample_weights(batch["index"], logits.device)
        return weighted_cross_entropy(logits, batch["label"], v), {"batch_weight_mean": float(v.mean())}

    # -- resumable state -------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every refresh so far (epochs, consistency, flips, labels) and the current weights."""
        return {
            "weights": self.weights.contiguous(),
            "refresh_epochs": self.refresh_epochs.contiguous(),
            "consistency": self.consistency.contiguous(),
            "pred_changed": self.pred_changed.to(torch.uint8).contiguous(),
            "labels": self.labels.contiguous(),
            "rescored": self.rescored.to(torch.uint8).contiguous(),
            **(self.store.state_tensors("ece_") if self.store is not None else {}),
        }

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_tensors`; the npz is rewritten from it at the next ``begin_epoch``."""
        if not tensors:
            return
        n = self.num_train
        weights, epochs = tensors["weights"].float(), tensors["refresh_epochs"].long()
        consistency, changed = tensors["consistency"].float(), tensors["pred_changed"].bool()
        r = epochs.numel()
        if weights.shape != (n,) or consistency.shape != (r, n) or changed.shape != (r, n) or tensors["labels"].shape != (n,):
            raise InterpError(f"ECE state is for {weights.numel()} training samples and {r} refreshes "
                              f"(consistency {list(consistency.shape)}); this run has {n} training samples")
        self.weights = weights.clone()
        self.refresh_epochs = epochs.clone()
        self.consistency = consistency.clone()
        self.pred_changed = changed.clone()
        self.labels = tensors["labels"].long().clone()
        # checkpoints written before ``rescored`` existed scored every sample at every refresh
        self.rescored = tensors["rescored"].bool().clone() if "rescored" in tensors else torch.ones(r, n, dtype=torch.bool)
        if self.store is not None:
            self.store.load_state_tensors(tensors, "ece_")
        self._weights_on.clear()
        self._npz_synced = False

    # -- fast mode [ours] ------------------------------------------------------------------------
    def select_for_rescoring(self) -> torch.Tensor:
        """Bool ``[N]``: the samples a fast refresh scores. All at the first refresh (and any sample
        without a carried perturbation); afterwards ``ceil(refresh_fraction * N)``: half of them the
        lowest current ``E``, the rest the samples scored longest ago (ties by index)."""
        n = self.num_train
        if len(self.consistency) == 0:
            return torch.ones(n, dtype=torch.bool)
        k = min(n, math.ceil(float(self.options.refresh_fraction) * n))
        chosen = torch.zeros(n, dtype=torch.bool)
        e = self.consistency[-1].double()
        order = torch.argsort(e, stable=True)  # lowest E first; ties by index
        chosen[order[: (k + 1) // 2]] = True
        r = self.rescored.shape[0]
        last = torch.where(self.rescored, torch.arange(r).view(-1, 1), torch.full_like(self.rescored, -1, dtype=torch.long))
        age_key = last.amax(0).double()  # lower = scored longer ago
        age_key[chosen] = math.inf
        oldest = torch.argsort(age_key, stable=True)[: k - int(chosen.sum())]
        chosen[oldest] = True
        return chosen | ~self.store.seen

    def _fast_refresh(self, ctx: EpochContext) -> dict[str, float]:
        """Fast mode's refresh (module docstring): score the selected samples against their carried
        perturbations (one fresh step from ``x`` for a sample without one); keep the others' ``E``."""
        start = time.perf_counter()
        opts, n = self.options, self.num_train
        chosen = self.select_for_rescoring()
        e = self.consistency[-1].clone() if len(self.consistency) else torch.zeros(n)
        changed = self.pred_changed[-1].clone() if len(self.pred_changed) else torch.zeros(n, dtype=torch.bool)
        device = torch.device(ctx.device)
        net = inference_copy(ctx.model)
        kwargs = opts.consistency_kwargs()
        eps = float(opts.eps)

        def selected_batches():
            for batch in ctx.train_eval_loader:
                keep = chosen[batch["index"].cpu()]
                if bool(keep.any()):
                    yield {k: batch[k][keep] for k in ("image", "label", "index")}

        bs = int(opts.refresh_batch_size) or default_batch_size(device)
        for batch in rebatch(selected_batches(), bs):
            x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
            y, idx = batch["label"].to(device), batch["index"].cpu().long()
            self.labels[idx] = batch["label"].cpu().long()
            seen = self.store.seen[idx]
            if bool((~seen).any()):  # first visit: one step of the exact attack from x
                new = (~seen).nonzero().flatten()
                res = explanation_consistency(net, x[new], y[new], generator=ctx.generator,
                                              **{**kwargs, "steps": 1, "alpha": opts.step_size})
                self.store.put(idx[new], (res.x_adv - x[new]).float())
                e[idx[new]], changed[idx[new]] = res.score.float().cpu(), res.pred_changed.cpu()
            if bool(seen.any()):
                old = seen.nonzero().flatten()
                delta = self.store.get(idx[old], x[old].shape, eps, device=device)
                res2 = carried_consistency(net, x[old], y[old], delta, **{**kwargs, "alpha": opts.step_size})
                self.store.put(idx[old], res2.delta_next.float())
                e[idx[old]], changed[idx[old]] = res2.score.float().cpu(), res2.pred_changed.cpu()
        self.weights = consistency_weights(e, float(opts.beta))  # raises on NaN
        self._weights_on.clear()
        self.refresh_epochs = torch.cat([self.refresh_epochs, torch.tensor([ctx.epoch], dtype=torch.long)])
        self.consistency = torch.cat([self.consistency, e[None].float()])
        self.pred_changed = torch.cat([self.pred_changed, changed[None]])
        self.rescored = torch.cat([self.rescored, chosen[None]])
        self._write_npz(ctx)
        return {
            "consistency_mean": float(e.mean()),
            "consistency_min": float(e.min()),
            "pred_changed_share": float(changed.float().mean()),
            "rescored_share": float(chosen.float().mean()),
            "refresh_seconds": time.perf_counter() - start,
        }
