"""The postmortem: seed 003's six questions answered from the result records.

Every sentence is assembled from numbers computed here from the records of the
other notebooks (mean ± std over seeds, with n); nothing is typed in. On
``spacecraft`` a last section checks whether the analyses recovered the planted
structure (shares and ceilings come from ``00_eda``'s records).

Verdicts ("Yes", "best", "helps", "pays off") follow only from 95 % intervals
(``mmlib.analysis.verdicts``): a two-level paired bootstrap (seeds, then test
rows) when the records' per-row predictions are given (``predictions`` +
``y_test``), else the seed spread, labelled so. Q1 compares *systems*: every model of
notebooks 10, 20 and 40 on the primary target (networks, practitioner baselines and
the stacks), multimodal or unimodal by the modalities it reads. The postmortem
refuses records of mixed profiles or seed offsets and lists the commits it read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from mmlib.analysis.attribution import shapley_values
from mmlib.analysis.imbalance import remedy_verdicts
from mmlib.analysis.summaries import SINGLE_MODALITY_EXPERIMENT, group_stats
from mmlib.analysis.verdicts import (N_BOOT, Evidence, constant_score, fmt_delta, stability_verdict,
                                     worst_case_text)
from mmlib.reporting.records import fmt_mean_std
from mmlib.utils import MMLibError

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
    provenance: str = ""

    def to_markdown(self) -> str:
        out = [f"# Postmortem — {self.dataset}", "",
               f"Generated from the result records of every notebook (primary metric: test {self.metric}; "
               "mean ± std over seeds, n = number of seeds).", ""]
        if self.provenance:
            out += [self.provenance, ""]
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
    return fmt_mean_std(row["mean"], row["std"], int(row["n"] if "n" in row else row["n_seeds"]))


# experiments whose records are trained models (others evaluate a trained model, e.g. under noise)
TRAINING_EXPERIMENTS = ("unimodal", "simple_fusion", "fusion_variant", "full_model", "subset")
# Q1's systems: every model of these notebooks and experiments, on the primary target
VERDICTS = ("better", "worse", "not separable")
SYSTEM_NOTEBOOKS = ("10_unimodal_baselines", "20_simple_fusion", "40_fusion_variants")
SYSTEM_EXPERIMENTS = ("unimodal", "text_encoder", "image_encoder", "catboost", "tfidf", "simple_fusion", "fusion_variant",
                      SINGLE_MODALITY_EXPERIMENT, "stacking")


def _unique_runs(df: pd.DataFrame) -> pd.DataFrame:
    """One record per trained run. Notebooks re-record the runs they share through the run
    cache (20 records 10's single-modality models; 40 names 20's ``early_fusion`` just
    ``early``): counting both would double n and shrink the seed spread."""
    if df.empty:
        return df
    df = df.assign(model=df["model"].astype(str).str.replace(r"_fusion$", "", regex=True))
    return df.drop_duplicates(subset=["model", "modality_set", "condition", "seed"])


def primary_metric_from(records: pd.DataFrame) -> str:
    # the primary target's records only: notebook 20's other targets (e.g. a binary one beside a
    # multiclass one) carry other metrics; a binary target has accuracy too, so ROC-AUC comes first
    main = records[records["experiment"] != "other_target"] if "experiment" in records else records
    for m in ("r2", "roc_auc", "accuracy"):
        if f"metric_test_{m}" in main and main[f"metric_test_{m}"].notna().any():
            return m
    raise ValueError("records carry no test_r2 / test_roc_auc / test_accuracy metric")


def provenance(recs: pd.DataFrame, dataset: str) -> str:
    """One line naming the profile, seed offset and commits of ``recs``; an ``MMLibError``
    naming them when the records mix profiles or seed offsets (their seeds do not pair)."""
    def groups(col: str) -> dict[str, list[str]]:
        vals = recs[col].astype(object).where(recs[col].notna(), "not recorded").astype(str) if col in recs \
            else pd.Series("not recorded", index=recs.index)
        return {v: sorted(recs.loc[vals == v, "notebook"].unique()) for v in dict.fromkeys(vals)}

    listing = lambda g: "; ".join(f"{v} ({', '.join(nbs)})" for v, nbs in g.items())  # noqa: E731
    for col, what in (("profile", "profiles"), ("seed_offset", "seed offsets")):
        g = groups(col)
        if len(g) > 1:
            raise MMLibError(f"postmortem of {dataset}: the records mix {what}: {listing(g)}. Rerun those notebooks "
                             f"with one profile and seed offset (python -m mmlib.reports --profile ...) first.")
    commits = groups("git_commit")
    return (f"Read {len(recs)} records from {recs['notebook'].nunique()} notebooks; profile "
            f"**{next(iter(groups('profile')))}**, seed offset {next(iter(groups('seed_offset')))}; "
            + (f"commit {next(iter(commits))}." if len(commits) == 1 else f"commits {listing(commits)}."))


def systems_frame(trained: pd.DataFrame) -> pd.DataFrame:
    """Q1's systems: one record per run of notebooks 10, 20, 40 (``SYSTEM_EXPERIMENTS``), with
    ``kind`` (network / practitioner baseline / stack of models) and ``multimodal`` (reads
    more than one modality)."""
    s = _unique_runs(trained[trained["notebook"].isin(SYSTEM_NOTEBOOKS) & trained["experiment"].isin(SYSTEM_EXPERIMENTS)])
    kind = np.select([s["experiment"] == "stacking", s["fusion"] == "none"], ["stack of models", "practitioner baseline"],
                     "network")
    return s.assign(kind=kind, multimodal=s["n_modalities"] > 1)


def _ranked(ev: Evidence, frame: pd.DataFrame, extra: Mapping[str, pd.Series] | None = None):
    """``ev.rank`` by model, with ``mean ± std (n)`` and the interval of each against the top."""
    t, best, tied, method = ev.rank(frame, "model")
    t.insert(0, "score", [fmt_mean_std(r["mean"], r["std"], int(r["n_seeds"])) for _, r in t.iterrows()])
    for name, col in (extra or {}).items():
        t.insert(0, name, col.reindex(t.index))
    t["vs_top"] = [fmt_delta({"delta": r["vs_top"], "low": r["low"], "high": r["high"]}) if r["verdict"] != "top" else ""
                   for _, r in t.iterrows()]
    t.index.name = "model"
    return t.drop(columns=["low", "high", "std", "n_seeds"]).round(4), best, tied, method


def _q1(sys: pd.DataFrame, ev: Evidence, metric: str) -> Section:
    title = f"1. {QUESTIONS[0]}"
    if not (sys["multimodal"].any() and (~sys["multimodal"]).any()):
        return Section(title, "Not answered: unimodal or multimodal records are missing.")
    first = sys.drop_duplicates("model").set_index("model")
    t, _, _, method = _ranked(ev, sys, {"modalities": first["modality_set"], "kind": first["kind"]})
    pick = lambda m: sys[sys["model"] == m]  # noqa: E731
    desc = lambda m: f"**{m}** ({first.loc[m, 'kind']}, {first.loc[m, 'modality_set']}; {t.loc[m, 'score']})"  # noqa: E731
    multi = [m for m in t.index if first.loc[m, "multimodal"]]
    uni = [m for m in t.index if not first.loc[m, "multimodal"]]
    bm, bu = multi[0], uni[0]
    d = ev.compare(pick(bm), pick(bu))
    text = (f"{len(uni)} unimodal systems (single-modality networks and practitioner baselines on one modality) "
            f"against {len(multi)} multimodal ones (fusion networks, multimodal baselines, stacks of models); "
            f"intervals: {ev.note(method)}. The best unimodal system is {desc(bu)}; the best multimodal system is "
            f"{desc(bm)}. Multimodal − unimodal: {fmt_delta(d)}. ")
    text += {"better": "**Yes**: the best multimodal system is better than the best unimodal system (the interval "
                       "is above 0).",
             "worse": f"**No: a unimodal system wins**: {bu} beats the best multimodal system (the interval is below 0).",
             "not separable": "**Not separable**: the interval includes 0, so neither side wins on these test rows "
                              "and seeds."}[d["verdict"]]
    said = lambda d, *words: f"{fmt_delta(d)} — " + dict(zip(VERDICTS, words))[d["verdict"]]  # noqa: E731
    nets = [m for m in multi if first.loc[m, "kind"] == "network"]
    if nets and nets[0] != bm:
        text += (f" Fusion networks alone: the top one by mean, {desc(nets[0]).replace('**', '')} (Q2 says whether "
                 f"it is separable from the others), against {bu}: "
                 + said(ev.compare(pick(nets[0]), pick(bu)), "the networks beat it too.",
                        f"**every fusion network is behind the unimodal {bu}**.", "not separable."))
    alone = sys[sys["experiment"] == SINGLE_MODALITY_EXPERIMENT]  # the same architecture on one modality (40)
    for f in [f for f in dict.fromkeys(alone["fusion"]) if f in first.index and first.loc[f, "kind"] == "network"]:
        versions = [m for m in uni if m in set(alone.loc[alone["fusion"] == f, "model"])]
        text += (f" The same architecture on one modality: {f} against {desc(versions[0]).replace('**', '')}, "
                 + said(ev.compare(pick(f), pick(versions[0])), "adding the other modalities pays off in it.",
                        "**the single-modality version is better**: the other modalities cost in it.",
                        "what the other modalities add to it is **not separable** from 0.")) if versions else ""
    if {"stack", "stack_unimodal"} <= set(sys["model"]):
        text += (" Stacking every member against stacking the single-modality members only: "
                 + said(ev.compare(pick("stack"), pick("stack_unimodal")),
                        "the multimodal members **add a gain** a combination of unimodal models does not reach.",
                        "the multimodal members make the stack worse.",
                        "what the multimodal members add is **not separable** from 0."))
    return Section(title, text, t)


def _q2(var: pd.DataFrame, ev: Evidence, metric: str) -> Section:
    title = f"2. {QUESTIONS[1]}"
    if var.empty:
        return Section(title, "Not answered: 40_fusion_variants has no records.")
    t, best, tied, method = _ranked(ev, var, {"n_params": var.groupby("model")["n_params"].mean()})
    text = (f"Ranked by mean test {metric}: " + ", ".join(f"{m} {t.loc[m, 'score']}" for m in t.index)
            + f" (intervals: {ev.note(method)}). ")
    if len(t) == 1:
        text += f"Only one fusion variant was recorded ({t.index[0]}): nothing to rank."
    elif best is not None:
        text += f"**{best}** is best: its interval against every other fusion excludes 0."
    else:
        rest = [m for m in t.index if m not in tied]
        text += (f"**Not separable**: {', '.join(tied)} cannot be told apart (each one's interval against {tied[0]} "
                 "includes 0)" + (f"; behind them: {', '.join(rest)}." if rest else "."))
    return Section(title, text, t)


def _q3(abl: pd.DataFrame, imb: pd.DataFrame, ev: Evidence, col: str) -> list[Section]:
    title = f"3. {QUESTIONS[2]}"
    drop = abl[abl["experiment"] == "drop_at_inference"]
    dropped_model = drop["model"].iloc[0] if len(drop) else None  # the full model 30 took modalities from
    drop = drop[drop["model"] == dropped_model]
    clean = abl[(abl["experiment"] == "full_model") & (abl["model"] == dropped_model)]
    if not (len(drop) and len(clean)):
        out = [Section(title, "Not answered: 30_ablations has no drop-at-inference records.")]
    else:
        c = group_stats(clean, ["model"], col).iloc[0]
        d = group_stats(drop, ["condition"], col)
        d["drop_vs_clean"] = c["mean"] - d["mean"]
        untrained = drop.groupby("condition")["extra"].agg(
            lambda ex: any(bool((e or {}).get("untrained_path")) for e in ex))
        d["untrained_path"] = untrained.reindex(d.index).fillna(False).astype(bool)
        findings = d[~d["untrained_path"]]
        text = f"{dropped_model.replace('_', ' ').capitalize()} scores {_fmt(c)} with every modality. "
        if len(findings):
            text += worst_case_text(findings, drop, ev)
        flagged = list(d.index[d["untrained_path"]])
        if flagged:
            text += (f"Not findings: {', '.join(flagged)} masked a modality whose missing path this model never "
                     "trained (untrained path), so those scores say nothing about the data. ")
        masks = findings[[i.endswith(":mask") for i in findings.index]]
        const = constant_score(col, ev.y)
        if len(masks) and const is not None:
            survivable = int((masks["mean"] > const).sum() if ev.higher else (masks["mean"] < const).sum())
            text += (f"With the model's own, trained missing-modality path (mask), {survivable} of {len(masks)} "
                     "single-modality removals still beat a constant prediction"
                     + ("." if col.endswith("_r2") else f" ({const:.3f}, "
                        f"{'the majority-class rate' if col.endswith('_accuracy') else 'chance'})."))
        out = [Section(title, text, d.round(4))]
    if len(imb):
        table, lines, _ = remedy_verdicts(imb, ev)
        methods = set(table["method"]) if len(table) else {"spread"}
        out.append(Section("3b. Which remedies help when one modality is weakened?",
                           "Notebook 50, like with like: within each condition (the same weakened modality, the same "
                           "weakening, the clean data too), each remedy against no remedy on the same seeds; helps / "
                           f"hurts only when the interval excludes 0 ({ev.note('bootstrap' if methods == {'bootstrap'} else 'spread')}). "
                           + " ".join(lines), table))
    return out


def build_postmortem(records: pd.DataFrame, dataset: str, predictions: Mapping[str, Any] | None = None,
                     y_test: Any = None, n_boot: int = N_BOOT) -> Postmortem:
    """The postmortem of ``dataset`` from its ``records`` (``load_records``); with ``predictions``
    (``run_id -> test predictions``, ``load_predictions``) and ``y_test`` (``load_test_targets``)
    every verdict rests on a paired bootstrap over seeds and test rows, else on the seed spread."""
    recs = records[(records["dataset"] == dataset) & (records["notebook"] != "90_postmortem")]
    prov = provenance(recs, dataset)
    metric = primary_metric_from(recs[recs["notebook"] != "00_eda"])
    col = f"metric_test_{metric}"
    ev = Evidence(metric, predictions, y_test, n_boot=n_boot)
    n_pred = sum(1 for r in recs.get("run_id", pd.Series(dtype=object)) if r in ev.predictions)
    prov += (f" Per-row test predictions for {n_pred} of {len(recs)} records." if ev.predictions else
             f" {ev.note('spread').capitalize()}.")
    pm = Postmortem(dataset, metric, provenance=prov)
    nb = lambda name: recs[recs["notebook"] == name]  # noqa: E731
    trained = recs[recs[col].notna()] if col in recs else recs.iloc[0:0]
    trained = trained[trained["experiment"] != "other_target"]

    pm.sections.append(_q1(systems_frame(trained), ev, metric))
    var = nb("40_fusion_variants")
    var = var[(var["experiment"] == "fusion_variant") & var[col].notna()] if col in var else var.iloc[0:0]
    pm.sections.append(_q2(var, ev, metric))
    abl = nb("30_ablations")
    pm.sections.extend(_q3(abl, nb("50_modality_imbalance"), ev, col))
    # --- Q4: stability
    pool = _unique_runs(trained[trained["notebook"].isin(SYSTEM_NOTEBOOKS)
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
            u, f = st[st["n_modalities"] == 1]["std"], st[st["n_modalities"] > 1]["std"]
            scores = pool.groupby("model")[col].apply(list)
            sv = stability_verdict([scores[m] for m in st[st["n_modalities"] == 1]["model"]],
                                   [scores[m] for m in st[st["n_modalities"] > 1]["model"]], n_boot=1000)
            text = (f"Seed-to-seed standard deviation of test {metric}: single-modality models {u.mean():.4f} on average, "
                    f"fused models {f.mean():.4f}; fused − single {sv['delta']:+.4f} [{sv['low']:+.4f}, {sv['high']:+.4f}] "
                    "(95% interval, resampling models and their seeds). Fusion was " + (f"**{sv['verdict']}**." if sv["verdict"] !=
                    "not separable" else "**not separably less stable** (the interval includes 0, or too few models)."))
            if "train_minus_val" in st:
                text += (f" Mean train − validation gap: single modality {st[st.n_modalities == 1]['train_minus_val'].mean():.4f}, "
                         f"fused {st[st.n_modalities > 1]['train_minus_val'].mean():.4f}.")
            pm.sections.append(Section(f"4. {QUESTIONS[3]}", text, st.set_index("model").round(4)))
        else:
            pm.sections.append(Section(f"4. {QUESTIONS[3]}", "Not answered: only one seed per model."))

    # --- Q5: parameter scaling
    p_uni = trained[trained["experiment"] == "unimodal"].groupby("model")["n_params"].mean()
    if len(p_uni) and len(var):
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
    text = _worth_it(trained, col, metric, abl, ev)
    pm.sections.append(Section(f"6. {QUESTIONS[5]}", text))

    # --- planted structure (spacecraft); other targets and published figures (real data)
    pm.sections.extend(sec for sec in (_planted_section(recs, trained, col, metric), _other_targets_section(recs),
                                       _published_section(recs, dataset)) if sec is not None)
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


def _worth_it(trained: pd.DataFrame, col: str, metric: str, abl: pd.DataFrame, ev: Evidence) -> str:
    parts, methods = [], set()
    sub = abl[abl["experiment"].isin(["subset", "full_model"]) & (abl["model"] == "early_fusion")] if len(abl) else abl
    if len(sub):
        full_key = max(sub["modality_set"].unique(), key=lambda k: k.count("+"))
        for m in full_key.split("+"):
            rest = "+".join(x for x in full_key.split("+") if x != m)
            if rest in set(sub["modality_set"]):
                d = ev.compare(sub[sub["modality_set"] == full_key], sub[sub["modality_set"] == rest])
                methods.add(d["method"])
                verdict = {"better": "pays off", "worse": "costs", "not separable": "does not pay off: not separable"}
                parts.append(f"adding **{m}** to {rest}: {fmt_delta(d)} test {metric} ({verdict[d['verdict']]})")
    runs = _unique_runs(trained[trained["experiment"].isin(TRAINING_EXPERIMENTS)])
    if (runs["n_modalities"] == 1).any() and (runs["n_modalities"] > 1).any():
        t_uni = runs[runs["n_modalities"] == 1]["train_time_s"].mean()
        t_fus = runs[runs["n_modalities"] > 1]["train_time_s"].mean()
        parts.append(f"a fused model takes {t_fus:.1f} s to train on average against {t_uni:.1f} s for one modality")
    if not parts:
        return "Not answered: the ablation records are missing."
    note = f" (intervals: {ev.note('bootstrap' if methods == {'bootstrap'} else 'spread')})" if methods else ""
    return ("Measured here" + note + ": " + "; ".join(parts) + ". A modality is worth adding when its retrain gain "
            "has an interval above 0 and its cost (parameters, time, a new failure mode when it is missing) is "
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

