"""Classification targets through the lab (issue 15): metrics, baselines, the postmortem's
reference, and a smoke run of every notebook on a small classification folder dataset
(tests/fixtures/classification_folder: 240 rows, CSV + 32×32 PNGs + text; 3-class ``label``
with the binary ``good`` as notebook 20's other target)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from mmlib.analysis.verdicts import constant_score
from mmlib.training.metrics import METRIC_NAMES, MetricWarning, compute_metrics, higher_is_better
from mmlib.training.tasks import get_task

FIX = Path(__file__).parent / "fixtures" / "classification_folder"
SPEC = FIX / "items.toml"
NOTEBOOKS = ("00_eda", "10_unimodal_baselines", "20_simple_fusion", "30_ablations", "40_fusion_variants",
             "50_modality_imbalance", "60_contrastive_alignment", "70_embedding_fusion", "90_postmortem")


def test_multiclass_metrics_include_macro_one_vs_rest_auc():
    y = np.array([0, 1, 2, 2, 1, 0])
    p = np.array([[.8, .1, .1], [.2, .7, .1], [.1, .2, .7], [.5, .2, .3], [.3, .4, .3], [.2, .5, .3]])
    m = compute_metrics("multiclass", y, p)
    assert set(m) == set(METRIC_NAMES["multiclass"]) >= {"accuracy", "macro_f1", "roc_auc_ovr", "log_loss"}
    # by hand (pairs won, ties half): class 0 vs rest 5.5/8, class 1 7/8, class 2 7/8 → equal-weight mean
    assert m["roc_auc_ovr"] == pytest.approx((5.5 / 8 + 7 / 8 + 7 / 8) / 3)
    assert higher_is_better("test_roc_auc_ovr") and not higher_is_better("val_log_loss")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m2 = compute_metrics("multiclass", np.array([0, 1, 1, 0, 1, 0]), p)  # class 2 absent
    assert np.isnan(m2["roc_auc_ovr"]) and np.isfinite(m2["accuracy"])
    assert any(issubclass(x.category, MetricWarning) for x in w)


def test_binary_metrics_and_task_directions():
    m = compute_metrics("binary", [0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    assert m["roc_auc"] == pytest.approx(0.75) and m["accuracy"] == pytest.approx(0.5)
    assert {"f1", "pr_auc", "log_loss"} <= set(m)
    assert get_task("binary").metric == "roc_auc" and get_task("multiclass").metric == "accuracy"
    assert get_task("binary").higher and get_task("multiclass").higher


def test_constant_reference_in_the_task_metric():
    assert constant_score("metric_test_r2") == 0.0
    assert constant_score("metric_test_roc_auc") == 0.5
    assert constant_score("metric_test_accuracy", [0, 1, 1, 2]) == 0.5  # the majority-class rate
    assert constant_score("metric_test_accuracy") is None               # unknown without the targets


@pytest.fixture(scope="module")
def clf_dataset():
    from mmlib.data import load_dataset
    return load_dataset(str(SPEC))


def test_fixture_loads_as_multiclass_and_binary(clf_dataset):
    from mmlib.data import load_dataset
    assert clf_dataset.task == "multiclass" and clf_dataset.n_classes == 3 and clf_dataset.n == 240
    assert set(clf_dataset.modality_names) == {"tabular", "text", "image"}
    binary = load_dataset(str(FIX / "items_binary.toml"))
    assert binary.task == "binary" and binary.n_classes == 2


def test_baselines_are_classifiers(clf_dataset, one_thread):
    from mmlib.models.baselines import catboost_baseline, tfidf_linear_baseline
    cb = catboost_baseline(clf_dataset, iterations=30, seed=0)
    tf = tfidf_linear_baseline(clf_dataset, seed=0)
    for res in (cb, tf):
        test = res["test"]
        assert set(METRIC_NAMES["multiclass"]) <= set(test)
        assert 0 <= test["accuracy"] <= 1 and 0 <= test["roc_auc_ovr"] <= 1
    assert tf["model"].startswith("tfidf+logreg")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from mmlib.reporting.runner import main as run_reports
    out = tmp_path_factory.mktemp("clf_reports")
    code = run_reports(["--profile", "smoke", "--data", str(SPEC), "--out-dir", str(out), "--allow-dirty",
                        "--device", "cpu"])
    return code, out / "clf_items"


def test_every_notebook_runs_on_a_classification_dataset(smoke_run):
    code, out = smoke_run
    assert code == 0
    for nb in NOTEBOOKS:
        if nb == "90_postmortem":
            continue
        recs = json.loads((out / f"{nb}.results.json").read_text())["records"]
        assert (out / f"{nb}.html").is_file(), nb
        if not recs:  # allowed only where the notebook says it does not apply: 70 needs a numeric target
            assert nb == "70_embedding_fusion" and "Not applicable" in (out / f"{nb}.html").read_text(), nb
            continue
        trained = [r for r in recs if any(k.startswith("test_") for k in r["metrics"])]
        assert not any("test_r2" in r["metrics"] for r in trained), nb  # no regression metric on a class target
    recs20 = json.loads((out / "20_simple_fusion.results.json").read_text())["records"]
    assert any("test_accuracy" in r["metrics"] and "test_roc_auc_ovr" in r["metrics"] for r in recs20)
    assert any(r["experiment"] == "other_target" and "test_pr_auc" in r["metrics"] for r in recs20)  # binary `good`
    pm = (out / "postmortem.md").read_text()
    assert "primary metric: test accuracy" in pm and "R²" not in pm
    assert "the majority-class rate" in pm  # Q3's constant prediction, in the task's metric
