"""The one training loop of the lab.

``Trainer(model, dataset, TrainConfig(...)).fit()`` trains a fusion network on the
dataset's train split, early-stops on its validation metric and leaves the model with
its best weights. Every other model trains through the same loop with another objective
(``mmlib.training.objectives``): ``Trainer(model, config=..., objective=ContrastiveObjective(...))``.

The loop owns the device, mixed precision (``mmlib.training.precision``), the optimizer
with per-branch learning rates (seed 000), the OneCycle / cosine schedule, gradient
clipping and the NaN-loss guard. Everything else is a callback
(``mmlib.training.callbacks``): early stopping with best-weight restore, the progress
bar, modality balancing (auxiliary losses, OGM-GE), modality tracking and
checkpoint/resume (``mmlib.training.checkpoint``).
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from mmlib.training.callbacks import Callback, EarlyStopping, ModalityBalancing, ModalityTracking, ProgressBar
from mmlib.training import distributed
from mmlib.training.checkpoint import Checkpointing
from mmlib.training.config import FitResult, TrainConfig
from mmlib.training.objectives import Objective
from mmlib.training.precision import Precision
from mmlib.training.supervised import SupervisedObjective
from mmlib.utils import MMLibError, resolve_device, set_seeds


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD over the model's parameter groups (per-branch learning rates when
    the model offers ``param_groups``, e.g. ``MultimodalModel``)."""
    if hasattr(model, "param_groups"):
        groups = model.param_groups(cfg.lr, cfg.branch_lr, cfg.weight_decay)
    else:
        if cfg.branch_lr:
            raise MMLibError("branch_lr needs a model with param_groups() (e.g. mmlib.models.build_model).")
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr,
                   "weight_decay": cfg.weight_decay, "name": "all"}]
    if not any(len(g["params"]) for g in groups):
        raise MMLibError("The model has no trainable parameters.")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    """OneCycle (30% warm-up) or cosine annealing over every step of the run, or None."""
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total, pct_start=0.3)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return None


class Trainer:
    """Train ``model`` with ``config`` on ``dataset`` (a ``MultimodalDataset``: the supervised
    objective) or on ``objective``. ``config`` may be a ``TrainConfig``, a dict (checked by
    ``TrainConfig.from_dict``) or None; keyword overrides are applied on top. ``callbacks``
    are added after the ones the config asks for."""

    def __init__(self, model: nn.Module, dataset: Any = None, config: TrainConfig | dict[str, Any] | None = None,
                 *, objective: Objective | None = None, callbacks: Sequence[Callback] = (), **overrides: Any):
        cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        if overrides:
            cfg = TrainConfig.from_dict({**cfg.to_dict(), **overrides})
        if (dataset is None) == (objective is None):
            raise MMLibError("Trainer needs either a dataset (supervised training) or an objective, not both.")
        self.config = cfg
        self.device = resolve_device(cfg.device)
        self.objective = objective or SupervisedObjective(dataset, cfg.loss, cfg.loss_options,
                                                          standardize=cfg.standardize_target)
        self.model = model.to(self.device)
        self.dist = distributed.current()  # under torchrun: DDP (mmlib.training.distributed); else None
        self.precision = Precision(cfg.amp, self.device)
        self.objective.setup(self)
        self.optimizer = build_optimizer(self.model, cfg)
        self.steps_per_epoch = self.objective.steps_per_epoch(cfg.batch_size)
        if cfg.max_batches_per_epoch:
            self.steps_per_epoch = max(1, min(self.steps_per_epoch, cfg.max_batches_per_epoch))
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.early_stopping = EarlyStopping(cfg.patience, cfg.min_delta, self.warmup_epochs)
        self.progress = ProgressBar(cfg.progress)
        self.callbacks: list[Callback] = [self.early_stopping, self.progress]
        if cfg.aux_weight > 0 or cfg.ogm_alpha is not None:
            self._supervised_only("aux_weight / ogm_alpha")
            self.callbacks.append(ModalityBalancing(cfg.aux_weight, cfg.ogm_alpha, cfg.ogm_noise, cfg.ogm_variant))
        if cfg.track_modalities:
            self._supervised_only("track_modalities")
            self.callbacks.insert(0, ModalityTracking())
        if cfg.checkpoint_path:  # under DDP only rank 0 writes it
            ckpt = Checkpointing if self.dist is None or self.dist.is_main else distributed.ResumeOnlyCheckpointing
            self.callbacks.append(ckpt(cfg.checkpoint_path, cfg.resume))
        if self.dist is not None:  # rank 0 decides early stopping, right after it has looked at the epoch
            self.callbacks.insert(self.callbacks.index(self.early_stopping) + 1, distributed.DistributedSync(self.dist))
        self.callbacks.extend(callbacks)
        for cb in self.callbacks:  # a callback may refuse this model early (e.g. OGM-GE without branches)
            if isinstance(cb, ModalityBalancing):
                cb.on_fit_start(self)
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed)
        # the module the training steps call: the model itself, or its DDP wrapper (all-reduced gradients)
        self.train_model = self.model if self.dist is None else self.dist.wrap(self.model, self.device, cfg)
        self.history: list[dict[str, Any]] = []
        self.result: FitResult | None = None
        self.stop, self.start_epoch, self.time_before, self._t0 = False, 1, 0.0, 0.0
        self._fit_called = False

    # ------------------------------------------------------------------ facts
    def _supervised_only(self, what: str) -> None:
        if not isinstance(self.objective, SupervisedObjective):
            raise MMLibError(f"{what} applies to supervised training of a fusion model, not to the "
                             f"{self.objective.kind} objective.")

    @property
    def modalities(self) -> list[str]:
        return list(getattr(self.model, "modalities", None) or self.data.modality_names)

    @property
    def data(self) -> Any:
        """The dataset on the training device (supervised objective)."""
        self._supervised_only("Trainer.data")
        return self.objective.data

    @property
    def warmup_epochs(self) -> int:
        """Epochs of rising learning rate (OneCycle's first 30%): early stopping does not count them."""
        return math.ceil(0.3 * self.config.epochs) if self.config.scheduler == "onecycle" else 0

    def elapsed(self) -> float:
        """Training wall time so far, summed over resumed sessions."""
        return self.time_before + time.perf_counter() - self._t0

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # -------------------------------------------------------------------- fit
    def fit(self, on_epoch_end: Callable[["Trainer", dict[str, Any]], None] | None = None) -> FitResult:
        """Train; return a ``FitResult``. The model is left with the best validation weights.

        ``on_epoch_end(trainer, row)`` is called after each epoch (after its checkpoint is
        written), e.g. for live plots."""
        cfg = self.config
        if self._fit_called:
            raise MMLibError("This Trainer has already run fit(); build a new model and Trainer to train again "
                             "(or resume from its checkpoint with a new Trainer).")
        self._fit_called = True
        set_seeds(cfg.seed, cfg.deterministic)
        self.shuffle_gen.manual_seed(cfg.seed)
        self.history, self.stop, self.start_epoch, self.time_before = [], False, 1, 0.0
        self.early_stopping.reset()
        self._call("on_fit_start")
        self._t0 = time.perf_counter()
        for epoch in range(self.start_epoch, cfg.epochs + 1):
            if self.stop:
                break
            t_epoch = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch, **self._train_epoch(epoch)}
            row.update(self.objective.validate(self))
            self._call("on_validation_end", row)
            row["epoch_time_s"] = time.perf_counter() - t_epoch
            self.history.append(row)
            self._call("on_epoch_end", row)
            if on_epoch_end is not None:
                on_epoch_end(self, row)
        train_time = self.elapsed()
        self._call("on_fit_end")
        es = self.early_stopping
        counts = (self.model.param_counts() if hasattr(self.model, "param_counts")
                  else {"total": sum(p.numel() for p in self.model.parameters() if p.requires_grad)})
        self.result = FitResult(
            history=pd.DataFrame(self.history), best_epoch=int(es.best_epoch or 0),
            best_val=float(es.best_score) if es.best_score is not None else float("nan"),
            epochs_run=len(self.history), train_time_s=float(train_time), n_params=dict(counts),
            device=str(self.device), stopped_early=bool(es.stopped_early), monitor=es.monitor or "",
            val_metrics=self.objective.final_metrics(self), trainer=self)
        return self.result

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, obj = self.config, self.objective
        self.model.train()
        total, n_rows = 0.0, 0
        self.progress.start_epoch(self, epoch)
        try:
            for step, batch in enumerate(obj.train_batches(cfg.batch_size, self.shuffle_gen)):
                if step >= self.steps_per_epoch:
                    break
                if self.dist is not None:  # every rank trains on its shard of the global batch
                    batch = self.dist.shard(batch)
                with self.precision.autocast():
                    loss, out = obj.training_step(self.train_model, batch)
                    for cb in self.callbacks:
                        loss = cb.on_loss(self, out, batch, loss)
                loss_value = float(loss.detach())  # one sync per step: the NaN guard needs it
                if not math.isfinite(loss_value):
                    raise self._nan_error(epoch, step, loss_value, batch)
                self.optimizer.zero_grad(set_to_none=True)
                self.precision.backward(loss, self.optimizer)
                self._call("on_after_backward", out, batch)
                if cfg.grad_clip is not None:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.precision.step(self.optimizer)
                if self.scheduler is not None:
                    with warnings.catch_warnings():
                        # fp16: GradScaler skips the steps whose grads overflowed; the schedule moves on anyway
                        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                        self.scheduler.step()
                obj.after_step(self.model)
                rows = obj.batch_rows(batch)
                total += loss_value * rows
                n_rows += rows
                self._call("on_batch_end", loss_value)
        finally:
            self.progress.close()
        row: dict[str, Any] = {"train_loss": total / max(n_rows, 1), "lr": float(self.optimizer.param_groups[0]["lr"])}
        if cfg.branch_lr:
            for g in self.optimizer.param_groups:
                row[f"lr_{g.get('name', 'group')}"] = float(g["lr"])
        self._call("on_train_epoch_end", row)
        return row

    def _nan_error(self, epoch: int, step: int, value: float, batch: Any) -> MMLibError:
        cfg = self.config
        lrs = f"lr={cfg.lr}" + (f", branch_lr={cfg.branch_lr}" if cfg.branch_lr else "")
        amp = f", or amp='off' (mixed precision {self.precision.dtype} is on)" if self.precision.dtype else ""
        return MMLibError(
            f"Training loss became {value} at epoch {epoch}, step {step + 1} of {self.steps_per_epoch}."
            f"{self.objective.nan_hint(batch)} Try a lower learning rate (now {lrs}), gradient clipping "
            f"(grad_clip={cfg.grad_clip}, e.g. 1.0){amp}, and check the inputs and target for NaN/inf values.")

    # -------------------------------------------------------------- inference
    def predict(self, split_or_indices: str | np.ndarray | list[int] | torch.Tensor = "test",
                present_override: dict[str, bool | torch.Tensor | np.ndarray] | None = None,
                transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> np.ndarray:
        """Predictions for a split or row indices: regression values [n], binary P(class 1) [n] or
        multiclass probabilities [n, C].

        present_override: {modality: False} drops it at inference for every row; a bool mask
        (one entry per predicted row, or per dataset row) drops it where False. An override
        never marks a modality present where the data lacks it.
        transform: ``batch -> batch`` applied to each batch first (e.g. to add noise)."""
        self._supervised_only("predict")
        return self.objective.predict(split_or_indices, present_override, transform)

    def evaluate(self, split_or_indices: str | np.ndarray | list[int] | torch.Tensor = "test",
                 present_override: dict[str, bool | torch.Tensor | np.ndarray] | None = None,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, float]:
        """The task's metrics on the predictions (same arguments as ``predict``)."""
        self._supervised_only("evaluate")
        return self.objective.evaluate(split_or_indices, present_override, transform)


def fit_model(model: nn.Module, dataset: Any, **config_kwargs: Any) -> FitResult:
    """``Trainer(model, dataset, TrainConfig.from_dict(config_kwargs)).fit()``; the trainer is ``result.trainer``."""
    return Trainer(model, dataset, TrainConfig.from_dict(config_kwargs)).fit()


__all__ = ["Trainer", "TrainConfig", "FitResult", "fit_model", "build_optimizer", "build_scheduler"]
