"""The modality ablations of notebook 30, run over seeds on trained models and written
as result records: take a modality away by retraining without it or by dropping it at
inference (``drop_ablation``), corrupt it with noise at increasing levels
(``noise_ablation``: robustness curves, relative and effective robustness), and split
the fused score among the modalities with exact Shapley values, by masking and by
retraining (``shapley_ablation``). The single-model measurements they repeat live in
``mmlib.analysis.robustness`` and ``mmlib.analysis.attribution``.

``subset_runs`` maps a set of modalities (any iterable: a frozenset from
``attribution.all_subsets``, a tuple) to the runs of a model trained on that subset,
one per seed, in the order of ``full_runs``.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mmlib.analysis.attribution import all_subsets, shapley_values, subset_values_by_masking
from mmlib.analysis.robustness import (DROP_MODES, drop_modality, effective_robustness, relative_robustness,
                                       robustness_curve)
from mmlib.analysis.summaries import Summary
from mmlib.reporting.records import RecordWriter, fmt_mean_std


def _by_set(subset_runs: Mapping[Iterable[str], list]) -> dict[frozenset[str], list]:
    return {frozenset(k): v for k, v in subset_runs.items()}


def _add_evaluation(writer: RecordWriter, run: Any, experiment: str, condition: str, metrics: Mapping[str, float],
                    **fields: Any) -> None:
    """Record an evaluation of ``run``'s trained model (no training: time 0); ``fields``
    override the run's own (model, n_params, epochs)."""
    rec = run.record
    kw = {"model": rec["model"], "fusion": rec["fusion"], "modalities": rec["modalities"], "n_params": rec["n_params"],
          "epochs": rec["epochs"], **fields}
    writer.add(experiment=experiment, condition=condition, seed=rec["seed"], metrics=dict(metrics),
               train_time_s=0.0, device=rec["device"], **kw)


def drop_ablation(full_runs: Sequence[Any], subset_runs: Mapping[Iterable[str], list], metric: str,
                  writer: RecordWriter, shares: Mapping[str, float] | None = None,
                  ceilings: Mapping[str, float] | None = None, modes: Sequence[str] = DROP_MODES) -> Summary:
    """Per modality: the fall in test metric when retraining without it and when dropping
    it at inference (each mode), over seeds; records every evaluation (experiment
    ``drop_at_inference``, model = the full run's model, condition ``<modality>:<mode>``)."""
    by_set = _by_set(subset_runs)
    mods = sorted(full_runs[0].record["modalities"])
    rows = []
    for i, run in enumerate(full_runs):
        clean = float(run.metrics["test"][metric])
        seed = run.record["seed"]
        for m in mods:
            rest = frozenset(mods) - {m}
            if rest in by_set:
                retrained = float(by_set[rest][i].metrics["test"][metric])
                rows.append({"modality": m, "ablation": "retrain without", "seed": seed, "score": retrained,
                             "drop": clean - retrained})
            for mode in modes:
                met = drop_modality(run.trainer, m, mode=mode, split="test")
                _add_evaluation(writer, run, "drop_at_inference", f"{m}:{mode}",
                                {f"test_{k}": v for k, v in met.items()})
                rows.append({"modality": m, "ablation": f"drop at inference ({mode})", "seed": seed,
                             "score": float(met[metric]), "drop": clean - float(met[metric])})
    long = pd.DataFrame(rows)
    table = long.groupby(["modality", "ablation"])["drop"].agg(["mean", "std", "count"]).unstack("ablation").round(4)
    lines = []
    retr = long[long.ablation == "retrain without"].groupby("modality")["drop"].agg(["mean", "std", "count"])
    mask = long[long.ablation == "drop at inference (mask)"].groupby("modality")["drop"].mean()
    for m, r in retr.iterrows():
        s = (f"**{m}**: retraining without it costs {fmt_mean_std(r['mean'], r['std'], int(r['count']))} test "
             f"{metric}; masking it in the trained model costs {mask.get(m, np.nan):.3f}")
        if ceilings:
            planted = ceilings["+".join(mods)] - ceilings.get("+".join(x for x in mods if x != m), 0.0)
            s += f" (planted unique share {planted:.3f})"
        lines.append(s)
    worst = mask.idxmax() if len(mask) else None
    text = "; ".join(lines) + "."
    if worst is not None:
        text += (f" The trained model relies most on **{worst}**: masking it costs {mask[worst]:.3f}, "
                 f"against {retr.loc[worst, 'mean']:.3f} for a model retrained without it"
                 + (" — a retrained model recovers part of the loss from the other modalities." if
                    mask[worst] > retr.loc[worst, "mean"] + 0.01 else "."))
    return Summary(table, text, {}, long)


def noise_ablation(runs_by_model: Mapping[str, list], levels: Sequence[float], metric: str,
                   writer: RecordWriter, reference: str = "late_fusion") -> Summary:
    """Robustness curves per model × modality × seed (records: experiment ``noise``,
    condition ``<modality>:<level>``), plus relative robustness and the effective
    robustness of every model against ``reference`` (a key of ``runs_by_model``)."""
    rows = []
    for model, runs in runs_by_model.items():
        for run in runs:
            for m in sorted(run.record["modalities"]):
                curve = robustness_curve(run.trainer, m, levels, split="test", seed=run.record["seed"])
                for _, r in curve.iterrows():
                    rows.append({"model": model, "modality": m, "seed": run.record["seed"], "level": r["level"],
                                 metric: r[metric]})
                    _add_evaluation(writer, run, "noise", f"{m}:{r['level']:g}", {f"test_{metric}": float(r[metric])},
                                    model=model)
    long = pd.DataFrame(rows)
    out = []
    for (model, m, seed), g in long.groupby(["model", "modality", "seed"]):
        g = g.sort_values("level")
        row = {"model": model, "modality": m, "seed": seed,
               "relative_robustness": relative_robustness(g["level"], g[metric])}
        ref = long[(long.model == reference) & (long.modality == m) & (long.seed == seed)].sort_values("level")
        if model != reference and len(ref) == len(g):
            row["effective_robustness_vs_late"] = effective_robustness(g["level"], g[metric], ref[metric])
        out.append(row)
    per_seed = pd.DataFrame(out)
    table = per_seed.groupby(["model", "modality"]).agg(["mean", "std"]).drop(columns="seed", level=0).round(4)
    lines = []
    if "effective_robustness_vs_late" in per_seed:
        er = per_seed.dropna(subset=["effective_robustness_vs_late"]).groupby(["model", "modality"])[
            "effective_robustness_vs_late"].mean()
        for (model, m), v in er.items():
            lines.append(f"noise on **{m}**: {model}'s effective robustness against {reference} is {v:+.3f} "
                         + ("(it degrades less)" if v > 0 else "(it degrades more)"))
    clean = long[long.level == long.level.min()].groupby("model")[metric].mean()
    worst = long[long.level == long.level.max()].groupby(["model", "modality"])[metric].mean()
    for (model, m), v in worst.items():
        if model in clean:
            lines.append(f"{model} with {m} at the highest noise level: {v:.3f} (clean {clean[model]:.3f})")
    return Summary(table, "; ".join(lines) + ".", {}, long)


def shapley_ablation(full_runs: Sequence[Any], subset_runs: Mapping[Iterable[str], list], metric: str,
                     writer: RecordWriter, shares: Mapping[str, float] | None = None,
                     ceilings: Mapping[str, float] | None = None) -> Summary:
    """Exact Shapley values over modalities by masking (the full model) and by retraining
    (a model per subset), per seed; on spacecraft also the planted split. Records:
    experiment ``shapley``, model = the full run's model, condition ``<method>:<modality>``."""
    by_set = _by_set(subset_runs)
    mods = sorted(full_runs[0].record["modalities"])
    subsets = [s for s in all_subsets(mods) if s]
    rows = []
    for i, run in enumerate(full_runs):
        by_mask = subset_values_by_masking(run.trainer, mods, split="test", metric=metric)
        retrain = None
        if all(s in by_set for s in subsets):
            retrain = {frozenset(): by_mask[frozenset()],
                       **{s: float(by_set[s][i].metrics["test"][metric]) for s in subsets}}
        for method, values in (("mask", by_mask), ("retrain", retrain)):
            if values is None:
                continue
            for m, v in shapley_values(values, mods).items():
                rows.append({"modality": m, "method": method, "seed": run.record["seed"], "shapley": v})
                _add_evaluation(writer, run, "shapley", f"{method}:{m}", {"shapley": v}, n_params=0, epochs=0)
    if ceilings:
        planted = {frozenset(): 0.0, **{s: ceilings["+".join(sorted(s))] for s in subsets}}
        for m, v in shapley_values(planted, mods).items():
            rows.append({"modality": m, "method": "planted (ceilings)", "seed": -1, "shapley": v})
    long = pd.DataFrame(rows)
    table = long.groupby(["modality", "method"])["shapley"].agg(["mean", "std"]).unstack("method").round(4)
    means = long.groupby(["method", "modality"])["shapley"].mean()
    lines = []
    for method in long["method"].unique():
        s = means[method].sort_values(ascending=False)
        lines.append(f"by {method}: " + ", ".join(f"{m} {v:.3f}" for m, v in s.items()))
    dom = {meth: means[meth].idxmax() for meth in long["method"].unique()}
    text = "Shapley values of test " + metric + " — " + "; ".join(lines) + ". Dominant modality " + ", ".join(
        f"{k}: **{v}**" for k, v in dom.items()) + "."
    return Summary(table, text, {"dominant": dom}, long)


__all__ = ["drop_ablation", "noise_ablation", "shapley_ablation"]
