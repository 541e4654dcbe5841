"""Training settings (``TrainConfig``) and what a fit returns (``FitResult``)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mmlib.utils import MMLibError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("onecycle", "cosine", "none")
AMP_MODES = ("auto", "bf16", "fp16", "off")
OGM_VARIANTS = ("published", "smooth")
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
    standardize_target: bool = True  # regression: fit (y − mean) / std of the train split; predictions and
    # metrics come back in the target's own units (a 4.2-star mean then need not live in hidden units)
    aux_weight: float = 0.0  # weight of the mean unimodal auxiliary loss (needs out["unimodal"])
    ogm_alpha: float | None = None  # OGM-GE modulation strength; None disables (needs out["unimodal"])
    ogm_noise: bool = True  # OGM-GE's GE part: Gaussian noise with the gradient's std added to the branches' gradients
    ogm_variant: str = "published"  # "published": Peng et al. 2022 (needs out["contributions"]: early fusion with
    # head_layers=0, or late fusion); "smooth": our variant on auxiliary heads, 1 − tanh(α·relu(ρ − 1))
    device: str = "auto"  # "auto" (cuda, mps, cpu), "cpu", "cuda", "cuda:1", "mps"
    amp: str = "auto"  # "auto": bf16 (or fp16 + GradScaler) on CUDA, off elsewhere; "bf16" (CUDA or CPU) | "fp16" | "off"
    seed: int = 0  # seeds dropout, modality dropout, OGM noise and the shuffling order
    deterministic: bool = False  # ask torch for deterministic kernels (slower on GPU; global setting)
    checkpoint_path: str | None = None  # save a resumable checkpoint here after every epoch (atomically)
    resume: bool = False  # continue from checkpoint_path when it exists
    progress: bool = True  # tqdm bar per epoch; False is silent
    track_modalities: bool = False  # each epoch: val metric with each modality dropped, and of each unimodal head
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
        if self.ogm_variant not in OGM_VARIANTS:
            raise bad("ogm_variant", f"choose one of {OGM_VARIANTS}")
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
    # epoch_time_s, and lr_<branch> / ogm_coef_<m> / train_<metric> / val_<metric>_without_<m> / _head_<m> when on
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
    trainer: Any = field(default=None, repr=False)  # the Trainer, for predict / evaluate after fit

    def summary(self) -> dict[str, Any]:
        """Flat fields for a result record."""
        return {"best_epoch": self.best_epoch, "best_val": self.best_val, "monitor": self.monitor,
                "epochs": self.epochs_run, "train_time_s": round(self.train_time_s, 3),
                "n_params": int(self.n_params.get("total", 0)), "device": self.device,
                "stopped_early": self.stopped_early}


# ------------------------------------------------------------------------ budget
MIN_BATCH_SIZE = 32  # the batch-size cap never goes below this


def size_budget(n_train: int, epochs: int, batch_size: int, patience: int | None = None,
                min_steps: int | None = None, min_batches_per_epoch: int | None = None,
                max_batches_per_epoch: int | None = None) -> dict[str, Any]:
    """Training sizes for a train split of ``n_train`` rows (the rule of ``mmlib.training.profiles``).

    1. Batch cap: with ``min_batches_per_epoch`` = k, the batch is at most the largest power of two
       ≤ n_train / k (never below ``MIN_BATCH_SIZE``, never above ``batch_size``).
    2. Step floor: ``min_steps`` counts steps of the profile's ``batch_size``; when step 1 capped
       the batch to b, the floor becomes ceil(min_steps × √(batch_size / b)): smaller batches
       take noisier steps and need more of them (on a 1,050-row train split, batch 64, 390
       steps left two seeds of three still improving at the last epoch; with 780, early stopping
       ended two and the third peaked at epoch 39 of 46), while the √ keeps small data far below
       the compute of a large dataset (the linear rule would give 1,560 steps). When ``epochs`` × steps-per-epoch is below the
       floor, epochs are raised to ceil(floor / steps-per-epoch) and ``patience`` by the same
       factor (rounded up), so early stopping still waits the same share of the run.
       ``epochs`` is then a maximum: early stopping decides the end.

    Returns ``{"epochs", "batch_size", "patience", "steps_per_epoch", "steps", "min_steps"}``
    (``steps`` = the budget, epochs × steps-per-epoch; ``min_steps`` = the floor after step 2).
    ``None`` for either knob switches that part off."""
    n = int(n_train)
    bs = int(batch_size)
    if min_batches_per_epoch and n > 0:
        cap = 2 ** int(math.floor(math.log2(max(1, n // int(min_batches_per_epoch)))))
        bs = min(bs, max(MIN_BATCH_SIZE, cap))
    steps = max(1, math.ceil(n / bs))
    if max_batches_per_epoch:
        steps = max(1, min(steps, int(max_batches_per_epoch)))
    ep, pat = int(epochs), patience
    floor = math.ceil(int(min_steps) * math.sqrt(int(batch_size) / bs)) if min_steps else 0
    if floor and ep * steps < floor:
        ep = math.ceil(floor / steps)
        if pat is not None:
            pat = math.ceil(int(pat) * ep / int(epochs))
    return {"epochs": ep, "batch_size": bs, "patience": pat, "steps_per_epoch": steps, "steps": ep * steps,
            "min_steps": floor or None}
