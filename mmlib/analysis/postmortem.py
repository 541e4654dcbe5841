"""The postmortem: seed 003's six questions answered from the result records.

Every sentence is assembled from numbers computed here from the records of the
other notebooks (mean ± std over seeds, with n); nothing is typed in. On
``spacecraft`` a last section checks whether the analyses recovered the planted
structure (shares and ceilings come from ``00_eda``'s records).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mmlib.analysis.attribution import shapley_values
from mmlib.analysis.summaries import group_stats
from mmlib.reporting.records import fmt_mean_std

QUESTIONS = (
    "Did multimodal fusion meaningfully outperform unimodal models?",
    "Which fusion strategy worked best?",
    "Was the model robust to missing modalities?",
    "Did training become less stable with fusion?",
    "Did parameter count scale linearly or explosively?",
    "When is multimodal modeling actually worth it?",
)


@dataclass
class Section:
    title: str
    text: str
    table: pd.DataFrame | None = None


@dataclass
class Postmortem:
    dataset: str
    metric: str
    sections: list[Section] = field(default_factory=list)

    def to_markdown(self) -> str:
        out = [f"# Postmortem — {self.dataset}", "",
               f"Generated from the result records of every notebook (primary metric: test {self.metric}; "
               "mean ± std over seeds, n = number of seeds).", ""]
        for s in self.sections:
            out += [f"## {s.title}", "", s.text, ""]
            if s.table is not None and len(s.table):
                out += [_md(s.table), ""]
        return "\n".join(out)


def _md(df: pd.DataFrame) -> str:
    df = df.reset_index() if df.index.name or not isinstance(df.index, pd.RangeIndex) else df
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for v in r.tolist():
            if isinstance(v, float):
                cells.append("" if math.isnan(v) else f"{v:.4g}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(row) -> str:
    return fmt_mean_std(row["mean"], row["std"], int(row["n"]))


# experiments whose records are trained models (others evaluate a trained model, e.g. under noise)
TRAINING_EXPERIMENTS = ("unimodal", "simple_fusion", "fusion_variant", "full_model", "subset")


def _unique_runs(df: pd.DataFrame) -> pd.DataFrame:
    """One record per trained run. Notebooks re-record the runs they share through the run
    cache (20 records 10's single-modality models; 40 names 20's ``early_fusion`` just
    ``early``): counting both would double n and shrink the seed spread."""
    if df.empty:
        return df
    df = df.assign(model=df["model"].astype(str).str.replace(r"_fusion$", "", regex=True))
    return df.drop_duplicates(subset=["model", "modality_set", "condition", "seed"])


def primary_metric_from(records: pd.DataFrame) -> str:
    for m in ("r2", "roc_auc", "accuracy"):
        if f"metric_test_{m}" in records:
            return m
    raise ValueError("records carry no test_r2 / test_roc_auc / test_accuracy metric")


def build_postmortem(records: pd.DataFrame, dataset: str) -> Postmortem:
    recs = records[records["dataset"] == dataset]
    metric = primary_metric_from(recs[recs["notebook"] != "00_eda"])
    col = f"metric_test_{metric}"
    pm = Postmortem(dataset, metric)
    nb = lambda name: recs[recs["notebook"] == name]  # noqa: E731
    trained = recs[recs[col].notna()] if col in recs else recs.iloc[0:0]

    # --- Q1: fusion vs unimodal
    uni = trained[(trained["n_modalities"] == 1) & trained["notebook"].isin(["10_unimodal_baselines", "20_simple_fusion"])
                  & (trained["fusion"] != "none")]
    uni = _unique_runs(uni[uni["experiment"] == "unimodal"])
    fused = _unique_runs(trained[(trained["n_modalities"] > 1) & trained["notebook"].isin(["20_simple_fusion", "40_fusion_variants"])
                                 & trained["experiment"].isin(["simple_fusion", "fusion_variant"])])
    s_uni = group_stats(uni, ["model"], col).sort_values("mean", ascending=False)
    s_fused = group_stats(fused, ["model"], col).sort_values("mean", ascending=False)
    if len(s_uni) and len(s_fused):
        bu, bf = s_uni.index[0], s_fused.index[0]
        gain = s_fused["mean"].iloc[0] - s_uni["mean"].iloc[0]
        spread = math.sqrt(np.nansum([s_fused["std"].iloc[0] ** 2, s_uni["std"].iloc[0] ** 2]))
        meaningful = gain > max(2 * spread, 0.01)
        text = (f"The best single-modality model is **{bu}** ({_fmt(s_uni.iloc[0])}); the best fusion is **{bf}** "
                f"({_fmt(s_fused.iloc[0])}). Gain: {gain:+.3f} test {metric}"
                + (f", {gain / spread:.1f}× the combined seed spread" if spread > 0 else "") + ". "
                + ("**Yes**: the gain is larger than both 0.01 and twice the seed spread."
                   if meaningful else "**No meaningful gain**: it is below 0.01 or within twice the seed spread."))
        base = trained[(trained["notebook"] == "10_unimodal_baselines") & (trained["fusion"] == "none")
                       & (trained["experiment"] != "other_target")]
        cat = group_stats(base, ["model"], col).sort_values("mean", ascending=False)
        if len(cat):
            text += (" Practitioner baselines (CatBoost, TF-IDF + linear) for reference: "
                     + "; ".join(f"{m} {_fmt(r)}" for m, r in cat.iterrows()) + ".")
        table = pd.concat([s_uni.assign(kind="single modality"), s_fused.assign(kind="fusion")])
        pm.sections.append(Section(f"1. {QUESTIONS[0]}", text, table.round(4)))
    else:
        pm.sections.append(Section(f"1. {QUESTIONS[0]}", "Not answered: unimodal or fusion records are missing."))

    # --- Q2: best fusion strategy
    var = nb("40_fusion_variants")
    stack = var[var["experiment"] == "stacking"]
    var = var[var["experiment"] == "fusion_variant"]
    s_var = group_stats(var, ["model"], col).sort_values("mean", ascending=False)
    if len(s_var):
        best, second = s_var.index[0], (s_var.index[1] if len(s_var) > 1 else None)
        text = f"Ranked by mean test {metric}: " + ", ".join(f"{m} {_fmt(r)}" for m, r in s_var.iterrows()) + ". "
        if second is not None:
            diff = s_var["mean"].iloc[0] - s_var["mean"].iloc[1]
            sp = math.sqrt(np.nansum([s_var["std"].iloc[0] ** 2, s_var["std"].iloc[1] ** 2]))
            text += (f"**{best}** is best, {diff:.3f} ahead of {second}"
                     + (" — within the seed spread, so the top two are not separable with these seeds."
                        if diff <= sp else " — more than the combined seed spread."))
        if len(stack) and col in stack and stack[col].notna().any():
            st = group_stats(stack, ["model"], col).iloc[0]
            text += (f" Stacking whole models (every fusion network and the practitioner baselines, non-negative "
                     f"weights fitted on the validation split) scores {_fmt(st)}, "
                     f"{st['mean'] - s_var['mean'].iloc[0]:+.3f} against {best}.")
        params = var.groupby("model")["n_params"].mean()
        s_var["n_params"] = params.reindex(s_var.index)
        pm.sections.append(Section(f"2. {QUESTIONS[1]}", text, s_var.round(4)))
    else:
        pm.sections.append(Section(f"2. {QUESTIONS[1]}", "Not answered: 40_fusion_variants has no records."))

    # --- Q3: robustness to missing modalities
    abl = nb("30_ablations")
    drop = abl[abl["experiment"] == "drop_at_inference"]
    dropped_model = drop["model"].iloc[0] if len(drop) else None  # the full model 30 took modalities from
    drop = drop[drop["model"] == dropped_model]
    clean = abl[(abl["experiment"] == "full_model") & (abl["model"] == dropped_model)]
    if len(drop) and len(clean):
        c = group_stats(clean, ["model"], col).iloc[0]
        d = group_stats(drop, ["condition"], col)
        d["drop_vs_clean"] = c["mean"] - d["mean"]
        worst = d["drop_vs_clean"].idxmax()
        text = (f"{dropped_model.replace('_', ' ').capitalize()} scores {_fmt(c)} with every modality. "
                f"Masked at inference, the worst case is **{worst}** ({_fmt(d.loc[worst])}, "
                f"a fall of {d.loc[worst, 'drop_vs_clean']:.3f}). ")
        masks = d[[i.endswith(":mask") for i in d.index]]
        survivable = (masks["mean"] > 0).sum() if metric == "r2" else len(masks)
        text += (f"With the model's own missing-modality path (mask), {survivable} of {len(masks)} single-modality "
                 "removals still beat a constant prediction." if len(masks) else "")
        imb = nb("50_modality_imbalance")
        if len(imb) and "metric_test_without_weak" in imb:
            r = imb.groupby("model")["metric_test_without_weak"].mean().sort_values(ascending=False)
            text += (" When the weakened modality is masked at test time, the remedies rank: "
                     + ", ".join(f"{m} {v:.3f}" for m, v in r.items()) + ".")
        pm.sections.append(Section(f"3. {QUESTIONS[2]}", text, d.round(4)))
    else:
        pm.sections.append(Section(f"3. {QUESTIONS[2]}", "Not answered: 30_ablations has no drop-at-inference records."))

    # --- Q4: stability
    pool = _unique_runs(trained[trained["notebook"].isin(["10_unimodal_baselines", "20_simple_fusion", "40_fusion_variants"])
                                & trained["experiment"].isin(["unimodal", "text_encoder", "simple_fusion",
                                                              "fusion_variant"])])
    if len(pool):
        st = pool.groupby(["model", "n_modalities"])[col].agg(["std", "count"]).reset_index()
        st = st[st["count"] > 1]
        gap_cols = [f"metric_train_{metric}", f"metric_val_{metric}"]
        if all(c2 in pool for c2 in gap_cols):
            gap = (pool[gap_cols[0]] - pool[gap_cols[1]]).groupby(pool["model"]).mean()
            st["train_minus_val"] = st["model"].map(gap)
        if len(st):
            u = st[st["n_modalities"] == 1]["std"].mean()
            f = st[st["n_modalities"] > 1]["std"].mean()
            text = (f"Seed-to-seed standard deviation of test {metric}: single-modality models {u:.4f} on average, "
                    f"fused models {f:.4f}. "
                    + ("Fusion was **less stable**." if f > 1.5 * u else
                       "Fusion was **not less stable**." if f <= u * 1.05 else "Fusion was slightly less stable."))
            if "train_minus_val" in st:
                text += (f" Mean train − validation gap: single modality {st[st.n_modalities == 1]['train_minus_val'].mean():.4f}, "
                         f"fused {st[st.n_modalities > 1]['train_minus_val'].mean():.4f}.")
            pm.sections.append(Section(f"4. {QUESTIONS[3]}", text, st.set_index("model").round(4)))
        else:
            pm.sections.append(Section(f"4. {QUESTIONS[3]}", "Not answered: only one seed per model."))

    # --- Q5: parameter scaling
    if len(s_uni) and len(var):
        p_uni = trained[trained["experiment"] == "unimodal"].groupby("model")["n_params"].mean()
        p_var = var.groupby("model")["n_params"].mean().sort_values()
        total_uni = p_uni.sum()
        t = pd.DataFrame({"n_params": p_var, "ratio_to_sum_of_unimodal": (p_var / total_uni).round(2)})
        text = (f"The single-modality models have {', '.join(f'{m} {int(v):,}' for m, v in p_uni.items())} parameters "
                f"(sum {int(total_uni):,}). The fused models range from {int(p_var.min()):,} ({p_var.idxmin()}) to "
                f"{int(p_var.max()):,} ({p_var.idxmax()}), i.e. {p_var.min() / total_uni:.2f}× to "
                f"{p_var.max() / total_uni:.2f}× the sum of the unimodal models. ")
        text += ("Growth is **linear**: every fusion stays within 2× the sum of its encoders."
                 if p_var.max() <= 2 * total_uni else
                 f"Growth is **super-linear** for {p_var.idxmax()}: interaction terms multiply representation widths.")
        pm.sections.append(Section(f"5. {QUESTIONS[4]}", text, t))

    # --- Q6: when worth it
    text = _worth_it(trained, col, metric, s_uni, s_fused, abl)
    pm.sections.append(Section(f"6. {QUESTIONS[5]}", text))

    # --- planted structure (spacecraft)
    planted = _planted_section(recs, trained, col, metric)
    if planted is not None:
        pm.sections.append(planted)
    # --- other targets and published figures (real data)
    other = _other_targets_section(recs)
    if other is not None:
        pm.sections.append(other)
    published = _published_section(recs, dataset)
    if published is not None:
        pm.sections.append(published)
    return pm


# notebooks whose records are complete models on the primary target (30 and 50 retrain ablated or weakened ones)
MODEL_NOTEBOOKS = ("10_unimodal_baselines", "20_simple_fusion", "40_fusion_variants", "70_embedding_fusion")


def _best_model(sel: pd.DataFrame, col: str, higher: bool = True) -> tuple[str, pd.Series] | None:
    """The (notebook, model, condition) group with the best mean of ``col``: its label and mean/std/n."""
    sel = sel[sel[col].notna()] if col in sel else sel.iloc[0:0]
    if sel.empty:
        return None
    st = group_stats(sel, ["notebook", "model", "condition"], col).sort_values("mean", ascending=not higher)
    (notebook, model, condition), row = st.index[0], st.iloc[0]
    label = f"{model}" + (f" ({condition})" if condition else "") + f", {notebook}"
    return label, row


def _other_targets_section(recs: pd.DataFrame) -> Section | None:
    other = recs[recs["experiment"] == "other_target"]
    if other.empty:
        return None
    tables, lines = [], []
    for cond, g in other.groupby("condition", sort=False):
        target = cond.removeprefix("target=")
        metrics = [c for c in ("f1", "roc_auc", "pr_auc", "accuracy", "macro_f1", "r2")
                   if f"metric_test_{c}" in g and g[f"metric_test_{c}"].notna().any()]
        t = pd.DataFrame({m: group_stats(g, ["model"], f"metric_test_{m}").apply(_fmt, axis=1) for m in metrics})
        order = group_stats(g, ["model"], f"metric_test_{metrics[0]}").sort_values("mean", ascending=False).index
        t = t.loc[order]
        t.insert(0, "target", target)
        tables.append(t)
        lines.append(f"**{target}**: best {metrics[0]} {order[0]} ({t.loc[order[0], metrics[0]]})"
                     + "".join(f", {m} {t.loc[order[0], m]}" for m in metrics[1:]) + ".")
    text = ("The same models trained on the dataset's other targets (test split, mean ± std over seeds). "
            + " ".join(lines))
    return Section("Other targets", text, pd.concat(tables))


def _published_section(recs: pd.DataFrame, dataset: str) -> Section | None:
    from mmlib.data import default_target, published_results

    pubs = published_results(dataset)
    if not pubs:
        return None
    primary = default_target(dataset)
    rows, lines = [], []
    for p in pubs:
        col = f"metric_test_{p['metric']}"
        if p["target"] == primary:
            sel = recs[recs["notebook"].isin(MODEL_NOTEBOOKS) & (recs["experiment"] != "other_target")]
        else:
            sel = recs[(recs["experiment"] == "other_target") & (recs["condition"] == f"target={p['target']}")]
        best = _best_model(sel, col)
        value = p["value"]
        pub = f"{value[0]:.3f}–{value[1]:.3f}" if isinstance(value, (list, tuple)) else f"{value:.3f}"
        hi = max(value) if isinstance(value, (list, tuple)) else value
        row = {"reference": p["reference"], "target": p["target"], "metric": p["metric"], "published": pub,
               "ours (best, test)": _fmt(best[1]) if best else "not measured", "our model": best[0] if best else "",
               "ours − published (top)": round(best[1]["mean"] - hi, 3) if best else np.nan, "caveat": p["caveat"]}
        rows.append(row)
        if best:
            lines.append(f"{p['target']} {p['metric']}: ours {best[1]['mean']:.3f} vs {pub} published "
                         f"({best[1]['mean'] - hi:+.3f} against the top published figure).")
    text = ("Published figures on this dataset next to our best model on our fixed test split. The splits, "
            "preprocessing and (for some) the inputs differ, so the comparison is of orders of magnitude: read "
            "each caveat. " + " ".join(lines))
    return Section("Comparison with published results", text, pd.DataFrame(rows).set_index("reference"))


def _worth_it(trained, col, metric, s_uni, s_fused, abl) -> str:
    parts = []
    sub = abl[abl["experiment"].isin(["subset", "full_model"]) & (abl["model"] == "early_fusion")] if len(abl) else abl
    if len(sub):
        s = group_stats(sub, ["modality_set"], col)
        full_key = max(s.index, key=lambda k: k.count("+"))
        full = s.loc[full_key]
        for m in full_key.split("+"):
            rest = "+".join(x for x in full_key.split("+") if x != m)
            if rest in s.index:
                gain = full["mean"] - s.loc[rest, "mean"]
                sp = math.sqrt(np.nansum([full["std"] ** 2, s.loc[rest, "std"] ** 2]))
                verdict = "pays off" if gain > max(2 * sp, 0.005) else "does not pay off"
                parts.append(f"adding **{m}** to {rest}: {gain:+.3f} test {metric} ({verdict}; seed spread {sp:.3f})")
    if len(s_uni) and len(s_fused):
        runs = _unique_runs(trained[trained["experiment"].isin(TRAINING_EXPERIMENTS)])
        t_uni = runs[runs["n_modalities"] == 1]["train_time_s"].mean()
        t_fus = runs[runs["n_modalities"] > 1]["train_time_s"].mean()
        parts.append(f"a fused model takes {t_fus:.1f} s to train on average against {t_uni:.1f} s for one modality")
    if not parts:
        return "Not answered: the ablation records are missing."
    return ("Measured here: " + "; ".join(parts) + ". A modality is worth adding when its retrain gain exceeds the "
            "seed spread by a clear margin and its cost (parameters, time, a new failure mode when it is missing) is "
            "affordable; the lines above say which modalities pass that test on this dataset.")


def _planted_section(recs, trained, col, metric) -> Section | None:
    eda = recs[recs["notebook"] == "00_eda"]
    if "metric_share" not in eda or eda["metric_share"].isna().all():
        return None
    shares = dict(zip(eda[eda["experiment"] == "planted_share"]["condition"],
                      eda[eda["experiment"] == "planted_share"]["metric_share"]))
    ceil = dict(zip(eda[eda["experiment"] == "ceiling"]["modality_set"], eda[eda["experiment"] == "ceiling"]["metric_ceiling_r2"]))
    if not ceil:
        return None
    mods = sorted(max(ceil, key=lambda k: k.count("+")).split("+"))
    full_key = "+".join(mods)
    rows = []
    abl = recs[(recs["notebook"] == "30_ablations") & (recs["model"] == "early_fusion")
               & recs["experiment"].isin(["subset", "full_model"])]
    s = group_stats(abl, ["modality_set"], col)
    shap = recs[(recs["notebook"] == "30_ablations") & (recs["experiment"] == "shapley")]
    planted_shap = shapley_values({frozenset(): 0.0, **{frozenset(k.split("+")): v for k, v in ceil.items()}}, mods)
    for m in mods:
        rest = "+".join(x for x in mods if x != m)
        unique = ceil[full_key] - ceil.get(rest, 0.0)
        row = {"modality": m, "planted_unique_share": round(unique, 4)}
        if full_key in s.index and rest in s.index:
            row["measured_retrain_drop"] = round(s.loc[full_key, "mean"] - s.loc[rest, "mean"], 4)
            row["drop_std"] = round(math.sqrt(np.nansum([s.loc[full_key, "std"] ** 2, s.loc[rest, "std"] ** 2])), 4)
            # how far the model without m stays below its own ceiling: the part of the error that is
            # under-fitting of the remaining modalities, not a misjudged contribution of m
            row["without_it_gap_to_ceiling"] = round(ceil.get(rest, 0.0) - s.loc[rest, "mean"], 4)
        row["planted_shapley"] = round(planted_shap[m], 4)
        if len(shap):
            sv = shap[(shap["condition"] == f"retrain:{m}")]
            if len(sv):
                row["measured_shapley_retrain"] = round(sv["metric_shapley"].mean(), 4)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("modality")
    lines = []
    if "measured_retrain_drop" in table:
        err = (table["measured_retrain_drop"] - table["planted_unique_share"]).abs()
        lines.append("Retrain drop vs planted unique share: " + ", ".join(
            f"{m} {r['measured_retrain_drop']:.3f} vs {r['planted_unique_share']:.3f}" for m, r in table.iterrows())
            + f" (largest absolute error {err.max():.3f}, for {err.idxmax()}; the model without it stays "
            f"{table.loc[err.idxmax(), 'without_it_gap_to_ceiling']:.3f} below its own ceiling, so most of that error is "
            "the remaining modalities being under-fitted, not a misjudged contribution).")
    dominant_planted = table["planted_shapley"].idxmax()
    if "measured_shapley_retrain" in table:
        dominant_measured = table["measured_shapley_retrain"].idxmax()
        lines.append(f"Dominance: the planted Shapley split names **{dominant_planted}**; the measured one names "
                     f"**{dominant_measured}** — " + ("recovered." if dominant_planted == dominant_measured else "NOT recovered."))
    rec_cols = [c for c in trained.columns if c == "metric_test_recovered_synergy"]
    if rec_cols:
        syn = _unique_runs(trained[trained["notebook"].isin(["20_simple_fusion", "40_fusion_variants"])
                                   & trained["experiment"].isin(["simple_fusion", "fusion_variant"])])
        if len(syn):
            g = syn.groupby("model")["metric_test_recovered_synergy"].agg(["mean", "std", "count"]).sort_values("mean")
            lines.append(f"Synergy (planted share {shares.get('synergy', float('nan')):.2f}) recovered per fusion, "
                         "1 = all of it: " + ", ".join(f"{m} {fmt_mean_std(r['mean'], r['std'], int(r['count']), 2)}"
                                                      for m, r in g.iterrows()) + ".")
            captures = [m for m, r in g.iterrows() if r["mean"] >= 0.5]
            misses = [m for m, r in g.iterrows() if r["mean"] < 0.5]
            lines.append(f"Capture the text×image synergy (at least half of it, mean over seeds): "
                         f"{', '.join(captures) or 'none'}; do not: {', '.join(misses) or 'none'}.")
            late = [m for m in g.index if m.startswith("late")]
            if late:
                lines.append(f"Late fusion recovers {g.loc[late[0], 'mean']:.2f} of the synergy, as it must: "
                             "a mean of per-modality predictions cannot form a product of two modalities' factors.")
    return Section("Did the analysis recover the planted structure?", " ".join(lines), table)

