"""The one Trainer with each kind of objective (fusion, contrastive, reconstruction):
checkpoint/resume gives the uninterrupted run's numbers, mixed precision (bf16 autocast,
which PyTorch also runs on the CPU) really runs the forward pass in bf16, and the progress
bar shows up only when asked for."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from conftest import make_tiny_dataset
from mmlib.data.pairs import modality_pairs
from mmlib.models import build_model
from mmlib.models.alignment import ConvAutoencoder, build_two_tower
from mmlib.training.config import TrainConfig
from mmlib.training.objectives import ContrastiveObjective, ReconstructionObjective
from mmlib.training.trainer import Trainer
from mmlib.utils import MMLibError, set_seeds

KINDS = ("fusion", "contrastive", "reconstruction")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: intra-op threads only add contention


@pytest.fixture(scope="module")
def ds():
    return make_tiny_dataset(n=160)


def _setup(kind: str, ds):
    """(model, trainer kwargs) for one objective kind, freshly seeded."""
    set_seeds(0)
    if kind == "fusion":
        return build_model(ds, modalities=["tabular", "text", "image"], hidden=16, feat_dim=16), {"dataset": ds}
    if kind == "contrastive":
        model = build_two_tower(ds, dim=16, feat_dim=16, image_arch="cnn_small")
        objective = ContrastiveObjective(modality_pairs(ds, "train"), modality_pairs(ds, "val"))
        return model, {"objective": objective}
    px = ds.modalities["image"].tensors["pixels"]
    model = ConvAutoencoder(dim=8, size=16, width=8)
    objective = ReconstructionObjective(px[torch.as_tensor(ds.splits["train"])], px[torch.as_tensor(ds.splits["val"])])
    return model, {"objective": objective}


def _trainer(kind: str, ds, **cfg) -> Trainer:
    model, kw = _setup(kind, ds)
    config = TrainConfig(**{"epochs": 4, "batch_size": 32, "patience": None, "device": "cpu", "progress": False,
                            "scheduler": "cosine", **cfg})
    return Trainer(model, config=config, **kw)


def _numbers(history: pd.DataFrame) -> pd.DataFrame:
    return history.drop(columns=["epoch_time_s"])


@pytest.mark.parametrize("kind", KINDS)
def test_resume_after_interruption_matches_the_uninterrupted_run(kind, ds, tmp_path):
    full = _trainer(kind, ds).fit()
    ckpt = tmp_path / f"{kind}.pt"

    class Killed(Exception):
        pass

    def kill_after_epoch_2(trainer, row):
        if row["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        _trainer(kind, ds, checkpoint_path=str(ckpt)).fit(on_epoch_end=kill_after_epoch_2)
    set_seeds(123)  # the checkpoint, not the process state, decides what happens next
    seen = []
    resumed = _trainer(kind, ds, checkpoint_path=str(ckpt), resume=True).fit(
        on_epoch_end=lambda t, row: seen.append(row["epoch"]))
    assert seen == [3, 4]
    pd.testing.assert_frame_equal(_numbers(full.history), _numbers(resumed.history), check_exact=True)
    for (k, a), b in zip(full.trainer.model.state_dict().items(), resumed.trainer.model.state_dict().values()):
        assert torch.equal(a, b), k
    # another objective kind's checkpoint is refused, with the reason
    other = "reconstruction" if kind != "reconstruction" else "fusion"
    with pytest.raises(MMLibError, match="different model"):
        _trainer(other, ds, checkpoint_path=str(ckpt), resume=True).fit()


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_runs_the_forward_pass_in_bf16(kind, ds):
    trainer = _trainer(kind, ds, amp="bf16", epochs=2)
    assert trainer.precision.dtype == torch.bfloat16
    seen: set[torch.dtype] = set()
    linears = [m for m in trainer.model.modules() if isinstance(m, nn.Linear)]
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype)) for m in linears]
    res = trainer.fit()
    for h in hooks:
        h.remove()
    assert torch.bfloat16 in seen
    assert np.isfinite(res.history["train_loss"]).all() and np.isfinite(res.best_val)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # weights stay in full precision


def test_fp16_needs_cuda(ds):
    with pytest.raises(MMLibError, match="needs a CUDA device"):
        _trainer("fusion", ds, amp="fp16")


@pytest.mark.parametrize("kind", KINDS)
def test_progress_bar_only_when_asked(kind, ds, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    _trainer(kind, ds, epochs=2, progress=True).fit()
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err
    _trainer(kind, ds, epochs=2, progress=False).fit()
    captured = capsys.readouterr()
    assert "epoch" not in captured.err and "epoch" not in captured.out


def test_objective_and_dataset_are_exclusive(ds):
    model, kw = _setup("contrastive", ds)
    with pytest.raises(MMLibError, match="either a dataset"):
        Trainer(model, ds, TrainConfig(device="cpu"), **kw)
    with pytest.raises(MMLibError, match="supervised"):
        Trainer(model, config=TrainConfig(device="cpu", track_modalities=True), **kw)
