"""Behaviour tests for the metrics and the Trainer (tiny runs, CPU, a few seconds each)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from sklearn import metrics as skm

from conftest import make_tiny_dataset
from mmlib.training.callbacks import ModalityBalancing, ogm_coefficients
from mmlib.training.metrics import MetricWarning, compute_metrics
from mmlib.training.tasks import primary_metric
from mmlib.models import build_model
from mmlib.training.trainer import FitResult, Trainer, TrainConfig, fit_model
from mmlib.utils import MMLibError, set_seeds

SMALL = {"hidden": 16, "feat_dim": 16}
FAST = {"batch_size": 32, "progress": False, "device": "cpu"}  # exact reproducibility is a CPU promise


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: intra-op threads only add contention


@pytest.fixture(scope="module")
def ds():
    return make_tiny_dataset(n=200)


def _model(dataset, seed=0, modalities=("tabular", "text"), **kw):
    set_seeds(seed)
    return build_model(dataset, modalities=list(modalities), **{**SMALL, **kw})


def _metrics_only(history: pd.DataFrame) -> pd.DataFrame:
    return history.drop(columns=["epoch_time_s"])


# ---------------------------------------------------------------------- metrics
def test_regression_metrics_match_sklearn():
    g = np.random.default_rng(0)
    y = g.normal(size=50)
    p = y + 0.3 * g.normal(size=50)
    m = compute_metrics("regression", torch.tensor(y), p)
    assert m["r2"] == pytest.approx(skm.r2_score(y, p))
    assert m["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, p)))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, p))
    assert m["smape"] == pytest.approx(100 * np.mean(2 * np.abs(p - y) / (np.abs(p) + np.abs(y))))
    assert primary_metric("regression") == ("r2", True)


def test_binary_metrics_match_sklearn():
    g = np.random.default_rng(1)
    y = g.integers(0, 2, size=60)
    p = np.clip(0.35 * y + 0.65 * g.random(60), 0, 1)
    m = compute_metrics("binary", y, torch.tensor(p, dtype=torch.float32))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5))
    assert m["f1"] == pytest.approx(skm.f1_score(y, p >= 0.5))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-6)
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-6)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p), abs=1e-6)
    # [n, 2] probabilities give the same numbers
    m2 = compute_metrics("binary", y, np.stack([1 - p, p], axis=1))
    assert m2["roc_auc"] == pytest.approx(m["roc_auc"], abs=1e-6)
    assert primary_metric("binary") == ("roc_auc", True)


def test_multiclass_metrics_match_sklearn():
    g = np.random.default_rng(2)
    y = g.integers(0, 3, size=80)
    logits = g.normal(size=(80, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = compute_metrics("multiclass", y, p)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, p.argmax(1), average="macro"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p), abs=1e-6)
    assert primary_metric("multiclass") == ("accuracy", True)


def test_degenerate_metrics_are_nan_with_a_reason():
    with pytest.warns(MetricWarning, match="single class"):
        m = compute_metrics("binary", np.ones(5, dtype=int), np.linspace(0.1, 0.9, 5))
    assert math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"]) and m["accuracy"] == pytest.approx(0.6)
    with pytest.warns(MetricWarning, match="constant"):
        assert math.isnan(compute_metrics("regression", np.ones(4), np.arange(4.0))["r2"])
    with pytest.warns(MetricWarning, match="NaN"):
        assert math.isnan(compute_metrics("regression", np.arange(3.0), [1.0, np.nan, 2.0])["rmse"])
    with pytest.warns(MetricWarning, match="no rows"):
        compute_metrics("multiclass", np.zeros(0), np.zeros((0, 3)))
    with pytest.raises(MMLibError, match="probabilities"):
        compute_metrics("binary", [0, 1], [-2.0, 3.0])  # logits, not probabilities
    with pytest.raises(MMLibError, match="Unknown task"):
        primary_metric("ranking")


# ----------------------------------------------------------------------- config
def test_train_config_rejects_unknown_and_bad_values():
    with pytest.raises(MMLibError, match="Unknown TrainConfig key.*'lrr'.*valid keys.*batch_size"):
        TrainConfig.from_dict({"lrr": 1e-3})
    with pytest.raises(MMLibError, match="scheduler"):
        TrainConfig(scheduler="step")
    with pytest.raises(MMLibError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(MMLibError, match="checkpoint_path"):
        TrainConfig(resume=True)
    cfg = TrainConfig.from_dict({"epochs": 3, "branch_lr": {"text": 1e-4}})
    assert cfg.epochs == 3 and cfg.branch_lr == {"text": 1e-4} and cfg.lr == 2e-3


# ---------------------------------------------------------------------- training
def test_loss_decreases_and_result_fields(capsys):
    # 600 rows: a 30-row validation split (the 200-row fixture) is too noisy to show improvement reliably
    ds = make_tiny_dataset(n=600)
    res = fit_model(_model(ds), ds, epochs=5, lr=3e-3, scheduler="none", patience=None, **FAST)
    h = res.history
    assert isinstance(res, FitResult)
    assert list(h["epoch"]) == [1, 2, 3, 4, 5] and res.epochs_run == 5 and not res.stopped_early
    for col in ("train_loss", "val_loss", "val_r2", "lr", "epoch_time_s"):
        assert col in h.columns and h[col].notna().all()
    assert h["train_loss"].iloc[-1] < 0.7 * h["train_loss"].iloc[0]
    assert h["val_loss"].iloc[1:].min() < h["val_loss"].iloc[0]  # validation improves on epoch 1 at some point
    assert res.n_params["total"] > 0 and set(res.n_params) >= {"tabular", "text", "fusion", "total"}
    assert res.device == "cpu" and res.train_time_s > 0 and res.monitor == "val_r2"
    assert res.best_val == pytest.approx(h["val_r2"].max())
    with pytest.raises(MMLibError, match="already run fit"):
        res.trainer.fit()
    out = capsys.readouterr()
    assert out.out == "" and out.err == "", "progress=False must be silent"


def test_early_stopping_restores_best_weights(ds):
    # min_delta so large that nothing after epoch 1 counts as an improvement
    trainer = Trainer(_model(ds), ds, TrainConfig(epochs=10, patience=2, min_delta=100.0, lr=5e-3, **FAST))
    res = trainer.fit()
    # OneCycle warms up over the first 3 of 10 epochs; those never count against patience
    assert trainer.warmup_epochs == 3
    assert res.stopped_early and res.epochs_run == 3 + 2 and res.best_epoch == 1
    h = res.history
    assert abs(h["val_r2"].iloc[-1] - h["val_r2"].iloc[0]) > 1e-3, "weights should have moved after epoch 1"
    assert trainer.evaluate("val")["r2"] == pytest.approx(h["val_r2"].iloc[0], abs=1e-6)
    assert res.val_metrics["r2"] == pytest.approx(res.best_val, abs=1e-6)

    # without a warm-up, patience counts from epoch 2
    res = Trainer(_model(ds), ds, TrainConfig(epochs=10, patience=2, min_delta=100.0, lr=5e-3, scheduler="cosine",
                                              **FAST)).fit()
    assert res.stopped_early and res.epochs_run == 3 and res.best_epoch == 1

    # normal patience: the returned model holds the epoch with the best val metric
    trainer = Trainer(_model(ds), ds, TrainConfig(epochs=6, patience=2, lr=2e-2, scheduler="none", **FAST))
    res = trainer.fit()
    best = int(res.history["val_r2"].idxmax())
    assert res.best_epoch == res.history["epoch"].iloc[best]
    assert trainer.evaluate("val")["r2"] == pytest.approx(res.history["val_r2"].max(), abs=1e-6)


def test_same_seed_same_numbers_different_seed_differs(ds):
    kw = dict(epochs=2, patience=None, **FAST)
    a = fit_model(_model(ds, modalities=("tabular", "text", "image"), modality_dropout=0.2), ds, seed=3, **kw)
    b = fit_model(_model(ds, modalities=("tabular", "text", "image"), modality_dropout=0.2), ds, seed=3, **kw)
    c = fit_model(_model(ds, modalities=("tabular", "text", "image"), modality_dropout=0.2), ds, seed=4, **kw)
    pd.testing.assert_frame_equal(_metrics_only(a.history), _metrics_only(b.history), check_exact=True)
    np.testing.assert_array_equal(a.trainer.predict("test"), b.trainer.predict("test"))
    assert not np.allclose(a.history["train_loss"], c.history["train_loss"])


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(ds, tmp_path):
    """A run killed after epoch 2 and resumed from its checkpoint ends with exactly the same numbers."""
    kw = dict(epochs=4, patience=None, aux_weight=0.3, ogm_alpha=0.5, **FAST)  # OGM-GE's noise draws are resumed too
    mk = dict(modalities=("tabular", "text", "image"), aux_heads=True, modality_dropout=0.2, head_layers=0)
    full = Trainer(_model(ds, **mk), ds, TrainConfig(**kw)).fit()

    ckpt = tmp_path / "run.pt"

    def kill_after_epoch_2(trainer, row):
        if row["epoch"] == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        Trainer(_model(ds, **mk), ds, TrainConfig(checkpoint_path=str(ckpt), **kw)).fit(on_epoch_end=kill_after_epoch_2)
    assert ckpt.exists()

    # a fresh process would build the model anew (different init here on purpose) and resume
    resumed_trainer = Trainer(_model(ds, seed=123, **mk), ds, TrainConfig(checkpoint_path=str(ckpt), resume=True, **kw))
    seen = []
    resumed = resumed_trainer.fit(on_epoch_end=lambda t, row: seen.append(row["epoch"]))
    assert seen == [3, 4], "only the remaining epochs should run"
    pd.testing.assert_frame_equal(_metrics_only(full.history), _metrics_only(resumed.history), check_exact=True)
    assert resumed.best_epoch == full.best_epoch and resumed.best_val == full.best_val
    np.testing.assert_array_equal(full.trainer.predict("test"), resumed_trainer.predict("test"))

    # a checkpoint of another architecture is refused with a clear message
    other = _model(ds, modalities=("tabular", "text", "image"), aux_heads=True, modality_dropout=0.2, hidden=8)
    with pytest.raises(MMLibError, match="different model.*hidden"):
        Trainer(other, ds, TrainConfig(checkpoint_path=str(ckpt), resume=True, **kw)).fit()
    # so are different training settings
    with pytest.raises(MMLibError, match="different training settings.*lr"):
        Trainer(_model(ds, **mk), ds, TrainConfig(checkpoint_path=str(ckpt), resume=True, **{**kw, "lr": 1e-3})).fit()


def test_nan_loss_guard_names_epoch_step_and_remedy(ds):
    bad = make_tiny_dataset(n=200)
    bad.modalities["tabular"].tensors["num"][bad.splits["train"][:5], 0] = float("nan")
    with pytest.raises(MMLibError, match=r"epoch 1, step \d+ .*tabular\.num.*lower learning rate.*grad_clip"):
        fit_model(_model(bad), bad, epochs=1, **FAST)
    with pytest.raises(MMLibError, match=r"Training loss became (nan|inf) at epoch \d+, step"):
        fit_model(_model(ds), ds, epochs=3, lr=1e12, grad_clip=None, scheduler="none", optimizer="sgd", **FAST)


def test_branch_lr_reaches_optimizer_groups(ds):
    model = _model(ds)
    t = Trainer(model, ds, TrainConfig(lr=1e-3, branch_lr={"text": 1e-4}, scheduler="none", **FAST))
    lrs = {g["name"]: g["lr"] for g in t.optimizer.param_groups}
    assert lrs == {"tabular": 1e-3, "text": 1e-4, "fusion": 1e-3}
    t = Trainer(model, ds, TrainConfig(lr=1e-3, branch_lr={"text": 1e-4}, scheduler="onecycle", **FAST))
    assert {g["name"]: g["max_lr"] for g in t.optimizer.param_groups}["text"] == 1e-4
    res = fit_model(_model(ds), ds, epochs=1, lr=1e-3, branch_lr={"text": 1e-4}, scheduler="none", **FAST)
    assert res.history["lr_text"].iloc[0] == pytest.approx(1e-4) and res.history["lr_fusion"].iloc[0] == 1e-3
    with pytest.raises(MMLibError, match="branch"):
        Trainer(_model(ds), ds, TrainConfig(branch_lr={"audio": 1e-4}, **FAST))


def test_aux_loss_ogm_and_tracking_record_their_columns(ds):
    mods = ("tabular", "text", "image")
    res = fit_model(_model(ds, modalities=mods, aux_heads=True), ds, epochs=2, aux_weight=0.5, ogm_alpha=0.8,
                    ogm_variant="smooth", track_modalities=True, **FAST)
    h = res.history
    for m in mods:
        assert ((h[f"ogm_coef_{m}"] > 0) & (h[f"ogm_coef_{m}"] <= 1)).all()
        assert h[f"val_r2_without_{m}"].notna().all() and h[f"val_r2_head_{m}"].notna().all()
    assert (h[[f"ogm_coef_{m}" for m in mods]] < 1).any().any(), "some modality should have been damped"
    # as published: the fused model's own contributions (concatenation with a linear head, or late fusion)
    pub = fit_model(_model(ds, modalities=mods, head_layers=0), ds, epochs=2, ogm_alpha=0.5, **FAST).history
    assert ((pub[[f"ogm_coef_{m}" for m in mods]] > 0) & (pub[[f"ogm_coef_{m}" for m in mods]] <= 1)).all().all()
    fit_model(_model(ds, fusion="late"), ds, epochs=1, ogm_alpha=0.5, **FAST)
    with pytest.raises(MMLibError, match="contributions"):
        fit_model(_model(ds), ds, epochs=1, ogm_alpha=0.5, **FAST)
    with pytest.raises(MMLibError, match="aux_heads=True"):
        fit_model(_model(ds), ds, epochs=1, aux_weight=0.5, **FAST)


def test_ogm_coefficient_matches_the_paper_by_hand():
    """Peng et al. 2022, Eq. 10: k = 1 − tanh(α·ρ) for the dominant modality (ρ > 1), else 1."""
    scores = {"a": torch.tensor(0.6), "b": torch.tensor(0.5)}  # ρ_a = 1.2, ρ_b = 1/1.2
    pub = ogm_coefficients(scores, alpha=0.5, variant="published")
    assert float(pub["a"]) == pytest.approx(1 - math.tanh(0.6)) == pytest.approx(0.46295, abs=1e-5)
    assert float(pub["b"]) == 1.0
    smooth = ogm_coefficients(scores, alpha=0.5, variant="smooth")
    assert float(smooth["a"]) == pytest.approx(1 - math.tanh(0.5 * 0.2)) == pytest.approx(0.90033, abs=1e-5)
    assert float(smooth["b"]) == 1.0
    # three modalities: each is compared with the mean of the others
    three = ogm_coefficients({"a": torch.tensor(0.9), "b": torch.tensor(0.3), "c": torch.tensor(0.3)}, alpha=0.1)
    assert float(three["a"]) == pytest.approx(1 - math.tanh(0.1 * 3.0))
    assert float(three["b"]) == float(three["c"]) == 1.0


def test_published_ogm_scales_the_dominant_branch(ds):
    """The dominant modality's grads are scaled by 1 − tanh(α·ρ) (scores from the fused model's
    contributions); the other branch and the fusion are untouched (GE noise off here)."""
    model = _model(ds, head_layers=0)
    t = Trainer(model, ds, TrainConfig(ogm_alpha=0.5, ogm_noise=False, standardize_target=False, **FAST))
    y = torch.tensor([0.0, 1.0, 2.0, 3.0])
    batch = {"y": y, "present": {"tabular": torch.ones(4, dtype=torch.bool), "text": torch.ones(4, dtype=torch.bool)}}
    # two modalities: a contribution times 2 is on the prediction's scale; tabular is perfect, text off by 1
    out = {"contributions": {"tabular": (y / 2)[:, None], "text": ((y + 1) / 2)[:, None]}}
    branches = model.branch_parameters()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    balancing = next(cb for cb in t.callbacks if isinstance(cb, ModalityBalancing))
    coefs = balancing.modulate(t, out, batch)
    expected = 1 - math.tanh(0.5 * 2.0)  # score 1 / (1 + 0) against 1 / (1 + 1): ρ = 2
    assert float(coefs["tabular"]) == pytest.approx(expected) and float(coefs["text"]) == 1.0
    assert all(torch.allclose(p.grad, torch.full_like(p, expected)) for p in branches["tabular"])
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in branches["text"] + branches["fusion"])


def test_early_fusion_contributions_sum_to_the_prediction(ds):
    model = _model(ds, modalities=("tabular", "text", "image"), head_layers=0).eval()
    batch = ds.batch(ds.splits["val"][:32])
    out = model(batch["inputs"], batch["present"])
    torch.testing.assert_close(sum(out["contributions"].values()), out["pred"], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------- inference
def test_predict_with_present_override_and_transform(ds):
    res = fit_model(_model(ds), ds, epochs=3, **FAST)
    t = res.trainer
    base = t.predict("test")
    assert base.shape == (len(ds.splits["test"]),)
    no_text = t.predict("test", present_override={"text": False})
    assert not np.allclose(base, no_text), "dropping a used modality must change predictions"
    np.testing.assert_array_equal(t.predict("test", present_override={"text": True}), base)
    # a per-row mask drops it only where False
    mask = np.zeros(len(ds.splits["test"]), dtype=bool)
    mask[::2] = True
    half = t.predict("test", present_override={"text": torch.from_numpy(mask)})
    np.testing.assert_allclose(half[mask], base[mask], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(half[~mask], no_text[~mask], rtol=1e-5, atol=1e-6)
    # row indices work like a split; transform corrupts inputs
    rows = ds.splits["test"][:7]
    np.testing.assert_allclose(t.predict(rows), base[:7], rtol=1e-5, atol=1e-6)

    def noisy(batch):
        tab = dict(batch["inputs"]["tabular"])
        tab["num"] = tab["num"] + 3.0
        return {**batch, "inputs": {**batch["inputs"], "tabular": tab}}

    assert not np.allclose(t.predict("test", transform=noisy), base)
    m = t.evaluate("test", present_override={"text": False})
    assert set(m) == {"r2", "rmse", "mae", "smape"}
    with pytest.raises(MMLibError, match="audio"):
        t.predict("test", present_override={"audio": False})


def test_classification_trainer_outputs_probabilities():
    data = make_tiny_dataset(n=200, task="multiclass")
    res = fit_model(_model(data), data, epochs=2, **FAST)
    p = res.trainer.predict("val")
    assert p.shape == (len(data.splits["val"]), 3)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    assert "val_accuracy" in res.history and res.monitor == "val_accuracy"
    assert set(res.trainer.evaluate("test")) == {"accuracy", "macro_f1", "roc_auc_ovr", "log_loss"}


class _PlainModel(nn.Module):
    """The bare contract: no param_groups / branch_parameters / config."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(2, 1)

    def forward(self, inputs, present):
        return {"pred": self.net(inputs["tabular"]["num"])}


def test_a_model_with_only_the_forward_contract_trains(ds):
    set_seeds(0)
    res = fit_model(_PlainModel(), ds, epochs=2, scheduler="cosine", **FAST)
    assert res.epochs_run == 2 and res.n_params["total"] == 3
    with pytest.raises(MMLibError, match="param_groups"):
        Trainer(_PlainModel(), ds, TrainConfig(branch_lr={"tabular": 1e-4}, **FAST))


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["auto", "fp16", "off"])
def test_cuda_run_with_amp_ogm_and_checkpoint(ds, tmp_path, amp):
    mods = ("tabular", "text", "image")
    kw = dict(epochs=3, batch_size=32, progress=False, device="cuda", amp=amp, aux_weight=0.3, ogm_alpha=0.5,
              track_modalities=True, checkpoint_path=str(tmp_path / "gpu.pt"))
    res = fit_model(_model(ds, modalities=mods, aux_heads=True, head_layers=0), ds, **kw)
    t = res.trainer
    expected = {"off": None, "fp16": torch.float16,
                "auto": torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16}[amp]
    assert t.precision.dtype == expected and res.device.startswith("cuda")
    assert next(t.model.parameters()).is_cuda and t.data.target.is_cuda
    h = res.history.drop(columns=["epoch_time_s"])
    assert np.isfinite(h.select_dtypes("number").to_numpy()).all()
    p = t.predict("test", present_override={"image": False})
    assert isinstance(p, np.ndarray) and np.isfinite(p).all()
    # resuming a finished run restores it without training more
    again = Trainer(_model(ds, modalities=mods, aux_heads=True, head_layers=0), ds, TrainConfig(**kw, resume=True)).fit()
    assert again.epochs_run == res.epochs_run and again.best_epoch == res.best_epoch
    # trainers share one device copy of the data
    assert ds.to("cuda").modalities["image"].tensors["pixels"].data_ptr() == \
        t.data.modalities["image"].tensors["pixels"].data_ptr()
