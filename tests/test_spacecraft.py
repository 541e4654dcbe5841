"""Data tests for the embedded spacecraft generator: determinism, honest ceilings,
and that each planted part really lives only where the generator says."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import RidgeCV

from mmlib.data import load_dataset
from mmlib.data.spacecraft import (DEFAULT_SHARES, MODALITIES, ceilings_for, generate, oracle_prediction,
                                   visible_share)
from mmlib.utils import MMLibError


def r2(y, p):
    return 1 - np.sum((y - p) ** 2) / np.sum((y - np.mean(y)) ** 2)


@pytest.fixture(scope="module")
def big():
    # a large fresh draw (no images needed) so sampling error stays well under 0.01
    return generate(n=200_000, seed=2024, render=False)


@pytest.fixture(scope="module")
def fresh():
    return generate(n=12000, seed=123)


def test_generator_is_deterministic():
    a, b = generate(n=300, seed=5), generate(n=300, seed=5)
    assert np.array_equal(a.images, b.images)
    assert a.texts == b.texts
    assert a.frame.equals(b.frame)
    assert np.array_equal(a.y, b.y)
    c = generate(n=300, seed=6)
    assert not np.array_equal(a.y, c.y)


def test_default_ceilings_match_the_design():
    c = ceilings_for(DEFAULT_SHARES)
    assert len(c) == 8  # 7 non-empty subsets + none
    assert abs(c["tabular"] - 0.86) <= 0.01
    assert c["image+tabular+text"] >= 0.99
    # synergy counts only when text and image are both there
    assert c["image+text"] - (visible_share(DEFAULT_SHARES, {"image"}) + DEFAULT_SHARES["text"]) == pytest.approx(
        DEFAULT_SHARES["synergy"])


@pytest.mark.parametrize("subset", [s for r in (1, 2, 3) for s in __import__("itertools").combinations(MODALITIES, r)])
def test_stated_ceiling_is_reached_by_the_bayes_predictor_on_fresh_samples(big, subset):
    fresh = big
    stated = ceilings_for(fresh.shares)["+".join(sorted(subset))]
    got = r2(fresh.y, oracle_prediction(fresh.latent, fresh.shares, set(subset)))
    assert abs(got - stated) <= 0.01, (subset, got, stated)


def test_parts_are_standardised_and_independent(fresh):
    parts = fresh.latent.filter(like="part_").to_numpy()
    assert np.allclose(parts.mean(0), 0, atol=0.04)
    assert np.allclose(parts.std(0), 1, atol=0.04)
    corr = np.corrcoef(parts.T)
    assert np.abs(corr - np.eye(len(corr))).max() < 0.05


def _tab_matrix(sample):
    f = sample.frame
    num = f.select_dtypes("number").to_numpy(float)
    cats = [np.unique(f[c].astype(str), return_inverse=True)[1][:, None] for c in f.columns
            if not pd.api.types.is_numeric_dtype(f[c])]
    return np.hstack([num] + cats)


def _bow(sample):
    from sklearn.feature_extraction.text import CountVectorizer

    return CountVectorizer(token_pattern=r"[a-z]+").fit_transform(sample.texts).toarray()


def _holdout_r2(model, X, y):
    n = len(y) // 2
    model.fit(X[:n], y[:n])
    return r2(y[n:], model.predict(X[n:]))


def test_text_and_image_parts_are_not_readable_from_the_table(fresh):
    X = _tab_matrix(fresh)
    for part in ("part_text", "part_image", "part_synergy"):
        got = _holdout_r2(HistGradientBoostingRegressor(max_iter=150, random_state=0), X, fresh.latent[part].to_numpy())
        assert got < 0.02, (part, got)
    # while the tabular part is (a sanity check that the probe can learn)
    assert _holdout_r2(HistGradientBoostingRegressor(max_iter=150, random_state=0), X,
                       fresh.latent["part_tabular"].to_numpy()) > 0.9


def test_text_part_needs_word_order_and_the_image_part_is_not_in_the_text(fresh):
    bow = _bow(fresh)
    lat = fresh.latent
    order = (lat["built_on"] - lat["registered_on"]).to_numpy().astype(float)
    # a bag of words sees which planets appear but not in which order
    assert _holdout_r2(RidgeCV(), bow, order) < 0.02
    # the armour modifier is readable from words
    assert _holdout_r2(RidgeCV(), bow, lat["armour"].to_numpy().astype(float)) > 0.95
    for part in ("part_image", "part_tabular", "part_redundant"):
        assert _holdout_r2(RidgeCV(), bow, lat[part].to_numpy()) < 0.02, part
    # route alone (the text half of the synergy) carries no signal on the synergy part
    assert abs(np.corrcoef(lat["route"], lat["part_synergy"])[0, 1]) < 0.05


def test_text_part_is_not_in_the_pixels(fresh):
    small = fresh.images[:, :, ::2, ::2].reshape(len(fresh.y), -1).astype(float) / 255
    assert _holdout_r2(RidgeCV(alphas=[1, 10, 100]), small, fresh.latent["part_text"].to_numpy()) < 0.02


def test_dataset_shapes_masks_and_splits():
    ds = load_dataset("spacecraft", n=600, seed=1, missing={"text": 0.3, "image": 0.2})
    assert ds.modality_names == ["tabular", "text", "image"]
    assert ds.modalities["image"].tensors["pixels"].dtype == torch.uint8
    assert ds.modalities["image"].tensors["pixels"].shape == (600, 3, 32, 32)
    assert ds.modalities["tabular"].tensors["num"].shape[1] + ds.modalities["tabular"].tensors["cat"].shape[1] == 40
    text_present = ds.modalities["text"].present
    assert 0.6 < text_present.float().mean() < 0.8
    assert (ds.modalities["text"].tensors["tokens"][~text_present] == 0).all()
    anyp = ds.modalities["tabular"].present | text_present | ds.modalities["image"].present
    assert anyp.all()
    idx = np.concatenate([ds.splits[k] for k in ("train", "val", "test")])
    assert len(np.unique(idx)) == ds.n == 600
    assert ds.meta["ceiling_with_missing"] < ds.meta["ceilings"]["image+tabular+text"]
    b = ds.batch(np.array([0, 1, 2]))
    assert set(b["inputs"]) == {"tabular", "text", "image"} and b["y"].shape == (3,)


def test_tasks_and_errors():
    assert load_dataset("spacecraft", n=200, task="multiclass", n_classes=3).n_classes == 3
    cost = load_dataset("spacecraft", n=200, task="cost")
    assert (cost.target > 0).all() and cost.target_name == "cost"
    with pytest.raises(MMLibError, match="sum to 1"):
        load_dataset("spacecraft", n=200, shares={"tabular": 0.9})
    with pytest.raises(MMLibError, match="unknown parameter"):
        load_dataset("spacecraft", n=200, bogus=1)
    with pytest.raises(MMLibError, match="Unknown dataset"):
        load_dataset("nope")


def test_shares_are_knobs():
    shares = {"tabular": 0.2, "redundant": 0.1, "text": 0.3, "image": 0.2, "synergy": 0.15, "noise": 0.05}
    s = generate(n=6000, seed=3, shares=shares)
    c = ceilings_for(s.shares)
    assert c["text"] == pytest.approx(0.3)
    assert abs(r2(s.y, oracle_prediction(s.latent, s.shares, {"text"})) - 0.3) < 0.02


def test_planted_recovery_is_exact_for_bayes_optimal_predictors():
    """The joint least-squares recovery gives exactly 1 for a part the predictor sees and
    exactly 0 for one it cannot see, on a finite test split (no chance correlation between parts)."""
    import math

    from mmlib.analysis.planted import planted_recovery

    ds = load_dataset("spacecraft", n_rows=1500)
    rows = ds.splits["test"]
    lat, shares = ds.meta["latent"].iloc[rows], ds.meta["shares"]
    for seen in (("tabular", "redundant"), ("text",), ("tabular", "redundant", "text", "image", "synergy")):
        pred = sum(math.sqrt(shares[k]) * lat[f"part_{k}"].to_numpy() for k in seen) + 3.0  # an offset is ignored
        rec = planted_recovery(ds, rows, pred)
        for part in ("tabular", "redundant", "text", "image", "synergy"):
            assert rec[f"recovered_{part}"] == pytest.approx(1.0 if part in seen else 0.0, abs=1e-9), (seen, part)
