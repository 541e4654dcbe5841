"""Summaries of result records (``summarize``, ``fmt_mean_std``: mean ± std over
seeds; re-exported by ``mmlib.reporting.records``) and the per-dataset experiment
log (``experiments.md``): one section per notebook, one markdown table per experiment."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from mmlib.reporting.lock import utc_now
from mmlib.utils import MMLibError

MAX_TABLE_METRICS = 6


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The ``metric_*`` columns of a records frame."""
    return [c for c in df.columns if c.startswith("metric_")]


def _metric_col(df: pd.DataFrame, metric: str) -> str:
    for col in (metric, f"metric_{metric}"):
        if col in df.columns:
            return col
    names = [c[len("metric_"):] for c in metric_columns(df)]
    raise MMLibError(f"no metric {metric!r} in these records. Available metrics: {', '.join(names) or '(none)'}.")


def summarize(df: pd.DataFrame, by: str | Sequence[str], metric: str) -> pd.DataFrame:
    """Mean, std (ddof=1) and n (number of non-missing values, i.e. seeds) of
    ``metric`` (``"test_r2"`` or ``"metric_test_r2"``) per group of ``by``.
    Groups keep their order of first appearance."""
    by = [by] if isinstance(by, str) else list(by or [])
    missing = [b for b in by if b not in df.columns]
    if missing:
        raise MMLibError(f"summarize: unknown column(s) {missing}. Columns: {', '.join(map(str, df.columns))}.")
    col = _metric_col(df, metric)
    if not by:
        s = df[col]
        return pd.DataFrame({"mean": [s.mean()], "std": [s.std()], "n": [int(s.count())]})
    out = (df.groupby(by, dropna=False, sort=False)[col]
             .agg(mean="mean", std="std", n="count").reset_index())
    out["n"] = out["n"].astype(int)
    return out


def fmt_mean_std(mean: float, std: float | None = None, n: int | None = None, digits: int = 3) -> str:
    """``"0.812 ± 0.004 (n=3)"``; the ± part is left out when std is undefined
    (one seed), the ``(n=…)`` part when ``n`` is None; NaN mean → ``"n/a"``."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    text = f"{mean:.{digits}f}"
    if std is not None and np.isfinite(std) and (n is None or n > 1):
        text += f" ± {std:.{digits}f}"
    if n is not None:
        text += f" (n={int(n)})"
    return text


def _metric_rank(name: str) -> int:
    # Held-out numbers first: they are the ones the analysis quotes.
    for i, prefix in enumerate(("test_", "val_")):
        if name.startswith(prefix):
            return i
    return 3 if name.startswith("train_") else 2


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt_int(x: float) -> str:
    return "" if x is None or not np.isfinite(x) else f"{int(round(x)):,}"


def _provenance(df: pd.DataFrame) -> str:
    """``Profile `standard`, seed offset 0, commit `abc1234`, dataset fingerprint `…`.`` (several values listed)."""
    parts = []
    for col, label, code in (("profile", "profile", True), ("seed_offset", "seed offset", False),
                             ("git_commit", "commit", True), ("dataset_fingerprint", "dataset fingerprint", True)):
        values = [v for v in dict.fromkeys(df[col]) if v is not None and v == v] if col in df.columns else []
        if values:
            parts.append(f"{label} " + ", ".join(f"`{v}`" if code else str(v) for v in values))
    return ("Recorded with " + "; ".join(parts) + ".") if parts else ""


def experiments_markdown(df: pd.DataFrame, dataset: str, digits: int = 3) -> str:
    """The experiment log of one dataset as markdown, generated from its records:
    one section per notebook, one table per experiment with mean ± std over
    seeds of its main metrics (held-out first, at most ``MAX_TABLE_METRICS``),
    parameter count, training time and epochs."""
    sub = df[df["dataset"] == dataset] if len(df) else df
    lines = [f"# Experiment log: {dataset}", ""]
    if not len(sub):
        lines += [f"No result records for dataset `{dataset}` yet.", ""]
        return "\n".join(lines)
    notebooks = sorted(sub["notebook"].unique())
    devices = sorted({d for d in sub["device"].dropna().unique()})
    lines += [
        f"Generated from {len(sub)} result records of {len(notebooks)} notebook(s) on {utc_now()} "
        f"(devices: {', '.join(devices) or 'not recorded'}). Nothing here is typed by hand: "
        "rerun the notebooks to refresh it.",
        "",
        "Each metric cell is mean ± std over seeds (std omitted for one seed); `seeds` is the number of "
        "seeds in the group; params, train time and epochs are means over seeds.",
        "",
    ]
    keys = ["model", "fusion", "modality_set", "condition"]
    for nb in notebooks:
        nbdf = sub[sub["notebook"] == nb]
        lines += [f"## {nb}", ""]
        prov = _provenance(nbdf)
        if prov:
            lines += [prov, ""]
        for exp in dict.fromkeys(nbdf["experiment"]):  # first-appearance order
            e = nbdf[nbdf["experiment"] == exp]
            mcols = [c for c in metric_columns(e) if e[c].notna().any()]
            names = sorted((c[len("metric_"):] for c in mcols), key=_metric_rank)  # stable: keeps file order within a rank
            shown, hidden = names[:MAX_TABLE_METRICS], names[MAX_TABLE_METRICS:]
            # Leave out columns that say nothing here (all "none" fusion, all-clean condition, no timings).
            cols = [k for k in keys if not (k == "fusion" and (e[k] == "none").all())
                    and not (k == "condition" and (e[k] == "").all())]
            seeds = sorted(e["seed"].unique())
            lines += [f"### {exp}", "",
                      f"{len(e)} record{'s' if len(e) != 1 else ''}, seed{'s' if len(seeds) != 1 else ''} "
                      f"{', '.join(map(str, seeds))}.", ""]
            g = e.groupby(cols, dropna=False, sort=False)
            header = [{"modality_set": "modalities"}.get(c, c) for c in cols] + ["seeds"] + shown
            extra_cols = []
            if e["n_params"].notna().any():
                extra_cols.append("params")
            if e["train_time_s"].notna().any():
                extra_cols.append("train time (s)")
            if e["epochs"].notna().any():
                extra_cols.append("epochs")
            header += extra_cols
            rows = []
            for key, grp in g:
                key = key if isinstance(key, tuple) else (key,)
                row: list[Any] = [("" if (isinstance(k, float) and np.isnan(k)) else k) for k in key]
                row.append(grp["seed"].nunique())
                for m in shown:
                    s = grp[f"metric_{m}"]
                    row.append(fmt_mean_std(s.mean(), s.std(), None, digits))
                if "params" in extra_cols:
                    row.append(_fmt_int(grp["n_params"].mean()))
                if "train time (s)" in extra_cols:
                    t = grp["train_time_s"]
                    row.append(fmt_mean_std(t.mean(), t.std(), None, 1))
                if "epochs" in extra_cols:
                    ep = grp["epochs"].mean()
                    row.append("" if not np.isfinite(ep) else f"{ep:.1f}".removesuffix(".0"))
                rows.append(row)
            lines += [_md_table(header, rows), ""]
            if hidden:
                lines += [f"Other metrics in these records: {', '.join(hidden)}.", ""]
    return "\n".join(lines)


__all__ = ["MAX_TABLE_METRICS", "experiments_markdown", "fmt_mean_std", "metric_columns", "summarize"]
