"""Training losses, the SMAPE metric, alignment losses and output → prediction.

``get_loss(task, name)`` returns ``loss(pred, y, weight=None) -> scalar`` where
``pred`` is the model output [b, out_dim] and ``y`` the target [b] (float for
regression, int64 classes otherwise); ``weight`` is an optional per-sample weight [b].
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from mmlib.utils import MMLibError

TASKS = ("regression", "binary", "multiclass")
LOSSES_BY_TASK = {"regression": ("mse", "huber", "smape"), "binary": ("bce",), "multiclass": ("ce",)}
DEFAULT_LOSS = {"regression": "mse", "binary": "bce", "multiclass": "ce"}


def _flat(pred: torch.Tensor) -> torch.Tensor:
    """[b, 1] → [b] (float32, so the loss is computed in full precision under autocast)."""
    pred = pred.float()
    return pred.squeeze(-1) if pred.dim() == 2 and pred.shape[1] == 1 else pred


def _reduce(per_sample: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return per_sample.mean()
    w = weight.to(per_sample.dtype)
    return (per_sample * w).sum() / w.sum().clamp(min=1e-12)


def mse_loss(pred: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    return _reduce((_flat(pred) - y.float()) ** 2, weight)


def huber_loss(pred: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
               delta: float = 1.0) -> torch.Tensor:
    return _reduce(F.huber_loss(_flat(pred), y.float(), reduction="none", delta=delta), weight)


def smape_loss(pred: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
               eps: float = 1e-6) -> torch.Tensor:
    """(Weighted) SMAPE as a fraction: mean of 2|p − y| / (|p| + |y| + eps) (seed 002)."""
    p, t = _flat(pred), y.float()
    return _reduce(2 * (p - t).abs() / (p.abs() + t.abs() + eps), weight)


def bce_loss(pred: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy on logits; ``pred`` [b, 1] or [b], ``y`` in {0, 1}."""
    return _reduce(F.binary_cross_entropy_with_logits(_flat(pred), y.float(), reduction="none"), weight)


def ce_loss(pred: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
            label_smoothing: float = 0.0) -> torch.Tensor:
    """Multiclass cross-entropy on logits [b, C] with class indices ``y`` [b]."""
    return _reduce(F.cross_entropy(pred.float(), y.long(), reduction="none", label_smoothing=label_smoothing), weight)


_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "mse": mse_loss, "huber": huber_loss, "smape": smape_loss, "bce": bce_loss, "ce": ce_loss,
}
_OPTIONS = {"huber": ("delta",), "smape": ("eps",), "ce": ("label_smoothing",)}


def get_loss(task: str, name: str | None = None, **options: Any) -> Callable[..., torch.Tensor]:
    """The loss ``name`` for ``task`` (default: regression → mse, binary → bce, multiclass → ce).

    Options: huber ``delta``, smape ``eps``, ce ``label_smoothing``."""
    if task not in TASKS:
        raise MMLibError(f"Unknown task {task!r}; expected one of {TASKS}.")
    name = name or DEFAULT_LOSS[task]
    if name not in LOSSES_BY_TASK[task]:
        raise MMLibError(f"Loss {name!r} does not fit task {task!r}; choose one of {LOSSES_BY_TASK[task]}.")
    bad = [k for k in options if k not in _OPTIONS.get(name, ())]
    if bad:
        raise MMLibError(f"Unknown option(s) {bad} for loss {name!r}; it accepts {list(_OPTIONS.get(name, ()))}.")
    fn = _LOSSES[name]
    return partial(fn, **options) if options else fn


def smape(pred: Any, y: Any) -> float:
    """SMAPE in percent: 100 · mean(2|p − y| / (|p| + |y|)); a pair with p = y = 0 counts as 0."""
    p = np.asarray(pred.detach().float().cpu() if isinstance(pred, torch.Tensor) else pred, dtype=np.float64).ravel()
    t = np.asarray(y.detach().float().cpu() if isinstance(y, torch.Tensor) else y, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise MMLibError(f"smape: pred has {p.size} values but y has {t.size}.")
    den = np.abs(p) + np.abs(t)
    ratio = np.divide(2 * np.abs(p - t), den, out=np.zeros_like(den), where=den > 0)
    return float(100 * ratio.mean()) if ratio.size else float("nan")


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP-style) over L2-normalised rows: row i of ``a`` should pick row i
    of ``b`` among all rows of ``b``, and vice versa."""
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    logits = a @ b.T / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def cosine_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean of 1 − cos(a_i, b_i)."""
    return (1 - F.cosine_similarity(a.float(), b.float(), dim=-1)).mean()


def predict_from_output(task: str, pred: torch.Tensor) -> torch.Tensor:
    """Model output → regression values [b], P(class 1) [b] (binary) or class probabilities [b, C]."""
    if task == "regression":
        return _flat(pred)
    if task == "binary":
        return torch.sigmoid(_flat(pred))
    if task == "multiclass":
        return torch.softmax(pred.float(), dim=-1)
    raise MMLibError(f"Unknown task {task!r}; expected one of {TASKS}.")
