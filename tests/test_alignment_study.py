"""Notebook 60's study functions (``mmlib.analysis.alignment_study``) on a tiny spacecraft
with one-epoch models, their conclusion sentences on hand-made tables, and the text
helpers of notebook 70 (``mmlib.analysis.embedding_study``)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mmlib.analysis import alignment_study as study
from mmlib.analysis import embedding_study as es
from mmlib.data import load_dataset
from mmlib.reporting.records import RecordWriter
from mmlib.training.profiles import get_profile

SEED = 0


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: intra-op threads only add contention


@pytest.fixture(scope="module")
def ds():
    return load_dataset("spacecraft", n=400, seed=0)


@pytest.fixture(scope="module")
def run(ds, tmp_path_factory):
    """The notebook's blocks in its order, on a TF-IDF text space and 1-epoch models."""
    profile = {**get_profile("smoke"), "seeds": [SEED], "epochs": 1, "patience": None, "batch_size": 64,
               "max_batches_per_epoch": 2}
    fit = study.fit_settings(profile, "cpu")
    writer = RecordWriter("60_contrastive_alignment", ds.name, tmp_path_factory.mktemp("records"))
    out = SimpleNamespace(writer=writer, fit=fit)
    out.spaces = study.frozen_spaces(ds, profile, device="cpu", text_method="bow")
    out.probes = study.probe_table(ds, out.spaces, writer, SEED)
    out.pairs = out.spaces.pairs()
    out.refs = study.reference_points(ds, out.pairs["test"], writer, SEED)
    out.translation = study.translation_runs(out.pairs, [SEED], fit, writer, extra={"text_space": "bow"})
    out.trans = study.translation_table(writer.records)
    out.ablation = study.centring_ablation(out.spaces, out.translation, SEED, fit, writer)
    out.two_tower = study.two_tower_runs(ds, [SEED], fit, writer)
    out.overall = study.overall_table(writer.records)
    out.main = study.main_models(out.overall)
    out.dist = study.distance_table(writer.records)
    out.searchers = study.build_searchers(ds, out.spaces, out.two_tower[SEED].model, out.translation, out.trans,
                                          SEED, "cpu")
    out.prec = study.search_precision(out.searchers, ["a striped red cruiser", "a plain blue ship"], 4,
                                      study.C.shared_keywords(ds), writer, SEED)
    return out


# ------------------------------------------------------------------ the blocks run and keep their shape
def test_frozen_spaces_are_centred_and_paired(ds, run):
    sp = run.spaces
    assert sp.x_text.shape == (ds.n, sp.text.dim) and sp.x_image.shape == (ds.n, sp.image.dim)
    np.testing.assert_allclose(sp.x_image[sp.rows["train"]].mean(axis=0), 0, atol=1e-4)
    assert set(run.pairs) == {"train", "val", "test"}
    assert sp.both[run.pairs["test"].rows].all()
    assert list(study.autoencoder_curve(sp).columns) == ["epoch", "split", "mse"]
    assert f"{sp.image.dim}-d" in study.spaces_text(sp)


def test_probes_and_references(run):
    assert list(run.probes.columns) == ["image", "text", "majority"]
    assert set(run.probes.index) == set(study.PROBE_FACTORS)
    assert set(run.refs) == {"random", "shared_factor_ceiling"}
    assert run.refs["random"]["R@10"] == pytest.approx(10 / len(run.pairs["test"]))
    table = study.reference_table(run.refs, len(run.pairs["test"]))
    assert list(table.columns) == ["R@1", "R@5", "R@10", "MRR"]


def test_translators_two_tower_and_records(run):
    assert set(run.translation) == {(f"{a}_{l}", SEED) for a, l in study.TRANSLATORS}
    assert set(run.two_tower) == {SEED}
    assert list(run.trans.index) == [f"{a}_{l}" for a, l in study.TRANSLATORS]
    assert all(f"{m}_mean" in run.trans.columns for m in study.SHOWN)
    grid = study.loss_architecture_grid(run.trans)
    assert set(grid.index) == {"mlp", "residual"} and set(grid.columns) == {"cosine", "infonce"}
    assert list(run.ablation.columns) == ["centred", "uncentred"]
    assert list(run.ablation.index) == ["mlp_cosine", "residual_infonce"]
    # the record fields the committed reports and notebook 90 read
    keys = {(r["experiment"], r["model"], r["condition"]) for r in run.writer.records}
    assert ("translation", "residual_infonce", "uncentred") in keys
    assert ("two_tower", study.TWO_TOWER, "") in keys
    assert ("reference", "shared_factor_ceiling", "") in keys
    assert ("frozen_space_probe", f"text_{run.spaces.text.method}", "factor=color") in keys
    tr = next(r for r in run.writer.records if r["experiment"] == "translation" and not r["condition"])
    assert set(study.SHOWN) <= set(tr["metrics"]) and tr["extra"]["text_space"] == "bow"
    search = [r for r in run.writer.records if r["experiment"] == "search_examples"]
    assert search and all(set(r["metrics"]) == {"test_keyword_precision@4"} for r in search)


def test_overall_distance_and_search(ds, run):
    assert set(run.main["model"]) == {f"{a}_{l}" for a, l in study.TRANSLATORS} | {study.TWO_TOWER}
    assert list(run.dist.columns) == ["R@10 cosine", "R@10 euclidean", "MRR cosine", "MRR euclidean",
                                      "R@10 euclidean − cosine"]
    assert list(run.searchers) == ["two-tower", f"translator ({run.trans['test_t2i_R@10_mean'].idxmax()})"]
    assert list(run.prec.columns) == list(run.searchers) and len(run.prec) == 2
    assert "Best text→image Recall@10" in study.overall_conclusion(run.main, run.refs)
    fig = study.plot_overall(run.main, run.refs)
    assert fig.axes[0].get_title().startswith("Text→image Recall@10")
    caption = study.keyword_caption(ds, study.C.shared_keywords(ds))
    assert caption(int(run.pairs["test"].rows[0]))  # every spacecraft caption names a colour


def test_no_image_says_it_does_not_apply(ds):
    assert study.not_applicable(ds) is None
    text = study.not_applicable(ds.subset_modalities(["tabular", "text"]))
    assert text.startswith("**Not applicable:**") and "`spacecraft` has no image modality" in text


# ------------------------------------------------------------------ every number in the prose is computed
def _summary(means: dict, stds: dict | None = None, metric: str = "test_t2i_R@10") -> pd.DataFrame:
    stds = stds or {m: 0.05 for m in means}
    return pd.DataFrame({f"{metric}_mean": means, f"{metric}_std": stds}).rename_axis("model")


def test_translation_conclusion_reads_the_table():
    trans = _summary({"mlp_cosine": 0.10, "residual_infonce": 0.60, "mlp_infonce": 0.30, "residual_cosine": 0.20},
                     {"mlp_cosine": 0.01, "residual_infonce": 0.05, "mlp_infonce": 0.02, "residual_cosine": 0.03})
    text = study.translation_conclusion(trans, {"R@10": 0.025})
    assert "0.600 ± 0.050 against 0.100 ± 0.010" in text and "random is 0.025" in text
    assert "loss from cosine to InfoNCE changes Recall@10 by +0.300" in text  # ((.3-.1) + (.6-.2)) / 2
    assert "residual network changes it by +0.200" in text  # ((.2-.1) + (.6-.3)) / 2


def test_overall_distance_and_precision_conclusions_read_the_tables():
    main = pd.DataFrame({"experiment": ["translation", "two_tower"], "model": ["residual_infonce", study.TWO_TOWER],
                         "test_t2i_R@10_mean": [0.6, 0.4], "test_t2i_R@10_std": [0.02, 0.03],
                         "test_t2i_MRR_mean": [0.3, 0.21], "test_t2i_MRR_std": [0.01, 0.015]})
    refs = {"random": {"R@10": 0.05, "MRR": 0.02}, "shared_factor_ceiling": {"R@10": 0.8, "MRR": 0.5}}
    text = study.overall_conclusion(main, refs)
    assert "**residual_infonce** with 0.600 ± 0.020, 12.0× the random 0.050, 75% of the" in text
    assert "ceiling (0.800)" in text and "MRR text→image 0.210 ± 0.015 vs random 0.020" in text
    assert "ceiling" not in study.overall_conclusion(main, {"random": refs["random"]})
    dist = pd.DataFrame({"R@10 euclidean − cosine": [0.01, -0.123]}, index=["a", "b"])
    assert study.distance_conclusion(dist).endswith("**b** (-0.123 Recall@10).")
    prec = pd.DataFrame({"two-tower": [0.5, 0.25], "translator (x)": [1.0, np.nan]})
    assert study.precision_conclusion(prec, 8) == "Mean keyword precision@8: two-tower 0.38; translator (x) 1.00."


# ------------------------------------------------------------------ notebook 70's sentences and bins
def test_embedding_study_conclusions_read_the_tables():
    conds = [es.BASELINE_CONDITION, "target=log,loss=smape", "target=log,loss=weighted_smape"]
    tl = pd.DataFrame({"test_smape_mean": [30.0, 20.0, 18.5], "test_r2_mean": [0.5, 0.61, 0.625],
                       "val_smape_mean": [31.0, 21.0, 19.0]}, index=pd.Index(conds, name="condition"))
    best = es.lowest_val_smape(tl)
    assert best == "target=log,loss=weighted_smape" and es.split_condition(best) == ("log", "weighted_smape")
    text = es.loss_conclusion(tl, best, log_ok=True)
    assert "**target=log,loss=weighted_smape** (test SMAPE 18.50 %, R² 0.625)" in text
    assert "against 30.00 % and R² 0.500" in text and "from 20.00 % to 18.50 % and R² from 0.610 to 0.625" in text
    fv = pd.DataFrame({"test_smape_mean": [18.5, 17.25], "test_r2_mean": [0.625, 0.7], "n_params": [1234, 56789]},
                      index=pd.Index([es.TWO_BRANCH, "moe"], name="model"))
    text = es.fusion_conclusion(fv, "moe")
    assert "two_branch 1,234, moe 56,789" in text and "(test SMAPE 17.25 %, R² 0.700)" in text
    assert text.endswith("test SMAPE 18.50 %.")
    assert "skewness" in es.target_text(np.array([1.0, 2.0, 10.0]), "cost")
    assert es.target_text(np.array([-1.0, 2.0]), "y").endswith("the log variants are skipped.")


def test_error_bins_records_and_extremes(tmp_path):
    y = np.arange(1.0, 21.0)
    fake = SimpleNamespace(y_test=y, pred_test=y * 0.5 + 4, test_rows=np.arange(100, 120))  # over low, under high
    compare = {f"{es.TWO_BRANCH} · {es.BASELINE_CONDITION}": fake, "moe · target=log,loss=mse": fake}
    writer = RecordWriter("70_embedding_fusion", "spacecraft", tmp_path)
    bins = es.error_by_bin_tables(compare, 4, writer, ["text", "image"], SEED)
    assert len(writer) == 8 and writer.records[-1]["condition"] == "target=log,loss=mse;bin=4"
    low, high = bins["moe · target=log,loss=mse"].iloc[0], bins["moe · target=log,loss=mse"].iloc[-1]
    text = es.bins_conclusion(bins)
    assert f"the best configuration has {low['smape']:.1f} % and {high['smape']:.1f} %" in text
    assert f"over-predict the lowest bin by {low['bias']:.4g}" in text and "regression towards the middle" in text
    ds = SimpleNamespace(meta={"raw_texts": [f"row {i}" for i in range(120)]})
    worst, best = es.extremes(fake, ds, 3)
    assert list(worst["text"]) == ["row 119", "row 118", "row 117"]
    assert es.extremes_conclusion(worst, best, y).startswith(f"The worst 3 have true values with median "
                                                             f"{worst['y_true'].median():.4g}")
