"""How much of each planted part a model's predictions recovered (spacecraft only).

The target is ``y = Σ_k w_k · part_k + noise`` with independent, standardised
parts and ``w_k = sqrt(share_k)``. For any prediction ``p``,
``cov(p, part_k) / w_k`` is 1 for the Bayes-optimal predictor that sees part k
and 0 for a predictor that carries nothing of it (e.g. late fusion on the
text×image synergy part, which no single modality reveals). The recovered share
of variance is ``share_k · recovery_k`` clipped to [0, share_k].
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mmlib.data.base import MultimodalDataset

PLANTED_PARTS = ("tabular", "redundant", "text", "image", "synergy")


def has_planted_structure(ds: MultimodalDataset) -> bool:
    return "latent" in ds.meta and "shares" in ds.meta and ds.task == "regression" and ds.target_name == "target"


def planted_recovery(ds: MultimodalDataset, rows: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``{"recovered_<part>": fraction}`` for each planted part, from predictions on ``rows``."""
    if not has_planted_structure(ds):
        return {}
    lat = ds.meta["latent"].iloc[np.asarray(rows)]
    p = np.asarray(pred, dtype=float).reshape(-1)
    p = p - p.mean()
    out = {}
    for part in PLANTED_PARTS:
        w = math.sqrt(ds.meta["shares"][part])
        if w == 0:
            continue
        z = lat[f"part_{part}"].to_numpy()
        z = z - z.mean()
        out[f"recovered_{part}"] = float(np.mean(p * z) / w)
    return out


def recovery_table(records: pd.DataFrame, shares: dict[str, float]) -> pd.DataFrame:
    """Mean recovered fraction per model (rows) and part (columns) from result records
    that carry ``metric_test_recovered_<part>`` columns."""
    cols = {c: c.replace("metric_test_recovered_", "") for c in records.columns if c.startswith("metric_test_recovered_")}
    return records.groupby("model")[list(cols)].mean().rename(columns=cols).round(3)
