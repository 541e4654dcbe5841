"""The ``embeddings`` loader: a good load, and clear errors for bad files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlib.data import load_dataset
from mmlib.data.embeddings import load_embeddings, replace_with_embeddings, save_embeddings
from mmlib.utils import MMLibError


def _arrays(n=40, seed=0):
    g = np.random.default_rng(seed)
    return {"text": g.normal(size=(n, 8)).astype(np.float32), "image": g.normal(size=(n, 5)).astype(np.float32)}


def test_good_load_with_missing_rows(tmp_path):
    arr = _arrays()
    arr["image"][3] = np.nan  # an all-NaN row: the image is missing for row 3
    arr["text"][7] = 0.0  # an all-zero row: the text is missing for row 7
    y = np.linspace(1, 2, 40)
    path = save_embeddings(tmp_path / "emb.npz", arr, target=y, ids=np.arange(100, 140))
    ds = load_dataset("embeddings", path=str(path))
    assert ds.task == "regression" and ds.n == 40
    assert ds.modality_names == ["text", "image"]
    assert {m.kind for m in ds.modalities.values()} == {"embedding"}
    assert ds.modalities["image"].tensors["x"].dtype == torch.float32
    assert not ds.modalities["image"].present[3] and not ds.modalities["text"].present[7]
    assert int(ds.modalities["image"].present.sum()) == 39
    assert torch.isfinite(ds.modalities["image"].tensors["x"]).all()  # absent rows hold zeros
    np.testing.assert_allclose(ds.target.numpy(), y, rtol=1e-6)
    assert list(ds.meta["ids"][:2]) == [100, 101]
    assert sum(len(v) for v in ds.splits.values()) == 40


def test_seed001_layout_and_task_inference(tmp_path):
    g = np.random.default_rng(1)
    path = tmp_path / "train.npz"
    np.savez(path, **{"captions/embeddings": g.normal(size=(30, 6)), "images/embeddings": g.normal(size=(30, 4)),
                      "captions/text": np.array([f"caption {i}" for i in range(30)]),
                      "label": g.integers(0, 3, 30)})
    ds = load_embeddings(path, target="label")
    assert set(ds.modality_names) == {"captions", "images"}
    assert ds.task == "multiclass" and ds.n_classes == 3
    assert ds.meta["raw_texts"][0] == "caption 0"
    sub = load_embeddings(path, target="label", modalities=["images"], n_rows=20)
    assert sub.modality_names == ["images"] and sub.n == 20


def test_no_target_needs_task_none(tmp_path):
    path = save_embeddings(tmp_path / "e.npz", _arrays())
    with pytest.raises(MMLibError, match="no 'target' array"):
        load_embeddings(path)
    ds = load_embeddings(path, task="none")
    assert ds.meta["has_target"] is False


def test_length_mismatch_names_arrays_and_lengths(tmp_path):
    arr = _arrays()
    arr["image"] = arr["image"][:35]
    path = save_embeddings(tmp_path / "bad.npz", arr, target=np.zeros(40))
    with pytest.raises(MMLibError) as err:
        load_embeddings(path)
    msg = str(err.value)
    assert "bad.npz" in msg and "'text' has 40 rows" in msg and "'image' has 35 rows" in msg


def test_partial_nan_row_is_an_error_naming_the_row(tmp_path):
    arr = _arrays()
    arr["text"][12, 2] = np.nan
    path = save_embeddings(tmp_path / "nan.npz", arr, target=np.zeros(40))
    with pytest.raises(MMLibError, match=r"'text'.*row 12"):
        load_embeddings(path)


def test_unknown_modality_lists_what_is_in_the_file(tmp_path):
    path = save_embeddings(tmp_path / "e.npz", _arrays(), target=np.zeros(40))
    with pytest.raises(MMLibError, match=r"unknown modality \['audio'\].*\['text', 'image'\]"):
        load_embeddings(path, modalities=["audio"])


def test_not_2d_and_missing_file(tmp_path):
    path = save_embeddings(tmp_path / "e.npz", {"text": np.zeros((40, 3, 2)) + 1}, target=np.zeros(40))
    with pytest.raises(MMLibError, match="must be 2-D"):
        load_embeddings(path)
    with pytest.raises(MMLibError, match="not found"):
        load_embeddings(tmp_path / "nope.npz")
    with pytest.raises(MMLibError, match="target array 'price' not found"):
        load_embeddings(tmp_path / "e.npz", target="price")


def test_replace_with_embeddings_keeps_presence(tiny_dataset):
    x = np.random.default_rng(0).normal(size=(tiny_dataset.n, 7))
    ds = replace_with_embeddings(tiny_dataset, {"text": x}, keep=["tabular", "text"])
    assert ds.modality_names == ["tabular", "text"]
    assert ds.modalities["text"].kind == "embedding"
    assert torch.equal(ds.modalities["text"].present, tiny_dataset.modalities["text"].present)
    absent = ~ds.modalities["text"].present
    assert (ds.modalities["text"].tensors["x"][absent] == 0).all()
    with pytest.raises(MMLibError, match="expected"):
        replace_with_embeddings(tiny_dataset, {"text": x[:10]})


# ------------------------------------------------------- seed 002: target transforms and losses
def test_target_scaler_roundtrip_and_log_needs_positive():
    from mmlib.analysis.embedding_fusion import TargetScaler

    y = np.exp(np.random.default_rng(0).normal(size=200)) * 100
    for mode in ("standard", "log"):
        sc = TargetScaler.fit(y, mode)
        z = sc.transform(y)
        assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-3
        np.testing.assert_allclose(sc.inverse(z), y, rtol=1e-4)
        np.testing.assert_allclose(sc.inverse(torch.from_numpy(z)).numpy(), y, rtol=1e-4)
    with pytest.raises(MMLibError, match="y > 0"):
        TargetScaler.fit(np.array([1.0, 0.0, 2.0]), "log")


def test_smape_loss_is_the_smape_metric_on_the_original_scale():
    from mmlib.analysis.embedding_fusion import TargetScaler, density_weights, make_loss
    from mmlib.training.metrics import compute_metrics

    g = np.random.default_rng(1)
    y = np.exp(g.normal(size=300)) * 50
    p = y * np.exp(0.3 * g.normal(size=300))
    sc = TargetScaler.fit(y, "log")
    loss = make_loss("smape", sc)(torch.from_numpy(sc.transform(p)), torch.from_numpy(sc.transform(y)))
    assert 100 * float(loss) == pytest.approx(compute_metrics("regression", y, p)["smape"], rel=1e-3)
    edges, w = density_weights(sc.transform(y), bins=10)
    idx = np.clip(np.digitize(sc.transform(y), edges[1:-1]), 0, 9)
    assert w[idx].mean() == pytest.approx(1.0)
    counts = np.bincount(idx, minlength=10)
    assert w[counts.argmin()] >= w[counts.argmax()]  # sparse bins weigh more
    wl = make_loss("weighted_smape", sc, z_train=sc.transform(y))
    assert float(wl(torch.from_numpy(sc.transform(y)), torch.from_numpy(sc.transform(y)))) == pytest.approx(0, abs=1e-5)


def test_run_target_variant_scores_on_the_original_scale(tiny_dataset):
    from mmlib.analysis.embedding_fusion import run_target_variant
    from mmlib.training.profiles import get_profile

    run = run_target_variant(tiny_dataset, fusion="early", target_mode="standard", loss="huber", seed=0,
                             profile=get_profile("smoke"), experiment="t", device="cpu",
                             model_kwargs={"hidden": 16, "feat_dim": 16})
    y = tiny_dataset.target.numpy()[tiny_dataset.splits["test"]]
    np.testing.assert_allclose(run.y_test, y, rtol=1e-6)
    assert run.record["condition"] == "target=standard,loss=huber"
    assert set(run.metrics["test"]) == {"r2", "rmse", "mae", "smape"}
