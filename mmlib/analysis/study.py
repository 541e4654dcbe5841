"""Notebook-level summaries: turn result records into the tables and computed
sentences the study notebooks show. Every number in a sentence comes from records."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mmlib.reporting.records import RecordWriter, fmt_mean_std, records_to_frame


@dataclass
class Summary:
    table: pd.DataFrame
    text: str
    values: dict[str, Any]


def as_frame(records: pd.DataFrame | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return records if isinstance(records, pd.DataFrame) else records_to_frame(records)


def add_baseline_record(writer: RecordWriter, res: Mapping[str, Any], experiment: str, model: str, seed: int,
                        condition: str = "") -> dict:
    """One record from a baselines.* result dict ({"val": metrics, "test": metrics, ...})."""
    metrics = {f"{split}_{k}": v for split in ("train", "val", "test") if split in res for k, v in res[split].items()}
    return writer.add(experiment=experiment, model=model, fusion="none", modalities=list(res["modalities"]),
                      condition=condition, seed=seed, metrics=metrics, n_params=int(res.get("n_params") or 0),
                      train_time_s=float(res.get("train_time_s", 0.0)), epochs=int(res.get("n_trees") or 0),
                      device="cpu", extra={k: v for k, v in res.items() if k in ("n_trees", "params")})


def group_stats(df: pd.DataFrame, by: Sequence[str], metric: str) -> pd.DataFrame:
    """mean / std / n of ``metric`` (a ``metric_*`` column or its short name) per group."""
    col = metric if metric in df.columns else f"metric_{metric}"
    g = df.groupby(list(by), dropna=False)[col]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()})
    return out


def dominance_summary(records, metric: str, ceilings: Mapping[str, float] | None = None,
                      higher_is_better: bool = True) -> Summary:
    """Rank the single-modality models; name the dominant modality and by how much it leads."""
    df = as_frame(records)
    stats = group_stats(df, ["modality_set"], metric).sort_values("mean", ascending=not higher_is_better)
    stats["mean ± std (n)"] = [fmt_mean_std(r["mean"], r["std"], int(r["n"])) for _, r in stats.iterrows()]
    if ceilings:
        stats["ceiling"] = [ceilings.get(m, np.nan) for m in stats.index]
        stats["gap_to_ceiling"] = stats["ceiling"] - stats["mean"]
    best, second = stats.index[0], stats.index[1] if len(stats) > 1 else None
    lead = stats["mean"].iloc[0] - (stats["mean"].iloc[1] if second else np.nan)
    pooled = np.sqrt(np.nanmean(stats["std"].iloc[:2] ** 2)) if second else np.nan
    clear = bool(second) and np.isfinite(pooled) and lead > 3 * max(pooled, 1e-9)
    text = (f"The strongest single modality is **{best}** ({stats['mean ± std (n)'].iloc[0]} {metric})")
    if second:
        text += (f", ahead of **{second}** ({stats['mean ± std (n)'].iloc[1]}) by {lead:.3f}. "
                 + ("With a lead over three times the seed spread, it is clearly dominant."
                    if clear else "The lead is within three seed standard deviations: no clear dominance."))
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
                   ceilings: Mapping[str, float] | None = None) -> Summary:
    """Early / late fusion against the best single-modality model, with the gain in
    units of the seed spread."""
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
    fmt = lambda m: fmt_mean_std(t.loc[m, "test_mean"], t.loc[m, "test_std"], int(t.loc[m, "n_seeds"]))  # noqa: E731
    text = (f"Best single modality: **{best_uni}** with test {metric} {fmt(best_uni)}. Best fusion: **{best_fused}** "
            f"with {fmt(best_fused)}, a gain of {gain:+.3f}")
    text += (f" ({abs(gain) / spread:.1f}× the combined seed spread)." if spread > 0 else ".")
    for f in fused.index:
        if f != best_fused:
            text += f" {f}: {fmt(f)} ({t.loc[f, 'gain_vs_best_unimodal']:+.3f} vs the best single modality)."
    return Summary(t.round(4), text, {"best_unimodal": best_uni, "best_fused": best_fused, "gain": gain,
                                      "spread": spread})


def overfitting_table(records, metric: str) -> pd.DataFrame:
    """Train − validation gap of the primary metric per model (mean over seeds)."""
    df = as_frame(records)
    t = _by_model(df, metric)
    out = pd.DataFrame({"train": t.get("train_mean"), "val": t.get("val_mean"), "test": t.get("test_mean")})
    out["train_minus_val"] = out["train"] - out["val"]
    out["epochs_run"] = t["epochs"]
    return out.round(4)


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


# ------------------------------------------------------------------ 30 ablations
def all_subsets(mods: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of modalities as a sorted tuple, smallest first."""
    from mmlib.analysis.robustness import all_subsets as _all

    return [tuple(sorted(s)) for s in _all(list(mods)) if s]


def _metric(d: Mapping[str, float], metric: str) -> float:
    return float(d[metric])


def drop_ablation(full_runs, subset_runs: Mapping[tuple, list], metric: str, writer: RecordWriter,
                  shares: Mapping[str, float] | None = None, ceilings: Mapping[str, float] | None = None,
                  modes: Sequence[str] = ("mask", "zero", "mean")) -> Summary:
    """Per modality: the fall in test metric when retraining without it and when dropping
    it at inference (each mode), over seeds; records every evaluation."""
    from mmlib.analysis.robustness import drop_modality

    mods = sorted(full_runs[0].record["modalities"])
    full_key = tuple(mods)
    rows = []
    for i, run in enumerate(full_runs):
        clean = _metric(run.metrics["test"], metric)
        seed = run.record["seed"]
        for m in mods:
            rest = tuple(x for x in mods if x != m)
            if rest in subset_runs:
                retrained = _metric(subset_runs[rest][i].metrics["test"], metric)
                rows.append({"modality": m, "ablation": "retrain without", "seed": seed, "score": retrained,
                             "drop": clean - retrained})
            for mode in modes:
                met = drop_modality(run.trainer, m, mode=mode, split="test")
                writer.add(experiment="drop_at_inference", model="early_fusion", fusion=run.record["fusion"],
                           modalities=mods, condition=f"{m}:{mode}", seed=seed,
                           metrics={f"test_{k}": v for k, v in met.items()}, n_params=run.record["n_params"],
                           train_time_s=0.0, epochs=run.record["epochs"], device=run.record["device"])
                rows.append({"modality": m, "ablation": f"drop at inference ({mode})", "seed": seed,
                             "score": _metric(met, metric), "drop": clean - _metric(met, metric)})
    long = pd.DataFrame(rows)
    table = long.groupby(["modality", "ablation"])["drop"].agg(["mean", "std", "count"]).unstack("ablation").round(4)
    lines = []
    retr = long[long.ablation == "retrain without"].groupby("modality")["drop"].agg(["mean", "std", "count"])
    mask = long[long.ablation == "drop at inference (mask)"].groupby("modality")["drop"].mean()
    for m, r in retr.iterrows():
        s = (f"**{m}**: retraining without it costs {fmt_mean_std(r['mean'], r['std'], int(r['count']))} test "
             f"{metric}; masking it in the trained model costs {mask.get(m, np.nan):.3f}")
        if ceilings:
            planted = ceilings["+".join(full_key)] - ceilings.get("+".join(tuple(x for x in mods if x != m)), 0.0)
            s += f" (planted unique share {planted:.3f})"
        lines.append(s)
    worst = mask.idxmax() if len(mask) else None
    text = "; ".join(lines) + "."
    if worst is not None:
        text += (f" The trained model relies most on **{worst}**: masking it costs {mask[worst]:.3f}, "
                 f"against {retr.loc[worst, 'mean']:.3f} for a model retrained without it"
                 + (" — a retrained model recovers part of the loss from the other modalities." if
                    mask[worst] > retr.loc[worst, "mean"] + 0.01 else "."))
    return _with_long(Summary(table, text, {}), long)


def _with_long(s: Summary, long: pd.DataFrame) -> Summary:
    s.long = long  # type: ignore[attr-defined]
    return s


def noise_ablation(runs_by_model: Mapping[str, list], levels: Sequence[float], metric: str,
                   writer: RecordWriter, reference: str = "late_fusion") -> Summary:
    """Robustness curves per model × modality × seed, plus relative / effective robustness."""
    from mmlib.analysis.robustness import effective_robustness, relative_robustness, robustness_curve

    rows = []
    for model, runs in runs_by_model.items():
        for run in runs:
            for m in sorted(run.record["modalities"]):
                curve = robustness_curve(run.trainer, m, levels, split="test", seed=run.record["seed"])
                for _, r in curve.iterrows():
                    rows.append({"model": model, "modality": m, "seed": run.record["seed"], "level": r["level"],
                                 metric: r[metric]})
                    writer.add(experiment="noise", model=model, fusion=run.record["fusion"],
                               modalities=run.record["modalities"], condition=f"{m}:{r['level']:g}",
                               seed=run.record["seed"], metrics={f"test_{metric}": float(r[metric])},
                               n_params=run.record["n_params"], train_time_s=0.0, epochs=run.record["epochs"],
                               device=run.record["device"])
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
        er = per_seed.dropna(subset=["effective_robustness_vs_late"]).groupby("modality")[
            "effective_robustness_vs_late"].mean()
        for m, v in er.items():
            lines.append(f"noise on **{m}**: early fusion's effective robustness against late fusion is {v:+.3f} "
                         + ("(it degrades less)" if v > 0 else "(it degrades more)"))
    clean = long[long.level == long.level.min()].groupby("model")[metric].mean()
    worst = long[long.level == long.level.max()].groupby(["model", "modality"])[metric].mean()
    for (model, m), v in worst.items():
        if model in clean:
            lines.append(f"{model} with {m} at the highest noise level: {v:.3f} (clean {clean[model]:.3f})")
    return _with_long(Summary(table, "; ".join(lines) + ".", {}), long)


def shapley_ablation(full_runs, subset_runs: Mapping[tuple, list], metric: str, writer: RecordWriter,
                     shares: Mapping[str, float] | None = None, ceilings: Mapping[str, float] | None = None) -> Summary:
    """Exact Shapley values over modalities by masking (the full model) and by retraining
    (a model per subset), per seed; on spacecraft also the planted split."""
    from mmlib.analysis.robustness import constant_metrics, shapley_values, subset_values_by_masking

    mods = sorted(full_runs[0].record["modalities"])
    rows = []
    for i, run in enumerate(full_runs):
        seed = run.record["seed"]
        by_mask = subset_values_by_masking(run.trainer, mods, split="test", metric=metric)
        ds = run.trainer.dataset if hasattr(run.trainer, "dataset") else None
        retrain = {frozenset(): by_mask[frozenset()]}
        ok = True
        for s in all_subsets(mods):
            if s in subset_runs:
                retrain[frozenset(s)] = _metric(subset_runs[s][i].metrics["test"], metric)
            else:
                ok = False
        for method, values in (("mask", by_mask), ("retrain", retrain if ok else None)):
            if values is None:
                continue
            phi = shapley_values(values, mods)
            for m, v in phi.items():
                rows.append({"modality": m, "method": method, "seed": seed, "shapley": v})
                writer.add(experiment="shapley", model="early_fusion", fusion="early", modalities=mods,
                           condition=f"{method}:{m}", seed=seed, metrics={"shapley": v}, n_params=0,
                           train_time_s=0.0, epochs=0, device=run.record["device"])
    if ceilings:
        planted = {frozenset(): 0.0}
        for s in all_subsets(mods):
            planted[frozenset(s)] = ceilings["+".join(s)]
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
    return _with_long(Summary(table, text, {"dominant": dom}), long)


# ------------------------------------------------------------ 40 fusion variants
def variants_summary(records, metric: str, higher_is_better: bool = True, reference: str = "early") -> Summary:
    df = as_frame(records)
    t = _by_model(df, metric)
    sign = 1 if higher_is_better else -1
    t = t.sort_values("test_mean", ascending=not higher_is_better)
    if reference in t.index:
        t[f"gain_vs_{reference}"] = t["test_mean"] - t.loc[reference, "test_mean"]
    t["cv_over_seeds"] = t["test_std"] / t["test_mean"].abs()
    best = (sign * t["test_mean"]).idxmax()
    small = t["n_params"].idxmin()
    text = (f"Best: **{best}** ({fmt_mean_std(t.loc[best, 'test_mean'], t.loc[best, 'test_std'], int(t.loc[best, 'n_seeds']))}"
            f" test {metric}, {int(t.loc[best, 'n_params']):,} parameters). "
            f"Smallest: **{small}** ({int(t.loc[small, 'n_params']):,} parameters).")
    if t["test_std"].notna().any():
        stable = t["test_std"].idxmin()
        text += f" Most stable over seeds: **{stable}** (std {t.loc[stable, 'test_std']:.4f})."
    if reference in t.index:
        ref_std = t.loc[reference, "test_std"] if pd.notna(t.loc[reference, "test_std"]) else 0.0
        better = t[(sign * t[f"gain_vs_{reference}"]) > t["test_std"].fillna(0) + ref_std]
        text += (f" Fusions better than {reference} fusion by more than the seed spread: "
                 + (", ".join(better.index) if len(better) else "none") + ".")
    return Summary(t.round(4), text, {"best": best})


def modality_weights(runs: Mapping[str, Any], split: str = "test", batch_size: int = 1024) -> pd.DataFrame:
    """Mean per-row modality weight for every run whose fusion exposes ``weights``."""
    import torch

    rows = {}
    for name, run in runs.items():
        model, ds = run.model, run.trainer.data
        mods = list(model.encoders.keys()) if hasattr(model, "encoders") else []
        model.eval()
        acc, n = None, 0
        with torch.no_grad():
            for b in ds.batches(split, batch_size):
                out = model(b["inputs"], b["present"])
                w = out.get("weights")
                if w is None:
                    break
                w = w.float()
                acc = w.sum(0) if acc is None else acc + w.sum(0)
                n += len(w)
        if acc is not None and n and acc.numel() == len(mods):
            rows[name] = pd.Series((acc / n).cpu().numpy(), index=mods)
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).T.round(3)


# ------------------------------------------------------------- 50 imbalance
def pick_weak_modality(ds, weak: str, records_dir, metric: str) -> str:
    """``weak`` itself, or for ``"auto"`` the strongest single modality in 10's published
    records (falling back to the largest single-modality ceiling, then the first modality)."""
    from mmlib.reporting.records import load_records
    from mmlib.utils import MMLibError

    if weak != "auto":
        if weak not in ds.modalities:
            raise MMLibError(f"weak_modality={weak!r} is not a modality of {ds.name}: {ds.modality_names}.")
        return weak
    try:
        recs = load_records(records_dir, dataset=ds.name, notebook="10_unimodal_baselines")
        recs = recs[recs["experiment"] == "unimodal"]
        col = f"metric_test_{metric}"
        if len(recs) and col in recs:
            best = recs.groupby("modality_set")[col].mean().idxmax()
            if best in ds.modalities:
                return best
    except Exception:  # no published records yet: fall back
        pass
    if "ceilings" in ds.meta:
        return max(ds.modality_names, key=lambda m: ds.meta["ceilings"].get(m, 0.0))
    return ds.modality_names[0]


def imbalance_conditions(ds, weak: str, fewer_rows: float, corrupt: float, truncate: float) -> list[dict]:
    """The weakenings to run: fewer rows and corrupted features of ``weak``, and truncated
    text (on ``weak`` if it is text, else on the first text modality)."""
    conds = [{"modality": weak, "how": "fewer_rows", "level": fewer_rows},
             {"modality": weak, "how": "corrupt", "level": corrupt}]
    texts = [m for m, mod in ds.modalities.items() if mod.kind == "text"]
    if texts:
        conds.append({"modality": weak if weak in texts else texts[0], "how": "truncate", "level": truncate})
    for c in conds:
        c["label"] = f"{c['modality']}:{c['how']}={c['level']:g}"
    return conds


def imbalance_experiment(ds, conditions: list[dict], remedies: Mapping[str, tuple], profile: Mapping, notebook: str,
                         device: str, writer: RecordWriter, metric: str, weak: str) -> Summary:
    """Train every (condition, remedy) over the profile's seeds (plus the clean model
    with no remedy); record test score, score with the weakened modality masked and
    with only it present; classify adapt / collapse / degrade."""
    from mmlib.analysis.robustness import drop_modality
    from mmlib.training.experiments import run_fusion
    from mmlib.analysis.imbalance import contribution_table, weaken

    mods = ds.modality_names
    rows, contributions = [], {}
    settings = [({"modality": weak, "how": "none", "level": 0.0, "label": "clean"}, "none")]
    settings += [(c, r) for c in conditions for r in remedies]
    for cond, remedy in settings:
        model_kwargs, train_kwargs = remedies[remedy]
        seeds = profile.get("imbalance_seeds") or profile["seeds"]
        for seed in seeds:
            data = ds if cond["how"] == "none" else weaken(ds, cond["modality"], cond["how"], cond["level"], seed=seed)
            track = seed == seeds[0]
            run = run_fusion(data, "early", mods, seed, profile, notebook, "imbalance", condition=cond["label"],
                             model_kwargs=model_kwargs, train_kwargs={**train_kwargs, "track_modalities": track},
                             device=device, writer=None, model_name=remedy, progress=False)
            test = _metric(run.metrics["test"], metric)
            target = cond["modality"]
            without = _metric(drop_modality(run.trainer, target, "mask", "test"), metric)
            others = [m for m in mods if m != target]
            only = _metric(run.trainer.evaluate("test", present_override={m: False for m in others}), metric) \
                if others else test
            rec = dict(run.record)
            rec["metrics"] = {**rec["metrics"], "test_without_weak": without, "test_only_weak": only,
                              "reliance_on_weak": test - without}
            writer.add(rec)
            rows.append({"condition": cond["label"], "remedy": remedy, "seed": seed, "test": test,
                         "without_weak": without, "only_weak": only, "reliance_on_weak": test - without})
            if track:
                c = contribution_table(run.fit)
                c = c[c["quantity"] == "contribution"].assign(remedy=remedy)
                contributions.setdefault(cond["label"], []).append(c)
    long = pd.DataFrame(rows)
    table = long.groupby(["condition", "remedy"])[["test", "without_weak", "only_weak", "reliance_on_weak"]].agg(
        ["mean", "std"]).round(4)
    clean = long[long.condition == "clean"]
    clean_test, clean_rel = clean["test"].mean(), clean["reliance_on_weak"].mean()
    lines = [f"Clean model: test {metric} {clean_test:.3f}; masking {weak} costs it {clean_rel:.3f}."]
    verdicts = {}
    for label in [c["label"] for c in conditions]:
        g = long[(long.condition == label)].groupby("remedy")[["test", "reliance_on_weak", "only_weak"]].mean()
        if "none" not in g.index:
            continue
        base = g.loc["none"]
        if base["reliance_on_weak"] < 0.1 * max(clean_rel, 1e-6) and label.startswith(weak + ":"):
            verdict = "collapses onto the other modalities (the weakened one is nearly ignored)"
        elif clean_test - base["test"] < 0.01:
            verdict = "adapts (test score within 0.01 of the clean model)"
        else:
            verdict = f"degrades by {clean_test - base['test']:.3f}"
        verdicts[label] = verdict
        best = g["test"].idxmax()
        lines.append(f"**{label}**: plain training scores {base['test']:.3f} and relies on the weakened modality "
                     f"for {base['reliance_on_weak']:.3f} — it {verdict}. Best remedy: **{best}** "
                     f"({g.loc[best, 'test']:.3f}, {g.loc[best, 'test'] - base['test']:+.3f} vs none).")
    contrib = {k: pd.concat(v, ignore_index=True) for k, v in contributions.items()}
    s = Summary(table, " ".join(lines), {"verdicts": verdicts})
    s.long = long  # type: ignore[attr-defined]
    s.contributions = contrib  # type: ignore[attr-defined]
    return s


def other_target_experiment(dataset: str, target: str, profile: Mapping, notebook: str, device: str,
                            writer: RecordWriter, fusions: Sequence[str] = ("early",), unimodal: bool = True,
                            baselines: bool = True) -> Summary:
    """The same models on another target of ``dataset`` (e.g. clothing's binary
    ``Recommended IND``): each single modality and each of ``fusions`` over the profile's
    seeds, plus one fit each of CatBoost (tabular + text) and TF-IDF + linear (+ tabular)
    where the dataset has raw texts. Records: experiment ``other_target``, condition ``target=<target>``.
    The summary table has mean ± std of every test metric of that task per model."""
    from mmlib.data import load_for_profile
    from mmlib.training.experiments import run_over_seeds

    ds = load_for_profile(dataset, dict(profile), target=target)
    cond = f"target={target}"
    start = len(writer.records)
    kw = dict(profile=profile, notebook=notebook, experiment="other_target", condition=cond, device=device,
              writer=writer, progress=False)
    if unimodal:
        for m in ds.modality_names:
            run_over_seeds(ds, "early", [m], profile["seeds"], model_name=f"{m}_only", **kw)
    for f in fusions:
        run_over_seeds(ds, f, None, profile["seeds"], model_name=f"{f}_fusion", **kw)
    if baselines and "tabular_frame" in ds.meta:
        # one fit each (seed 0): CatBoost's seed moves its score by ~0.002 here, and with text features a
        # multiclass fit on clothing takes ~85 s on a 2-core CPU
        seed = profile["seeds"][0]
        for name, res in practitioner_baselines(ds, profile, seed, with_embeddings=False).items():
            add_baseline_record(writer, res, "other_target", name, seed, condition=cond)
    df = as_frame(writer.records[start:])
    metrics = [c[len("metric_test_"):] for c in df.columns
               if c.startswith("metric_test_") and df[c].notna().any() and "recovered" not in c]
    rows = []
    for model, g in df.groupby("model", sort=False):
        row = {"model": model, "modalities": g["modality_set"].iloc[0], "seeds": len(g)}
        for m in metrics:
            row[m] = fmt_mean_std(g[f"metric_test_{m}"].mean(), g[f"metric_test_{m}"].std(ddof=1), None)
            row[f"_{m}"] = g[f"metric_test_{m}"].mean()
        rows.append(row)
    table = pd.DataFrame(rows).set_index("model")
    from mmlib.training.metrics import primary_metric
    key, higher = primary_metric(ds.task)
    order = table[f"_{key}"].sort_values(ascending=not higher).index
    table = table.loc[order]
    best = order[0]
    text = (f"**{target}** ({ds.task}, {ds.n:,} rows): best test {key} **{best}** ({table.loc[best, key]}); "
            + ", ".join(f"{m} {table.loc[best, m]}" for m in metrics if m != key) + ".")
    return Summary(table[[c for c in table.columns if not c.startswith("_")]], text,
                   {"best": best, "task": ds.task, "metric": key})


def practitioner_baselines(ds, profile: Mapping, seed: int = 0, with_embeddings: bool = True,
                           return_predictions: bool = False) -> dict[str, dict[str, Any]]:
    """One fit of each practitioner baseline that applies to ``ds``, by record name: CatBoost on
    the table (with the texts as text features when there are texts), TF-IDF + linear with the
    one-hot table, and (``with_embeddings``) the same with each ``embedding`` modality appended;
    for a regression target with a few integer values (a star rating) also TF-IDF + multinomial
    logistic regression predicting the expected value (text only: with the one-hot table, whose
    ~1,000 Clothing IDs a weakly regularised logistic regression over-fits, it scored test R²
    0.604 against 0.624 on clothing). Values are ``mmlib.models.baselines`` result dicts."""
    from mmlib.models.baselines import catboost_baseline, discrete_target, tfidf_linear_baseline

    out: dict[str, dict[str, Any]] = {}
    has_table, has_text = "tabular_frame" in ds.meta, ds.meta.get("texts") is not None
    if has_table:
        out["catboost_tabular" + ("+text" if has_text else "")] = catboost_baseline(
            ds, use_text=has_text, seed=seed, return_predictions=return_predictions,
            iterations=profile["catboost_text_iterations" if has_text else "catboost_iterations"])
    if has_text:
        res = tfidf_linear_baseline(ds, use_tabular=has_table, seed=seed, return_predictions=return_predictions)
        out[res["model"]] = res
        if discrete_target(ds):
            res = tfidf_linear_baseline(ds, regression_as_classes=True, seed=seed, return_predictions=return_predictions)
            out[res["model"]] = res
        for m, mod in (ds.modalities.items() if with_embeddings else ()):
            if mod.kind == "embedding":
                res = tfidf_linear_baseline(ds, use_tabular=has_table, extra_embeddings=m, seed=seed,
                                            return_predictions=return_predictions)
                out[res["model"]] = res
    return out


def baseline_predictions(ds, profile: Mapping, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Validation and test predictions of ``practitioner_baselines``, for
    ``mmlib.analysis.stacking.stacked_ensemble``."""
    return {name: res["predictions"] for name, res in
            practitioner_baselines(ds, profile, seed, return_predictions=True).items()}


def token_text_dataset(dataset: str, profile: Mapping, ds) -> Any:
    """The dataset with its text as word tokens, for the word-order comparison of notebook 10:
    ``ds`` itself when it already has a token text modality; the loader's token variant
    when the profile gave the text as frozen embeddings (``text_encoder``); else None."""
    import inspect

    from mmlib.data import get_loader, load_for_profile

    if any(mod.kind == "text" for mod in ds.modalities.values()):
        return ds
    if "text_encoder" in inspect.signature(get_loader(dataset)).parameters:
        return load_for_profile(dataset, dict(profile), text_encoder="tokens")
    return None


def token_text_members(dataset: str, profile: Mapping, ds, notebook: str, device: str) -> dict[str, list]:
    """Extra networks for ``mmlib.analysis.stacking.stacked_ensemble`` when ``ds`` reads its text as
    frozen embeddings: notebook 10's single-modality GRU and bag-of-words models on the token
    text (``{"text_gru": [run per seed], ...}``), read back from the run cache when 10 has run
    with the same code and profile (trained here otherwise). ``{}`` when the text is tokens."""
    from mmlib.training.experiments import run_over_seeds

    tok = token_text_dataset(dataset, profile, ds)
    if tok is None or tok is ds:
        return {}
    out = {}
    for m in [m for m, mod in tok.modalities.items() if mod.kind == "text"]:
        for arch in ("gru", "bow"):
            out[f"{m}_{arch}"] = run_over_seeds(tok, "early", [m], profile["seeds"], profile=profile, notebook=notebook,
                                                experiment="text_encoder", model_name=f"{m}_{arch}", device=device,
                                                model_kwargs={"encoder_archs": {m: arch}}, progress=False)
    return out
