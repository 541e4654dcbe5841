"""The sparse TF-IDF text path: ``mmlib.data.tfidf`` (padded n-gram ids + weights) and the
``"tfidf"`` encoder (``mmlib.models.sparse_text``), on small synthetic texts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlib.data.base import Modality, MultimodalDataset, make_splits
from mmlib.data.tfidf import TfidfNgrams
from mmlib.models import build_model
from mmlib.models.encoders import build_encoder
from mmlib.models.sparse_text import SparseTextEncoder
from mmlib.utils import MMLibError

TRAIN = ["great dress, love it!", "love the fit", "the fabric is cheap", "cheap zipper broke", "great fit great price"]


def dense(ids: torch.Tensor, w: torch.Tensor, vocab: int) -> np.ndarray:
    out = np.zeros((ids.shape[0], vocab), dtype=np.float32)
    for i in range(ids.shape[0]):
        for j, v in zip(ids[i].tolist(), w[i].tolist()):
            out[i, j] += v
    return out


def test_padded_ids_and_weights_are_the_tfidf_matrix():
    tf = TfidfNgrams(min_df=1).fit(TRAIN)
    texts = TRAIN + ["never seen words", None, "love love love the dress"]
    ids, w = tf.transform(texts)
    assert ids.dtype == torch.int64 and w.dtype == torch.float32 and ids.shape == w.shape == (8, 256)
    ref = tf.transform_sparse(texts).toarray()
    got = dense(ids, w, tf.vocab_size)
    assert not got[:, 0].any()  # id 0 is padding only
    np.testing.assert_allclose(got[:, 1:], ref, atol=1e-6)
    assert not ids[5].any() and not w[5].any()  # only out-of-vocabulary words: an empty bag
    assert not ids[6].any()  # absent text
    np.testing.assert_allclose(np.linalg.norm(got[[0, 1, 7]], axis=1), 1.0, atol=1e-5)  # L2-normalised rows
    assert "love the" in tf.vectorizer.vocabulary_ and "!" in tf.vectorizer.vocabulary_  # bigrams, punctuation


def test_vocabulary_comes_from_the_fitted_texts_only():
    tf = TfidfNgrams(min_df=1).fit(TRAIN[:3])
    assert "zipper" not in tf.vectorizer.vocabulary_ and "dress" in tf.vectorizer.vocabulary_
    ids, _ = tf.transform(["zipper zipper"])
    assert not ids.any()


def test_truncation_keeps_the_largest_weights():
    tf = TfidfNgrams(min_df=1, max_len=3).fit(TRAIN)
    text = "great dress love the fabric zipper broke"
    ids, w = tf.transform([text])
    ref = tf.transform_sparse([text]).toarray()[0]
    assert (ids[0] > 0).sum() == 3
    np.testing.assert_allclose(np.sort(w[0].numpy())[::-1], np.sort(ref)[::-1][:3], atol=1e-6)
    with pytest.raises(MMLibError, match="fit"):
        TfidfNgrams().transform(["x"])


def test_bag_is_a_linear_layer_on_the_sparse_matrix():
    tf = TfidfNgrams(min_df=1, max_len=16).fit(TRAIN)
    ids, w = tf.transform(TRAIN + [None])
    enc = SparseTextEncoder(tf.vocab_size, out_dim=8, emb_dim=5).eval()
    bag = enc.bag(ids, per_sample_weights=w)
    ref = torch.from_numpy(dense(ids, w, tf.vocab_size)) @ enc.bag.weight.detach()
    torch.testing.assert_close(bag, ref, atol=1e-5, rtol=1e-5)
    assert not bag[-1].any()  # an absent text: a zero bag
    perm = torch.randperm(16)  # the order of the n-grams in a row does not matter
    torch.testing.assert_close(enc({"tokens": ids[:, perm], "weights": w[:, perm]}), enc({"tokens": ids, "weights": w}))
    assert enc({"tokens": ids, "weights": w}).shape == (6, 8)
    empty = enc.bag(ids[:0].reshape(-1), torch.zeros(2, dtype=torch.long), per_sample_weights=w[:0].reshape(-1))
    assert empty.shape == (2, 5) and not empty.any()  # a batch with no n-gram at all
    torch.testing.assert_close(enc({"tokens": ids[-1:].expand(2, -1), "weights": w[-1:].expand(2, -1)}),
                               enc.head(torch.zeros(2, 5)))


def _dataset(with_x: bool) -> MultimodalDataset:
    rng = np.random.default_rng(0)
    n = 60
    texts = [TRAIN[i % 5] if i % 7 else None for i in range(n)]
    splits = make_splits(n, 0)
    tf = TfidfNgrams(min_df=1, max_len=12).fit([texts[i] for i in splits["train"]])
    ids, w = tf.transform(texts)
    present = torch.tensor([t is not None for t in texts])
    tensors = {"tokens": ids, "weights": w}
    if with_x:
        tensors["x"] = torch.from_numpy(rng.normal(size=(n, 6)).astype(np.float32)) * present[:, None]
    text = Modality("text", "text", tensors, present, {"vocab_size": tf.vocab_size, "encoder_arch": "tfidf"})
    tab = Modality("tabular", "tabular", {"num": torch.randn(n, 3), "cat": torch.zeros(n, 0, dtype=torch.long)},
                   torch.ones(n, dtype=torch.bool))
    y = torch.tensor([float(len(t or "")) for t in texts])
    return MultimodalDataset("toy", {"tabular": tab, "text": text}, y, "regression", splits)


@pytest.mark.parametrize("with_x", [False, True])
def test_the_encoder_is_the_default_for_a_tfidf_modality(with_x):
    ds = _dataset(with_x)
    enc = build_encoder(ds.modalities["text"], out_dim=16, hidden=32)
    assert isinstance(enc, SparseTextEncoder) and enc.x_dim == (6 if with_x else 0)
    with pytest.raises(MMLibError, match="unknown option"):
        build_encoder(ds.modalities["text"], no_such_option=1)
    model = build_model(ds, fusion="gated").eval()
    batch = ds.batch(np.arange(ds.n))
    out = model(batch["inputs"], batch["present"])
    assert out["pred"].shape == (ds.n, 1) and torch.isfinite(out["pred"]).all()
    if with_x:
        with pytest.raises(MMLibError, match="no 'x'"):
            enc({"tokens": batch["inputs"]["text"]["tokens"], "weights": batch["inputs"]["text"]["weights"]})


def test_robustness_code_reads_the_tfidf_modality():
    from mmlib.analysis.robustness import corrupt_batch, corruption_stats, imputation_values, kind_of

    ds = _dataset(with_x=True)
    t = ds.modalities["text"].tensors
    assert kind_of(t) == "text"
    stats = corruption_stats(ds, "text")
    assert set(stats) == {"tokens", "x"}
    batch = ds.batch(np.arange(ds.n))
    g = torch.Generator().manual_seed(0)
    noisy = corrupt_batch(batch, "text", 1.0, generator=g, stats=stats)["inputs"]["text"]
    assert torch.equal(noisy["tokens"] == 0, t["tokens"] == 0)  # padding stays padding
    assert not torch.equal(noisy["tokens"], t["tokens"]) and not torch.equal(noisy["x"], t["x"])
    assert torch.equal(noisy["weights"], t["weights"])
    fill = imputation_values(ds, "text")
    assert fill["weights"].dtype == torch.float32 and fill["tokens"].dtype == torch.int64


def test_tfidf_networks_are_stack_members(tmp_path):
    from mmlib.analysis.stacking import stacked_ensemble
    from mmlib.reporting.records import RecordWriter
    from mmlib.training.experiments import run_fusion
    from mmlib.training.profiles import get_profile

    ds = _dataset(with_x=True)
    P = get_profile("smoke")
    members = {name: [run_fusion(ds, "early", mods, 0, profile=P, notebook="t", experiment="t", progress=False,
                                 device="cpu")]
               for name, mods in (("text_only", ["text"]), ("early", ["tabular", "text"]))}
    writer = RecordWriter(notebook="t", dataset="toy", out_dir=tmp_path)
    s = stacked_ensemble(ds, members, [0], writer, n_boot=20)
    assert {"text_only", "early", "stack", "stack_unimodal"} <= set(s.table.index)
    stack = [r for r in writer.records if r["model"] == "stack"][0]
    assert stack["extra"]["members"] == ["text_only", "early"] and len(stack["extra"]["weights"]) == 2
