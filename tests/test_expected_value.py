"""The ``ce_ev`` loss: a regression target with a few distinct values (a star rating) fitted as
classes, predicted as the expected value (DEX), through the one training loop and run_fusion."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_tiny_dataset
from mmlib.data.base import MultimodalDataset
from mmlib.models import build_model
from mmlib.models.model import build_model_from_config
from mmlib.training.experiments import regression_loss, run_fusion
from mmlib.training.profiles import get_profile
from mmlib.training.supervised import SupervisedObjective, model_out_dim
from mmlib.training.tasks import is_discrete, target_values
from mmlib.training.trainer import Trainer, TrainConfig, fit_model
from mmlib.utils import MMLibError, set_seeds

FAST = {"batch_size": 32, "progress": False, "device": "cpu"}
pytestmark = pytest.mark.usefixtures("one_thread")


def _rated(n: int = 300, seed: int = 0) -> MultimodalDataset:
    """The tiny dataset with its target cut into a skewed 1-5 rating (most rows 4 or 5)."""
    base = make_tiny_dataset(n=n, seed=seed)
    y = base.target.numpy()
    stars = 1 + np.digitize(y, np.quantile(y, [0.05, 0.12, 0.3, 0.55])).astype(np.float32)
    return MultimodalDataset("rated", base.modalities, torch.from_numpy(stars), "regression", base.splits)


@pytest.fixture(scope="module")
def rated():
    return _rated()


def test_target_values_and_discreteness():
    assert target_values(torch.tensor([3.0, 1.0, 5.0, 3.0])).tolist() == [1.0, 3.0, 5.0]
    assert is_discrete(torch.tensor([1.0, 2.0, 2.0, 5.0]))
    assert not is_discrete(torch.tensor([1.0, 2.5, 2.0]))  # not integers
    assert not is_discrete(torch.arange(50.0))  # too many values
    assert not is_discrete(torch.ones(10))  # one value
    with pytest.raises(MMLibError, match="2..20 distinct values.*has 50.*loss='mse'"):
        target_values(torch.arange(50.0))


def test_objective_maps_targets_to_classes_and_outputs_to_expected_values(rated):
    obj = SupervisedObjective(rated, loss="ce_ev")
    assert obj.class_values.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert obj.score_task == "multiclass" and obj.y_mean == 0.0 and obj.y_std == 1.0
    assert obj.target(torch.tensor([1.0, 5.0, 3.0, 4.2])).tolist() == [0, 4, 2, 3]
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [-50.0, -50.0, -50.0, -50.0, 50.0],
                           [0.0, 0.0, 0.0, np.log(3.0), 0.0]])
    ev = obj.to_units(logits).squeeze(-1)
    # uniform → the mean of the values; certain → that value; 3:1:1:1:1 on 4 → (1+2+3+12+5)/7
    torch.testing.assert_close(ev, torch.tensor([3.0, 5.0, 23.0 / 7.0]))
    assert model_out_dim(rated, "ce_ev") == 5 and model_out_dim(rated, "mse") == 1


def test_ce_ev_trains_predicts_in_range_and_beats_a_constant(rated):
    set_seeds(0)
    model = build_model(rated, modalities=["tabular", "text"], hidden=16, feat_dim=16, out_dim=5)
    res = fit_model(model, rated, epochs=8, loss="ce_ev", **FAST)
    pred = res.trainer.predict("test")
    assert pred.shape == (len(rated.splits["test"]),)
    assert pred.min() >= 1.0 - 1e-5 and pred.max() <= 5.0 + 1e-5  # an expectation of the values
    assert res.trainer.evaluate("test")["r2"] > 0.2
    assert "val_loss" in res.history and res.history["train_loss"].iloc[-1] < res.history["train_loss"].iloc[0]


def test_wrong_width_or_continuous_target_is_a_clear_error(rated):
    with pytest.raises(MMLibError, match="outputs 1 value.*5 classes.*out_dim=5"):
        Trainer(build_model(rated, modalities=["tabular"], hidden=8, feat_dim=8), rated,
                TrainConfig(loss="ce_ev", **FAST))
    cont = make_tiny_dataset(n=120)
    with pytest.raises(MMLibError, match="distinct values"):
        model_out_dim(cont, "ce_ev")
    with pytest.raises(MMLibError, match="regression targets"):
        model_out_dim(make_tiny_dataset(n=120, task="multiclass"), "ce_ev")


def test_run_fusion_picks_ce_ev_for_a_rating_only(rated):
    P = get_profile("smoke", regression_loss="auto")
    assert get_profile("smoke")["regression_loss"] is None  # no profile uses it (README: it did not help)
    assert regression_loss(rated, P, {}) == "ce_ev"
    assert regression_loss(rated, P, {"loss": "huber"}) == "huber"  # the caller wins
    assert regression_loss(make_tiny_dataset(n=120), P, {}) is None  # continuous: the task's mse
    assert regression_loss(rated, {**P, "regression_loss": None}, {}) is None
    run = run_fusion(rated, "early", ["tabular", "text"], 0, P, notebook="t", experiment="t", progress=False)
    assert run.model.out_dim == 5 and run.record["extra"]["train_kwargs"]["loss"] == "ce_ev"
    assert run.trainer.objective.class_values is not None
    assert np.isfinite(run.metrics["test"]["r2"])
    # the saved config rebuilds the same width
    again = build_model_from_config(rated, run.model.config)
    assert again.out_dim == 5
    cont = run_fusion(make_tiny_dataset(n=200), "early", ["tabular"], 0, P, notebook="t", experiment="t",
                      progress=False)
    assert cont.model.out_dim == 1 and "loss" not in cont.record["extra"]["train_kwargs"]


def test_published_ogm_and_aux_heads_score_ce_ev_as_classes(rated):
    """OGM-GE scores each modality by the probability its contribution gives the true class (the
    paper's classification score) when the model outputs logits over the rating's values."""
    mods = ["tabular", "text", "image"]
    set_seeds(0)
    model = build_model(rated, modalities=mods, hidden=16, feat_dim=16, out_dim=5, head_layers=0, aux_heads=True)
    h = fit_model(model, rated, epochs=2, loss="ce_ev", ogm_alpha=0.5, aux_weight=0.3, track_modalities=True,
                  **FAST).history
    coefs = h[[f"ogm_coef_{m}" for m in mods]]
    assert ((coefs > 0) & (coefs <= 1)).all().all()
    assert h[[f"val_r2_head_{m}" for m in mods]].notna().all().all()
