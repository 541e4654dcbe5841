"""Text tokenisation: a word vocabulary fitted on the training split only.

Ids: 0 = padding, 1 = out-of-vocabulary. Texts are lower-cased and split into
words and punctuation. Empty or missing texts give an all-padding row; the
loader marks them absent in the presence mask.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

PAD_ID = 0
UNK_ID = 1
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(text: str | None) -> list[str]:
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return []
    return _TOKEN_RE.findall(str(text).lower())


@dataclass
class Vocab:
    """Word -> id map built from training texts; unseen words map to ``UNK_ID``."""

    itos: list[str] = field(default_factory=lambda: ["<pad>", "<unk>"])

    def __post_init__(self) -> None:
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, texts: Iterable[str | None], min_freq: int = 1, max_size: int | None = None) -> "Vocab":
        counts = Counter(tok for t in texts for tok in tokenize(t))
        words = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_freq]
        if max_size is not None:
            words = words[: max(0, max_size - 2)]
        return cls(["<pad>", "<unk>"] + words)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, texts: Sequence[str | None], max_len: int) -> torch.Tensor:
        """Token ids, int64 [n, max_len], truncated at the end and right-padded with 0."""
        out = np.zeros((len(texts), max_len), dtype=np.int64)
        for i, t in enumerate(texts):
            ids = [self.stoi.get(tok, UNK_ID) for tok in tokenize(t)][:max_len]
            out[i, : len(ids)] = ids
        return torch.from_numpy(out)

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.itos[i] for i in ids if i != PAD_ID)
