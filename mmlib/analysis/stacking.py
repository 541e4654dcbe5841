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

Two stacks are fitted per seed: ``stack_unimodal`` over the members that read one
modality (single-modality networks, TF-IDF and CatBoost on one modality) and ``stack``
over every member (fusion networks and multimodal baselines too). Their paired
interval (``mmlib.analysis.verdicts.paired_delta``, stack − stack_unimodal) is what
fusing *inside* models adds over combining single-modality models.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mmlib.analysis.summaries import Summary
from mmlib.analysis.verdicts import bootstrap_note, direction, fmt_delta, paired_delta
from mmlib.reporting.records import RecordWriter, fmt_mean_std
from mmlib.training.metrics import compute_metrics
from mmlib.training.tasks import primary_metric
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


def _members(dataset: Any, members: Mapping[str, Sequence[Any]], seeds: Sequence[int],
             baselines: Mapping[str, Any]) -> dict[str, tuple[list[str], dict[int, tuple[np.ndarray, np.ndarray]]]]:
    """``{name: (modalities, {seed: (val predictions, test predictions)})}`` of every member."""
    sp = dataset.splits
    flat = lambda a: np.asarray(a, dtype=np.float64).reshape(-1)  # noqa: E731
    out = {}
    for name, runs in members.items():
        if len(runs) != len(seeds):
            raise MMLibError(f"stacked_ensemble: member {name!r} has {len(runs)} run(s) for {len(seeds)} seed(s).")
        for r in runs:
            other = r.trainer.data.splits
            if any(not np.array_equal(other[k], sp[k]) for k in ("val", "test")):
                raise MMLibError(f"stacked_ensemble: member {name!r} was trained on other splits than {dataset.name!r}.")
        out[name] = (list(runs[0].record["modalities"]),
                     {int(s): (flat(r.trainer.predict("val")), flat(r.trainer.predict("test"))) for s, r in zip(seeds, runs)})
    for name, res in baselines.items():
        by_seed = {int(s): res for s in seeds} if "predictions" in res else {int(s): res[s] for s in seeds}
        out[name] = (list(next(iter(by_seed.values()))["modalities"]),
                     {s: (flat(r["predictions"]["val"]), flat(r["predictions"]["test"])) for s, r in by_seed.items()})
    return out


def unimodal_members(ds: Any, profile: Mapping[str, Any], notebook: str, device: str = "auto",
                     executor: Any = None, workers: int = 0, ray_address: str | None = None) -> dict[str, list]:
    """Notebook 10's single-modality networks as stacking members: ``{"<m>_only": [run per
    seed]}``, one per modality of ``ds``, with 10's exact configuration (early fusion on one
    modality), so they are read back from the run cache when 10 ran with the same code and
    profile (trained here otherwise; no records are written). ``stack_unimodal`` needs them:
    without the best single-modality network, stack − stack_unimodal would credit fusion with
    what a stronger encoder of one modality already gives (``clothing`` with mpnet: the text-only
    network is the best single model)."""
    from mmlib.training.experiments import run_grid

    names = list(ds.modality_names)
    grid = [dict(modalities=[m], model_name=f"{m}_only") for m in names]
    runs = run_grid(ds, grid, profile["seeds"], fusion="early", profile=profile, notebook=notebook,
                    experiment="unimodal", device=device, progress=False, executor=executor, workers=workers,
                    ray_address=ray_address)
    return {f"{m}_only": r for m, r in zip(names, runs)}


def stacked_ensemble(dataset: Any, members: Mapping[str, Sequence[Any]], seeds: Sequence[int], writer: RecordWriter,
                     baselines: Mapping[str, Any] | None = None, experiment: str = "stacking",
                     n_boot: int = 1000) -> Summary | None:
    """Stack, for each seed, the networks ``members[name][i]`` (``RunResult`` of seed
    ``seeds[i]``, predicting through their trainer) and the ``baselines``: ``{name: {seed:
    result}}`` (``mmlib.analysis.practitioner.baseline_predictions``: result dicts with
    ``modalities`` and ``predictions`` ``{"val", "test"}``), or ``{name: result}`` for one
    fit used at every seed.

    Two stacks per seed (module docstring): ``stack_unimodal`` (the single-modality
    members; skipped when every member is one, or none is) and ``stack`` (all). Writes one
    record per stack and seed (weights in ``extra``, test predictions attached) and returns
    a ``mmlib.analysis.summaries.Summary`` whose table holds, per member and stack, the test
    metric (mean ± std over seeds) and the mean stacking weights, and whose text gives the
    paired interval of stack − stack_unimodal; None for a multiclass task.
    """
    task = dataset.task
    if task == "multiclass":
        return None
    metric, higher = primary_metric(task)
    y = dataset.target.detach().cpu().numpy()  # metrics read the labels as they are; the fit as floats
    sp = dataset.splits
    preds = _members(dataset, members, seeds, dict(baselines or {}))
    names = list(preds)
    if len(names) < 2:
        raise MMLibError(f"stacked_ensemble: give at least two models to stack (got {names}).")
    uni = [n for n in names if len(preds[n][0]) == 1]
    stacks = {"stack": names, **({"stack_unimodal": uni} if 0 < len(uni) < len(names) else {})}
    scores: dict[str, list[float]] = {n: [] for n in [*names, *stacks]}
    weights: dict[str, list[np.ndarray]] = {s: [] for s in stacks}
    test_preds: dict[str, dict[int, np.ndarray]] = {s: {} for s in stacks}
    for seed in [int(s) for s in seeds]:
        pv = np.column_stack([preds[n][1][seed][0] for n in names])
        pt = np.column_stack([preds[n][1][seed][1] for n in names])
        for j, n in enumerate(names):
            scores[n].append(compute_metrics(task, y[sp["test"]], pt[:, j])[metric])
        for stack, cols in stacks.items():
            idx = [names.index(n) for n in cols]
            w, b = fit_stack(pv[:, idx], y[sp["val"]].astype(np.float64))
            pred = apply_stack(pt[:, idx], w, b, task)
            val_m = compute_metrics(task, y[sp["val"]], apply_stack(pv[:, idx], w, b, task))
            test_m = compute_metrics(task, y[sp["test"]], pred)
            writer.add(experiment=experiment, model=stack, fusion="stack", condition="", seed=seed,
                       modalities=sorted({m for n in cols for m in preds[n][0]}), n_params=int(len(w) + 1),
                       train_time_s=0.0, epochs=0, device="cpu", predictions=pred,
                       metrics={**{f"val_{k}": v for k, v in val_m.items()}, **{f"test_{k}": v for k, v in test_m.items()}},
                       extra={"members": cols, "weights": [float(x) for x in w], "intercept": b})
            scores[stack].append(test_m[metric])
            weights[stack].append(np.array([w[cols.index(n)] if n in cols else np.nan for n in names]))
            test_preds[stack][seed] = pred
    sd = lambda v: np.std(v, ddof=1) if len(v) > 1 else None  # noqa: E731
    rows = [*names, *stacks]
    table = pd.DataFrame({f"test_{metric}": [fmt_mean_std(np.mean(scores[n]), sd(scores[n])) for n in rows],
                          "mean": [np.mean(scores[n]) for n in rows]}, index=pd.Index(rows, name="model"))
    for stack in stacks:
        table[f"{stack}_weight"] = [*np.round(np.mean(weights[stack], axis=0), 3), *[np.nan] * len(stacks)]
    return _summary(table, stacks, scores, test_preds, y[sp["test"]], task, metric, higher, len(seeds), n_boot)


def _summary(table: pd.DataFrame, stacks: Mapping[str, list[str]], scores: Mapping[str, list[float]],
             test_preds: Mapping[str, dict[int, np.ndarray]], y_test: np.ndarray, task: str, metric: str,
             higher: bool, n_seeds: int, n_boot: int) -> Summary:
    col = f"test_{metric}"
    names = list(stacks["stack"])
    best_member = max(names, key=lambda n: np.mean(scores[n]) * (1 if higher else -1))
    gain = float(np.mean(scores["stack"]) - np.mean(scores[best_member]))
    w = table.loc[names, "stack_weight"]
    text = (f"The stack of all {len(names)} models scores test {metric} {table.loc['stack', col]} over {n_seeds} "
            f"seed(s), {gain:+.3f} against its best member **{best_member}** ({table.loc[best_member, col]}). "
            f"It keeps {int((w > 1e-3).sum())} of them with a non-zero weight: "
            + ", ".join(f"{n} {v:.2f}" for n, v in w.items() if v > 1e-3) + ".")
    values: dict[str, Any] = {"stack": float(np.mean(scores["stack"])), "best_member": best_member, "gain": gain}
    if "stack_unimodal" in stacks:
        d = paired_delta(y_test, test_preds["stack"], test_preds["stack_unimodal"], task, metric, n_boot=n_boot)
        verdict = direction(d, higher)
        text += (f" Restricted to the {len(stacks['stack_unimodal'])} single-modality members, the stack scores "
                 f"{table.loc['stack_unimodal', col]}. All members − single-modality members only: {fmt_delta(d)} "
                 f"({bootstrap_note(len(y_test), n_boot)}): "
                 + {"better": "the fusion networks and multimodal baselines **add a gain** over combining "
                              "single-modality models.",
                    "worse": "adding the multimodal members **makes the stack worse**.",
                    "not separable": "what the multimodal members add is **not separable** from zero: combining "
                                     "single-modality models does as well."}[verdict])
        values.update(stack_unimodal=float(np.mean(scores["stack_unimodal"])), fusion_gain=d, fusion_verdict=verdict)
    return Summary(table, text, values)


__all__ = ["fit_stack", "apply_stack", "stacked_ensemble"]
