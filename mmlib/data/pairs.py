"""Paired rows of two modalities, for alignment (seeds 001 and 004).

Row i of ``Pairs.a`` (the text side) and row i of ``Pairs.b`` (the image side) are
the same sample. Each side is a tensor [n, d] (embeddings) or a dict of tensors
(``{"tokens": ...}``, ``{"pixels": ...}``).
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from mmlib.utils import MMLibError


class Pairs(NamedTuple):
    """Row i of ``a`` (text side) and row i of ``b`` (image side) belong together;
    ``rows`` are their dataset row indices."""

    a: Any
    b: Any
    rows: np.ndarray

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.rows)


def take(x: Any, idx: torch.Tensor) -> Any:
    """Rows ``idx`` of a tensor or of every tensor in a dict."""
    if isinstance(x, Mapping):
        return {k: v[idx.to(v.device)] for k, v in x.items()}
    return x[idx.to(x.device)]


def move(x: Any, device: torch.device) -> Any:
    """A tensor, or every tensor in a dict, on ``device``."""
    if isinstance(x, Mapping):
        return {k: v.to(device) for k, v in x.items()}
    return x.to(device)


def modality_pairs(dataset: Any, split: str | np.ndarray, a: str = "text", b: str = "image") -> Pairs:
    """Pairs of the two modalities' tensors on the rows of ``split`` where both are present."""
    for m in (a, b):
        if m not in dataset.modalities:
            raise MMLibError(f"dataset {dataset.name!r} has no modality {m!r}; it has {dataset.modality_names}.")
    rows = np.asarray(dataset.splits[split] if isinstance(split, str) else split)
    ma, mb = dataset.modalities[a], dataset.modalities[b]
    both = (ma.present & mb.present).cpu().numpy()[rows]
    rows = rows[both]
    idx = torch.as_tensor(rows, dtype=torch.long)
    return Pairs(take(ma.tensors, idx), take(mb.tensors, idx), rows)


def embedding_pairs(a: Any, b: Any, rows: Sequence[int] | np.ndarray, present: np.ndarray | None = None) -> Pairs:
    """Pairs from two embedding matrices [n, d] (all dataset rows) restricted to ``rows``
    (and to rows where ``present`` is True, when given)."""
    rows = np.asarray(rows)
    if present is not None:
        rows = rows[np.asarray(present, bool)[rows]]
    ta = a.detach().float().cpu() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a, np.float32))
    tb = b.detach().float().cpu() if isinstance(b, torch.Tensor) else torch.as_tensor(np.asarray(b, np.float32))
    idx = torch.as_tensor(rows, dtype=torch.long)
    return Pairs(ta[idx], tb[idx], rows)
