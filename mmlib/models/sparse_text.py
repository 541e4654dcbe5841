"""The sparse TF-IDF text encoder (arch ``"tfidf"``): a fastText-style bag of n-grams,
optionally beside a frozen sentence embedding of the same text.

Input (``mmlib.data.tfidf``): ``tokens`` int64 [b, L] n-gram ids (0 = padding) and
``weights`` float32 [b, L] their TF-IDF weights; optionally ``x`` float32 [b, d], a frozen
sentence embedding (the ``clothing`` loader's ``text_encoder="minilm+tfidf"``).

- Bag: ``nn.EmbeddingBag(mode="sum")`` with the TF-IDF weights as ``per_sample_weights``
  = ``tfidf_row @ W`` exactly (a linear layer on the sparse TF-IDF matrix, never densified).
  Without ``weights`` every present n-gram weighs 1/(number of n-grams): a mean bag.
- Embedding (when ``x`` is given): L2-normalised with a learnable scale, then an MLP,
  as ``EmbeddingMLP`` does.
- Both vectors are concatenated and go through Dropout → Linear → ReLU → Dropout → Linear
  to ``out_dim`` features.

A row whose tokens are all padding (an absent text filled with zeros, or "zero"
imputation) gives a zero bag, so it reads like an empty text.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmlib.utils import MMLibError


class SparseTextEncoder(nn.Module):
    """TF-IDF n-gram bag (+ optional frozen embedding) → MLP; see the module docstring."""

    def __init__(self, vocab_size: int, out_dim: int = 64, x_dim: int = 0, emb_dim: int = 32, hidden: int = 256,
                 x_hidden: int = 256, dropout: float = 0.1, bag_dropout: float = 0.0):
        super().__init__()
        if vocab_size < 2:
            raise MMLibError(f"SparseTextEncoder: vocab_size={vocab_size}; needs the padding id and at least one n-gram.")
        self.vocab_size, self.x_dim, self.out_dim = int(vocab_size), int(x_dim), int(out_dim)
        self.bag = nn.EmbeddingBag(self.vocab_size, emb_dim, mode="sum", padding_idx=0)
        nn.init.normal_(self.bag.weight, std=1.0)  # an L2-normalised row then gives unit-scale sums
        with torch.no_grad():
            self.bag.weight[0].zero_()
        self.bag_dropout = float(bag_dropout)
        in_dim = emb_dim
        if self.x_dim:
            self.scale = nn.Parameter(torch.tensor(float(self.x_dim) ** 0.5))
            self.x_mlp = nn.Sequential(nn.Linear(self.x_dim, x_hidden), nn.ReLU(), nn.Dropout(dropout),
                                       nn.Linear(x_hidden, emb_dim))
            in_dim += emb_dim
        else:
            self.scale, self.x_mlp = None, None
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, out_dim))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    @classmethod
    def from_modality(cls, modality: Any, out_dim: int = 64, **kw: Any) -> "SparseTextEncoder":
        """Sized from a text modality: vocabulary from ``info["vocab_size"]`` (or the largest id),
        ``x_dim`` from its ``x`` tensor when it has one."""
        t, info = modality.tensors, modality.info
        vocab = int(info.get("vocab_size") or 0)
        if t["tokens"].numel():
            vocab = max(vocab, int(t["tokens"].max()) + 1)
        x_dim = int(t["x"].shape[1]) if "x" in t else 0
        return cls(max(vocab, 2), out_dim=out_dim, x_dim=x_dim, **kw)

    def forward(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = tensors["tokens"].long().clamp(0, self.vocab_size - 1)
        weights = tensors.get("weights")
        if weights is None:
            real = (tokens != 0).float()
            weights = real / real.sum(1, keepdim=True).clamp(min=1.0)
        weights = weights.to(self.bag.weight.dtype)
        if self.training and self.bag_dropout > 0:  # drop whole n-grams of a text
            weights = weights * (torch.rand_like(weights) >= self.bag_dropout) / (1.0 - self.bag_dropout)
        # only the real n-grams go in, as one flat list with offsets: the padding (most of a
        # 256-wide row) costs nothing; an empty row is an empty bag, whose sum is 0
        real = tokens != 0
        counts = real.sum(1)
        offsets = torch.cumsum(counts, 0) - counts
        parts = [self.bag(tokens[real], offsets, per_sample_weights=weights[real])]
        if self.x_mlp is not None:
            if "x" not in tensors:
                raise MMLibError("SparseTextEncoder was built with a sentence embedding (x_dim="
                                 f"{self.x_dim}) but the batch has no 'x' tensor.")
            x = F.normalize(tensors["x"].float(), dim=-1)  # an all-zero row stays zero
            parts.append(self.x_mlp(x * self.scale))
        return self.head(torch.cat(parts, dim=1))


__all__ = ["SparseTextEncoder"]
