"""mmlib.analysis.ablations (notebook 30) and the notebook-50 helpers of mmlib.analysis.imbalance:
records name the model that ran, summaries carry their per-seed frame, the weak modality is picked."""
from __future__ import annotations

import pytest

from conftest import make_tiny_dataset
from mmlib.analysis.ablations import drop_ablation, noise_ablation, shapley_ablation
from mmlib.analysis.attribution import all_subsets, constant_metrics
from mmlib.analysis.imbalance import imbalance_conditions, pick_weak_modality
from mmlib.reporting.records import RecordWriter
from mmlib.training.experiments import run_over_seeds
from mmlib.utils import MMLibError

PROFILE = {"seeds": [0, 1], "epochs": 1, "patience": None, "batch_size": 64, "max_batches_per_epoch": None}
RUN = dict(profile=PROFILE, notebook="99_test", device="cpu", progress=False)


@pytest.fixture(scope="module")
def ablation_runs():
    ds = make_tiny_dataset(n=200).subset_modalities(["tabular", "text"])
    mods = ds.modality_names
    full = run_over_seeds(ds, "gated", mods, PROFILE["seeds"], experiment="full_model", model_name="gated_fusion", **RUN)
    late = run_over_seeds(ds, "late", mods, PROFILE["seeds"], experiment="full_model", model_name="late_fusion", **RUN)
    subset_runs = {s: run_over_seeds(ds, "early", sorted(s), PROFILE["seeds"], experiment="subset", **RUN)
                   for s in all_subsets(mods) if 0 < len(s) < len(mods)}
    subset_runs[frozenset(mods)] = full
    return ds, full, late, subset_runs


def test_drop_and_shapley_records_name_the_fusion_that_ran(ablation_runs, tmp_path):
    ds, full, _, subset_runs = ablation_runs
    writer = RecordWriter("99_test", ds.name, tmp_path)
    drops = drop_ablation(full, subset_runs, metric="r2", writer=writer)
    assert {r["model"] for r in writer.records} == {"gated_fusion"}
    assert {r["fusion"] for r in writer.records} == {"gated"}
    assert len(writer.records) == 2 * 2 * 3  # seeds x modalities x drop modes
    # ~10 % of the training rows lack each modality: every masked path was trained, nothing is flagged
    assert all(r["extra"]["untrained_path"] == [] for r in writer.records)
    assert drops.values["untrained_path"] == [] and "untrained path" not in drops.text
    assert "relies most on" in drops.text
    assert set(drops.long["ablation"]) == {"retrain without", "drop at inference (mask)",
                                           "drop at inference (zero)", "drop at inference (mean)"}
    n = len(writer.records)
    shap = shapley_ablation(full, subset_runs, metric="r2", writer=writer)
    new = writer.records[n:]
    assert {r["model"] for r in new} == {"gated_fusion"} and {r["experiment"] for r in new} == {"shapley"}
    assert set(shap.long["method"]) == {"mask", "retrain"} and set(shap.values["dominant"]) == {"mask", "retrain"}
    assert shap.values["method"] == ["mask"]  # auto: every path trained, so masking
    assert {(r["condition"].split(":")[0], r["extra"]["shapley_method"]) for r in new} == {("mask", "mask"),
                                                                                          ("retrain", "retrain")}
    assert all(r["extra"]["untrained_path"] == [] for r in new)
    assert "mask and retrain Shapley values" in shap.text
    # efficiency: per seed and method the values add up to v(all) - v(constant prediction)
    per_seed = shap.long.groupby(["method", "seed"])["shapley"].sum()
    gain = [r.metrics["test"]["r2"] - constant_metrics(ds, "test")["r2"] for r in full]
    for method in ("mask", "retrain"):
        assert per_seed.loc[method].tolist() == pytest.approx(gain, abs=1e-6)
    # the same subsets given as tuples (as before the frozenset keys) give the same values
    as_tuples = {tuple(sorted(k)): v for k, v in subset_runs.items()}
    again = shapley_ablation(full, as_tuples, metric="r2", writer=RecordWriter("99_test", ds.name, tmp_path))
    assert again.long["shapley"].tolist() == pytest.approx(shap.long["shapley"].tolist())


def test_noise_ablation_names_each_model_against_the_reference(ablation_runs, tmp_path):
    ds, full, late, _ = ablation_runs
    writer = RecordWriter("99_test", ds.name, tmp_path)
    noise = noise_ablation({"gated_fusion": full, "late_fusion": late}, levels=[0.0, 0.5, 1.0], metric="r2",
                           writer=writer)
    assert {r["model"] for r in writer.records} == {"gated_fusion", "late_fusion"}
    assert len(noise.long) == 2 * 2 * 2 * 3  # models x seeds x modalities x levels
    assert "gated_fusion's effective robustness against late_fusion" in noise.text


def test_pick_weak_modality(tmp_path):
    ds = make_tiny_dataset(n=60)
    assert pick_weak_modality(ds, "text", tmp_path, metric="r2") == "text"
    # no published records of notebook 10 and no ceilings: the first modality
    assert pick_weak_modality(ds, "strongest", tmp_path, metric="r2") == ds.modality_names[0]
    ds.meta["ceilings"] = {m: float(i == 1) for i, m in enumerate(ds.modality_names)}
    assert pick_weak_modality(ds, "strongest", tmp_path, metric="r2") == ds.modality_names[1]
    with pytest.raises(MMLibError, match='renamed to "strongest"'):
        pick_weak_modality(ds, "auto", tmp_path, metric="r2")
    with pytest.raises(MMLibError, match="neither 'strongest' nor a modality"):
        pick_weak_modality(ds, "audio", tmp_path, metric="r2")


def test_imbalance_conditions():
    ds = make_tiny_dataset(n=60)
    conds = imbalance_conditions(ds, "tabular", 0.8, 0.5, 0.25)
    assert [c["label"] for c in conds] == ["tabular:fewer_rows=0.8", "tabular:corrupt=0.5", "text:truncate=0.25"]
    no_text = ds.subset_modalities(["tabular", "image"])
    assert [c["how"] for c in imbalance_conditions(no_text, "image", 0.8, 0.5, 0.5)] == ["fewer_rows", "corrupt"]
