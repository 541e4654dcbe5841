"""Objectives: *what* the one ``Trainer`` optimises (the loop, precision, schedules,
clipping, early stopping and checkpoints are the Trainer's).

An objective owns its data and says

* how a training epoch is batched (``steps_per_epoch``, ``train_batches``),
* the loss of one batch (``training_step``),
* what validation measures and which column early stopping follows (``validate``,
  ``monitor``).

Three kinds exist in the lab: ``SupervisedObjective`` (``mmlib.training.supervised``:
every fusion network and seed 002's target variants), ``ContrastiveObjective``
(seed 001's translators, seed 004's two towers) and ``ReconstructionObjective``
(the image autoencoder).
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmlib.data.pairs import Pairs, move, take
from mmlib.models.alignment import MAX_LOGIT_SCALE
from mmlib.models.losses import cosine_loss, info_nce
from mmlib.training.metrics import mrr, recall_at_k
from mmlib.utils import MMLibError, resolve_device

CONTRASTIVE_LOSSES = ("infonce", "cosine")
CONTRASTIVE_MONITORS = ("R@1", "R@5", "R@10", "MRR", "loss")


class Objective:
    """Base class; see the module docstring. ``trainer`` arguments are the running ``Trainer``."""

    kind = "objective"

    def setup(self, trainer: Any) -> None:
        """Called once by the Trainer, after the model is on ``trainer.device``: place data there."""

    def steps_per_epoch(self, batch_size: int) -> int:
        raise NotImplementedError

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
        raise NotImplementedError

    def training_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        """(loss, model output) for one batch, inside the Trainer's autocast."""
        raise NotImplementedError

    def batch_rows(self, batch: Any) -> int:
        raise NotImplementedError

    def after_step(self, model: nn.Module) -> None:
        """After each optimizer step (e.g. clamp a learnt temperature)."""

    def validate(self, trainer: Any) -> dict[str, float]:
        """``val_loss`` and ``val_<metric>`` columns of this epoch's history row."""
        raise NotImplementedError

    def monitor(self, row: dict[str, Any]) -> tuple[str, bool]:
        """The history column early stopping follows (chosen on the first row), and whether higher is better."""
        raise NotImplementedError

    def nan_hint(self, batch: Any) -> str:
        """Extra words for the NaN-loss error (e.g. which inputs hold NaN)."""
        return ""

    def final_metrics(self, trainer: Any) -> dict[str, float]:
        """Validation metrics of the restored best model, for ``FitResult.val_metrics``."""
        return {}


def _shuffled_chunks(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield perm[start:start + batch_size]


# --------------------------------------------------------------------------- contrastive
def temperature_of(logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's temperature from its logit scale (never below 1 / MAX_LOGIT_SCALE)."""
    return 1.0 / logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)


@torch.no_grad()
def embed_pairs(model: nn.Module, pairs: Pairs, batch_size: int = 512, device: str | torch.device = "auto",
                normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's embeddings of both sides of ``pairs`` (eval mode, CPU float32 tensors);
    L2-normalised unless ``normalize=False`` (then the raw vectors the model produces)."""
    dev = resolve_device(device)
    model.eval()
    model.to(dev)
    za, zb = [], []
    for s in range(0, len(pairs), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(pairs)))
        a, b = model.pair_embeddings(move(take(pairs.a, idx), dev), move(take(pairs.b, idx), dev), normalize)
        za.append(a.float().cpu())
        zb.append(b.float().cpu())
    return torch.cat(za), torch.cat(zb)


@torch.no_grad()
def evaluate_pairs(model: nn.Module, pairs: Pairs, loss: str = "infonce", batch_size: int = 256,
                   temperature: float = 0.07, device: str | torch.device = "auto",
                   ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Loss (mean over consecutive batches of ``batch_size``, as in training) and a→b
    retrieval Recall@K / MRR over all of ``pairs`` (cosine similarity)."""
    za, zb = embed_pairs(model, pairs, batch_size=max(batch_size, 512), device=device)
    losses, weights = [], []
    for s in range(0, len(za), batch_size):
        a, b = za[s:s + batch_size], zb[s:s + batch_size]
        if len(a) < 2:
            continue
        losses.append(float(cosine_loss(a, b) if loss == "cosine" else info_nce(a, b, temperature=temperature)))
        weights.append(len(a))
    sim = za @ zb.T
    out = {"loss": float(np.average(losses, weights=weights)) if losses else float("nan")}
    out.update(recall_at_k(sim, ks))
    out["MRR"] = mrr(sim)
    return out


class ContrastiveObjective(Objective):
    """Embed ``pairs.a[i]`` and ``pairs.b[i]`` close together.

    loss: ``infonce`` (symmetric, against every other pair of the batch; the temperature
    is the model's ``logit_scale``, which is added to a model that has none: fixed at
    ``temperature``, or learnt with ``learn_temperature``) or ``cosine`` (``1 - cos`` of
    each pair alone). A last batch smaller than ``batch_size`` is dropped (it would make
    InfoNCE trivially easy); validation reports the loss and a→b Recall@K / MRR, and
    early stopping follows ``monitor``."""

    kind = "contrastive"

    def __init__(self, train: Pairs, val: Pairs, loss: str = "infonce", monitor: str = "R@10",
                 temperature: float = 0.07, learn_temperature: bool = False):
        if loss not in CONTRASTIVE_LOSSES:
            raise MMLibError(f"Contrastive objective: unknown loss {loss!r}; choose one of {CONTRASTIVE_LOSSES}.")
        if monitor not in CONTRASTIVE_MONITORS:
            raise MMLibError(f"Contrastive objective: unknown monitor {monitor!r}; use one of {CONTRASTIVE_MONITORS}.")
        if len(train) < 2 or len(val) < 2:
            raise MMLibError(f"Contrastive objective: needs at least 2 train and 2 validation pairs (got {len(train)} "
                             f"and {len(val)}); contrastive losses compare pairs with each other.")
        self.train, self.val, self.loss_name, self.monitor_name = train, val, loss, monitor
        self.temperature, self.learn_temperature = float(temperature), bool(learn_temperature)
        self.eval_batch_size = 256

    def setup(self, trainer: Any) -> None:
        model = trainer.model
        if self.loss_name == "infonce" and not hasattr(model, "logit_scale"):
            model.register_parameter("logit_scale", nn.Parameter(
                torch.tensor(math.log(1.0 / self.temperature), device=trainer.device),
                requires_grad=self.learn_temperature))
        self.a, self.b = move(self.train.a, trainer.device), move(self.train.b, trainer.device)
        self.eval_batch_size = trainer.config.batch_size

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self.train) // batch_size if len(self.train) > batch_size else 1

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Any, Any]]:
        for idx in _shuffled_chunks(len(self.train), batch_size, generator):
            if len(idx) < 2:
                return
            yield take(self.a, idx), take(self.b, idx)

    def batch_rows(self, batch: tuple[Any, Any]) -> int:
        a = batch[0]
        return len(next(iter(a.values()))) if isinstance(a, dict) else len(a)

    def _loss(self, model: nn.Module, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "cosine":
            return cosine_loss(za, zb)
        return info_nce(za, zb, temperature=temperature_of(model.logit_scale))

    def training_step(self, model: nn.Module, batch: tuple[Any, Any]) -> tuple[torch.Tensor, Any]:
        za, zb = model.pair_embeddings(*batch)
        return self._loss(model, za, zb), None

    def after_step(self, model: nn.Module) -> None:
        if hasattr(model, "logit_scale"):
            with torch.no_grad():
                model.logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))

    def current_temperature(self, model: nn.Module) -> float | None:
        return float(temperature_of(model.logit_scale.detach())) if hasattr(model, "logit_scale") else None

    def validate(self, trainer: Any) -> dict[str, float]:
        temp = self.current_temperature(trainer.model)
        val = evaluate_pairs(trainer.model, self.val, loss=self.loss_name, batch_size=self.eval_batch_size,
                             temperature=temp if temp is not None else self.temperature, device=trainer.device)
        row = {"val_loss": val.pop("loss"), **{f"val_{k}": v for k, v in val.items()}}
        if temp is not None:
            row["temperature"] = temp
        return row

    def monitor(self, row: dict[str, Any]) -> tuple[str, bool]:
        return ("val_loss", False) if self.monitor_name == "loss" else (f"val_{self.monitor_name}", True)


# --------------------------------------------------------------------------- reconstruction
class ReconstructionObjective(Objective):
    """Reconstruct uint8 images: MSE between ``model(pixels)`` and the pixels scaled to [0, 1].
    The model needs ``to_float`` (e.g. ``ConvAutoencoder``); validation reports ``val_mse``.
    A one-image last batch is skipped (BatchNorm needs two rows)."""

    kind = "reconstruction"

    def __init__(self, train_pixels: torch.Tensor, val_pixels: torch.Tensor, eval_batch_size: int = 512):
        if len(train_pixels) < 2:
            raise MMLibError(f"Reconstruction objective: only {len(train_pixels)} training image(s); need at least 2.")
        self.train_px, self.val_px, self.eval_batch_size = train_pixels, val_pixels, int(eval_batch_size)

    def setup(self, trainer: Any) -> None:
        self.train_px, self.val_px = self.train_px.to(trainer.device), self.val_px.to(trainer.device)

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, -(-len(self.train_px) // batch_size))

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        for idx in _shuffled_chunks(len(self.train_px), batch_size, generator):
            if len(idx) >= 2:
                yield self.train_px[idx.to(self.train_px.device)]

    def batch_rows(self, batch: torch.Tensor) -> int:
        return len(batch)

    def training_step(self, model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, Any]:
        rec = model(batch)
        return F.mse_loss(rec.float(), model.to_float(batch)), rec

    @torch.no_grad()
    def validate(self, trainer: Any) -> dict[str, float]:
        model = trainer.model
        was_training = model.training
        model.eval()
        total = 0.0
        for s in range(0, len(self.val_px), self.eval_batch_size):
            x = self.val_px[s:s + self.eval_batch_size]
            total += float(F.mse_loss(model(x).float(), model.to_float(x), reduction="sum"))
        model.train(was_training)
        mse = total / max(self.val_px[:1].numel() * len(self.val_px), 1)
        return {"val_loss": mse, "val_mse": mse}

    def monitor(self, row: dict[str, Any]) -> tuple[str, bool]:
        return "val_mse", False
