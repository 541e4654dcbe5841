"""CatBoost and TF-IDF baselines on the clothing fixture and on a planted text signal."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmlib.models.baselines import _texts, catboost_baseline, discrete_target, tfidf_linear_baseline
from mmlib.data import load_dataset
from mmlib.training.metrics import METRIC_NAMES
from mmlib.utils import MMLibError

FIXTURE = Path(__file__).parent / "fixtures" / "clothing_small.csv"
KEYS = {"val", "test", "train_time_s", "model", "modalities", "n_params"}


def load(**kw):
    kw.setdefault("path", FIXTURE)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*'Age'.*imputed", category=UserWarning)
        return load_dataset("clothing", **kw)


def planted(tmp_path: Path, n: int = 240, seed: int = 0) -> Path:
    """A clothing-schema CSV whose Rating is written in the review's words; the table is noise."""
    g = np.random.default_rng(seed)
    words = {1: "awful ripped", 2: "poor thin", 3: "okay fine", 4: "good nice", 5: "perfect love"}
    rating = g.integers(1, 6, size=n)
    filler = ["dress", "top", "fabric", "fit", "color", "size", "wore", "bought"]
    rows = []
    for i, r in enumerate(rating):
        body = " ".join(g.choice(filler, size=4).tolist() + [words[int(r)]] + g.choice(filler, size=3).tolist())
        rows.append({"Clothing ID": int(g.integers(1, 30)), "Age": int(g.integers(18, 80)), "Title": None,
                     "Review Text": body, "Rating": int(r), "Recommended IND": int(r >= 4),
                     "Positive Feedback Count": int(g.integers(0, 5)), "Division Name": g.choice(["General", "Petite"]),
                     "Department Name": g.choice(["Tops", "Dresses"]), "Class Name": g.choice(["Knits", "Pants"])})
    p = tmp_path / "planted.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


@pytest.mark.parametrize("target", ["Rating", "Recommended IND", "Rating_class"])
@pytest.mark.parametrize("use_text", [False, True])
def test_catboost_runs_on_fixture(target, use_text):
    ds = load(target=target)
    res = catboost_baseline(ds, use_text=use_text, iterations=30, seed=0)
    assert KEYS <= set(res)
    assert set(res["test"]) == set(METRIC_NAMES[ds.task])
    assert res["modalities"] == (["tabular", "text"] if use_text else ["tabular"])
    assert 1 <= res["n_trees"] <= 30 and res["n_params"] >= 2**6 and res["train_time_s"] > 0
    assert "Rating" not in res["features"] and "Recommended IND" not in res["features"]
    metric = "r2" if ds.task == "regression" else "accuracy"
    assert math.isfinite(res["test"][metric])


def test_catboost_is_deterministic():
    ds = load()
    a = catboost_baseline(ds, iterations=40, seed=1)
    b = catboost_baseline(ds, iterations=40, seed=1)
    assert a["test"] == b["test"] and a["n_trees"] == b["n_trees"]


@pytest.mark.parametrize("target", ["Rating", "Recommended IND", "Rating_class"])
def test_tfidf_runs_on_fixture(target):
    ds = load(target=target)
    emb = np.random.default_rng(0).normal(size=(ds.n, 5))
    res = tfidf_linear_baseline(ds, use_tabular=True, extra_embeddings=emb, alpha=(1.0, 3.0))
    assert KEYS <= set(res)
    assert res["modalities"] == ["text", "tabular", "embeddings"]
    assert res["alpha"] in (1.0, 3.0)
    assert res["n_features"] > res["n_tfidf_terms"] + 2 + 5  # + 2 numbers, one-hots, 5 embedding dims
    assert res["n_params"] >= res["n_features"]
    # one-vs-rest AUC is NaN (with a MetricWarning) when a class is absent from the 6-row split
    ovr_defined = len(set(ds.target[ds.splits["val"]].tolist())) == ds.n_classes if target == "Rating_class" else True
    assert all(math.isfinite(v) for k, v in res["val"].items() if k != "roc_auc_ovr" or ovr_defined)
    preds = tfidf_linear_baseline(ds, alpha=1.0, return_predictions=True)["predictions"]
    assert len(preds["test"]) == len(ds.splits["test"])


def test_tfidf_embedding_modality_by_name(tmp_path, monkeypatch):
    from mmlib.data import sentence

    class Fake:
        def get_embedding_dimension(self):
            return 3

        def encode(self, texts, **kw):
            return np.array([[len(t), t.count("o"), 1.0] for t in texts], dtype=np.float32)

    monkeypatch.setattr(sentence, "_load_model", lambda name, device: Fake())
    ds = load(text_encoder="both", cache_dir=tmp_path)
    res = tfidf_linear_baseline(ds, extra_embeddings="text_minilm", alpha=1.0)
    assert res["modalities"] == ["text", "text_minilm"] and res["model"] == "tfidf+ridge+text_minilm"
    with pytest.raises(MMLibError, match="not a modality of .* with a frozen embedding"):
        tfidf_linear_baseline(ds, extra_embeddings="tabular")
    # the sentence embedding beside a TF-IDF bag (text_encoder="minilm+tfidf") counts as one too
    bag = load(text_encoder="minilm+tfidf", cache_dir=tmp_path)
    res = tfidf_linear_baseline(bag, extra_embeddings="text", use_tabular=True, alpha=1.0)
    plain = tfidf_linear_baseline(bag, use_tabular=True, alpha=1.0)
    assert res["model"] == "tfidf+ridge+tabular+text" and res["n_features"] == plain["n_features"] + 3
    from mmlib.analysis.practitioner import practitioner_baselines
    from mmlib.training.profiles import get_profile

    assert "tfidf+ridge+tabular+text" in practitioner_baselines(bag, get_profile("smoke"))


def test_baselines_find_a_planted_text_signal(tmp_path):
    ds = load(path=planted(tmp_path), min_freq=1)
    tfidf = tfidf_linear_baseline(ds, alpha=(0.1, 1.0))
    assert tfidf["test"]["r2"] > 0.8
    tab = catboost_baseline(ds, iterations=100)
    txt = catboost_baseline(ds, use_text=True, iterations=100)
    assert tab["test"]["r2"] < 0.2  # the table is noise
    assert txt["test"]["r2"] > tab["test"]["r2"] + 0.3


def test_rating_as_classes_predicts_an_expected_value(tmp_path):
    ds = load(path=planted(tmp_path), min_freq=1)
    assert discrete_target(ds)
    res = tfidf_linear_baseline(ds, regression_as_classes=True, return_predictions=True)
    assert res["model"] == "tfidf+logreg_ev" and res["class_values"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert res["alpha"] in (0.03, 0.1, 0.3, 1.0)  # its own, weaker regularisation grid
    pred = res["predictions"]["test"]
    # an expected value of 1..5 lies in [1, 5] and, with the rating written in the text, is close to it
    assert pred.min() >= 1.0 and pred.max() <= 5.0
    assert res["test"]["r2"] > 0.8
    assert res["n_params"] == 5 * (res["n_features"] + 1)  # one weight vector + intercept per class


def test_rating_as_classes_refuses_other_targets(tmp_path):
    ds = load(target="Recommended IND")
    assert not discrete_target(ds)
    with pytest.raises(MMLibError, match="regression targets"):
        tfidf_linear_baseline(ds, regression_as_classes=True)
    ds = load()
    ds.target = ds.target + torch.linspace(0, 0.5, ds.n)  # 40 distinct values: not a rating any more
    assert not discrete_target(ds)
    with pytest.raises(MMLibError, match="distinct"):
        tfidf_linear_baseline(ds, regression_as_classes=True)


def test_absent_text_becomes_empty_string():
    ds = load()
    texts = _texts(ds)
    assert texts[7] == "" and texts[11] == "" and texts[2].startswith("Some major design flaws.")


def test_bad_inputs_are_clear_errors(tiny_dataset):
    with pytest.raises(MMLibError, match="tabular_frame"):
        catboost_baseline(tiny_dataset)
    ds = load()
    with pytest.raises(MMLibError, match=r"\[n=40, d\]"):
        tfidf_linear_baseline(ds, extra_embeddings=np.zeros((39, 4)))
    bad = np.zeros((40, 4))
    bad[3, 1] = np.nan
    with pytest.raises(MMLibError, match="row 3"):
        tfidf_linear_baseline(ds, extra_embeddings=bad)
    with pytest.raises(MMLibError, match="alpha"):
        tfidf_linear_baseline(ds, alpha=0.0)


def test_baselines_over_seeds_refit_catboost_and_reuse_the_seed_free_tfidf(tmp_path, monkeypatch):
    from mmlib.analysis.practitioner import add_baseline_record, baseline_predictions, baselines_over_seeds
    from mmlib.reporting.records import RecordWriter
    from mmlib.training import runcache

    ds = load()
    prof = {"catboost_iterations": 20, "catboost_text_iterations": 10}
    fits = baselines_over_seeds(ds, prof, [3, 4], with_embeddings=False)
    assert list(fits) == [3, 4] and set(fits[3]) == {"catboost_tabular", "catboost_tabular+text", "tfidf+ridge",
                                                  "tfidf+ridge+tabular", "tfidf+logreg_ev"}
    cb3, cb4 = fits[3]["catboost_tabular+text"], fits[4]["catboost_tabular+text"]
    assert cb3["params"]["random_seed"] == 3 and cb4["params"]["random_seed"] == 4
    assert not np.array_equal(cb3["predictions"]["test"], cb4["predictions"]["test"])
    assert fits[4]["tfidf+ridge+tabular"] is fits[3]["tfidf+ridge+tabular"]  # seed-free: one fit for every seed
    assert fits[4]["tfidf+ridge+tabular"]["fitted_seed"] == 3 and cb4["fitted_seed"] == 4
    # one record per seed, each with its test predictions
    writer = RecordWriter("10_unimodal_baselines", ds.name, tmp_path, data=ds)
    for seed, by_name in fits.items():
        for name, res in by_name.items():
            add_baseline_record(writer, res, None, name, seed)
    recs = writer.records
    assert len(recs) == 10 and {r["experiment"] for r in recs} == {"catboost", "tfidf"}
    assert {r["modalities"] == ["tabular"] for r in recs if r["model"] == "catboost_tabular"} == {True}
    assert len(writer._predictions) == 10 and all(len(p) == len(ds.splits["test"]) for p in writer._predictions.values())
    # the run cache: a second call reads the fits back
    monkeypatch.setenv("MMLIB_RUN_CACHE", "1")
    monkeypatch.setattr(runcache, "DATA_CACHE", tmp_path)
    first = baseline_predictions(ds, prof, [0], with_embeddings=False)
    again = baseline_predictions(ds, prof, [0], with_embeddings=False)
    assert not first["catboost_tabular+text"][0].get("cached") and again["catboost_tabular+text"][0]["cached"]
    np.testing.assert_array_equal(first["tfidf+logreg_ev"][0]["predictions"]["test"],
                                  again["tfidf+logreg_ev"][0]["predictions"]["test"])
