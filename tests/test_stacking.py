"""mmlib.analysis.stacking (late fusion of whole models) and the postmortem sections built on it:
other targets, published figures, one record per trained run."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import make_tiny_dataset
from mmlib.data import default_target, other_targets, published_results
from mmlib.training.experiments import run_over_seeds
from mmlib.analysis.postmortem import _published_section, _unique_runs, build_postmortem
from mmlib.training.profiles import get_profile
from mmlib.reporting.records import RecordWriter, make_record, records_to_frame
from mmlib.analysis.stacking import apply_stack, fit_stack, stacked_ensemble, unimodal_members
from mmlib.utils import MMLibError


def test_fit_stack_recovers_non_negative_weights_and_intercept():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(500, 3))
    y = 0.7 * p[:, 0] + 0.2 * p[:, 2] + 1.5  # model 1 useless, model 2 would need a negative weight if used
    w, b = fit_stack(np.column_stack([p, -p[:, 0]]), y)
    assert w.shape == (4,) and (w >= 0).all()
    np.testing.assert_allclose(w, [0.7, 0.0, 0.2, 0.0], atol=1e-8)
    assert b == pytest.approx(1.5, abs=1e-8)


def test_apply_stack_clips_probabilities_for_binary_only():
    p = np.array([[0.9, 0.8], [0.1, 0.0]])
    w = np.array([1.0, 1.0])
    np.testing.assert_allclose(apply_stack(p, w, 0.0, "binary"), [1.0, 0.1])
    np.testing.assert_allclose(apply_stack(p, w, 0.0, "regression"), [1.7, 0.1])


def test_fit_stack_rejects_mismatched_or_nan_inputs():
    with pytest.raises(MMLibError, match="do not match"):
        fit_stack(np.zeros((5, 2)), np.zeros(4))
    with pytest.raises(MMLibError, match="NaN"):
        fit_stack(np.array([[np.nan], [1.0]]), np.zeros(2))


def _tiny_stack(baselines_of, train: bool = True):
    ds = make_tiny_dataset(n=400)
    P = get_profile("smoke", epochs=3, max_batches_per_epoch=None, seeds=[0, 1])
    writer = _memory_writer(ds)
    runs = {"early": run_over_seeds(ds, "early", None, P["seeds"], profile=P, notebook="40_fusion_variants",
                                    experiment="fusion_variant", progress=False)} if train else {}
    y = ds.target.numpy()
    res = lambda v, mods: {"modalities": mods, "predictions": {"val": v[ds.splits["val"]],  # noqa: E731
                                                               "test": v[ds.splits["test"]]}}
    return ds, P, writer, runs, baselines_of(y, res)


def test_stacked_ensemble_prefers_the_informative_member():
    def base(y, res):
        noise = np.random.default_rng(0).normal(size=len(y))  # a "baseline" that knows nothing
        oracle = {s: res(y + 0.01 * np.random.default_rng(s).normal(size=len(y)), ["tabular", "text"]) for s in (0, 1)}
        return {"noise": res(noise, ["text"]), "oracle": oracle}  # one fit for every seed / one per seed

    ds, P, writer, runs, base = _tiny_stack(base)
    s = stacked_ensemble(ds, runs, P["seeds"], writer, baselines=base, n_boot=200)
    assert list(s.table.index) == ["early", "noise", "oracle", "stack", "stack_unimodal"]
    assert s.table.loc["oracle", "stack_weight"] > 0.9 and s.table.loc["noise", "stack_weight"] < 0.05
    assert s.values["best_member"] == "oracle" and s.table.loc["stack", "mean"] > 0.99
    recs = [r for r in writer.records if r["model"] == "stack"]
    assert [r["seed"] for r in recs] == [0, 1] and recs[0]["extra"]["members"] == ["early", "noise", "oracle"]
    assert s.values["fusion_verdict"] == "better"  # the oracle is multimodal: the unimodal stack (noise) cannot follow
    assert all(r["run_id"] and r["profile"] == "smoke" for r in recs)
    assert writer._predictions and all(len(p) == len(ds.splits["test"]) for p in writer._predictions.values())


def test_stacked_ensemble_measures_what_multimodal_members_add():
    def base(y, res):
        g = np.random.default_rng(3)
        return {"weak_text": res(0.3 * y + g.normal(size=len(y)), ["text"]),
                "weak_tab": res(0.3 * y + g.normal(size=len(y)), ["tabular"]),
                "oracle": res(y + 0.01 * g.normal(size=len(y)), ["tabular", "text"])}

    ds, P, writer, _, base = _tiny_stack(base, train=False)
    s = stacked_ensemble(ds, {}, P["seeds"], writer, baselines=base, n_boot=300)
    assert list(s.table.index) == ["weak_text", "weak_tab", "oracle", "stack", "stack_unimodal"]
    assert np.isnan(s.table.loc["oracle", "stack_unimodal_weight"])
    d = s.values["fusion_gain"]
    assert s.values["fusion_verdict"] == "better" and d["low"] > 0 and d["n_seeds"] == 2
    assert "add a gain" in s.text
    uni = [r for r in writer.records if r["model"] == "stack_unimodal"]
    assert len(uni) == 2 and uni[0]["modalities"] == ["tabular", "text"]
    assert uni[0]["extra"]["members"] == ["weak_text", "weak_tab"]

    def same(y, res):  # the multimodal member is a copy of a unimodal one: nothing to add
        g = np.random.default_rng(4)
        a, b = 0.8 * y + g.normal(size=len(y)), 0.2 * y + g.normal(size=len(y))
        return {"a": res(a, ["text"]), "b": res(b, ["tabular"]), "a_again": res(a, ["tabular", "text"])}

    ds, P, writer, _, base = _tiny_stack(same, train=False)
    s = stacked_ensemble(ds, {}, P["seeds"], writer, baselines=base, n_boot=300)
    assert s.values["fusion_verdict"] == "not separable" and "not separable" in s.text


def test_single_modality_networks_join_stack_unimodal(monkeypatch, tmp_path):
    """40's stack_unimodal holds notebook 10's single-modality networks (one per modality, 10's
    exact configuration, so the run cache serves them): stack − stack_unimodal then measures
    fusion, not a strong single-modality encoder that only the fusion networks had."""
    from mmlib.training import runcache

    monkeypatch.setenv("MMLIB_RUN_CACHE", "1")
    monkeypatch.setattr(runcache, "DATA_CACHE", tmp_path)

    ds = make_tiny_dataset(n=300)
    P = get_profile("smoke", seeds=[0, 1])
    ten = [run_over_seeds(ds, "early", [m], P["seeds"], profile=P, notebook="10_unimodal_baselines",
                          experiment="unimodal", model_name=f"{m}_only", device="cpu", progress=False)
           for m in ds.modality_names]  # what notebook 10 trains
    loads = []
    real_load = runcache.load
    monkeypatch.setattr(runcache, "load", lambda key: loads.append(real_load(key)) or loads[-1])
    uni = unimodal_members(ds, P, "40_fusion_variants", device="cpu", executor="local")
    assert list(uni) == [f"{m}_only" for m in ds.modality_names]
    assert len(loads) == 6 and all(hit is not None for hit in loads)  # every run read back, none retrained
    for m, runs in zip(ds.modality_names, ten):
        np.testing.assert_array_equal(uni[f"{m}_only"][1].test_predictions, runs[1].test_predictions)
    early = {"early": run_over_seeds(ds, "early", None, P["seeds"], profile=P, notebook="40_fusion_variants",
                                     experiment="fusion_variant", device="cpu", progress=False)}
    writer = _memory_writer(ds)
    s = stacked_ensemble(ds, {**early, **uni}, P["seeds"], writer, n_boot=100)
    rec = [r for r in writer.records if r["model"] == "stack_unimodal"]
    assert len(rec) == 2 and rec[0]["extra"]["members"] == list(uni)
    assert not np.isnan(s.table.loc["text_only", "stack_unimodal_weight"])


def test_stacked_ensemble_skips_multiclass():
    ds = make_tiny_dataset(n=200, task="multiclass")
    assert stacked_ensemble(ds, {"a": [], "b": []}, [0], _memory_writer()) is None


def test_dataset_registry_knows_other_targets_and_published_figures():
    assert other_targets("clothing") == ["Recommended IND", "Rating_class"] and other_targets("spacecraft") == []
    assert default_target("clothing") == "Rating" and default_target("spacecraft") is None
    pubs = published_results("clothing")
    assert {p["target"] for p in pubs} == {"Rating", "Rating_class", "Recommended IND"}
    assert all(p["caveat"] for p in pubs) and published_results("spacecraft") == []


def _rec(notebook, experiment, model, seed, value, metric="test_r2", condition="", modalities=("tabular", "text")):
    return make_record(notebook=notebook, dataset="clothing", experiment=experiment, model=model, fusion="early",
                       modalities=list(modalities), condition=condition, seed=seed, metrics={metric: value},
                       n_params=10, train_time_s=1.0, epochs=1, device="cpu")


def test_unique_runs_counts_a_run_recorded_by_two_notebooks_once():
    recs = records_to_frame([_rec("20_simple_fusion", "simple_fusion", "early_fusion", s, 0.5 + s) for s in (0, 1)]
                            + [_rec("40_fusion_variants", "fusion_variant", "early", s, 0.5 + s) for s in (0, 1)])
    u = _unique_runs(recs)
    assert len(u) == 2 and set(u["model"]) == {"early"}


def test_published_section_takes_the_best_model_per_target():
    recs = records_to_frame(
        [_rec("10_unimodal_baselines", "tfidf", "tfidf+ridge", 0, 0.58)]
        + [_rec("40_fusion_variants", "stacking", "stack", s, 0.60 + 0.01 * s) for s in (0, 1, 2)]
        + [_rec("30_ablations", "subset", "early_fusion", 0, 0.99)]  # ablations are not candidates
        + [_rec("20_simple_fusion", "other_target", "early_fusion", s, 0.93, metric="test_f1",
                condition="target=Recommended IND") for s in (0, 1)])
    sec = _published_section(recs, "clothing")
    t = sec.table
    rating = t[t["target"] == "Rating"]
    assert len(rating) == 2 and set(rating["our model"]) == {"stack, 40_fusion_variants"}
    assert rating["ours − published (top)"].iloc[0] == pytest.approx(0.61 - 0.654, abs=1e-9)
    rec = t[t["target"] == "Recommended IND"].iloc[0]
    assert rec["ours (best, test)"].startswith("0.930") and "target=Recommended IND" in rec["our model"]
    assert t[t["target"] == "Rating_class"]["ours (best, test)"].iloc[0] == "not measured"


def test_postmortem_of_synthetic_records_has_other_target_and_published_sections():
    recs = records_to_frame(
        [_rec("10_unimodal_baselines", "unimodal", "text_only", s, 0.5, modalities=("text",)) for s in (0, 1)]
        + [_rec("20_simple_fusion", "simple_fusion", "early_fusion", s, 0.55) for s in (0, 1)]
        + [_rec("20_simple_fusion", "other_target", "early_fusion", s, 0.9, metric="test_f1",
                condition="target=Recommended IND") for s in (0, 1)])
    md = build_postmortem(recs, "clothing").to_markdown()
    assert "## Other targets" in md and "## Comparison with published results" in md
    assert "Recommended IND" in md


def _memory_writer(ds=None) -> RecordWriter:
    import tempfile

    return RecordWriter("40_fusion_variants", "tiny", tempfile.mkdtemp(), profile=get_profile("smoke"), data=ds)
