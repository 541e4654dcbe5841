"""Training: one ``Trainer`` for every model in the lab.

``Trainer(model, dataset, TrainConfig(...)).fit()`` trains on the dataset's train
split, early-stops on the validation primary metric (``mmlib.training.metrics.primary_metric``)
and leaves the model with its best weights. It handles the device (``auto``: cuda,
mps, cpu; the dataset is moved there once and batched by tensor indexing), mixed
precision on CUDA (bf16, else fp16 with a GradScaler), per-branch learning rates
(seed 000), OneCycle / cosine schedules, gradient clipping, unimodal auxiliary
losses, OGM-GE gradient modulation (Peng et al., CVPR 2022), a NaN-loss guard,
per-epoch history with timing, and atomic checkpoints that a killed run resumes
from with exactly the same numbers on CPU.

The model contract: ``model(inputs, present) -> {"pred": [b, out_dim], "unimodal":
{m: [b, out_dim]} (optional), "present": {m: bool [b]} (optional, the mask the model
actually used)}``; models also offer ``param_groups``, ``branch_parameters``,
``param_counts`` and a ``config`` dict (``mmlib.models.MultimodalModel`` does).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import math
import random
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from mmlib.data.base import Modality
from mmlib.training.metrics import compute_metrics, primary_metric
from mmlib.models.losses import get_loss, predict_from_output
from mmlib.utils import MMLibError, atomic_write_bytes, resolve_device, set_seeds

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("onecycle", "cosine", "none")
AMP_MODES = ("auto", "bf16", "fp16", "off")
CHECKPOINT_VERSION = 1
# config fields that may change between an interrupted run and its resumption
# (they do not change the optimisation trajectory, or only its bookkeeping)
_RESUME_FREE = {"epochs", "device", "amp", "progress", "checkpoint_path", "resume", "deterministic", "patience",
                "min_delta", "track_modalities", "eval_train", "eval_batch_size"}


# ------------------------------------------------------------------------ config
@dataclass
class TrainConfig:
    """Every training knob; ``TrainConfig.from_dict`` rejects unknown keys."""

    epochs: int = 30  # maximum passes over the train split
    batch_size: int = 256  # rows per optimisation step
    lr: float = 2e-3  # base (peak, for OneCycle) learning rate
    weight_decay: float = 1e-4  # decoupled weight decay (AdamW) / L2 (adam, sgd)
    branch_lr: dict[str, float] | None = None  # per-branch lr, e.g. {"image": 5e-4}; branches = modalities + "fusion"
    optimizer: str = "adamw"  # "adamw" | "adam" | "sgd" (momentum 0.9)
    scheduler: str = "onecycle"  # "onecycle" | "cosine" | "none"; stepped every batch
    grad_clip: float | None = 1.0  # max global gradient norm; None disables clipping
    patience: int | None = 5  # epochs without val improvement before stopping (not counted during OneCycle's
    # warm-up, whose rising learning rate often makes validation worse on purpose); None disables early stopping
    min_delta: float = 0.0  # an improvement must beat the best val score by more than this
    loss: str | None = None  # loss name for mmlib.models.losses.get_loss; None → the task's default
    loss_options: dict[str, Any] | None = None  # options of that loss, e.g. {"delta": 0.5} for huber
    aux_weight: float = 0.0  # weight of the mean unimodal auxiliary loss (needs out["unimodal"])
    ogm_alpha: float | None = None  # OGM-GE modulation strength; None disables (needs out["unimodal"])
    ogm_noise: bool = True  # OGM-GE: add Gaussian noise (grad std) to the modulated gradients
    device: str = "auto"  # "auto" (cuda, mps, cpu), "cpu", "cuda", "cuda:1", "mps"
    amp: str = "auto"  # "auto": bf16 (or fp16 + GradScaler) on CUDA, off elsewhere; "bf16" | "fp16" | "off"
    seed: int = 0  # seeds dropout, modality dropout, OGM noise and the shuffling order
    deterministic: bool = False  # ask torch for deterministic kernels (slower on GPU; global setting)
    checkpoint_path: str | None = None  # save a resumable checkpoint here after every epoch (atomically)
    resume: bool = False  # continue from checkpoint_path when it exists
    progress: bool = True  # tqdm bar per epoch; False is silent
    track_modalities: bool = False  # each epoch: val metric with each modality dropped, and per unimodal head
    eval_train: bool = False  # each epoch also evaluate the train split in eval mode (train_<metric> columns)
    eval_batch_size: int | None = None  # rows per inference batch; None → 4 × batch_size
    max_batches_per_epoch: int | None = None  # cap on steps per epoch, for smoke runs

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> MMLibError:
            return MMLibError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}.")

        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), (int, np.integer)) or getattr(self, name) < 1:
                raise bad(name, "use a positive integer")
        for name in ("patience", "max_batches_per_epoch", "eval_batch_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
                raise bad(name, "use a positive integer or None")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise bad("lr", "use a positive number")
        if self.weight_decay < 0 or self.min_delta < 0 or self.aux_weight < 0:
            raise MMLibError("TrainConfig: weight_decay, min_delta and aux_weight must be >= 0 "
                             f"(got {self.weight_decay}, {self.min_delta}, {self.aux_weight}).")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise bad("grad_clip", "use a positive max norm, or None to disable clipping")
        if self.ogm_alpha is not None and self.ogm_alpha < 0:
            raise bad("ogm_alpha", "use a non-negative strength (the paper uses 0.1–1), or None to disable")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"choose one of {OPTIMIZERS}")
        if self.scheduler not in SCHEDULERS:
            raise bad("scheduler", f"choose one of {SCHEDULERS}")
        if self.amp is True or self.amp is False:  # tolerate booleans from notebook parameters
            self.amp = "auto" if self.amp else "off"
        if self.amp not in AMP_MODES:
            raise bad("amp", f"choose one of {AMP_MODES}")
        if self.branch_lr is not None:
            if not isinstance(self.branch_lr, dict) or any(not (isinstance(v, (int, float)) and v > 0)
                                                           for v in self.branch_lr.values()):
                raise bad("branch_lr", "use a dict {branch: positive lr}")
        if self.resume and not self.checkpoint_path:
            raise bad("resume", "resuming needs checkpoint_path")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "TrainConfig":
        """Build from a dict (e.g. notebook parameters); an unknown key is an error, not ignored."""
        d = dict(d or {})
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(k for k in d if k not in valid)
        if unknown:
            raise MMLibError(f"Unknown TrainConfig key(s) {unknown}; valid keys are: {', '.join(valid)}.")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------ result
@dataclass
class FitResult:
    """What ``Trainer.fit`` returns; the trained model (best weights) is ``trainer.model``."""

    # one row per epoch: epoch, train_loss (incl. the aux term, train mode), val_loss, val_<metrics>, lr,
    # epoch_time_s, and lr_<branch> / ogm_coef_<m> / train_<metric> / val_<metric>_without_<m> / _only_<m> when on
    history: pd.DataFrame
    best_epoch: int  # epoch whose weights the model holds now
    best_val: float  # the monitored validation score at best_epoch
    epochs_run: int  # epochs completed (fewer than config.epochs after early stopping)
    train_time_s: float  # wall time of fit (summed over resumed sessions)
    n_params: dict[str, int]  # parameters per branch and "total"
    device: str  # device the run used, e.g. "cpu", "cuda:0"
    stopped_early: bool  # True when patience ran out
    monitor: str = ""  # the history column early stopping followed, e.g. "val_r2"
    val_metrics: dict[str, float] = field(default_factory=dict)  # all val metrics of the restored best model
    trainer: "Trainer | None" = field(default=None, repr=False)  # for predict / evaluate after fit

    def summary(self) -> dict[str, Any]:
        """Flat fields for a result record."""
        return {"best_epoch": self.best_epoch, "best_val": self.best_val, "monitor": self.monitor,
                "epochs": self.epochs_run, "train_time_s": round(self.train_time_s, 3),
                "n_params": int(self.n_params.get("total", 0)), "device": self.device,
                "stopped_early": self.stopped_early}


# ----------------------------------------------------------------------- helpers
def _canonical(obj: Any) -> str:
    """A comparable text form of a config (tuples vs lists, key order do not matter)."""
    return json.dumps(obj, sort_keys=True, default=str)


def _better(new: float, old: float | None, higher: bool, min_delta: float) -> bool:
    if new is None or math.isnan(new):
        return False
    if old is None or math.isnan(old):
        return True
    return new > old + min_delta if higher else new < old - min_delta


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``Trainer`` (on the CPU), with a clear error when it can't be read."""
    path = Path(path)
    if not path.exists():
        raise MMLibError(f"Checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise MMLibError(f"Could not read checkpoint {path} ({type(exc).__name__}: {exc}); delete it or "
                         "start without resume.") from exc
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise MMLibError(f"{path} is not an mmlib training checkpoint (version {CHECKPOINT_VERSION}); delete it or "
                         "choose another checkpoint_path.")
    return ckpt


# ------------------------------------------------------------ data on device
# (id(cpu tensor), device) -> (weakref to it, its in-place version, device copy): every trainer and
# every modality-subset view of one dataset shares a single device copy, which is freed with the
# source tensor; an in-place edit of the source (tensor._version) makes a fresh copy.
_DEVICE_COPIES: dict[tuple[int, str], tuple[weakref.ref, int, torch.Tensor]] = {}


def _device_tensor(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if t.device == device:
        return t
    key = (id(t), str(device))
    hit = _DEVICE_COPIES.get(key)
    if hit is not None and hit[0]() is t and hit[1] == t._version:
        return hit[2]
    moved = t.to(device)
    _DEVICE_COPIES[key] = (weakref.ref(t, lambda _ref, key=key: _DEVICE_COPIES.pop(key, None)), t._version, moved)
    return moved


def dataset_on_device(dataset: Any, device: str | torch.device) -> Any:
    """``dataset.to(device)``, but sharing one device copy of each tensor across trainers and views
    (many fits on a GPU keep one copy of the images, not one per run)."""
    device = torch.device(device)
    if device.type == "cpu":
        return dataset.to(device)
    out = copy.copy(dataset)
    out.modalities = {
        k: Modality(m.name, m.kind, {kk: _device_tensor(vv, device) for kk, vv in m.tensors.items()},
                    _device_tensor(m.present, device), m.info)
        for k, m in dataset.modalities.items()
    }
    out.target = _device_tensor(dataset.target, device)
    return out


def clear_device_cache() -> None:
    """Forget the shared device copies (running trainers keep theirs until they are deleted)."""
    _DEVICE_COPIES.clear()


# ----------------------------------------------------------------------- trainer
class Trainer:
    """Train ``model`` on ``dataset`` (a ``MultimodalDataset``) with ``config``.

    ``config`` may be a ``TrainConfig``, a dict (checked by ``TrainConfig.from_dict``)
    or None; keyword overrides are applied on top."""

    def __init__(self, model: nn.Module, dataset: Any, config: TrainConfig | dict[str, Any] | None = None,
                 **overrides: Any):
        cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        if overrides:
            cfg = TrainConfig.from_dict({**cfg.to_dict(), **overrides})
        self.config = cfg
        self.device = resolve_device(cfg.device)
        self.task = dataset.task
        self.n_classes = dataset.n_classes
        for split in ("train", "val"):
            if len(dataset.splits[split]) == 0:
                raise MMLibError(f"Dataset {dataset.name!r}: the {split} split is empty; training needs rows in "
                                 "both train and val (check the split fractions).")
        self.model = model.to(self.device)
        self.data = dataset_on_device(dataset, self.device)  # once: batches are tensor indexing on the device
        self.modalities = [m for m in (getattr(model, "modalities", None) or dataset.modality_names)]
        self.metric, self.higher = primary_metric(self.task)
        self.loss_fn = get_loss(self.task, cfg.loss, **(cfg.loss_options or {}))
        self.amp_dtype = self._resolve_amp()
        self.scaler = torch.amp.GradScaler("cuda" if self.device.type == "cuda" else "cpu",
                                           enabled=self.amp_dtype == torch.float16)
        self.optimizer = self._build_optimizer()
        self.steps_per_epoch = self.data.n_batches("train", cfg.batch_size)
        if cfg.max_batches_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_batches_per_epoch)
        self.scheduler = self._build_scheduler()
        self.eval_batch_size = cfg.eval_batch_size or 4 * cfg.batch_size
        if cfg.ogm_alpha is not None and not hasattr(model, "branch_parameters"):
            raise MMLibError("ogm_alpha needs a model with branch_parameters() (e.g. mmlib.models.build_model).")
        self._shuffle_gen = torch.Generator().manual_seed(cfg.seed)
        self.history: list[dict[str, Any]] = []
        self.result: FitResult | None = None
        self._fit_called = False

    # ---------------------------------------------------------------- set-up
    def _resolve_amp(self) -> torch.dtype | None:
        mode = self.config.amp
        if mode == "off":
            return None
        if self.device.type != "cuda":
            if mode == "auto":
                return None
            raise MMLibError(f"amp={mode!r} needs a CUDA device (this run uses {self.device}); "
                             "use amp='auto' or 'off'.")
        bf16_ok = torch.cuda.is_bf16_supported()
        if mode == "bf16" and not bf16_ok:
            raise MMLibError("amp='bf16' is not supported by this GPU; use amp='fp16' or 'auto'.")
        if mode == "auto":
            return torch.bfloat16 if bf16_ok else torch.float16
        return torch.bfloat16 if mode == "bf16" else torch.float16

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        if hasattr(self.model, "param_groups"):
            groups = self.model.param_groups(cfg.lr, cfg.branch_lr, cfg.weight_decay)
        else:
            if cfg.branch_lr:
                raise MMLibError("branch_lr needs a model with param_groups() (e.g. mmlib.models.build_model).")
            groups = [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": cfg.lr,
                       "weight_decay": cfg.weight_decay, "name": "all"}]
        if not any(len(g["params"]) for g in groups):
            raise MMLibError("The model has no trainable parameters.")
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)

    @property
    def warmup_epochs(self) -> int:
        """Epochs of rising learning rate (OneCycle's first 30%): early stopping does not count them."""
        return math.ceil(0.3 * self.config.epochs) if self.config.scheduler == "onecycle" else 0

    def _build_scheduler(self) -> Any:
        cfg = self.config
        total = cfg.epochs * self.steps_per_epoch
        if cfg.scheduler == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=[g["lr"] for g in self.optimizer.param_groups], total_steps=total, pct_start=0.3)
        if cfg.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total)
        return None

    # ------------------------------------------------------------------ fit
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
        self._shuffle_gen.manual_seed(cfg.seed)
        self.history = []
        state: dict[str, Any] = {"best_score": None, "best_epoch": None, "best_state": None, "bad_epochs": 0,
                                 "monitor": None, "stopped_early": False, "time_before": 0.0}
        start_epoch = 1
        if cfg.checkpoint_path and cfg.resume and Path(cfg.checkpoint_path).exists():
            start_epoch = self._restore(load_checkpoint(cfg.checkpoint_path), state)
        t0 = time.perf_counter()
        done = state["stopped_early"]
        for epoch in range(start_epoch, cfg.epochs + 1):
            if done:
                break
            t_epoch = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch}
            row.update(self._train_epoch(epoch))
            row.update(self._validate())
            if state["monitor"] is None:
                state["monitor"] = self._choose_monitor(row)
            score = float(row[state["monitor"]])
            higher = self.higher if state["monitor"] != "val_loss" else False
            if _better(score, state["best_score"], higher, cfg.min_delta) or state["best_state"] is None:
                state.update(best_score=score, best_epoch=epoch, bad_epochs=0,
                             best_state={k: v.detach().clone() for k, v in self.model.state_dict().items()})
            elif epoch > self.warmup_epochs:
                state["bad_epochs"] += 1
            row["epoch_time_s"] = time.perf_counter() - t_epoch
            self.history.append(row)
            if cfg.patience is not None and state["bad_epochs"] >= cfg.patience and epoch < cfg.epochs:
                state["stopped_early"] = done = True
            if cfg.checkpoint_path:
                self._save_checkpoint(epoch, state, state["time_before"] + time.perf_counter() - t0)
            if on_epoch_end is not None:
                on_epoch_end(self, row)
        train_time = state["time_before"] + time.perf_counter() - t0
        if state["best_state"] is not None:
            self.model.load_state_dict(state["best_state"])
        val_metrics = self.evaluate("val")
        counts = (self.model.param_counts() if hasattr(self.model, "param_counts")
                  else {"total": sum(p.numel() for p in self.model.parameters())})
        self.result = FitResult(
            history=pd.DataFrame(self.history), best_epoch=int(state["best_epoch"] or 0),
            best_val=float(state["best_score"]) if state["best_score"] is not None else float("nan"),
            epochs_run=len(self.history), train_time_s=float(train_time), n_params=dict(counts),
            device=str(self.device), stopped_early=bool(state["stopped_early"]), monitor=state["monitor"] or "",
            val_metrics=val_metrics, trainer=self)
        return self.result

    def _choose_monitor(self, row: dict[str, Any]) -> str:
        name = f"val_{self.metric}"
        if math.isnan(float(row.get(name, float("nan")))):
            warnings.warn(f"The validation {self.metric} is NaN in the first epoch (e.g. a single class in the "
                          "val split); early stopping and best-epoch selection follow val_loss instead.",
                          stacklevel=3)
            return "val_loss"
        return name

    # ------------------------------------------------------------- one epoch
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.config
        self.model.train()
        total = 0.0
        n_rows = 0
        ogm_sum: dict[str, torch.Tensor] = {}
        n_steps = 0
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=not cfg.progress, dynamic_ncols=True)
        try:
            batches = self.data.batches("train", cfg.batch_size, shuffle=True, generator=self._shuffle_gen)
            for step, batch in enumerate(batches):
                if step >= self.steps_per_epoch:
                    break
                y = batch["y"]
                with self._autocast():
                    out = self.model(batch["inputs"], batch["present"])
                    loss = self.loss_fn(out["pred"], y)
                    if cfg.aux_weight > 0:
                        loss = loss + cfg.aux_weight * self._aux_loss(out, batch)
                loss_value = float(loss.detach())  # one sync per step: the NaN guard needs it
                if not math.isfinite(loss_value):
                    raise self._nan_error(epoch, step, loss_value, batch)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)  # no-op without fp16; OGM and clipping need true grads
                if cfg.ogm_alpha is not None:
                    for m, c in self._ogm_modulate(out, batch).items():
                        ogm_sum[m] = ogm_sum.get(m, 0.0) + c
                if cfg.grad_clip is not None:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.scheduler is not None:
                    with warnings.catch_warnings():
                        # fp16: GradScaler skips the steps whose grads overflowed; the schedule moves on anyway
                        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                        self.scheduler.step()
                total += loss_value * len(y)
                n_rows += len(y)
                n_steps += 1
                bar.update(1)
                if cfg.progress:
                    bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)
        finally:
            bar.close()
        row: dict[str, Any] = {"train_loss": total / max(n_rows, 1),
                               "lr": float(self.optimizer.param_groups[0]["lr"])}
        if cfg.branch_lr:
            for g in self.optimizer.param_groups:
                row[f"lr_{g.get('name', 'group')}"] = float(g["lr"])
        for m, s in ogm_sum.items():
            row[f"ogm_coef_{m}"] = float(s) / max(n_steps, 1)
        return row

    def _presence_used(self, out: dict[str, Any], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        # the model reports the mask it actually used (after modality dropout); else the batch's
        return out.get("present") or batch["present"]

    def _unimodal(self, out: dict[str, Any], why: str) -> dict[str, torch.Tensor]:
        uni = out.get("unimodal")
        if not uni:
            raise MMLibError(f"{why} needs per-modality outputs (out['unimodal']); build the model with "
                             "aux_heads=True (or use fusion='late').")
        return uni

    def _aux_loss(self, out: dict[str, Any], batch: dict[str, Any]) -> torch.Tensor:
        """Mean over modalities of each unimodal head's loss on the rows where that modality is present."""
        uni = self._unimodal(out, "aux_weight > 0")
        present = self._presence_used(out, batch)
        losses = [self.loss_fn(u, batch["y"], weight=present[m].float()) for m, u in uni.items()]
        return torch.stack(losses).mean()

    def _ogm_modulate(self, out: dict[str, Any], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """OGM-GE: damp the gradients of the modalities that currently dominate; returns the coefficients.

        score_m: mean P(true class) (classification) or 1 / (1 + MSE) (regression) of the
        modality's unimodal output over the rows where it is present; ratio_m = score_m /
        mean(score of the others); coefficient = 1 − tanh(alpha · relu(ratio_m − 1))."""
        cfg = self.config
        uni = self._unimodal(out, "ogm_alpha")
        present = self._presence_used(out, batch)
        names = [m for m in uni if m in present]
        y = batch["y"]
        with torch.no_grad():
            scores, valid = [], []
            for m in names:
                mask = present[m].float()
                u = uni[m].float()
                if self.task == "regression":
                    err = (u.squeeze(-1) - y.float()) ** 2
                    mse = (err * mask).sum() / mask.sum().clamp(min=1)
                    score = 1.0 / (1.0 + mse)
                else:
                    if self.task == "binary":
                        p = torch.sigmoid(u.squeeze(-1))
                        per_row = torch.where(y == 1, p, 1 - p)
                    else:
                        per_row = torch.softmax(u, dim=-1).gather(1, y.long().unsqueeze(1)).squeeze(1)
                    score = (per_row * mask).sum() / mask.sum().clamp(min=1)
                scores.append(score)
                valid.append(mask.sum() > 0)
            if len(names) < 2:
                return {m: torch.ones((), device=self.device) for m in names}
            s = torch.stack(scores)
            v = torch.stack(valid)
            coefs: dict[str, torch.Tensor] = {}
            eye = torch.eye(len(names), dtype=torch.bool, device=s.device)
            for i, m in enumerate(names):
                others = v & ~eye[i]
                mean_others = (s * others).sum() / others.sum().clamp(min=1)
                ratio = s[i] / mean_others.clamp(min=1e-12)
                coef = 1 - torch.tanh(cfg.ogm_alpha * torch.relu(ratio - 1))
                coefs[m] = torch.where(v[i] & others.any(), coef, torch.ones_like(coef))
        branches = self.model.branch_parameters()
        for m, coef in coefs.items():
            modulated = (coef < 1).to(coef.dtype)
            for p in branches.get(m, []):
                if p.grad is None:
                    continue
                g = p.grad
                std = g.float().std() if g.numel() > 1 else torch.zeros((), device=g.device)
                g.mul_(coef.to(g.dtype))
                if cfg.ogm_noise:  # GE: generalisation-enhancing noise on the modulated branches only
                    g.add_(torch.randn_like(g) * (std * modulated).to(g.dtype))
        return coefs

    def _nan_error(self, epoch: int, step: int, value: float, batch: dict[str, Any]) -> MMLibError:
        cfg = self.config
        bad = [f"{m}.{k}" for m, ts in batch["inputs"].items() for k, t in ts.items()
               if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if batch["y"].is_floating_point() and not bool(torch.isfinite(batch["y"]).all()):
            bad.append("target")
        hint = (f" This batch holds NaN/inf values in {bad}: clean or impute them in the dataset." if bad else "")
        lrs = f"lr={cfg.lr}" + (f", branch_lr={cfg.branch_lr}" if cfg.branch_lr else "")
        amp = f", or amp='off' (mixed precision {self.amp_dtype} is on)" if self.amp_dtype is not None else ""
        return MMLibError(
            f"Training loss became {value} at epoch {epoch}, step {step + 1} of {self.steps_per_epoch}.{hint} "
            f"Try a lower learning rate (now {lrs}), gradient clipping (grad_clip={cfg.grad_clip}, e.g. 1.0){amp}, "
            "and check the inputs and target for NaN/inf values.")

    # ------------------------------------------------------------- validation
    def _validate(self) -> dict[str, Any]:
        cfg = self.config
        row: dict[str, Any] = {}
        pred, uni, y = self._forward_eval("val")
        row["val_loss"] = float(self.loss_fn(pred, y))
        probs = predict_from_output(self.task, pred)
        for k, v in compute_metrics(self.task, y, probs, self.n_classes).items():
            row[f"val_{k}"] = v
        if cfg.eval_train:
            tp, _, ty = self._forward_eval("train")
            row["train_eval_loss"] = float(self.loss_fn(tp, ty))
            for k, v in compute_metrics(self.task, ty, predict_from_output(self.task, tp), self.n_classes).items():
                row[f"train_{k}"] = v
        if cfg.track_modalities:
            if len(self.modalities) > 1:
                for m in self.modalities:
                    p_wo, _, y_wo = self._forward_eval("val", present_override={m: False})
                    row[f"val_{self.metric}_without_{m}"] = compute_metrics(
                        self.task, y_wo, predict_from_output(self.task, p_wo), self.n_classes)[self.metric]
            if uni:
                rows_present = {m: self.data.modalities[m].present[torch.as_tensor(self.data.splits["val"],
                                                                                   device=self.device)]
                                for m in uni if m in self.data.modalities}
                for m, u in uni.items():
                    mask = rows_present.get(m)
                    if mask is None or not bool(mask.any()):
                        row[f"val_{self.metric}_only_{m}"] = float("nan")
                        continue
                    row[f"val_{self.metric}_only_{m}"] = compute_metrics(
                        self.task, y[mask], predict_from_output(self.task, u[mask]), self.n_classes)[self.metric]
        return row

    # ------------------------------------------------------------- inference
    def _rows(self, split_or_indices: str | np.ndarray | torch.Tensor | list[int]) -> np.ndarray:
        if isinstance(split_or_indices, str):
            if split_or_indices not in self.data.splits:
                raise MMLibError(f"Unknown split {split_or_indices!r}; the dataset has {list(self.data.splits)}.")
            return np.asarray(self.data.splits[split_or_indices])
        if isinstance(split_or_indices, torch.Tensor):
            split_or_indices = split_or_indices.detach().cpu().numpy()
        rows = np.asarray(split_or_indices, dtype=np.int64).ravel()
        if rows.size and (rows.min() < 0 or rows.max() >= self.data.n):
            raise MMLibError(f"Row indices must lie in [0, {self.data.n}); got [{rows.min()}, {rows.max()}].")
        return rows

    def _override(self, batch: dict[str, Any], override: dict[str, Any], offset: int, n_rows: int) -> dict[str, Any]:
        present = dict(batch["present"])
        b = len(batch["y"])
        for m, val in override.items():
            if m not in present:
                raise MMLibError(f"present_override names modality {m!r}; the dataset has {list(present)}.")
            if isinstance(val, (bool, np.bool_)):
                if not val:
                    present[m] = torch.zeros_like(present[m])
                continue  # True keeps the dataset's own mask: an override never invents a modality
            mask = torch.as_tensor(val, dtype=torch.bool)
            if mask.ndim != 1:
                raise MMLibError(f"present_override[{m!r}] must be a bool or a 1-d bool mask.")
            if len(mask) == n_rows:
                part = mask[offset: offset + b]
            elif len(mask) == self.data.n:
                part = mask[batch["idx"].cpu()]
            else:
                raise MMLibError(f"present_override[{m!r}] has {len(mask)} entries; give one per predicted row "
                                 f"({n_rows}) or per dataset row ({self.data.n}).")
            present[m] = present[m] & part.to(present[m].device)
        return {**batch, "present": present}

    def _forward_eval(self, split_or_indices: Any, present_override: dict[str, Any] | None = None,
                      transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Raw outputs [n, out_dim], unimodal outputs {m: [n, out_dim]} and targets [n], in row order."""
        rows = self._rows(split_or_indices)
        was_training = self.model.training
        self.model.eval()
        preds: list[torch.Tensor] = []
        unis: dict[str, list[torch.Tensor]] = {}
        ys: list[torch.Tensor] = []
        offset = 0
        try:
            with torch.no_grad(), self._autocast():
                for batch in self.data.batches(rows, self.eval_batch_size):
                    b = len(batch["y"])
                    if present_override:
                        batch = self._override(batch, present_override, offset, len(rows))
                    if transform is not None:
                        batch = transform(batch)
                    out = self.model(batch["inputs"], batch["present"])
                    preds.append(out["pred"].float())
                    for m, u in (out.get("unimodal") or {}).items():
                        unis.setdefault(m, []).append(u.float())
                    ys.append(batch["y"])
                    offset += b
        finally:
            self.model.train(was_training)
        if not preds:
            out_dim = int(getattr(self.model, "out_dim", self.data.out_dim))
            return (torch.zeros(0, out_dim, device=self.device), {},
                    self.data.target[:0])
        return torch.cat(preds), {m: torch.cat(v) for m, v in unis.items()}, torch.cat(ys)

    def predict(self, split_or_indices: str | np.ndarray | list[int] | torch.Tensor = "test",
                present_override: dict[str, bool | torch.Tensor | np.ndarray] | None = None,
                transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> np.ndarray:
        """Predictions for a split or row indices: regression values [n], binary P(class 1) [n] or
        multiclass probabilities [n, C].

        present_override: {modality: False} drops it at inference for every row; a bool mask
        (one entry per predicted row, or per dataset row) drops it where False. An override
        never marks a modality present where the data lacks it.
        transform: ``batch -> batch`` applied to each batch first (e.g. to add noise)."""
        pred, _, _ = self._forward_eval(split_or_indices, present_override, transform)
        return predict_from_output(self.task, pred).cpu().numpy()

    def evaluate(self, split_or_indices: str | np.ndarray | list[int] | torch.Tensor = "test",
                 present_override: dict[str, bool | torch.Tensor | np.ndarray] | None = None,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, float]:
        """``compute_metrics`` on the predictions (same arguments as ``predict``)."""
        pred, _, y = self._forward_eval(split_or_indices, present_override, transform)
        return compute_metrics(self.task, y, predict_from_output(self.task, pred), self.n_classes)

    # ----------------------------------------------------------- checkpoints
    def _save_checkpoint(self, epoch: int, state: dict[str, Any], elapsed: float) -> None:
        cfg = self.config
        ckpt = {
            "version": CHECKPOINT_VERSION,
            "epoch": epoch,
            "stopped_early": state["stopped_early"],
            "config": cfg.to_dict(),
            "model_config": getattr(self.model, "config", {}),
            "model_state": self.model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler_state": self.scaler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "shuffle": self._shuffle_gen.get_state(),
            },
            "history": list(self.history),
            "best": {"state": state["best_state"], "epoch": state["best_epoch"], "score": state["best_score"],
                     "monitor": state["monitor"]},
            "bad_epochs": state["bad_epochs"],
            "train_time_s": elapsed,
        }
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        atomic_write_bytes(cfg.checkpoint_path, buf.getvalue())

    def _restore(self, ckpt: dict[str, Any], state: dict[str, Any]) -> int:
        """Load a checkpoint into model / optimizer / scheduler / RNGs / state; return the next epoch."""
        cfg = self.config
        path = cfg.checkpoint_path
        mine = getattr(self.model, "config", {})
        if _canonical(ckpt.get("model_config", {})) != _canonical(mine):
            theirs = ckpt.get("model_config", {})
            diff = sorted(k for k in set(theirs) | set(mine) if _canonical(theirs.get(k)) != _canonical(mine.get(k)))
            raise MMLibError(f"Checkpoint {path} was written for a different model (config differs in {diff}); "
                             "build the same model to resume, or use another checkpoint_path / resume=False.")
        saved = ckpt["config"]
        now = cfg.to_dict()
        diff = sorted(k for k in now if k not in _RESUME_FREE and _canonical(saved.get(k)) != _canonical(now[k]))
        if saved.get("epochs") != cfg.epochs and cfg.scheduler != "none":
            diff.append("epochs (the learning-rate schedule depends on it)")
        if diff:
            raise MMLibError(f"Checkpoint {path} was written with different training settings ({diff}); resume with "
                             "the same settings, or use another checkpoint_path / resume=False.")
        try:
            self.model.load_state_dict(ckpt["model_state"])
        except RuntimeError as exc:
            raise MMLibError(f"Checkpoint {path} does not fit this model ({exc}).") from exc
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        if self.scheduler is not None and ckpt["scheduler_state"] is not None:
            self.scheduler.load_state_dict(ckpt["scheduler_state"])
        self.scaler.load_state_dict(ckpt["scaler_state"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self._shuffle_gen.set_state(rng["shuffle"])
        self.history = list(ckpt["history"])
        best = ckpt["best"]
        state.update(best_state={k: v.to(self.device) for k, v in best["state"].items()} if best["state"] else None,
                     best_epoch=best["epoch"], best_score=best["score"], monitor=best["monitor"],
                     bad_epochs=ckpt["bad_epochs"], stopped_early=ckpt["stopped_early"],
                     time_before=float(ckpt.get("train_time_s", 0.0)))
        return int(ckpt["epoch"]) + 1


def fit_model(model: nn.Module, dataset: Any, **config_kwargs: Any) -> FitResult:
    """``Trainer(model, dataset, TrainConfig.from_dict(config_kwargs)).fit()``; the trainer is ``result.trainer``."""
    return Trainer(model, dataset, TrainConfig.from_dict(config_kwargs)).fit()
