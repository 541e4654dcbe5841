"""Summaries of result records for the study notebooks (10, 20, 40): which modality
dominates, early / late fusion against the best single modality, over-fitting, the
fusion variants compared, and (spacecraft) how much of each planted part every model
recovered. Each function turns records into a ``Summary``: a table plus a sentence
whose every number is computed from the records.

A claim in a sentence ("clearly dominant", "better than early fusion") rests on a 95 %
interval (``mmlib.analysis.verdicts.Evidence``): a paired bootstrap over seeds and test rows
when ``predictions`` (``run_id -> test predictions``) and ``y_test`` are given, else the
seed spread.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mmlib.analysis.verdicts import Evidence, fmt_delta
from mmlib.reporting.records import fmt_mean_std, records_to_frame


@dataclass
class Summary:
    """What a notebook shows for one analysis: ``table``, a computed sentence ``text``, the
    key numbers in ``values``, and (``long``) the tidy per-seed frame behind the table, for plots."""

    table: pd.DataFrame
    text: str
    values: dict[str, Any]
    long: pd.DataFrame | None = None


def as_frame(records: pd.DataFrame | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Records (``RecordWriter.records`` or a frame of them) as a flat DataFrame."""
    return records if isinstance(records, pd.DataFrame) else records_to_frame(records)


def group_stats(df: pd.DataFrame, by: Sequence[str], metric: str) -> pd.DataFrame:
    """mean / std / n of ``metric`` (a column, e.g. ``metric_test_r2``, or its name without
    ``metric_``) per group; an empty frame when there is no such column or no row."""
    col = metric if metric in df.columns else f"metric_{metric}"
    if col not in df.columns or df.empty:
        return pd.DataFrame(columns=["mean", "std", "n"])
    g = df.groupby(list(by), dropna=False)[col]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()})


def _evidence(metric: str, predictions: Mapping[str, Any] | None, y_test: Any) -> Evidence:
    return Evidence(metric.removeprefix("metric_").removeprefix("test_"), predictions, y_test)


def saved_predictions(writer: Any, ds: Any) -> dict[str, Any]:
    """``{"predictions": ..., "y_test": ...}``: the test predictions of the records ``writer``
    has saved (``load_predictions`` of its ``out_dir``) and ``ds``'s test targets, the keyword
    arguments that give a summary its paired-bootstrap intervals (call after ``writer.save()``)."""
    from mmlib.reporting.records import load_predictions

    return {"predictions": load_predictions(writer.out_dir, writer.dataset, writer.notebook),
            "y_test": ds.target.detach().cpu().numpy()[np.asarray(ds.splits["test"])]}


def dominance_summary(records, metric: str, ceilings: Mapping[str, float] | None = None,
                      higher_is_better: bool = True, predictions: Mapping[str, Any] | None = None,
                      y_test: Any = None) -> Summary:
    """Rank the single-modality models; name the dominant modality and by how much it leads
    (dominant only when the interval of its lead excludes 0)."""
    df = as_frame(records)
    stats = group_stats(df, ["modality_set"], metric).sort_values("mean", ascending=not higher_is_better)
    stats["mean ± std (n)"] = [fmt_mean_std(r["mean"], r["std"], int(r["n"])) for _, r in stats.iterrows()]
    if ceilings:
        stats["ceiling"] = [ceilings.get(m, np.nan) for m in stats.index]
        stats["gap_to_ceiling"] = stats["ceiling"] - stats["mean"]
    best, second = stats.index[0], stats.index[1] if len(stats) > 1 else None
    lead = stats["mean"].iloc[0] - (stats["mean"].iloc[1] if second else np.nan)
    text = (f"The strongest single modality is **{best}** ({stats['mean ± std (n)'].iloc[0]} {metric})")
    clear = False
    if second:
        ev = _evidence(metric, predictions, y_test)
        d = ev.compare(df[df["modality_set"] == best], df[df["modality_set"] == second])
        clear = d["verdict"] == "better"
        text += (f", ahead of **{second}** ({stats['mean ± std (n)'].iloc[1]}) by {fmt_delta(d)} "
                 f"({ev.note(d['method'])}). " + ("The interval is above 0: it is clearly dominant."
                                                  if clear else "The lead is not separable from 0: no clear dominance."))
    if ceilings:
        text += " Gaps to the Bayes-optimal ceiling of each modality alone: " + ", ".join(
            f"{m} {r['gap_to_ceiling']:.3f}" for m, r in stats.iterrows() if np.isfinite(r.get("ceiling", np.nan))) + "."
    return Summary(stats.round(4), text, {"best": best, "second": second, "lead": lead, "clear": clear})


def _by_model(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    rows = []
    for model, g in df.groupby("model", sort=False):
        row = {"model": model, "modalities": g["modality_set"].iloc[0], "n_seeds": len(g)}
        for split in ("train", "val", "test"):
            col = f"metric_{split}_{metric}"
            if col in g:
                row[f"{split}_mean"] = g[col].mean()
                row[f"{split}_std"] = g[col].std(ddof=1) if len(g) > 1 else np.nan
        row["n_params"] = int(g["n_params"].mean())
        row["train_time_s"] = g["train_time_s"].mean()
        row["epochs"] = g["epochs"].mean()
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def fusion_summary(records, metric: str, higher_is_better: bool = True,
                   ceilings: Mapping[str, float] | None = None, predictions: Mapping[str, Any] | None = None,
                   y_test: Any = None) -> Summary:
    """Early / late fusion against the best single-modality model, with the interval of the gain."""
    df = as_frame(records)
    t = _by_model(df, metric)
    sign = 1 if higher_is_better else -1
    uni = t[t["modalities"].str.count(r"\+") == 0]
    fused = t[t["modalities"].str.count(r"\+") > 0]
    best_uni = (sign * uni["test_mean"]).idxmax()
    best_fused = (sign * fused["test_mean"]).idxmax()
    gain = t.loc[best_fused, "test_mean"] - t.loc[best_uni, "test_mean"]
    spread = float(np.sqrt(np.nansum([t.loc[best_fused, "test_std"] ** 2, t.loc[best_uni, "test_std"] ** 2])))
    t["gain_vs_best_unimodal"] = t["test_mean"] - t.loc[best_uni, "test_mean"]
    if ceilings:
        t["ceiling"] = [ceilings.get(m, np.nan) for m in t["modalities"]]
    ev = _evidence(metric, predictions, y_test)
    pick = lambda m: df[df["model"] == m]  # noqa: E731
    fmt = lambda m: fmt_mean_std(t.loc[m, "test_mean"], t.loc[m, "test_std"], int(t.loc[m, "n_seeds"]))  # noqa: E731
    d = ev.compare(pick(best_fused), pick(best_uni))
    words = {"better": "better than the best single modality", "worse": "worse than the best single modality",
             "not separable": "not separable from the best single modality"}
    text = (f"Best single modality: **{best_uni}** with test {metric} {fmt(best_uni)}. Best fusion: **{best_fused}** "
            f"with {fmt(best_fused)}: {fmt_delta(d)}, {words[d['verdict']]} ({ev.note(d['method'])}).")
    for f in fused.index:
        if f != best_fused:
            df_ = ev.compare(pick(f), pick(best_uni))
            text += f" {f}: {fmt(f)} ({fmt_delta(df_)} vs the best single modality, {df_['verdict']})."
    return Summary(t.round(4), text, {"best_unimodal": best_uni, "best_fused": best_fused, "gain": gain,
                                      "spread": spread, "interval": d})


def overfitting_table(records, metric: str) -> pd.DataFrame:
    """Train − validation gap of the primary metric per model (mean over seeds)."""
    df = as_frame(records)
    t = _by_model(df, metric)
    out = pd.DataFrame({"train": t.get("train_mean"), "val": t.get("val_mean"), "test": t.get("test_mean")})
    out["train_minus_val"] = out["train"] - out["val"]
    out["epochs_run"] = t["epochs"]
    return out.round(4)


def _patience(p: Any) -> str:
    return "no early stopping" if p is None or (isinstance(p, float) and np.isnan(p)) else str(int(p))


def convergence_summary(records: Sequence[Mapping[str, Any]], models: Sequence[str] | None = None) -> Summary | None:
    """Did training end before its budget? Per model (``records``: ``RecordWriter.records``, whose
    ``extra`` has ``best_epoch`` / ``stopped_early`` / ``max_epochs``): the best validation epoch
    and epochs run per seed against the budget, and how many seeds early stopping ended (the
    validation metric stopped improving for ``patience`` epochs before the budget ran out).
    A seed whose best epoch is the budget's last epoch was still improving. None when no
    record says its budget (records from before the budget was recorded)."""
    rows = []
    for r in records:
        ex = r.get("extra") or {}
        if "max_epochs" not in ex or ex.get("best_epoch") is None or (models is not None and r["model"] not in models):
            continue
        rows.append({"model": r["model"], "seed": int(r["seed"]), "best_epoch": int(ex["best_epoch"]),
                     "epochs_run": int(r.get("epochs") or 0), "max_epochs": int(ex["max_epochs"]),
                     "stopped_early": bool(ex.get("stopped_early")), "patience": ex.get("patience")})
    if not rows:
        return None
    long = pd.DataFrame(rows).drop_duplicates(["model", "seed"])
    long["still_improving"] = long["best_epoch"] >= long["max_epochs"]
    g = long.groupby("model", sort=False)
    t = pd.DataFrame({
        "budget (epochs, patience)": g.apply(lambda x: f"{x['max_epochs'].iloc[0]}, {_patience(x['patience'].iloc[0])}",
                                             include_groups=False),
        "best epoch / epochs run (per seed)": g.apply(lambda x: ", ".join(
            f"{b}/{e}" for b, e in zip(x["best_epoch"], x["epochs_run"])), include_groups=False),
        "stopped early": g["stopped_early"].sum().astype(int),
        "still improving at the end": g["still_improving"].sum().astype(int),
        "seeds": g["seed"].nunique()})
    n, stopped, open_ = len(long), int(long["stopped_early"].sum()), int(long["still_improving"].sum())
    text = (f"Early stopping ended {stopped} of {n} runs before their budget; "
            + (f"{open_} run(s) had their best validation score at the budget's last epoch "
               f"({', '.join(sorted(set(long.loc[long['still_improving'], 'model'])))}): those were still "
               "improving and a larger `min_steps` may help them." if open_ else
               "no run had its best validation score at the budget's last epoch."))
    return Summary(t, text, {"runs": n, "stopped_early": stopped, "still_improving": open_}, long)


def recovery_summary(records, shares: Mapping[str, float] | None) -> Summary | None:
    """Mean recovered fraction of each planted part per model (spacecraft only)."""
    if not shares:
        return None
    df = as_frame(records)
    cols = [c for c in df.columns if c.startswith("metric_test_recovered_")]
    if not cols:
        return None
    table = df.groupby("model", sort=False)[cols].mean()
    table.columns = [c.replace("metric_test_recovered_", "") for c in cols]
    table = table.round(3)
    lines = []
    if "synergy" in table:
        syn = table["synergy"].sort_values(ascending=False)
        lines.append("Synergy (text × image) recovered: " + ", ".join(f"{m} {v:.2f}" for m, v in syn.items()) +
                     f". Its planted share is {shares['synergy']:.2f} of the target variance.")
        late = [m for m in table.index if m.startswith("late")]
        if late:
            lines.append(f"Late fusion recovers {table.loc[late[0], 'synergy']:.2f} of it: averaging per-modality "
                         "predictions cannot express a product of two modalities' factors.")
    return Summary(table, " ".join(lines), {})


def variants_summary(records, metric: str, higher_is_better: bool = True, reference: str = "early",
                     predictions: Mapping[str, Any] | None = None, y_test: Any = None) -> Summary:
    """The fusion variants of notebook 40 ranked by test metric, with parameters, the
    coefficient of variation over seeds, the gain over the ``reference`` fusion and its
    interval; "best" only when the top one's interval against every other excludes 0."""
    df = as_frame(records)
    t = _by_model(df, metric)
    t = t.sort_values("test_mean", ascending=not higher_is_better)
    ev = _evidence(metric, predictions, y_test)
    _, best, tied, method = ev.rank(df, "model")
    if reference in t.index:
        t[f"gain_vs_{reference}"] = t["test_mean"] - t.loc[reference, "test_mean"]
        d = {m: ev.compare(df[df["model"] == m], df[df["model"] == reference]) for m in t.index if m != reference}
        t[f"vs_{reference}"] = [fmt_delta(d[m]) if m in d else "" for m in t.index]
    t["cv_over_seeds"] = t["test_std"] / t["test_mean"].abs()
    small = t["n_params"].idxmin()
    top = tied[0]
    text = ((f"Best: **{best}**" if best is not None else f"Not separable at the top: **{', '.join(tied)}**")
            + f" ({fmt_mean_std(t.loc[top, 'test_mean'], t.loc[top, 'test_std'], int(t.loc[top, 'n_seeds']))} test "
            f"{metric} for {top}, {int(t.loc[top, 'n_params']):,} parameters; {ev.note(method)}). "
            f"Smallest: **{small}** ({int(t.loc[small, 'n_params']):,} parameters).")
    if t["test_std"].notna().any():
        stable = t["test_std"].idxmin()
        text += f" Most stable over seeds: **{stable}** (std {t.loc[stable, 'test_std']:.4f})."
    if reference in t.index:
        better = [m for m, v in d.items() if v["verdict"] == "better"]
        text += (f" Fusions better than {reference} fusion (interval above 0): "
                 + (", ".join(f"{m} {fmt_delta(d[m])}" for m in better) if better else "none") + ".")
    return Summary(t.round(4), text, {"best": best, "tied": tied})


# experiment name of the top fusion retrained on each modality alone (notebook 40)
SINGLE_MODALITY_EXPERIMENT = "fusion_single_modality"


def single_modality_name(fusion: str, modality: str) -> str:
    """The model name of ``fusion`` trained on ``modality`` alone: ``"learned_weights[text]"``."""
    return f"{fusion}[{modality}]"


def top_by_validation(records, metric: str, higher_is_better: bool = True,
                      experiment: str = "fusion_variant") -> str:
    """The model of ``experiment`` with the best mean *validation* metric over seeds (the test
    split never chooses); ``ValueError`` when no record of it has one."""
    df = as_frame(records)
    col = f"metric_val_{metric.removeprefix('metric_').removeprefix('val_')}"
    sel = df[(df["experiment"] == experiment)] if "experiment" in df else df.iloc[0:0]
    if col not in sel or sel[col].notna().sum() == 0:
        raise ValueError(f"top_by_validation: no {experiment!r} record has {col}.")
    means = sel.groupby("model")[col].mean().dropna()
    return str(means.idxmax() if higher_is_better else means.idxmin())


def modality_gain_summary(records, fusion: str, metric: str, higher_is_better: bool = True,
                          predictions: Mapping[str, Any] | None = None, y_test: Any = None) -> Summary | None:
    """``fusion`` on every modality against the same fusion on each modality alone (records of
    ``SINGLE_MODALITY_EXPERIMENT`` named ``single_modality_name(fusion, m)``): the same
    architecture, budget and seeds, so the difference is what the other modalities add, not
    what the architecture adds. The table holds test mean ± std per version and the paired
    interval of (all modalities − this one); the sentence names the best single-modality
    version and says whether adding the others pays off. None when those records are missing."""
    df = as_frame(records)
    full = df[(df["model"] == fusion) & (df["experiment"] == "fusion_variant")]
    alone = df[(df["experiment"] == SINGLE_MODALITY_EXPERIMENT) & (df["fusion"] == fusion)]
    if full.empty or alone.empty:
        return None
    both = pd.concat([full, alone])
    t = _by_model(both, metric)
    ev = _evidence(metric, predictions, y_test)
    sign = 1 if higher_is_better else -1
    singles = sorted((m for m in t.index if m != fusion), key=lambda m: -sign * t.loc[m, "test_mean"])
    best = singles[0]
    t = t.loc[[fusion, *singles]]
    deltas = {m: ev.compare(full, both[both["model"] == m]) for m in singles}
    t["all_minus_this"] = [fmt_delta(deltas[m]) if m in deltas else "" for m in t.index]
    t["verdict"] = [deltas[m]["verdict"] if m in deltas else "all modalities" for m in t.index]
    fmt = lambda m: fmt_mean_std(t.loc[m, "test_mean"], t.loc[m, "test_std"], int(t.loc[m, "n_seeds"]))  # noqa: E731
    d = deltas[best]
    verdict = {"better": "adding the other modalities **pays off** in this architecture",
               "worse": f"**{best} is better**: in this architecture the other modalities cost",
               "not separable": "what the other modalities add to this architecture is **not separable** from 0"}
    text = (f"**{fusion}** on every modality: {fmt(fusion)} test {metric}; the same fusion on its best single "
            f"modality, **{best}**: {fmt(best)}. All − {best}: {fmt_delta(d)} ({ev.note(d['method'])}): "
            f"{verdict[d['verdict']]}.")
    cols = ["modalities", "n_seeds", "val_mean", "test_mean", "test_std", "n_params", "all_minus_this", "verdict"]
    return Summary(t[[c for c in cols if c in t]].round(4), text, {"best_single": best, "interval": d})


__all__ = ["Summary", "as_frame", "group_stats", "saved_predictions", "dominance_summary", "fusion_summary", "overfitting_table", "convergence_summary",
           "recovery_summary", "variants_summary", "SINGLE_MODALITY_EXPERIMENT", "single_modality_name",
           "top_by_validation", "modality_gain_summary"]
