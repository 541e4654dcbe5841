"""One notion of a task: regression, binary or multiclass classification.

A ``Task`` owns everything that depends on the kind of target:

* the training loss (``task.loss(name)``: regression mse / huber / smape / ce_ev, binary
  bce, multiclass ce; the loss functions themselves live in ``mmlib.models.losses``);
* how a model output becomes a prediction (``task.predict``: values, P(class 1) or
  class probabilities);
* its metrics (``task.metrics``, i.e. ``mmlib.training.metrics.compute_metrics``);
* the metric that selects models and stops training early, and its direction
  (``task.metric``, ``task.higher``).

``get_task(name)`` returns the one ``Task`` of each kind.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch

from mmlib.data.base import TASKS
from mmlib.models import losses as L
from mmlib.training.metrics import METRIC_NAMES, compute_metrics
from mmlib.utils import MMLibError


@dataclass(frozen=True)
class Task:
    """What training, prediction and evaluation need to know about a target."""

    name: str  # "regression" | "binary" | "multiclass"
    metric: str  # the metric that selects models and stops training early
    higher: bool  # whether a larger ``metric`` is better
    losses: tuple[str, ...]  # loss names that fit this task; the first is the default

    @property
    def metric_names(self) -> tuple[str, ...]:
        return METRIC_NAMES[self.name]

    def loss(self, name: str | None = None, **options: Any) -> Callable[..., torch.Tensor]:
        """``loss(pred, y, weight=None) -> scalar`` (options: huber ``delta``, smape ``eps``,
        ce ``label_smoothing``)."""
        name = name or self.losses[0]
        if name not in self.losses:
            raise MMLibError(f"Loss {name!r} does not fit task {self.name!r}; choose one of {self.losses}.")
        accepted = L.LOSS_OPTIONS.get(name, ())
        bad = [k for k in options if k not in accepted]
        if bad:
            raise MMLibError(f"Unknown option(s) {bad} for loss {name!r}; it accepts {list(accepted)}.")
        fn = L.LOSSES[name]
        return partial(fn, **options) if options else fn

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        """Model output [b, out_dim] → regression values [b], P(class 1) [b] or class probabilities [b, C]."""
        if self.name == "regression":
            return L.flat(output)
        if self.name == "binary":
            return torch.sigmoid(L.flat(output))
        return torch.softmax(output.float(), dim=-1)

    def metrics(self, y_true: Any, y_pred: Any, n_classes: int | None = None) -> dict[str, float]:
        """``compute_metrics`` for this task (``y_pred`` as ``predict`` returns it)."""
        return compute_metrics(self.name, y_true, y_pred, n_classes)

    def out_dim(self, n_classes: int | None) -> int:
        """Width of a model's output: 1 for regression and binary, the class count otherwise."""
        return int(n_classes) if self.name == "multiclass" else 1


_TASKS = {
    "regression": Task("regression", "r2", True, ("mse", "huber", "smape", "ce_ev")),
    "binary": Task("binary", "roc_auc", True, ("bce",)),
    "multiclass": Task("multiclass", "accuracy", True, ("ce",)),
}
assert tuple(_TASKS) == TASKS


def get_task(task: str | Task) -> Task:
    """The ``Task`` named ``task`` (a ``Task`` is returned as is)."""
    if isinstance(task, Task):
        return task
    if task not in _TASKS:
        raise MMLibError(f"Unknown task {task!r}; expected one of {TASKS}.")
    return _TASKS[task]


EV_LOSS = "ce_ev"  # regression as classes: cross-entropy over the target's values, prediction = expected value
MAX_TARGET_VALUES = 20  # ce_ev (and the baselines' regression_as_classes): at most this many distinct values


def target_values(y_train: Any, max_values: int = MAX_TARGET_VALUES, what: str = "ce_ev") -> torch.Tensor:
    """The sorted distinct values of a regression target's training split, as the classes of the
    ``ce_ev`` loss (float64 [K]); ``MMLibError`` unless there are 2..``max_values`` finite values."""
    y = torch.as_tensor(y_train).detach().double().reshape(-1).cpu()
    if not bool(torch.isfinite(y).all()):
        raise MMLibError(f"{what}: the training target holds NaN/inf values.")
    vals = torch.unique(y)
    if not 2 <= len(vals) <= max_values:
        raise MMLibError(f"{what} fits a regression target with 2..{max_values} distinct values (a star rating) as "
                         f"classes; this training split has {len(vals)}. Use loss='mse' (the default) instead.")
    return vals


def is_discrete(y_train: Any, max_values: int = MAX_TARGET_VALUES) -> bool:
    """True for a target whose training values are 2..``max_values`` distinct integers (a star rating)."""
    y = torch.as_tensor(y_train).detach().double().reshape(-1).cpu()
    if not bool(torch.isfinite(y).all()):
        return False
    vals = torch.unique(y)
    return 2 <= len(vals) <= max_values and bool((vals == torch.round(vals)).all())


def primary_metric(task: str | Task) -> tuple[str, bool]:
    """The metric used for model selection and early stopping, and whether higher is better."""
    t = get_task(task)
    return t.metric, t.higher
