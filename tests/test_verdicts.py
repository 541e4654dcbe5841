"""mmlib.analysis.verdicts (paired bootstrap, ranking, seed-spread fallback) and the postmortem's
verdicts on hand-made records + predictions: each verdict flipped both ways."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmlib.analysis.postmortem import build_postmortem
from mmlib.analysis.verdicts import (SPREAD_NOTE, Evidence, direction, paired_delta, rank_by_spread, rank_systems,
                                     spread_delta, weighted_metric)
from mmlib.reporting.records import make_record, records_to_frame
from mmlib.training.tasks import get_task
from mmlib.utils import MMLibError

N = 600
RNG = np.random.default_rng(0)
Y = RNG.normal(size=N)
NOISE = RNG.normal(size=(8, N))


# ------------------------------------------------------------------ metrics
@pytest.mark.parametrize("task,metric", [("regression", "r2"), ("binary", "accuracy"), ("binary", "roc_auc"),
                                         ("multiclass", "accuracy"), ("binary", "f1")])
def test_vectorised_metrics_equal_the_task_metrics(task, metric):
    g = np.random.default_rng(1)
    if task == "regression":
        y, p = Y, Y + NOISE[0]
    elif task == "binary":
        y = (g.random(N) < 0.3).astype(int)
        p = np.round(np.clip(0.4 * y + 0.6 * g.random(N), 0, 1), 2)  # rounded: many tied scores
    else:
        y = g.integers(0, 4, size=N)
        p = g.dirichlet(np.ones(4), size=N)
        p[np.arange(N), y] += 0.3 * g.random(N)
        p /= p.sum(axis=1, keepdims=True)
    idx = g.integers(0, N, size=(5, N))
    counts = np.stack([np.bincount(i, minlength=N) for i in idx])
    got = weighted_metric(y, p, task, metric, np.vstack([np.ones(N), counts]))
    want = [get_task(task).metrics(y, p)[metric]] + [get_task(task).metrics(y[i], p[i])[metric] for i in idx]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_weighted_metric_rejects_a_metric_of_another_task():
    with pytest.raises(MMLibError, match="not a regression metric"):
        weighted_metric(Y, Y, "regression", "roc_auc", np.ones((1, N)))


# ------------------------------------------------------------ paired_delta
def test_paired_delta_of_a_system_better_on_every_row_is_above_zero():
    b = {s: Y + NOISE[s] for s in (0, 1, 2)}
    a = {s: Y + 0.5 * NOISE[s] for s in (0, 1, 2)}  # half the error on every row
    d = paired_delta(Y, a, b, "regression", "r2", n_boot=300)
    assert d["low"] > 0 and d["high"] > d["delta"] > d["low"] and d["n_seeds"] == 3
    assert direction(d) == "better" and direction(paired_delta(Y, b, a, "regression", "r2", n_boot=300)) == "worse"


def test_paired_delta_of_identical_systems_contains_zero():
    a = {s: Y + NOISE[s] for s in (0, 1)}
    d = paired_delta(Y, a, dict(a), "regression", "r2", n_boot=300)
    assert d["delta"] == 0 and d["low"] <= 0 <= d["high"] and direction(d) == "not separable"


def test_paired_delta_reuses_a_fixed_prediction_set_and_pairs_seeds():
    a = {s: Y + NOISE[s] for s in (0, 1, 2)}
    fixed = Y + NOISE[5]
    d = paired_delta(Y, a, fixed, "regression", "r2", n_boot=200)
    per_seed = [paired_delta(Y, a[s], fixed, "regression", "r2", n_boot=200)["delta"] for s in a]
    assert d["n_seeds"] == 3 and d["delta"] == pytest.approx(np.mean(per_seed))
    assert paired_delta(Y, a, {1: a[1], 2: a[2], 7: fixed}, "regression", "r2", n_boot=50)["n_seeds"] == 2
    with pytest.raises(MMLibError, match="share no seed"):
        paired_delta(Y, {0: a[0], 1: a[1]}, {5: fixed, 6: fixed}, "regression", "r2", n_boot=10)
    # the same replicates for the same seed: deterministic
    assert paired_delta(Y, a, fixed, "regression", "r2", n_boot=200) == d


# ------------------------------------------------------------------ ranking
def test_rank_systems_claims_best_only_with_excluding_intervals():
    sys = {"good": {s: Y + 0.3 * NOISE[s] for s in (0, 1)}, "bad": {s: Y + NOISE[s] for s in (0, 1)}}
    t, best, tied = rank_systems(Y, sys, "regression", "r2", n_boot=200)
    assert best == "good" and tied == ["good"] and list(t.index) == ["good", "bad"]
    assert t.loc["bad", "verdict"] == "worse" and t.loc["bad", "high"] < 0
    sys["twin"] = {s: p + 1e-3 * NOISE[7] for s, p in sys["good"].items()}
    t, best, tied = rank_systems(Y, sys, "regression", "r2", n_boot=200)
    assert best is None and set(tied) == {"good", "twin"} and t.loc["bad", "verdict"] == "worse"


def test_spread_fallback():
    d = spread_delta({0: 0.60, 1: 0.61, 2: 0.62}, 0.50)  # a single score counts as fixed
    assert d["low"] > 0 and direction(d) == "better"
    assert direction(spread_delta({0: 0.6}, {0: 0.5})) == "not separable"  # one seed each: no interval
    t, best, tied = rank_by_spread({"a": {0: 0.60, 1: 0.61}, "b": {0: 0.605, 1: 0.60}}, "r2")
    assert best is None and tied == ["a", "b"]


# ------------------------------------------------------------- postmortem
def _rec(nb, exp, model, seed, pred, mods=("tabular", "text"), fusion="early", condition="", profile="standard",
         commit="abc1234", y=Y):
    rid = f"{nb}:{exp}:{model}:{condition}:{seed}"
    rec = make_record(notebook=nb, dataset="spacecraft", experiment=exp, model=model, fusion=fusion,
                      modalities=list(mods), condition=condition, seed=seed,
                      metrics={"test_r2": get_task("regression").metrics(y, pred)["r2"]}, n_params=10,
                      train_time_s=1.0, epochs=1, device="cpu", run_id=rid, profile=profile, git_commit=commit)
    return rec, pred


def _build(entries, with_predictions=True):
    recs = records_to_frame([r for r, _ in entries])
    preds = {r["run_id"]: p for r, p in entries}
    return build_postmortem(recs, "spacecraft", predictions=preds if with_predictions else None,
                            y_test=Y if with_predictions else None, n_boot=300)


def _systems(uni_scale, multi_scale, baseline_scale=None, seeds=(0, 1, 2)):
    """Unimodal networks, fusion networks, and optionally a unimodal TF-IDF baseline (one fit)."""
    out = []
    for s in seeds:
        out += [_rec("10_unimodal_baselines", "unimodal", "text_only", s, Y + uni_scale * NOISE[s], mods=("text",)),
                _rec("10_unimodal_baselines", "unimodal", "tabular_only", s, 0.1 * Y + NOISE[s + 3], mods=("tabular",)),
                _rec("20_simple_fusion", "simple_fusion", "early_fusion", s, Y + multi_scale * NOISE[s]),
                _rec("40_fusion_variants", "fusion_variant", "gated", s, Y + 1.3 * multi_scale * NOISE[s])]
        if baseline_scale is not None:
            out.append(_rec("10_unimodal_baselines", "tfidf", "tfidf+ridge", s, Y + baseline_scale * NOISE[6],
                            mods=("text",), fusion="none"))
    return out


def _q(pm, n):
    return next(s for s in pm.sections if s.title.startswith(f"{n}."))


def test_q1_yes_no_and_not_separable():
    q1 = _q(_build(_systems(uni_scale=1.0, multi_scale=0.4)), 1)
    assert "**Yes**" in q1.text and "best multimodal system is **early**" in q1.text
    q1 = _q(_build(_systems(uni_scale=1.0, multi_scale=0.8, baseline_scale=0.3)), 1)
    assert "**No: a unimodal system wins**" in q1.text and "best unimodal system is **tfidf+ridge**" in q1.text
    assert q1.table.loc["tfidf+ridge", "kind"] == "practitioner baseline"
    tie = _systems(uni_scale=0.5, multi_scale=0.5)  # text_only and early fusion predict the same
    q1 = _q(_build(tie), 1)
    assert "**Not separable**" in q1.text
    # a multimodal baseline and a stack count as multimodal systems
    extra = [_rec("40_fusion_variants", "stacking", "stack", s, Y + 0.2 * NOISE[s], fusion="stack") for s in (0, 1, 2)]
    q1 = _q(_build(_systems(1.0, 0.8, baseline_scale=0.3) + extra), 1)
    assert "**Yes**" in q1.text and "best multimodal system is **stack**" in q1.text
    assert "every fusion network is behind the unimodal tfidf+ridge" in q1.text


def test_q1_stack_gain_against_unimodal_members_both_ways():
    def stacks(all_scale):
        return [_rec("40_fusion_variants", "stacking", name, s, Y + scale * NOISE[s], fusion="stack")
                for s in (0, 1, 2) for name, scale in (("stack", all_scale), ("stack_unimodal", 0.5))]
    q1 = _q(_build(_systems(1.0, 0.8) + stacks(0.3)), 1)
    assert "the multimodal members **add a gain**" in q1.text
    q1 = _q(_build(_systems(1.0, 0.8) + stacks(0.5)), 1)
    assert "is **not separable** from 0" in q1.text


def test_q2_best_or_tied():
    base = _systems(1.0, 0.5)
    more = [_rec("40_fusion_variants", "fusion_variant", "attention", s, Y + 0.3 * NOISE[s]) for s in (0, 1, 2)]
    q2 = _q(_build(base + more), 2)
    assert "**attention** is best" in q2.text
    twin = [_rec("40_fusion_variants", "fusion_variant", "bilinear", s, Y + 0.3 * NOISE[s] + 1e-3 * NOISE[7])
            for s in (0, 1, 2)]
    q2 = _q(_build(base + more + twin), 2)
    assert "**Not separable**" in q2.text and "attention" in q2.text and "bilinear" in q2.text
    assert q2.table.loc["gated", "verdict"] == "worse"


def _imbalance(masked_scale):
    out = []
    for cond in ("clean", "text:corrupt=0.5"):
        for remedy, scale in (("none", 1.0), ("modality_dropout", masked_scale)):
            for s in (0, 1, 2):
                out.append(_rec("50_modality_imbalance", "imbalance", remedy, s, Y + 0.5 * NOISE[s], condition=cond))
                out.append(_rec("50_modality_imbalance", "imbalance_weak_masked", remedy, s,
                                Y + scale * NOISE[s + 3], condition=cond))
    return out


def test_q3_remedy_helps_or_not_within_each_condition():
    sec = next(s for s in _build(_systems(1.0, 0.5) + _imbalance(0.6)).sections if s.title.startswith("3b."))
    assert "**text:corrupt=0.5**" in sec.text and "**clean**" in sec.text
    assert sec.table.loc[("text:corrupt=0.5", "modality_dropout"), "verdict_weak_masked"] == "helps"
    assert sec.table.loc[("clean", "modality_dropout"), "verdict_weak_masked"] == "helps"
    assert sec.table.loc[("clean", "modality_dropout"), "verdict"] == "not separable"  # same full predictions
    sec = next(s for s in _build(_systems(1.0, 0.5) + _imbalance(1.0)).sections if s.title.startswith("3b."))
    assert set(sec.table["verdict_weak_masked"]) == {"not separable"}
    assert "plain training adapts" in sec.text


def test_without_predictions_the_postmortem_says_seed_spread_only():
    pm = _build(_systems(1.0, 0.4), with_predictions=False)
    assert SPREAD_NOTE in _q(pm, 1).text and SPREAD_NOTE.capitalize() in pm.to_markdown()
    assert "**Yes**" in _q(pm, 1).text  # three seeds of each: the spread still decides


def test_postmortem_refuses_mixed_profiles_and_lists_commits():
    entries = _systems(1.0, 0.4)
    entries.append(_rec("40_fusion_variants", "fusion_variant", "moe", 0, Y, profile="smoke"))
    with pytest.raises(MMLibError, match=r"mix profiles: standard \(.*\); smoke \(40_fusion_variants\)"):
        _build(entries)
    entries[-1] = _rec("40_fusion_variants", "fusion_variant", "moe", 0, Y, commit="def5678")
    md = _build(entries).to_markdown()
    assert "profile **standard**" in md and "abc1234 (" in md and "def5678 (40_fusion_variants)" in md


def test_evidence_falls_back_when_a_record_has_no_predictions():
    recs = records_to_frame([r for r, _ in _systems(1.0, 0.4)])
    preds = {r["run_id"]: p for r, p in _systems(1.0, 0.4) if r["model"] != "early_fusion"}
    ev = Evidence("r2", preds, Y, n_boot=100)
    a, b = recs[recs.model == "early_fusion"], recs[recs.model == "text_only"]
    assert ev.compare(a, b)["method"] == "spread" and ev.compare(recs[recs.model == "gated"], b)["method"] == "bootstrap"
    assert isinstance(ev.rank(recs, "model")[0], pd.DataFrame)


def _drops(untrained_tabular: bool):
    """30's clean model and its drop-at-inference records; masking tabular is catastrophic."""
    out = []
    for s in (0, 1, 2):
        rec, pred = _rec("30_ablations", "full_model", "early_fusion", s, Y + 0.3 * NOISE[s])
        out.append((rec, pred))
        for m, scale in (("tabular", 40.0), ("text", 0.8)):
            r, p = _rec("30_ablations", "drop_at_inference", "early_fusion", s, Y + scale * NOISE[s],
                        condition=f"{m}:mask")
            r["extra"] = {"untrained_path": [m] if (m == "tabular" and untrained_tabular) else []}
            out.append((r, p))
    return out


def test_q3_never_presents_an_untrained_path_as_a_finding():
    q3 = _q(_build(_systems(1.0, 0.5) + _drops(untrained_tabular=True)), 3)
    assert "Not findings: tabular:mask" in q3.text and "worst case is **text:mask** (" in q3.text
    assert bool(q3.table.loc["tabular:mask", "untrained_path"])
    q3 = _q(_build(_systems(1.0, 0.5) + _drops(untrained_tabular=False)), 3)
    assert "Not findings" not in q3.text and "worst case is **tabular:mask**" in q3.text


def test_q3_names_a_tied_worst_case_by_the_modality_it_removes():
    """Two ways of removing tabular that no interval separates: the verdict is 'removing tabular',
    not whichever of the two has the lower mean in this run."""
    out = []
    for s in (0, 1, 2):
        out.append(_rec("30_ablations", "full_model", "early_fusion", s, Y + 0.3 * NOISE[s]))
        for cond, noise in (("tabular:mask", NOISE[s]), ("tabular:zero", NOISE[s + 3]), ("text:mask", NOISE[s])):
            r, p = _rec("30_ablations", "drop_at_inference", "early_fusion", s,
                        Y + (0.5 if cond == "text:mask" else 3.0) * noise, condition=cond)
            r["extra"] = {"untrained_path": []}
            out.append((r, p))
    q3 = _q(_build(_systems(1.0, 0.5) + out), 3)
    assert "the worst case is removing **tabular**" in q3.text
    assert "tabular:mask" in q3.text and "tabular:zero" in q3.text and "cannot be told apart" in q3.text


def test_q4_stability_verdict_rests_on_an_interval_over_models_and_seeds():
    from mmlib.analysis.verdicts import stability_verdict

    rng = np.random.default_rng(0)
    seeds = lambda sd, k: [list(0.8 + sd * rng.normal(size=5)) for _ in range(k)]  # noqa: E731
    wide = stability_verdict(seeds(0.002, 4), seeds(0.05, 4))
    assert wide["verdict"] == "less stable" and wide["low"] > 0
    close = stability_verdict(seeds(0.01, 4), seeds(0.011, 4))
    assert close["verdict"] == "not separable" and close["low"] < 0 < close["high"]
    assert stability_verdict(seeds(0.01, 1), seeds(0.02, 3))["verdict"] == "not separable"  # one model: no interval
    assert stability_verdict(seeds(0.05, 4), seeds(0.002, 3))["verdict"] == "more stable"


def test_paired_delta_carries_the_between_seed_variance():
    """Three seeds whose differences are +, +, − (spacecraft's moe vs bilinear in an independent
    rerun): rows alone gave an interval excluding 0; the seed level makes it reach the negative seed."""
    rng = np.random.default_rng(0)
    n = 3000
    y = rng.normal(size=n)
    base = {s: y + rng.normal(scale=0.3, size=n) for s in range(3)}
    shift = {0: 0.6, 1: 0.45, 2: 1.1}  # larger noise = worse; seed 2 reverses the order
    a = {s: base[s] + rng.normal(scale=shift[s] * 0.3, size=n) for s in range(3)}
    b = {s: base[s] + rng.normal(scale=0.25, size=n) for s in range(3)}
    from sklearn.metrics import r2_score
    per_seed = [r2_score(y, a[s]) - r2_score(y, b[s]) for s in range(3)]
    assert sum(d > 0 for d in per_seed) == 2 and min(per_seed) < 0
    d = paired_delta(y, a, b, "regression", "r2", n_boot=500)
    assert d["low"] < 0 < d["high"] and direction(d) == "not separable"
    # every seed on the same side: the interval still excludes 0
    b2 = {s: base[s] + rng.normal(scale=0.5, size=n) for s in range(3)}
    d2 = paired_delta(y, a, b2, "regression", "r2", n_boot=500)
    assert all(r2_score(y, a[s]) > r2_score(y, b2[s]) for s in range(3)) and direction(d2) == "better"
