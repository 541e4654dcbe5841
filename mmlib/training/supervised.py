"""The supervised objective: a ``MultimodalModel`` (or any model with the same
forward contract) predicting a dataset's target, and inference on its rows.

Model contract: ``model(inputs, present) -> {"pred": [b, out_dim], "unimodal": {m:
[b, out_dim]} (optional), "present": {m: bool [b]} (optional, the mask the model
actually used, e.g. after modality dropout)}``.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

from mmlib.training.objectives import Objective
from mmlib.training.tasks import EV_LOSS, get_task, target_values
from mmlib.utils import MMLibError

Override = dict[str, Any]  # {modality: False | bool mask}: drop a modality at inference


def model_out_dim(dataset: Any, loss: str | None = None) -> int:
    """The output width a model needs to train on ``dataset`` with ``loss``: the dataset's own
    (``dataset.out_dim``), or under ``ce_ev`` the number of distinct training target values."""
    if loss != EV_LOSS:
        return int(dataset.out_dim)
    if get_task(dataset.task).name != "regression":
        raise MMLibError(f"loss {EV_LOSS!r} is for regression targets; {dataset.name!r} is {dataset.task}.")
    rows = torch.as_tensor(dataset.splits["train"], device=dataset.target.device)
    return len(target_values(dataset.target[rows], what=f"loss {EV_LOSS!r} on {dataset.name!r}"))


class SupervisedObjective(Objective):
    """Fit ``dataset``'s target on its train split; validate on its val split.

    ``loss_fn(pred, y, weight=None)`` replaces the task's loss (e.g. seed 002's SMAPE on
    a transformed target); otherwise ``loss`` / ``loss_options`` name one of the task's.

    ``standardize`` (regression): the model learns z = (y − mean) / std with the mean and
    std of the train split; every prediction and metric is mapped back to the target's
    units, while the losses (train and ``val_loss``) stay in z units.

    ``loss="ce_ev"`` (regression with a few distinct values, e.g. a 1-5 star rating): each
    distinct training value is a class, the model outputs one logit per value (build it with
    ``out_dim=len(objective.class_values)``; ``model_out_dim`` gives it), trains with
    cross-entropy, and predicts the expected value ``sum_k softmax_k * value_k`` — Rothe et
    al.'s DEX (2015: "Deep EXpectation", classification over age values, expected value at
    inference). The neural counterpart of the baselines' ``regression_as_classes``. Metrics
    stay regression metrics of that expected value; ``val_loss`` is the cross-entropy."""

    kind = "supervised"

    def __init__(self, dataset: Any, loss: str | None = None, loss_options: dict[str, Any] | None = None,
                 loss_fn: Callable[..., torch.Tensor] | None = None, standardize: bool = True):
        for split in ("train", "val"):
            if len(dataset.splits[split]) == 0:
                raise MMLibError(f"Dataset {dataset.name!r}: the {split} split is empty; training needs rows in "
                                 "both train and val (check the split fractions).")
        self.dataset = dataset
        self.task = get_task(dataset.task)
        self.n_classes = dataset.n_classes
        self.loss_fn = loss_fn or self.task.loss(loss, **(loss_options or {}))
        self.y_mean, self.y_std = 0.0, 1.0  # target units = model units unless standardised
        self.class_values: torch.Tensor | None = None  # ce_ev: the target's values, one class each
        if loss == EV_LOSS and loss_fn is None:
            train_y = dataset.target[torch.as_tensor(dataset.splits["train"], device=dataset.target.device)]
            self.class_values = target_values(train_y, what=f"loss {EV_LOSS!r} on {dataset.name!r}").float()
        elif standardize and self.task.name == "regression":
            y = dataset.target[torch.as_tensor(dataset.splits["train"], device=dataset.target.device)].double()
            self.y_mean = float(y.mean())
            self.y_std = float(y.std(unbiased=False)) if len(y) > 1 and float(y.std(unbiased=False)) > 0 else 1.0
        self.data = dataset
        self.device = dataset.device
        self.eval_batch_size = 1024
        self.model: nn.Module | None = None
        self.autocast: Callable[[], Any] | None = None
        self.last_val: tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor] | None = None

    @property
    def score_task(self) -> str:
        """The kind of output the model gives: ``"multiclass"`` logits under ``ce_ev``, else the task's."""
        return "multiclass" if self.class_values is not None else self.task.name

    def setup(self, trainer: Any) -> None:
        self.data = self.dataset.to(trainer.device)  # once: batches are tensor indexing on the device
        self.device = trainer.device
        self.model = trainer.model
        if self.class_values is not None:
            self.class_values = self.class_values.to(trainer.device)
            width = getattr(trainer.model, "out_dim", None)
            if width is not None and int(width) != len(self.class_values):
                raise MMLibError(f"loss {EV_LOSS!r}: the model outputs {width} value(s) per row but the target has "
                                 f"{len(self.class_values)} classes ({self.class_values.tolist()}); build it with "
                                 f"out_dim={len(self.class_values)} (run_fusion does this when the loss is {EV_LOSS!r}).")
        self.autocast = trainer.precision.autocast
        self.eval_batch_size = trainer.config.eval_batch_size or 4 * trainer.config.batch_size

    # ---------------------------------------------------------------- training
    def steps_per_epoch(self, batch_size: int) -> int:
        return self.data.n_batches("train", batch_size)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[dict[str, Any]]:
        return self.data.batches("train", batch_size, shuffle=True, generator=generator)

    def batch_rows(self, batch: dict[str, Any]) -> int:
        return len(batch["y"])

    def target(self, y: torch.Tensor) -> torch.Tensor:
        """The target in the model's units (z when standardised; under ``ce_ev`` the index of the
        nearest class value)."""
        if self.class_values is not None:
            values = self.class_values.to(y.device)
            return (y.float().unsqueeze(-1) - values).abs().argmin(dim=-1)
        if self.y_mean == 0.0 and self.y_std == 1.0:
            return y
        return (y.float() - self.y_mean) / self.y_std

    def to_units(self, output: torch.Tensor) -> torch.Tensor:
        """A model output back in the target's units (regression; classification outputs pass through;
        under ``ce_ev`` the expected value of the class probabilities, [b, 1])."""
        if self.class_values is not None:
            values = self.class_values.to(output.device)
            return (torch.softmax(output.float(), dim=-1) @ values).unsqueeze(-1)
        if self.y_mean == 0.0 and self.y_std == 1.0:
            return output
        return output.float() * self.y_std + self.y_mean

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        out = model(batch["inputs"], batch["present"])
        return self.loss_fn(out["pred"], self.target(batch["y"])), out

    def nan_hint(self, batch: dict[str, Any]) -> str:
        bad = [f"{m}.{k}" for m, ts in batch["inputs"].items() for k, t in ts.items()
               if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if batch["y"].is_floating_point() and not bool(torch.isfinite(batch["y"]).all()):
            bad.append("target")
        return f" This batch holds NaN/inf values in {bad}: clean or impute them in the dataset." if bad else ""

    # -------------------------------------------------------------- validation
    def scores(self, output: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """The task's metrics of raw model outputs against targets in their own units."""
        return self.task.metrics(y, self.task.predict(self.to_units(output)), self.n_classes)

    def validate(self, trainer: Any) -> dict[str, float]:
        pred, uni, y = self.forward("val")
        self.last_val = (pred, uni, y)  # ModalityTracking reads the unimodal outputs from here
        row = {"val_loss": float(self.loss_fn(pred, self.target(y))),
               **{f"val_{k}": v for k, v in self.scores(pred, y).items()}}
        if trainer.config.eval_train:
            tp, _, ty = self.forward("train")
            row["train_eval_loss"] = float(self.loss_fn(tp, self.target(ty)))
            row.update({f"train_{k}": v for k, v in self.scores(tp, ty).items()})
        return row

    def monitor(self, row: dict[str, Any]) -> tuple[str, bool]:
        name = f"val_{self.task.metric}"
        if math.isnan(float(row.get(name, float("nan")))):
            warnings.warn(f"The validation {self.task.metric} is NaN in the first epoch (e.g. a single class in the "
                          "val split); early stopping and best-epoch selection follow val_loss instead.",
                          stacklevel=4)
            return "val_loss", False
        return name, self.task.higher

    def final_metrics(self, trainer: Any) -> dict[str, float]:
        return self.evaluate("val")

    # --------------------------------------------------------------- inference
    def rows(self, split_or_indices: str | np.ndarray | torch.Tensor | list[int]) -> np.ndarray:
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

    def _override(self, batch: dict[str, Any], override: Override, offset: int, n_rows: int) -> dict[str, Any]:
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

    def forward(self, split_or_indices: Any, present_override: Override | None = None,
                transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Raw model outputs [n, out_dim] (z units when standardised), unimodal outputs {m: [n, out_dim]}
        and targets [n] (their own units), in row order."""
        rows = self.rows(split_or_indices)
        model = self.model
        was_training = model.training
        model.eval()
        preds: list[torch.Tensor] = []
        unis: dict[str, list[torch.Tensor]] = {}
        ys: list[torch.Tensor] = []
        offset = 0
        try:
            with torch.no_grad(), self.autocast():
                for batch in self.data.batches(rows, self.eval_batch_size):
                    b = len(batch["y"])
                    if present_override:
                        batch = self._override(batch, present_override, offset, len(rows))
                    if transform is not None:
                        batch = transform(batch)
                    out = model(batch["inputs"], batch["present"])
                    preds.append(out["pred"].float())
                    for m, u in (out.get("unimodal") or {}).items():
                        unis.setdefault(m, []).append(u.float())
                    ys.append(batch["y"])
                    offset += b
        finally:
            model.train(was_training)
        if not preds:
            out_dim = int(getattr(model, "out_dim", self.data.out_dim))
            return torch.zeros(0, out_dim, device=self.device), {}, self.data.target[:0]
        return torch.cat(preds), {m: torch.cat(v) for m, v in unis.items()}, torch.cat(ys)

    def predict(self, split_or_indices: Any = "test", present_override: Override | None = None,
                transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> np.ndarray:
        pred, _, _ = self.forward(split_or_indices, present_override, transform)
        return self.task.predict(self.to_units(pred)).cpu().numpy()

    def evaluate(self, split_or_indices: Any = "test", present_override: Override | None = None,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, float]:
        pred, _, y = self.forward(split_or_indices, present_override, transform)
        return self.scores(pred, y)
