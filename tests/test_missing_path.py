"""A modality present in every training row, a target far from zero: a model trained with
the default settings must still predict sensibly when that modality is masked at
inference (its missing path was trained: standardised target, learned absent embedding,
modality dropout), where the old zero-vector path fell far below a constant prediction."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_tiny_dataset
from mmlib.analysis.attribution import constant_metrics
from mmlib.models import build_model
from mmlib.training.trainer import Trainer, TrainConfig
from mmlib.utils import set_seeds


@pytest.fixture(scope="module")
def shifted():
    ds = make_tiny_dataset(n=600, missing=0.0)
    word = ds.modalities["text"].tensors["tokens"][:, 0].float()  # the informative token id (2..9)
    # a 42-unit mean that used to live in hidden units; the text carries a real share, as on clothing
    ds.target = ds.target * 0.5 + 42.0 + 0.6 * (word - 5.5)
    for m in ds.modalities.values():
        assert bool(m.present.all())
    return ds


def _fit(ds, **model_kw):
    set_seeds(0)
    model = build_model(ds, modalities=["tabular", "text"], hidden=32, feat_dim=32, **model_kw)
    return Trainer(model, ds, TrainConfig(epochs=25, batch_size=64, patience=None, lr=5e-3, progress=False,
                                          device="cpu")).fit().trainer


def test_masking_a_modality_never_absent_in_training_beats_a_constant(shifted):
    torch.set_num_threads(1)
    trainer = _fit(shifted)
    constant = constant_metrics(shifted, "test")["r2"]
    clean = trainer.evaluate("test")["r2"]
    assert clean > 0.8
    for m in ("tabular", "text"):
        masked = trainer.evaluate("test", present_override={m: False})["r2"]
        assert masked > constant, f"masking {m}: R² {masked:.3f} is not above a constant prediction ({constant:.3f})"
    preds = trainer.predict("test")
    assert abs(float(np.mean(preds)) - 42.0) < 2.0  # predictions come back in the target's own units
