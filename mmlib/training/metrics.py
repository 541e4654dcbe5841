"""Metrics per task, from targets and predictions (regression values or probabilities).

``compute_metrics(task, y_true, y_pred)`` returns a flat ``{name: float}``:

=========== ==============================================================
task        metrics (``y_pred``)
=========== ==============================================================
regression  r2, rmse, mae, smape (percent)            (predicted values [n])
binary      accuracy, f1, roc_auc, pr_auc, log_loss   (P(class 1) [n], or [n, 2])
multiclass  accuracy, macro_f1, roc_auc_ovr, log_loss (class probabilities [n, C])
=========== ==============================================================

Degenerate input (an empty split, a single class in ``y_true``, a constant target,
non-finite predictions) never raises: the metrics that are undefined come back as
NaN and a ``MetricWarning`` says why. ``roc_auc_ovr`` is the macro one-vs-rest ROC-AUC
(each class against the rest, averaged with equal weight); it needs probabilities and
every class present in ``y_true``, else it is NaN.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch
from sklearn import metrics as skm

from mmlib.data.base import TASKS
from mmlib.utils import MMLibError

METRIC_NAMES = {
    "regression": ("r2", "rmse", "mae", "smape"),
    "binary": ("accuracy", "f1", "roc_auc", "pr_auc", "log_loss"),
    "multiclass": ("accuracy", "macro_f1", "roc_auc_ovr", "log_loss"),
}
_HIGHER_BETTER = {"r2": True, "rmse": False, "mae": False, "smape": False, "accuracy": True, "f1": True,
                  "roc_auc": True, "pr_auc": True, "log_loss": False, "macro_f1": True, "roc_auc_ovr": True,
                  "loss": False}
_EPS = 1e-15  # probability clipping for log-loss


class MetricWarning(UserWarning):
    """A metric could not be computed on this input (it is returned as NaN)."""


def higher_is_better(metric: str) -> bool:
    """Direction of a metric name (``val_`` / ``test_`` prefixes are ignored)."""
    base = metric.split("_", 1)[1] if metric.split("_", 1)[0] in ("train", "val", "test") else metric
    if base not in _HIGHER_BETTER:
        raise MMLibError(f"Unknown metric {metric!r}; known: {sorted(_HIGHER_BETTER)}.")
    return _HIGHER_BETTER[base]


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _warn(msg: str) -> None:
    warnings.warn(msg, MetricWarning, stacklevel=3)


def _nan_all(task: str, why: str) -> dict[str, float]:
    _warn(f"compute_metrics({task}): {why}; every metric is NaN.")
    return {k: float("nan") for k in METRIC_NAMES[task]}


def smape_percent(y_true: Any, y_pred: Any) -> float:
    """SMAPE in percent: 100 · mean(2|p − y| / (|p| + |y|)); a pair with p = y = 0 counts as 0."""
    t = _to_numpy(y_true).astype(np.float64).ravel()
    p = _to_numpy(y_pred).astype(np.float64).ravel()
    den = np.abs(p) + np.abs(t)
    ratio = np.divide(2 * np.abs(p - t), den, out=np.zeros_like(den), where=den > 0)
    return float(100 * ratio.mean()) if ratio.size else float("nan")


def _regression(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim != 1:
        raise MMLibError(f"compute_metrics(regression): predictions have shape {p.shape}; expected [n] or [n, 1].")
    y = y.astype(np.float64).ravel()
    p = p.astype(np.float64)
    err = p - y
    out = {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))), "smape": smape_percent(y, p)}
    if len(y) < 2 or np.all(y == y[0]):
        _warn(f"compute_metrics(regression): y_true is constant over {len(y)} row(s), so R² is undefined (NaN).")
        out["r2"] = float("nan")
    else:
        out["r2"] = float(skm.r2_score(y, p))
    return {k: out[k] for k in METRIC_NAMES["regression"]}


def _binary(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    elif p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim != 1:
        raise MMLibError(f"compute_metrics(binary): predictions have shape {p.shape}; expected P(class 1) as [n], "
                         "[n, 1] or [n, 2].")
    p = p.astype(np.float64)
    if p.min() < 0 or p.max() > 1:
        raise MMLibError("compute_metrics(binary): predictions must be probabilities in [0, 1] (got values in "
                         f"[{p.min():.3g}, {p.max():.3g}]); apply a sigmoid to logits first.")
    y = y.astype(np.int64).ravel()
    bad = set(np.unique(y).tolist()) - {0, 1}
    if bad:
        raise MMLibError(f"compute_metrics(binary): y_true must hold 0/1 labels; found {sorted(bad)[:5]}.")
    hard = (p >= 0.5).astype(np.int64)
    out = {
        "accuracy": float(skm.accuracy_score(y, hard)),
        "f1": float(skm.f1_score(y, hard, zero_division=0)),
        "log_loss": float(skm.log_loss(y, np.clip(p, _EPS, 1 - _EPS), labels=[0, 1])),
    }
    if len(np.unique(y)) < 2:
        _warn(f"compute_metrics(binary): y_true holds a single class ({int(y[0])}) over {len(y)} row(s); "
              "ROC-AUC and PR-AUC need both classes, so they are NaN.")
        out["roc_auc"] = out["pr_auc"] = float("nan")
    else:
        out["roc_auc"] = float(skm.roc_auc_score(y, p))
        out["pr_auc"] = float(skm.average_precision_score(y, p))
    return {k: out[k] for k in METRIC_NAMES["binary"]}


def _multiclass(y: np.ndarray, p: np.ndarray, n_classes: int | None) -> dict[str, float]:
    y = y.astype(np.int64).ravel()
    if p.ndim == 1:  # hard labels: no probabilities, so no log-loss
        hard = p.astype(np.int64)
        proba = None
    elif p.ndim == 2:
        proba = p.astype(np.float64)
        hard = proba.argmax(axis=1)
    else:
        raise MMLibError(f"compute_metrics(multiclass): predictions have shape {p.shape}; expected [n, C] "
                         "probabilities (or [n] class labels).")
    out = {
        "accuracy": float(skm.accuracy_score(y, hard)),
        "macro_f1": float(skm.f1_score(y, hard, average="macro", zero_division=0)),
    }
    if proba is None:
        _warn("compute_metrics(multiclass): got class labels, not probabilities, so log_loss and roc_auc_ovr "
              "are NaN.")
        out["log_loss"] = out["roc_auc_ovr"] = float("nan")
    else:
        c = n_classes or proba.shape[1]
        if proba.shape[1] != c or y.max() >= c or y.min() < 0:
            raise MMLibError(f"compute_metrics(multiclass): probabilities have {proba.shape[1]} columns but the "
                             f"labels span [{y.min()}, {y.max()}] (n_classes={c}).")
        if proba.min() < 0 or proba.max() > 1:
            raise MMLibError("compute_metrics(multiclass): predictions must be probabilities in [0, 1]; "
                             "apply a softmax to logits first.")
        clipped = np.clip(proba, _EPS, 1.0)
        clipped = clipped / clipped.sum(axis=1, keepdims=True)
        out["log_loss"] = float(skm.log_loss(y, clipped, labels=list(range(c))))
        if len(np.unique(y)) < c:
            _warn(f"compute_metrics(multiclass): y_true holds {len(np.unique(y))} of {c} classes over {len(y)} "
                  "row(s); the one-vs-rest ROC-AUC needs every class, so roc_auc_ovr is NaN.")
            out["roc_auc_ovr"] = float("nan")
        else:
            # each class against the rest on the probabilities as given (renormalising would break their ties
            # by float noise, and sklearn's multi_class="ovr" rejects float32 softmax rows that miss 1 by 1e-7)
            out["roc_auc_ovr"] = float(np.mean([skm.roc_auc_score(y == k, proba[:, k]) for k in range(c)]))
    return {k: out[k] for k in METRIC_NAMES["multiclass"]}


def compute_metrics(task: str, y_true: Any, y_pred: Any, n_classes: int | None = None) -> dict[str, float]:
    """Metrics for ``task`` (see the module docstring). Inputs may be numpy arrays, lists or torch tensors.

    ``y_pred``: regression values; binary P(class 1); multiclass class probabilities [n, C]."""
    if task not in TASKS:
        raise MMLibError(f"Unknown task {task!r}; expected one of {TASKS}.")
    y = _to_numpy(y_true)
    p = _to_numpy(y_pred)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if len(y) != len(p):
        raise MMLibError(f"compute_metrics({task}): y_true has {len(y)} rows but the predictions have {len(p)}.")
    if len(y) == 0:
        return _nan_all(task, "no rows")
    p = p.astype(np.float64)
    if not np.isfinite(p).all():
        n_bad = int((~np.isfinite(p)).any(axis=tuple(range(1, p.ndim))).sum()) if p.ndim > 1 else int(
            (~np.isfinite(p)).sum())
        return _nan_all(task, f"{n_bad} of {len(p)} prediction(s) are NaN/inf (did training diverge?)")
    if task == "regression":
        if not np.isfinite(y.astype(np.float64)).all():
            return _nan_all(task, "y_true has NaN/inf values")
        return _regression(y, p)
    if task == "binary":
        return _binary(y, p)
    return _multiclass(y, p, n_classes)


# --------------------------------------------------------------------------- retrieval
# ``sim`` is [n_queries, n_items], higher = more similar, and query i's match is item i.
# Ties are scored by their expectation under a random tie-break, so a model that gives
# every item the same score gets exactly the random baseline (Recall@K = K/n, MRR = H_n/n).
DEFAULT_KS = (1, 5, 10)


def rank_counts(sim: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per query: items scored strictly higher than its match (g) and other items tied with it (e)."""
    s = torch.as_tensor(np.asarray(sim, dtype=np.float64)) if not isinstance(sim, torch.Tensor) else sim.double().cpu()
    if s.ndim != 2:
        raise MMLibError(f"sim must be 2-D [n_queries, n_items], got shape {tuple(s.shape)}.")
    q, m = s.shape
    if q == 0 or q > m:
        raise MMLibError(f"sim has {q} queries and {m} items; query i's match is item i, so 0 < n_queries <= n_items.")
    if torch.isnan(s).any():
        raise MMLibError("sim holds NaN values; check the embeddings.")
    true = s[torch.arange(q), torch.arange(q)][:, None]
    g = np.empty(q, dtype=np.int64)
    e = np.empty(q, dtype=np.int64)
    for start in range(0, q, 2048):  # chunks keep the [q, m] comparison small
        blk, t = s[start:start + 2048], true[start:start + 2048]
        g[start:start + len(blk)] = (blk > t).sum(1).numpy()
        e[start:start + len(blk)] = (blk == t).sum(1).numpy() - 1
    return g, e


def harmonic(n: int) -> np.ndarray:
    """H[k] = sum_{j=1..k} 1/j for k = 0..n."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])


def match_ranks(sim: Any) -> np.ndarray:
    """Expected 1-based rank of each query's match (ties: the mean rank of the tied block)."""
    g, e = rank_counts(sim)
    return 1.0 + g + e / 2.0


def recall_at_k(sim: Any, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """``{"R@K": fraction of queries whose match is among the top K}`` for each K."""
    g, e = rank_counts(sim)
    out = {}
    for k in ks:
        if int(k) < 1:
            raise MMLibError(f"recall_at_k: K must be >= 1, got {k}.")
        out[f"R@{int(k)}"] = float(np.clip((int(k) - g) / (e + 1.0), 0.0, 1.0).mean())
    return out


def mrr(sim: Any) -> float:
    """Mean reciprocal rank of each query's match."""
    g, e = rank_counts(sim)
    h = harmonic(int(g.max() + e.max() + 1))
    return float(((h[g + e + 1] - h[g]) / (e + 1.0)).mean())
