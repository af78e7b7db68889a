"""JTT: Just Train Twice (Liu et al., ICML 2021; METHODS.md section 3b), the reference baseline
that ECE's reweighting is compared with.

Stage 1 (identification), in the first ``begin_epoch`` of the run: an ERM model is trained for
``identify_epochs`` (``T``) epochs on the training set and the training samples it misclassifies
form the *error set*. With ``T >= 1`` that model is a copy of the model as this run starts (a
fresh seeded initialisation from scratch, or the ``--init`` weights), trained with AdamW at
``identify_lr`` (cosine schedule, batch ``identify_batch_size``, un-augmented tiles in a seeded
shuffle), then discarded. With ``T = 0`` the model as the run starts is the identifier: the
fine-tuning form [ours], where the ``--init`` ERM baseline's own training errors are the error
set (refused from scratch, where that model is random).

Stage 2 (this run's training): ``mean_i v_i * CE(f(x_i), y_i)`` with ``v_i = lambda_up`` on the
error set and 1 elsewhere, normalised to mean 1 over the training set [normalisation ours; JTT
duplicates the error set ``lambda_up`` times, which gives the same relative weights; the mean-1
form keeps the loss scale and the number of steps per epoch equal to the ERM control's].

``T`` and ``lambda_up`` are chosen on *validation accuracy without group labels*, JTT's
label-free variant (``bench/ece_effect.py`` does the grid; the chosen pair is in its files).

Side file ``RUN/jtt_errors.npz`` (``np.load(..., allow_pickle=False)``): ``sample_ids`` [N] str,
``labels`` [N] int64, ``p_true`` [N] float32 (the identifier's probability of the true class),
``error`` [N] bool, ``weights`` [N] float32, ``identify_epochs`` int64. History extras:
``error_set_size``, ``error_share``, ``identify_seconds`` (first epoch only).

Single process only (the identification is not split across torchrun ranks).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..._utils.io import atomic_write
from ...errors import InterpError
from .base import EpochContext, Objective, StepContext, register_objective
from .ece import weighted_cross_entropy

ERRORS_FILE = "jtt_errors.npz"


def jtt_weights(error: torch.Tensor, lambda_up: float) -> torch.Tensor:
    """``lambda_up`` on the error set, 1 elsewhere, normalised to mean 1 (uniform when no error)."""
    v = torch.where(error.bool(), torch.tensor(float(lambda_up)), torch.tensor(1.0)).double()
    return (v / v.mean()).float()


@torch.no_grad()
def true_class_probability(model: nn.Module, loader, device: torch.device, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(p_true, pred, labels)`` over a loader of dict batches (``image``, ``label``, ``index``),
    each ``[n]`` indexed by dataset index; the model in eval mode (its mode restored)."""
    was_training = model.training
    model.eval()
    p_true = torch.full((n,), float("nan"))
    pred = torch.full((n,), -1, dtype=torch.long)
    labels = torch.full((n,), -1, dtype=torch.long)
    try:
        for batch in loader:
            x, y, idx = batch["image"].to(device), batch["label"].to(device), batch["index"].long()
            prob = F.softmax(model(x).float(), dim=1)
            p_true[idx] = prob.gather(1, y[:, None])[:, 0].cpu()
            pred[idx] = prob.argmax(1).cpu()
            labels[idx] = y.cpu()
    finally:
        model.train(was_training)
    if bool(torch.isnan(p_true).any()):
        raise InterpError("the training loader did not cover every training sample")
    return p_true, pred, labels


def train_identifier(model: nn.Module, dataset, *, epochs: int, lr: float, batch_size: int, device: torch.device,
                     generator: torch.Generator, weight_decay: float = 1e-4) -> nn.Module:
    """Stage 1: a copy of ``model`` trained with plain CE for ``epochs`` (AdamW, cosine lr per
    epoch, seeded shuffle); ``model`` itself is left untouched."""
    ident = copy.deepcopy(model).to(device)
    ident.train()
    opt = torch.optim.AdamW(ident.parameters(), lr=lr, weight_decay=weight_decay)
    for epoch in range(epochs):
        for g in opt.param_groups:
            g["lr"] = 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                            drop_last=len(dataset) > batch_size)
        for batch in loader:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(ident(batch["image"].to(device)), batch["label"].to(device))
            loss.backward()
            opt.step()
    ident.eval()
    return ident


@register_objective
class JTT(Objective):
    """Just Train Twice: upweight the training errors of a T-epoch ERM model by ``lambda_up``."""

    name = "jtt"
    description = "just train twice (Liu et al. 2021): upweight the errors of a T-epoch ERM model"

    @dataclass
    class Options:
        identify_epochs: int = field(default=2, metadata={"help": (
            "JTT's T: epochs of ERM for the identification model (0 = the model as the run starts, "
            "i.e. the --init baseline, as the error finder [ours]); 2 and 3 were chosen on validation "
            "accuracy for the biased sample sets (docs/results/ece_study/*/scratch/jtt_selection.json)")})
        lambda_up: float = field(default=3.0, metadata={"help": (
            "weight of the error set relative to the rest (JTT's lambda_up); 3 was chosen on validation "
            "accuracy in every setting of the ECE study")})
        identify_lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the identification model"})
        identify_batch_size: int = field(default=64, metadata={"help": "batch size of the identification model"})

        def validate(self) -> None:
            """Raise InterpError for values outside their domain."""
            if int(self.identify_epochs) < 0:
                raise InterpError(f"jtt: identify_epochs (T) must be >= 0, got {self.identify_epochs}")
            if not float(self.lambda_up) >= 1:
                raise InterpError(f"jtt: lambda_up must be >= 1, got {self.lambda_up}")
            if not 0 < float(self.identify_lr) < 10:
                raise InterpError(f"jtt: identify_lr must be positive, got {self.identify_lr}")
            if int(self.identify_batch_size) < 1:
                raise InterpError(f"jtt: identify_batch_size must be >= 1, got {self.identify_batch_size}")

    def __init__(self, options: "JTT.Options", num_train: int):
        options.validate()
        super().__init__(options, num_train)
        self.weights = torch.ones(num_train)
        self.error = torch.zeros(num_train, dtype=torch.bool)
        self.p_true = torch.full((num_train,), float("nan"))
        self.labels = torch.zeros(num_train, dtype=torch.long)
        self.identified = False
        self._weights_on: dict[torch.device, torch.Tensor] = {}

    def begin_epoch(self, ctx: EpochContext) -> dict[str, float]:
        """Identify the error set once (the first epoch of the run); history gets its size."""
        extras: dict[str, float] = {}
        if not self.identified:
            if ctx.dist.enabled:
                raise InterpError("jtt runs in a single process (no torchrun)")
            o = self.options
            if int(o.identify_epochs) == 0 and ctx.prior_epochs == 0:
                raise InterpError("jtt: identify_epochs 0 uses the --init model as the error finder; "
                                  "from scratch give identify_epochs >= 1")
            start = time.perf_counter()
            ident = ctx.model
            if int(o.identify_epochs) > 0:
                ident = train_identifier(ctx.model, ctx.train_eval_loader.dataset, epochs=int(o.identify_epochs),
                                         lr=float(o.identify_lr), batch_size=int(o.identify_batch_size),
                                         device=ctx.device, generator=ctx.generator)
            p_true, pred, labels = true_class_probability(ident, ctx.train_eval_loader, ctx.device, self.num_train)
            self.p_true, self.labels = p_true, labels
            self.error = pred != labels
            self.weights = jtt_weights(self.error, float(o.lambda_up))
            self._weights_on.clear()
            self.identified = True
            self._write_npz(ctx)
            extras["identify_seconds"] = time.perf_counter() - start
        extras["error_set_size"] = float(self.error.sum())
        extras["error_share"] = float(self.error.float().mean())
        return extras

    def _write_npz(self, ctx: EpochContext) -> None:
        if ctx.run_dir is None:
            return
        ids = list(ctx.sample_ids) if ctx.sample_ids else [str(i) for i in range(self.num_train)]
        path = Path(ctx.run_dir) / ERRORS_FILE
        atomic_write(path, lambda fh: np.savez(
            fh, sample_ids=np.asarray(ids, dtype=np.str_), labels=self.labels.numpy().astype(np.int64),
            p_true=self.p_true.numpy().astype(np.float32), error=self.error.numpy().astype(np.bool_),
            weights=self.weights.numpy().astype(np.float32), identify_epochs=np.int64(self.options.identify_epochs)))

    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        """``mean_i v_i * CE(f(x_i), y_i)`` with the JTT weights."""
        logits = model(batch["image"])
        device = logits.device
        w = self._weights_on.get(device)
        if w is None:
            w = self._weights_on[device] = self.weights.to(device)
        v = w[batch["index"].to(device)]
        return weighted_cross_entropy(logits, batch["label"], v), {"batch_weight_mean": float(v.mean())}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The error set and the identifier's probabilities (so a resumed run keeps its weights)."""
        if not self.identified:
            return {}
        return {"error": self.error.to(torch.uint8).contiguous(), "p_true": self.p_true.contiguous(),
                "labels": self.labels.contiguous(), "weights": self.weights.contiguous()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors:
            return
        if tensors["error"].shape != (self.num_train,):
            raise InterpError(f"JTT state is for {tensors['error'].numel()} training samples; this run has {self.num_train}")
        self.error = tensors["error"].bool().clone()
        self.p_true = tensors["p_true"].float().clone()
        self.labels = tensors["labels"].long().clone()
        self.weights = tensors["weights"].float().clone()
        self._weights_on.clear()
        self.identified = True
