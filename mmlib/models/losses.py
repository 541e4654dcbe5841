"""Loss functions: supervised (``loss(pred, y, weight=None) -> scalar``) and alignment.

``pred`` is the model output [b, out_dim] and ``y`` the target [b] (float for
regression, int64 classes otherwise); ``weight`` is an optional per-sample weight [b].
Which loss fits which task, and its default, is the task's business:
``mmlib.training.tasks.get_task(task).loss(name)``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def flat(pred: torch.Tensor) -> torch.Tensor:
    """[b, 1] → [b] (float32, so the loss is computed in full precision under autocast)."""
    pred = pred.float()
    return pred.squeeze(-1) if pred.dim() == 2 and pred.shape[1] == 1 else pred


def _reduce(per_sample: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return per_sample.mean()
    w = weight.to(per_sample.dtype)
    return (per_sample * w).sum() / w.sum().clamp(min=1e-12)


def mse_loss(pred: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    return _reduce((flat(pred) - y.float()) ** 2, weight)


def huber_loss(pred: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
               delta: float = 1.0) -> torch.Tensor:
    return _reduce(F.huber_loss(flat(pred), y.float(), reduction="none", delta=delta), weight)


def smape_loss(pred: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
               eps: float = 1e-6) -> torch.Tensor:
    """(Weighted) SMAPE as a fraction: mean of 2|p − y| / (|p| + |y| + eps) (seed 002)."""
    p, t = flat(pred), y.float()
    return _reduce(2 * (p - t).abs() / (p.abs() + t.abs() + eps), weight)


def bce_loss(pred: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy on logits; ``pred`` [b, 1] or [b], ``y`` in {0, 1}."""
    return _reduce(F.binary_cross_entropy_with_logits(flat(pred), y.float(), reduction="none"), weight)


def ce_loss(pred: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
            label_smoothing: float = 0.0) -> torch.Tensor:
    """Multiclass cross-entropy on logits [b, C] with class indices ``y`` [b]."""
    return _reduce(F.cross_entropy(pred.float(), y.long(), reduction="none", label_smoothing=label_smoothing), weight)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "mse": mse_loss, "huber": huber_loss, "smape": smape_loss, "bce": bce_loss, "ce": ce_loss,
    # regression as classes: the objective maps each target to the index of its value (``target_values``)
    # and reads the prediction as the expected value, so the loss itself is the cross-entropy
    "ce_ev": ce_loss,
}
LOSS_OPTIONS = {"huber": ("delta",), "smape": ("eps",), "ce": ("label_smoothing",), "ce_ev": ("label_smoothing",)}


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
