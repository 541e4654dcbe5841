"""Tabular preprocessing fitted on the training split only.

Numeric columns are standardised with training mean / std; categorical columns
are mapped to ids 1.. by the training categories, with 0 for a category never
seen in training (an unknown category at test time is data, not a crash) and
for a missing value. NaN / inf numeric values follow ``nan_policy``:

- ``"raise"`` (default): refuse, naming the column and the first bad row;
- ``"impute"``: replace by the training median and warn once per column.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from mmlib.utils import MMLibError

NAN_POLICIES = ("raise", "impute")


@dataclass
class TabularEncoder:
    num_columns: list[str]
    cat_columns: list[str]
    nan_policy: str = "raise"
    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)
    medians: dict[str, float] = field(default_factory=dict)
    categories: dict[str, list[str]] = field(default_factory=dict)

    def fit(self, frame: pd.DataFrame, train_rows: np.ndarray, source: str = "table") -> "TabularEncoder":
        if self.nan_policy not in NAN_POLICIES:
            raise MMLibError(f"nan_policy={self.nan_policy!r} is not one of {NAN_POLICIES}.")
        check_columns(frame, self.num_columns + self.cat_columns, source)
        train = frame.iloc[train_rows]
        for col in self.num_columns:
            vals = _numeric(frame[col], col, source)
            bad = ~np.isfinite(vals)
            if bad.any() and self.nan_policy == "raise":
                row = int(np.flatnonzero(bad)[0])
                raise MMLibError(
                    f"{source}: numeric column {col!r} has {int(bad.sum())} NaN/inf value(s) (first at row {row}). "
                    "Fix the data, or pass nan_policy='impute' to fill them with the training median."
                )
            tr = vals[train_rows]
            tr = tr[np.isfinite(tr)]
            if len(tr) == 0:
                raise MMLibError(f"{source}: numeric column {col!r} has no finite value in the training split.")
            self.means[col] = float(tr.mean())
            self.stds[col] = float(tr.std()) or 1.0
            self.medians[col] = float(np.median(tr))
        for col in self.cat_columns:
            seen = train[col].dropna().astype(str)
            self.categories[col] = sorted(seen.unique().tolist())
        return self

    def transform(self, frame: pd.DataFrame, source: str = "table") -> tuple[torch.Tensor, torch.Tensor]:
        check_columns(frame, self.num_columns + self.cat_columns, source)
        num = np.zeros((len(frame), len(self.num_columns)), dtype=np.float32)
        for j, col in enumerate(self.num_columns):
            vals = _numeric(frame[col], col, source)
            bad = ~np.isfinite(vals)
            if bad.any():
                if self.nan_policy == "raise":
                    row = int(np.flatnonzero(bad)[0])
                    raise MMLibError(
                        f"{source}: numeric column {col!r} has NaN/inf at row {row}. "
                        "Fix the data or pass nan_policy='impute'."
                    )
                warnings.warn(
                    f"{source}: column {col!r}: {int(bad.sum())} NaN/inf value(s) imputed with the training median "
                    f"{self.medians[col]:.4g}.",
                    stacklevel=2,
                )
                vals = np.where(bad, self.medians[col], vals)
            num[:, j] = (vals - self.means[col]) / self.stds[col]
        cat = np.zeros((len(frame), len(self.cat_columns)), dtype=np.int64)
        for j, col in enumerate(self.cat_columns):
            lookup = {c: i + 1 for i, c in enumerate(self.categories[col])}
            raw = frame[col]
            cat[:, j] = [0 if pd.isna(v) else lookup.get(str(v), 0) for v in raw]
        return torch.from_numpy(num), torch.from_numpy(cat)

    @property
    def cardinalities(self) -> list[int]:
        """Embedding table sizes per categorical column, including the 0 (unknown) slot."""
        return [len(self.categories[c]) + 1 for c in self.cat_columns]

    def info(self) -> dict:
        return {
            "num_columns": list(self.num_columns),
            "cat_columns": list(self.cat_columns),
            "cat_cardinalities": self.cardinalities,
        }


def check_columns(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        near = ", ".join(map(str, list(frame.columns)[:40]))
        raise MMLibError(f"{source}: column(s) {missing} not found. Columns present: {near}.")


def _numeric(series: pd.Series, col: str, source: str) -> np.ndarray:
    try:
        return pd.to_numeric(series, errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as exc:
        coerced = pd.to_numeric(series, errors="coerce")
        bad_rows = np.flatnonzero(coerced.isna() & series.notna())
        row = int(bad_rows[0]) if len(bad_rows) else -1
        raise MMLibError(
            f"{source}: numeric column {col!r} holds a non-numeric value {series.iloc[row]!r} at row {row}; "
            "declare the column as categorical or fix the value."
        ) from exc
