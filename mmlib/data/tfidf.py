"""Sparse TF-IDF bags of word n-grams for the networks, stored as padded (id, weight) pairs.

``TfidfNgrams`` fits a TF-IDF vocabulary of word 1-2-grams on the *training* texts only
(sublinear tf, smooth idf, each row L2-normalised: the features of the
``tfidf+logreg_ev`` baseline) and turns every text into the ids of its n-grams and their
TF-IDF weights, right-padded to a fixed width:

- ``tokens``  int64 [n, L]: n-gram id + 1 (0 = padding; n-grams outside the vocabulary
  are dropped, so there is no out-of-vocabulary id);
- ``weights`` float32 [n, L]: the row's TF-IDF weight of each id (0 at padding).

This is a sparse matrix in padded form (a CSR row per text, ~100 entries on
``clothing``), never the dense [n, vocabulary] matrix: an ``nn.EmbeddingBag`` with
``per_sample_weights`` (``mmlib.models.sparse_text``) computes exactly
``tfidf_matrix @ W`` from it. A row with more than ``max_len`` n-grams keeps its
``max_len`` largest weights. An absent text (None) is an all-padding row.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from mmlib.data.text import tokenize
from mmlib.utils import MMLibError


def _analyzer(ngram_range: tuple[int, int]):
    lo, hi = ngram_range

    def analyze(text: str) -> list[str]:
        words = tokenize(text)
        grams = []
        for k in range(lo, hi + 1):
            grams.extend(" ".join(words[i:i + k]) for i in range(len(words) - k + 1))
        return grams

    return analyze


class TfidfNgrams:
    """TF-IDF of word n-grams fitted on training texts; ``transform`` gives padded (ids, weights).

    Words are ``mmlib.data.text.tokenize``'s (lower-cased words and punctuation, so "!" counts).
    ``max_features`` keeps the most frequent n-grams (of those in at least ``min_df`` training
    texts); ``max_len`` is the padded width."""

    def __init__(self, ngram_range: tuple[int, int] = (1, 2), min_df: int = 2, max_features: int | None = 50_000,
                 max_len: int = 256, sublinear_tf: bool = True):
        if max_len < 1:
            raise MMLibError(f"TfidfNgrams: max_len={max_len}; use a positive width.")
        self.ngram_range = (int(ngram_range[0]), int(ngram_range[1]))
        self.min_df, self.max_features, self.max_len = int(min_df), max_features, int(max_len)
        self.sublinear_tf = bool(sublinear_tf)
        self.vectorizer = None

    def fit(self, texts: Sequence[str | None]) -> "TfidfNgrams":
        from sklearn.feature_extraction.text import TfidfVectorizer

        docs = [t for t in texts if t]
        # tiny datasets (tests, smoke runs) may not have min_df occurrences of anything
        min_df = self.min_df if len(docs) >= 50 * self.min_df else 1
        self.vectorizer = TfidfVectorizer(analyzer=_analyzer(self.ngram_range), min_df=min_df,
                                          max_features=self.max_features, sublinear_tf=self.sublinear_tf,
                                          dtype=np.float32)
        try:
            self.vectorizer.fit(docs)
        except ValueError as exc:  # empty vocabulary
            raise MMLibError(f"TfidfNgrams: no n-grams in the {len(docs)} training texts ({exc}).") from exc
        return self

    @property
    def vocab_size(self) -> int:
        """Number of ids including the padding id 0."""
        self._check_fitted()
        return len(self.vectorizer.vocabulary_) + 1

    def _check_fitted(self) -> None:
        if self.vectorizer is None:
            raise MMLibError("TfidfNgrams: call fit(training texts) before transform.")

    def transform_sparse(self, texts: Sequence[str | None]):
        """The TF-IDF matrix (scipy CSR, [n, vocabulary]; an absent text is an empty row)."""
        self._check_fitted()
        return self.vectorizer.transform(["" if t is None else str(t) for t in texts]).tocsr()

    def transform(self, texts: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, weights)``: int64 and float32 [n, max_len] (see the module docstring)."""
        m = self.transform_sparse(texts)
        n, width = m.shape[0], self.max_len
        ids = np.zeros((n, width), dtype=np.int64)
        w = np.zeros((n, width), dtype=np.float32)
        indptr, indices, data = m.indptr, m.indices, m.data
        for i in range(n):
            a, b = indptr[i], indptr[i + 1]
            cols, vals = indices[a:b], data[a:b]
            if len(cols) > width:  # keep the largest weights
                top = np.argsort(-vals, kind="stable")[:width]
                cols, vals = cols[top], vals[top]
            ids[i, :len(cols)] = cols + 1
            w[i, :len(cols)] = vals
        return torch.from_numpy(ids), torch.from_numpy(w)


MAX_FEATURES = 20_000  # most frequent word 1-2-grams kept (min_df 2, training split): a cheap optimizer step on a CPU
MAX_LEN = 256  # padded n-grams per text (a clothing review has at most 197 of the 20,000 kept ones)


def tfidf_text(texts: Sequence[str | None], train_rows: Sequence[int], x: np.ndarray | None = None,
               model: str | None = None, max_features: int = MAX_FEATURES,
               max_len: int = MAX_LEN) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and info of a ``text`` modality read by the ``"tfidf"`` encoder
    (``mmlib.models.sparse_text``): TF-IDF word 1-2-grams fitted on ``texts[train_rows]``
    (``tokens`` + ``weights``), plus ``x``, a frozen sentence embedding of the same texts
    (``model`` names it), when given: the loaders' ``text_encoder="tfidf"`` /
    ``"minilm+tfidf"`` / ``"mpnet+tfidf"``."""
    tfidf = TfidfNgrams(max_features=max_features, max_len=max_len)
    tfidf.fit([texts[int(i)] for i in train_rows])
    ids, weights = tfidf.transform(texts)
    tensors = {"tokens": ids, "weights": weights}
    info = {"vocab_size": tfidf.vocab_size, "max_len": max_len, "encoder_arch": "tfidf",
            "features": "tfidf word 1-2-grams", "tfidf": tfidf}
    if x is not None:
        if len(x) != len(texts):
            raise MMLibError(f"tfidf_text: {len(x)} embeddings for {len(texts)} texts.")
        tensors["x"] = torch.from_numpy(np.ascontiguousarray(x))
        info.update(dim=int(x.shape[1]), model=model)
    return tensors, info


__all__ = ["TfidfNgrams", "tfidf_text", "MAX_FEATURES", "MAX_LEN"]
