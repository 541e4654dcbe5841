"""mmlib.analysis.robustness (drop at inference, corruption, robustness curves and scores),
mmlib.analysis.attribution (exact Shapley values) and mmlib.analysis.errors (error analysis)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_tiny_dataset
from mmlib.data.base import Modality, MultimodalDataset, make_splits
from mmlib.analysis.attribution import (all_subsets, constant_metrics, shapley_table, shapley_values,
                                        subset_values_by_masking)
from mmlib.analysis.errors import error_by_bins, worst_best
from mmlib.analysis.robustness import (DROP_MODES, corrupt_batch, corruption_stats, drop_modality, effective_robustness,
                                       imputation_values, relative_robustness, robustness_curve)
from mmlib.models import build_model
from mmlib.training.trainer import TrainConfig, Trainer
from mmlib.utils import MMLibError

CFG = dict(epochs=3, batch_size=32, progress=False, device="cpu", seed=0, patience=None)


@pytest.fixture(scope="module")
def ds() -> MultimodalDataset:
    return make_tiny_dataset()


@pytest.fixture(scope="module")
def trained(ds) -> Trainer:
    """Early fusion of tabular + text (no image: the image is the modality it does not use).
    Tabular carries most of the target."""
    torch.manual_seed(0)
    trainer = Trainer(build_model(ds, "early", modalities=["tabular", "text"]), ds, TrainConfig(**CFG))
    trainer.fit()
    return trainer


def _with_embedding(n: int = 60) -> MultimodalDataset:
    g = np.random.default_rng(1)
    x = torch.from_numpy(g.normal(size=(n, 5)).astype(np.float32) * np.arange(1, 6, dtype=np.float32))
    present = torch.from_numpy(g.random(n) > 0.2)
    x[~present] = 0
    mod = Modality("emb", "embedding", {"x": x}, present, {"dim": 5})
    return MultimodalDataset("emb", {"emb": mod}, torch.from_numpy(g.normal(size=n).astype(np.float32)),
                             "regression", make_splits(n, 0))


# ------------------------------------------------------------- drop at inference
def test_mask_drop_changes_metric_of_used_modality(trained):
    clean = trained.evaluate("test")["r2"]
    masked = drop_modality(trained, "tabular", "mask")["r2"]
    assert masked != clean
    assert masked < clean - 0.05  # tabular carries most of the target: losing it hurts


@pytest.mark.parametrize("mode", DROP_MODES)
def test_dropping_an_unused_modality_changes_nothing(trained, mode):
    clean = trained.evaluate("test")
    assert drop_modality(trained, "image", mode) == clean


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_imputation_modes_change_metric(trained, mode):
    clean = trained.evaluate("test")["r2"]
    assert drop_modality(trained, "tabular", mode)["r2"] != clean


def test_drop_modality_rejects_unknown_mode_and_modality(trained):
    with pytest.raises(MMLibError, match="drop mode"):
        drop_modality(trained, "tabular", "median")
    with pytest.raises(MMLibError, match="Unknown modality"):
        drop_modality(trained, "audio")


def test_imputation_values_are_train_mean_and_per_position_mode(ds):
    rows = ds.splits["train"]
    tab = ds.modalities["tabular"]
    keep = rows[tab.present[rows].numpy()]
    fill = imputation_values(ds, "tabular")
    np.testing.assert_allclose(fill["num"].numpy(), tab.tensors["num"][keep].double().mean(0).numpy(), rtol=1e-5)
    cats = tab.tensors["cat"][keep, 0].numpy()
    assert int(fill["cat"][0]) == int(np.bincount(cats).argmax())
    text = ds.modalities["text"]
    keep = rows[text.present[rows].numpy()]
    tok_fill = imputation_values(ds, "text")["tokens"]
    for pos in range(text.tensors["tokens"].shape[1]):
        assert int(tok_fill[pos]) == int(np.bincount(text.tensors["tokens"][keep, pos].numpy()).argmax())
    img = imputation_values(ds, "image")["pixels"]
    assert img.dtype == torch.uint8 and img.shape == ds.modalities["image"].tensors["pixels"].shape[1:]


# --------------------------------------------------------------------- corruption
def _inputs_equal(a, b, modality) -> bool:
    return all(torch.equal(a["inputs"][modality][k], b["inputs"][modality][k]) for k in a["inputs"][modality])


@pytest.mark.parametrize("modality", ["tabular", "text", "image"])
def test_corrupt_batch_level0_identity_level1_changes_deterministic(ds, modality):
    batch = ds.batch(np.arange(80))
    before = {k: v.clone() for k, v in batch["inputs"][modality].items()}
    stats = corruption_stats(ds, modality)
    same = corrupt_batch(batch, modality, 0.0, torch.Generator().manual_seed(0), stats=stats)
    assert _inputs_equal(same, batch, modality)
    a = corrupt_batch(batch, modality, 1.0, torch.Generator().manual_seed(3), stats=stats)
    b = corrupt_batch(batch, modality, 1.0, torch.Generator().manual_seed(3), stats=stats)
    c = corrupt_batch(batch, modality, 1.0, torch.Generator().manual_seed(4), stats=stats)
    assert not _inputs_equal(a, batch, modality)
    assert _inputs_equal(a, b, modality)
    assert not _inputs_equal(a, c, modality)
    # the input batch, the presence mask and the other modalities are untouched
    assert all(torch.equal(before[k], batch["inputs"][modality][k]) for k in before)
    assert a["present"][modality] is batch["present"][modality]
    for other in ds.modalities:
        if other != modality:
            assert a["inputs"][other] is batch["inputs"][other]
    # absent rows keep their zeros; dtypes and shapes are kept
    absent = ~batch["present"][modality]
    for k, t in a["inputs"][modality].items():
        assert t.dtype == before[k].dtype and t.shape == before[k].shape
        if absent.any():
            assert not t[absent].any()


def test_corrupt_batch_respects_kind_rules(ds):
    batch = ds.batch(np.arange(200))
    stats = corruption_stats(ds, "text")
    out = corrupt_batch(batch, "text", 1.0, torch.Generator().manual_seed(0), stats=stats)["inputs"]["text"]["tokens"]
    tok = batch["inputs"]["text"]["tokens"]
    assert torch.equal(out == 0, tok == 0)  # padding stays padding, nothing new is padded
    seen = set(torch.unique(ds.modalities["text"].tensors["tokens"][torch.as_tensor(ds.splits["train"])]).tolist())
    assert set(torch.unique(out[tok != 0]).tolist()) <= seen - {0}  # drawn from the training marginal
    out = corrupt_batch(batch, "tabular", 1.0, torch.Generator().manual_seed(0),
                        stats=corruption_stats(ds, "tabular"))["inputs"]["tabular"]
    present = batch["present"]["tabular"]
    assert int(out["cat"][present].min()) >= 1 and int(out["cat"].max()) <= 3  # levels seen in training
    px = corrupt_batch(batch, "image", 0.5, torch.Generator().manual_seed(0))["inputs"]["image"]["pixels"]
    assert px.dtype == torch.uint8


def test_corrupt_batch_embedding_and_bad_level():
    emb = _with_embedding()
    batch = emb.batch(np.arange(emb.n))
    stats = corruption_stats(emb, "emb")
    assert torch.equal(corrupt_batch(batch, "emb", 0.0, stats=stats)["inputs"]["emb"]["x"], batch["inputs"]["emb"]["x"])
    out = corrupt_batch(batch, "emb", 1.0, torch.Generator().manual_seed(0), stats=stats)["inputs"]["emb"]["x"]
    ratio = out[batch["present"]["emb"]].std(0) / stats["x"]["std"]
    assert torch.all((ratio > 0.5) & (ratio < 1.6))  # noise scales with each feature's std
    with pytest.raises(MMLibError, match="outside"):
        corrupt_batch(batch, "emb", 1.5)


# ------------------------------------------------------------ robustness curves
def test_robustness_curve_rows_and_clean_level(trained):
    levels = [0.0, 0.5, 1.0]
    curve = robustness_curve(trained, "tabular", levels, seed=0)
    assert list(curve["level"]) == levels and len(curve) == len(levels)
    assert {"r2", "mae"} <= set(curve.columns)
    assert curve.loc[0, "r2"] == trained.evaluate("test")["r2"]
    assert curve.loc[2, "r2"] < curve.loc[0, "r2"]
    again = robustness_curve(trained, "tabular", levels, seed=0)
    pd.testing.assert_frame_equal(curve, again)


def test_relative_robustness_hand_made():
    assert relative_robustness([0, 0.5, 1], [0.8, 0.8, 0.8]) == pytest.approx(0.8)
    assert relative_robustness([0, 0.25, 0.5, 0.75, 1], [1, 0.75, 0.5, 0.25, 0]) == pytest.approx(0.5)
    assert relative_robustness([1, 0, 0.5], [0, 1, 0.5]) == pytest.approx(0.5)  # unsorted levels
    # MultiBench: trapezoids of width 0.1 over 11 levels in [0, 1]
    levels = np.linspace(0, 1, 11)
    scores = np.random.default_rng(0).random(11)
    multibench = sum((scores[i] + scores[i + 1]) * 0.1 / 2 for i in range(10))
    assert relative_robustness(levels, scores) == pytest.approx(multibench)
    with pytest.raises(MMLibError):
        relative_robustness([0], [1])


def test_effective_robustness_hand_made():
    levels = [0, 0.5, 1]
    dropping = [1.0, 0.5, 0.0]
    assert effective_robustness(levels, [0.9, 0.9, 0.9], dropping) == pytest.approx(0.5)  # flat beats dropping
    assert effective_robustness(levels, dropping, [0.9, 0.9, 0.9]) == pytest.approx(-0.5)
    assert effective_robustness(levels, dropping, dropping) == pytest.approx(0.0)
    # equalised clean performance: a curve shifted by a constant is exactly as robust
    assert effective_robustness(levels, [0.7, 0.2, -0.3], dropping) == pytest.approx(0.0)


# ------------------------------------------------------------------- Shapley
def test_shapley_additive_game_gives_individual_values():
    worth = {"a": 0.5, "b": 0.2, "c": -0.1}
    value = {s: sum(worth[p] for p in s) for s in all_subsets("abc")}
    phi = shapley_values(value, list("abc"))
    assert phi == pytest.approx(worth)


def test_shapley_pure_synergy_game():
    # v = 1 once a and b are both in, whatever c does: c is a null player, a and b split the worth
    value = {s: 1.0 if s >= {"a", "b"} else 0.0 for s in all_subsets("abc")}
    phi = shapley_values(value, list("abc"))
    assert phi == pytest.approx({"a": 0.5, "b": 0.5, "c": 0.0})


def test_shapley_efficiency_and_symmetry_on_random_game():
    g = np.random.default_rng(0)
    players = ["p", "q", "r", "s"]
    value = {s: float(g.normal()) for s in all_subsets(players)}
    phi = shapley_values(value, players)
    assert sum(phi.values()) == pytest.approx(value[frozenset(players)] - value[frozenset()])
    sym = {s: float(len(s) ** 2) for s in all_subsets(players)}  # depends on size only
    phis = shapley_values(sym, players)
    assert len({round(v, 12) for v in phis.values()}) == 1


def test_shapley_needs_every_subset():
    value = {s: 1.0 for s in all_subsets("ab") if s}
    with pytest.raises(MMLibError, match="no value"):
        shapley_values(value, ["a", "b"])


def test_shapley_by_masking_efficiency(trained, ds):
    mods = list(ds.modalities)  # the model reads tabular + text only
    value = subset_values_by_masking(trained, modalities=mods, split="test")
    assert set(value) == set(all_subsets(mods))
    assert value[frozenset(mods)] == pytest.approx(trained.evaluate("test")["r2"])
    assert value[frozenset()] == pytest.approx(constant_metrics(trained.data, "test")["r2"])
    assert abs(value[frozenset()]) < 0.1  # a constant prediction has R² ≈ 0
    assert value[frozenset({"text", "image"})] == pytest.approx(drop_modality(trained, "tabular")["r2"])
    phi = shapley_values(value, mods)
    assert sum(phi.values()) == pytest.approx(value[frozenset(mods)] - value[frozenset()])
    assert phi["image"] == pytest.approx(0.0, abs=1e-12)  # an unused modality is a null player
    assert phi["tabular"] > phi["text"]
    table = shapley_table(value, mods)
    assert list(table.columns) == ["modality", "shapley", "share", "solo"]
    assert table["share"].sum() == pytest.approx(1.0)
    assert set(subset_values_by_masking(trained)) == set(all_subsets(["tabular", "text"]))  # default: model's


def test_constant_metrics_classification(tiny_classification):
    m = constant_metrics(tiny_classification, "test")
    assert set(m) >= {"accuracy", "log_loss"}
    assert 0 < m["accuracy"] < 1


# ---------------------------------------------------------------- error analysis
def test_error_by_bins():
    y = np.arange(100, dtype=float)
    pred = y.copy()
    pred[:20] += 2.0  # lowest bin over-predicted
    table = error_by_bins(y, pred, bins=5)
    assert list(table.columns) == ["bin", "y_min", "y_max", "n", "mae", "smape", "bias"]
    assert len(table) == 5 and table["n"].sum() == 100
    assert table.loc[0, "bias"] == pytest.approx(2.0) and table.loc[0, "mae"] == pytest.approx(2.0)
    assert (table.loc[1:, "mae"] == 0).all()
    assert table.loc[0, "y_max"] < table.loc[1, "y_min"]


def test_worst_best():
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    pred = np.array([1.0, 2.5, 0.0, 4.1, 9.0])
    worst, best = worst_best(y, pred, k=2, ids=["a", "b", "c", "d", "e"])
    assert list(worst["id"]) == ["e", "c"] and list(best["id"]) == ["a", "d"]
    assert worst.loc[0, "error"] == pytest.approx(4.0)
    assert {"y_true", "y_pred", "abs_error", "smape"} <= set(worst.columns)
    with pytest.raises(MMLibError):
        worst_best(y, pred[:3])
