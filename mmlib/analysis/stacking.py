"""Stacking: late fusion of whole models, networks and practitioner baselines together.

The fusions of ``mmlib.models`` combine modalities inside one network. A practitioner
who wants the best score also combines *models*: the predictions of several trained
networks and of the baselines (CatBoost, TF-IDF + linear) are mixed with
non-negative weights fitted on the validation split, and scored once on the test split.

- Regression: non-negative least squares with an intercept on the validation
  predictions (``fit_stack``). Non-negative weights keep the stack interpretable (a
  weight is how much of a model's prediction is kept) and resist over-fitting the
  3,500 validation rows of ``clothing``.
- Binary: the same on predicted probabilities, clipped to [0, 1].
- Multiclass: not supported (``stacked_ensemble`` says so and returns None).

The networks chose their best epoch on the same validation split, so the weights are
fitted on predictions that are slightly optimistic there; the test split is never
seen by either step.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mmlib.training.metrics import compute_metrics
from mmlib.training.tasks import primary_metric
from mmlib.analysis.summaries import Summary
from mmlib.reporting.records import RecordWriter, fmt_mean_std
from mmlib.utils import MMLibError


def fit_stack(val_preds: np.ndarray, y_val: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative weights ``w`` and an intercept ``b`` minimising ``|P w + b - y|²`` on the
    validation predictions ``P`` [n, k] (one column per model)."""
    from scipy.optimize import nnls

    p = np.asarray(val_preds, dtype=np.float64)
    y = np.asarray(y_val, dtype=np.float64).reshape(-1)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] == 0:
        raise MMLibError(f"fit_stack: predictions {p.shape} do not match the {y.shape[0]} validation targets.")
    if not (np.isfinite(p).all() and np.isfinite(y).all()):
        raise MMLibError("fit_stack: predictions or targets hold NaN/inf.")
    # centring removes the (unconstrained) intercept from the non-negative problem
    pm, ym = p.mean(axis=0), y.mean()
    w, _ = nnls(p - pm, y - ym)
    return w, float(ym - pm @ w)


def apply_stack(preds: np.ndarray, weights: np.ndarray, intercept: float, task: str) -> np.ndarray:
    out = np.asarray(preds, dtype=np.float64) @ weights + intercept
    return np.clip(out, 0.0, 1.0) if task == "binary" else out


def stacked_ensemble(dataset: Any, members: Mapping[str, Sequence[Any]], seeds: Sequence[int], writer: RecordWriter,
                     baselines: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                     experiment: str = "stacking") -> Summary | None:
    """Stack, for each seed, the networks ``members[name][i]`` (``RunResult`` of seed
    ``seeds[i]``, predicting through their trainer) and the fixed ``baselines``
    (``{name: {"val": pred, "test": pred}}``, the same for every seed).

    Writes one record per seed (model ``stack``, the weights in ``extra``) and returns a
    ``mmlib.analysis.summaries.Summary`` whose table holds, per member and for the stack, the test
    metric (mean ± std over seeds) and the mean stacking weight; None for a multiclass task.
    """
    task = dataset.task
    if task == "multiclass":
        return None
    metric, higher = primary_metric(task)
    y = dataset.target.detach().cpu().numpy()  # metrics read the labels as they are; the fit as floats
    sp = dataset.splits
    baselines = dict(baselines or {})
    names = [*members, *baselines]
    if len(names) < 2:
        raise MMLibError(f"stacked_ensemble: give at least two models to stack (got {names}).")
    for name, runs in members.items():
        if len(runs) != len(seeds):
            raise MMLibError(f"stacked_ensemble: member {name!r} has {len(runs)} run(s) for {len(seeds)} seed(s).")
        for r in runs:
            other = r.trainer.data.splits
            if any(not np.array_equal(other[k], sp[k]) for k in ("val", "test")):
                raise MMLibError(f"stacked_ensemble: member {name!r} was trained on other splits than {dataset.name!r}.")
    rows, weights, member_scores = [], [], {n: [] for n in names}
    for i, seed in enumerate(seeds):
        val_cols, test_cols = [], []
        for name, runs in members.items():
            tr = runs[i].trainer
            val_cols.append(np.asarray(tr.predict("val"), dtype=np.float64).reshape(-1))
            test_cols.append(np.asarray(tr.predict("test"), dtype=np.float64).reshape(-1))
        for name, pr in baselines.items():
            val_cols.append(np.asarray(pr["val"], dtype=np.float64).reshape(-1))
            test_cols.append(np.asarray(pr["test"], dtype=np.float64).reshape(-1))
        pv, pt = np.column_stack(val_cols), np.column_stack(test_cols)
        for j, n in enumerate(names):
            member_scores[n].append(compute_metrics(task, y[sp["test"]], pt[:, j])[metric])
        w, b = fit_stack(pv, y[sp["val"]].astype(np.float64))
        val_m = compute_metrics(task, y[sp["val"]], apply_stack(pv, w, b, task))
        test_m = compute_metrics(task, y[sp["test"]], apply_stack(pt, w, b, task))
        writer.add(experiment=experiment, model="stack", fusion="stack", modalities=list(dataset.modality_names),
                   condition="", seed=int(seed), n_params=int(len(w) + 1), train_time_s=0.0, epochs=0, device="cpu",
                   metrics={**{f"val_{k}": v for k, v in val_m.items()}, **{f"test_{k}": v for k, v in test_m.items()}},
                   extra={"members": names, "weights": [float(x) for x in w], "intercept": b})
        rows.append(test_m[metric])
        weights.append(w)
    wmean = np.mean(weights, axis=0)
    table = pd.DataFrame({
        f"test_{metric}": [fmt_mean_std(np.mean(member_scores[n]), np.std(member_scores[n], ddof=1)
                                        if len(seeds) > 1 else None) for n in names]
        + [fmt_mean_std(np.mean(rows), np.std(rows, ddof=1) if len(seeds) > 1 else None)],
        "mean": [np.mean(member_scores[n]) for n in names] + [np.mean(rows)],
        "stack_weight": [*np.round(wmean, 3), np.nan],
    }, index=pd.Index([*names, "stack"], name="model"))
    best_member = max(names, key=lambda n: np.mean(member_scores[n]) * (1 if higher else -1))
    gain = np.mean(rows) - np.mean(member_scores[best_member])
    used = [n for n, v in zip(names, wmean) if v > 1e-3]
    text = (f"The stack of {len(names)} models scores test {metric} {table.loc['stack', f'test_{metric}']} over "
            f"{len(seeds)} seed(s), {gain:+.3f} against its best member **{best_member}** "
            f"({table.loc[best_member, f'test_{metric}']}). It keeps {len(used)} of them with a non-zero weight: "
            + ", ".join(f"{n} {v:.2f}" for n, v in zip(names, wmean) if v > 1e-3) + ".")
    return Summary(table, text, {"stack": float(np.mean(rows)), "best_member": best_member, "gain": float(gain)})


__all__ = ["fit_stack", "apply_stack", "stacked_ensemble"]
