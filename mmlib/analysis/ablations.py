"""The modality ablations of notebook 30, run over seeds on trained models and written
as result records: take a modality away by retraining without it or by dropping it at
inference (``drop_ablation``), corrupt it with noise at increasing levels
(``noise_ablation``: robustness curves, relative and effective robustness), and split
the fused score among the modalities with exact Shapley values of the trained model (by
masking where every missing path was trained, interventionally otherwise) beside the
retraining reference (``shapley_ablation``). A masked figure on a missing-modality path
the model never trained is flagged ``untrained_path`` and never presented as a finding.
The single-model measurements they repeat live in ``mmlib.analysis.robustness`` and
``mmlib.analysis.attribution``.

``subset_runs`` maps a set of modalities (any iterable: a frozenset from
``attribution.all_subsets``, a tuple) to the runs of a model trained on that subset,
one per seed, in the order of ``full_runs``.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mmlib.analysis.attribution import (all_subsets, constant_metrics, shapley_values, subset_values_by_masking,
                                        subset_values_interventional)
from mmlib.analysis.robustness import (DROP_MODES, drop_modality, effective_robustness, relative_robustness,
                                       robustness_curve, untrained_paths)
from mmlib.analysis.summaries import Summary
from mmlib.reporting.records import RecordWriter, fmt_mean_std
from mmlib.training.metrics import higher_is_better
from mmlib.utils import MMLibError

SHAPLEY_METHODS = ("auto", "mask", "interventional")
MASK_LABEL = "drop at inference (mask)"


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
    ``drop_at_inference``, model = the full run's model, condition ``<modality>:<mode>``,
    ``extra.untrained_path``: ``[modality]`` when the mode is ``mask`` and the model
    never trained that missing path (``missing_path_trained``), else ``[]``).

    The per-seed frame (``long``) carries ``score``, ``drop``, ``constant`` (the score
    of a constant prediction) and ``untrained_path``; the table adds the masked score,
    the constant score and the untrained-path flag per modality (``drop_table``), and
    the text (``drop_text``) never presents a masked figure on an untrained path as a
    finding."""
    by_set = _by_set(subset_runs)
    mods = sorted(full_runs[0].record["modalities"])
    rows = []
    for i, run in enumerate(full_runs):
        clean = float(run.metrics["test"][metric])
        seed = run.record["seed"]
        untrained = untrained_paths(run.trainer, mods)
        const = float(constant_metrics(run.trainer.data, "test")[metric])
        base = {"seed": seed, "constant": const}
        for m in mods:
            rest = frozenset(mods) - {m}
            if rest in by_set:
                retrained = float(by_set[rest][i].metrics["test"][metric])
                rows.append({"modality": m, "ablation": "retrain without", **base, "score": retrained,
                             "drop": clean - retrained, "untrained_path": False})
            for mode in modes:
                flag = [m] if mode == "mask" and m in untrained else []
                met = drop_modality(run.trainer, m, mode=mode, split="test")
                _add_evaluation(writer, run, "drop_at_inference", f"{m}:{mode}",
                                {f"test_{k}": v for k, v in met.items()}, extra={"untrained_path": flag})
                rows.append({"modality": m, "ablation": f"drop at inference ({mode})", **base,
                             "score": float(met[metric]), "drop": clean - float(met[metric]),
                             "untrained_path": bool(flag)})
    long = pd.DataFrame(rows)
    flagged = sorted(long.loc[long["untrained_path"], "modality"].unique())
    return Summary(drop_table(long), drop_text(long, metric, ceilings=ceilings),
                   {"untrained_path": flagged, "constant": float(long["constant"].mean())}, long)


def _mask_rows(long: pd.DataFrame) -> pd.DataFrame:
    return long[long["ablation"] == MASK_LABEL]


def drop_table(long: pd.DataFrame) -> pd.DataFrame:
    """The drop table of ``drop_ablation``'s per-seed frame: mean / std / count of the
    drop per modality × ablation, then the masked score, the constant prediction's score
    and whether the masked path was untrained (in any seed)."""
    table = long.groupby(["modality", "ablation"])["drop"].agg(["mean", "std", "count"]).unstack("ablation").round(4)
    mask = _mask_rows(long).groupby("modality")
    if len(_mask_rows(long)):
        table[("mask path", "masked score")] = mask["score"].mean().round(4)
        table[("mask path", "constant prediction")] = mask["constant"].mean().round(4)
        table[("mask path", "untrained path")] = mask["untrained_path"].any()
    return table


def _worse(a: float, b: float, metric: str) -> bool:
    return a < b if higher_is_better(metric) else a > b


def drop_text(long: pd.DataFrame, metric: str, ceilings: Mapping[str, float] | None = None) -> str:
    """The sentence under the drop table, composed from ``drop_ablation``'s per-seed frame
    (columns modality, ablation, seed, score, drop, constant, untrained_path). A masked
    figure on an untrained path is flagged **untrained path** and left out of the
    comparison; a masked score worse than a constant prediction is said to be so."""
    mods = sorted(long["modality"].unique())
    retr = long[long["ablation"] == "retrain without"].groupby("modality")["drop"].agg(["mean", "std", "count"])
    mask = _mask_rows(long).groupby("modality").agg(drop=("drop", "mean"), score=("score", "mean"),
                                                    constant=("constant", "mean"), untrained=("untrained_path", "any"))
    lines = []
    for m in mods:
        parts = []
        if m in retr.index:
            r = retr.loc[m]
            parts.append(f"retraining without it costs {fmt_mean_std(r['mean'], r['std'], int(r['count']))} "
                         f"test {metric}")
        if m in mask.index:
            k = mask.loc[m]
            below = _worse(k["score"], k["constant"], metric)
            vs_const = (f", worse than a constant prediction ({k['constant']:.3f})" if below else "")
            if k["untrained"]:
                parts.append(f"masking it gives {k['score']:.3f}{vs_const} on a missing-modality path the model "
                             "never trained (**untrained path**: under 1 % of training rows lacked it and no modality "
                             "dropout; not a measure of reliance)")
            else:
                parts.append(f"masking it in the trained model costs {k['drop']:.3f}"
                             + (f" and leaves {k['score']:.3f}{vs_const}: the model does not survive losing it"
                                if below else ""))
        s = f"**{m}**: " + "; ".join(parts) if parts else f"**{m}**: no measurement"
        if ceilings:
            planted = ceilings["+".join(mods)] - ceilings.get("+".join(x for x in mods if x != m), 0.0)
            s += f" (planted unique share {planted:.3f})"
        lines.append(s)
    text = "; ".join(lines) + "."
    trained = mask[~mask["untrained"]] if len(mask) else mask
    untrained = list(mask.index[mask["untrained"]]) if len(mask) else []
    if len(trained):
        worst = trained["drop"].idxmax()
        text += f" Among the masked paths the model was trained on, it relies most on **{worst}**: masking it costs " \
                f"{trained.loc[worst, 'drop']:.3f}"
        if worst in retr.index:
            text += (f", against {retr.loc[worst, 'mean']:.3f} for a model retrained without it"
                     + (" — a retrained model recovers part of the loss from the other modalities." if
                        trained.loc[worst, "drop"] > retr.loc[worst, "mean"] + 0.01 else "."))
        else:
            text += "."
    if untrained:
        text += (f" Masked figures for {', '.join(untrained)} are not findings: "
                 + ("that path was" if len(untrained) == 1 else "those paths were")
                 + " never trained; the retraining figures and the interventional Shapley values carry the comparison.")
    return text


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
                     ceilings: Mapping[str, float] | None = None, method: str = "auto", draws: int = 8) -> Summary:
    """Exact Shapley values over modalities of the full model and by retraining (a model
    per subset, the reference), per seed; on spacecraft also the planted split.

    ``method`` picks how the full model's subset values are measured: ``"mask"``
    (``subset_values_by_masking``), ``"interventional"`` (``subset_values_interventional``,
    ``draws`` background draws seeded by the run's seed) or ``"auto"``: masking when
    every modality's missing path was trained (``missing_path_trained``), else
    interventional. Records: experiment ``shapley``, model = the full run's model,
    condition ``<method>:<modality>`` (method ``mask`` / ``interventional`` /
    ``retrain``), ``extra.shapley_method`` and ``extra.untrained_path`` (the untrained
    masked paths; ``[]`` unless the method is ``mask``). The text says which method
    ran and whether it agrees with retraining in sign and ranking (``shapley_agreement``)."""
    if method not in SHAPLEY_METHODS:
        raise MMLibError(f"shapley_ablation: unknown method {method!r}; choose one of {SHAPLEY_METHODS}.")
    by_set = _by_set(subset_runs)
    mods = sorted(full_runs[0].record["modalities"])
    subsets = [s for s in all_subsets(mods) if s]
    rows, used, flagged = [], set(), set()
    for i, run in enumerate(full_runs):
        untrained = untrained_paths(run.trainer, mods)
        how = "mask" if method == "mask" or (method == "auto" and not untrained) else "interventional"
        used.add(how)
        if how == "mask":
            values = subset_values_by_masking(run.trainer, mods, split="test", metric=metric)
            flagged.update(untrained)
        else:
            values = subset_values_interventional(run.trainer, mods, split="test", draws=draws,
                                                  seed=int(run.record["seed"]), metric=metric)
        retrain = None
        if all(s in by_set for s in subsets):
            retrain = {frozenset(): float(constant_metrics(run.trainer.data, "test")[metric]),
                       **{s: float(by_set[s][i].metrics["test"][metric]) for s in subsets}}
        for meth, vals, flags in ((how, values, untrained if how == "mask" else []), ("retrain", retrain, [])):
            if vals is None:
                continue
            for m, v in shapley_values(vals, mods).items():
                rows.append({"modality": m, "method": meth, "seed": run.record["seed"], "shapley": v,
                             "untrained_path": m in flags})
                _add_evaluation(writer, run, "shapley", f"{meth}:{m}", {"shapley": v}, n_params=0, epochs=0,
                                extra={"shapley_method": meth, "untrained_path": list(flags)})
    if ceilings:
        planted = {frozenset(): 0.0, **{s: ceilings["+".join(sorted(s))] for s in subsets}}
        for m, v in shapley_values(planted, mods).items():
            rows.append({"modality": m, "method": "planted (ceilings)", "seed": -1, "shapley": v,
                         "untrained_path": False})
    long = pd.DataFrame(rows)
    table = long.groupby(["modality", "method"])["shapley"].agg(["mean", "std"]).unstack("method").round(4)
    means = long.groupby(["method", "modality"])["shapley"].mean()
    agreement = shapley_agreement(long)
    lines = []
    for meth in long["method"].unique():
        s = means[meth].sort_values(ascending=False)
        lines.append(f"by {meth}: " + ", ".join(f"{m} {v:.3f}" for m, v in s.items()))
    dom = {meth: means[meth].idxmax() for meth in long["method"].unique()}
    text = "Shapley values of test " + metric + " — " + "; ".join(lines) + ". Dominant modality " + ", ".join(
        f"{k}: **{v}**" for k, v in dom.items()) + "."
    if "interventional" in used:
        text += (" The full model's values are interventional (the other modalities taken from random training "
                 "rows) because masking would use a missing-modality path the model never trained.")
    if flagged:
        text += f" Masking values involve the untrained path of {', '.join(sorted(flagged))}: not findings."
    text += " " + agreement_text(agreement)
    return Summary(table, text.strip(), {"dominant": dom, "method": sorted(used), "untrained_path": sorted(flagged),
                                         "agreement": agreement}, long)


def shapley_agreement(long: pd.DataFrame, reference: str = "retrain") -> pd.DataFrame:
    """Whether each method's mean Shapley values (over seeds) agree with ``reference``'s:
    one row per other method (planted values excluded) with ``same_sign`` (every
    modality's value has the reference's sign), ``sign_differs`` (the modalities where it
    does not), ``same_ranking`` (the same order, largest first), both rankings and the
    largest absolute difference."""
    cols = ["method", "same_sign", "sign_differs", "same_ranking", "ranking", "reference_ranking", "max_abs_diff"]
    means = long.groupby(["method", "modality"])["shapley"].mean()
    if reference not in means.index.get_level_values(0):
        return pd.DataFrame(columns=cols)
    ref = means[reference]
    ref_rank = list(ref.sort_values(ascending=False, kind="stable").index)
    out = []
    for meth in long["method"].unique():
        if meth in (reference, "planted (ceilings)"):
            continue
        v = means[meth].reindex(ref.index)
        differs = [m for m in ref.index if np.sign(v[m]) != np.sign(ref[m])]
        rank = list(v.sort_values(ascending=False, kind="stable").index)
        out.append({"method": meth, "same_sign": not differs, "sign_differs": differs,
                    "same_ranking": rank == ref_rank, "ranking": rank, "reference_ranking": ref_rank,
                    "max_abs_diff": float((v - ref).abs().max())})
    return pd.DataFrame(out, columns=cols)


def agreement_text(agreement: pd.DataFrame, reference: str = "retrain") -> str:
    """One sentence per row of ``shapley_agreement``: agreement in sign and in ranking."""
    lines = []
    for _, r in agreement.iterrows():
        sign = ("agree in sign for every modality" if r["same_sign"] else
                f"differ in sign for {', '.join(r['sign_differs'])}")
        rank = (f"rank the modalities the same ({' > '.join(r['ranking'])})" if r["same_ranking"] else
                f"rank them differently ({r['method']}: {' > '.join(r['ranking'])}; {reference}: "
                f"{' > '.join(r['reference_ranking'])})")
        lines.append(f"The {r['method']} and {reference} Shapley values {sign} and {rank}; "
                     f"largest difference {r['max_abs_diff']:.3f}.")
    return " ".join(lines)


__all__ = ["SHAPLEY_METHODS", "drop_ablation", "drop_table", "drop_text", "noise_ablation", "shapley_ablation",
           "shapley_agreement", "agreement_text"]
