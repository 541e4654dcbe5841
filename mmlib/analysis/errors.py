"""Error analysis of regression predictions: where does a model fail?

``error_by_bins`` tabulates the errors per quantile bin of the true target (is the
model worse on cheap or on expensive items, does it under- or over-predict there);
``worst_best`` lists the predictions with the largest and the smallest absolute error.
Both take plain arrays (true values and predictions), so they serve any model.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from mmlib.training.metrics import smape_percent
from mmlib.utils import MMLibError


def _as_1d(a: Any, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a, dtype=float).reshape(-1)
    if not len(a):
        raise MMLibError(f"{name} is empty.")
    return a


def _pair(y_true: Any, y_pred: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_1d(y_true, "y_true"), _as_1d(y_pred, "y_pred")
    if t.shape != p.shape:
        raise MMLibError(f"{what}: y_true has {len(t)} values but y_pred has {len(p)}.")
    return t, p


def error_by_bins(y_true: Any, y_pred: Any, bins: int = 5, digits: int = 4) -> pd.DataFrame:
    """Regression errors per quantile bin of the *true* target: where does the model fail?

    Columns: ``bin`` (1 = lowest targets), ``y_min``, ``y_max``, ``n``, ``mae``,
    ``smape`` (percent, 2|p−y|/(|p|+|y|)), ``bias`` (mean of prediction − truth:
    negative = under-predicts). Ties in the target may merge bins.
    """
    t, p = _pair(y_true, y_pred, "error_by_bins")
    if int(bins) < 1:
        raise MMLibError(f"error_by_bins: bins must be >= 1, got {bins}.")
    codes = pd.qcut(t, q=int(bins), labels=False, duplicates="drop") if bins > 1 else np.zeros(len(t), int)
    df = pd.DataFrame({"bin": np.asarray(codes) + 1, "y": t, "p": p, "err": p - t})
    g = df.groupby("bin")
    out = g.agg(y_min=("y", "min"), y_max=("y", "max"), n=("y", "size"),
                mae=("err", lambda e: np.abs(e).mean())).reset_index()
    out["smape"] = out["bin"].map(g[["y", "p"]].apply(lambda b: smape_percent(b["y"], b["p"])))
    out["bias"] = out["bin"].map(g["err"].mean())
    out["n"] = out["n"].astype(int)
    return out.round(digits)


def worst_best(y_true: Any, y_pred: Any, k: int = 20, ids: Sequence[Any] | None = None,
               digits: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``k`` worst and ``k`` best predictions by absolute error.

    Each frame has ``id`` (``ids`` or the position), ``y_true``, ``y_pred``, ``error``
    (prediction − truth), ``abs_error`` and ``smape`` (percent); worst first in
    ``worst``, best first in ``best``.
    """
    t, p = _pair(y_true, y_pred, "worst_best")
    ids = np.arange(len(t)) if ids is None else np.asarray(ids)
    if len(ids) != len(t):
        raise MMLibError(f"worst_best: {len(ids)} ids for {len(t)} predictions.")
    df = pd.DataFrame({"id": ids, "y_true": t, "y_pred": p, "error": p - t, "abs_error": np.abs(p - t)})
    order = df.sort_values("abs_error", kind="stable")
    k = int(k)

    def table(rows: pd.DataFrame) -> pd.DataFrame:
        rows = rows.head(k).reset_index(drop=True)
        rows["smape"] = [smape_percent(a, b) for a, b in zip(rows["y_true"], rows["y_pred"])]
        return rows.round(digits)

    return table(order.iloc[::-1]), table(order)


__all__ = ["error_by_bins", "worst_best"]
