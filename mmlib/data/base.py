"""The in-memory multimodal dataset every loader returns and every model reads.

A ``MultimodalDataset`` holds, for each modality, a dict of tensors with the row
as the first axis, a boolean presence mask per row, a target, the task type and
fixed train/val/test index splits. Batches are produced by indexing these
tensors (no per-item decoding), optionally after moving them to the GPU once.

Tensor conventions per modality kind (the keys of ``Modality.tensors``):

=========== ======================================================================
kind        tensors
=========== ======================================================================
tabular     ``num``: float32 [n, d_num] (already scaled); ``cat``: int64 [n, d_cat]
            (0 = unknown/missing category, 1.. = known levels)
text        ``tokens``: int64 [n, L] (0 = padding, 1 = out-of-vocabulary)
image       ``pixels``: uint8 [n, 3, H, W] (the encoder converts to float)
embedding   ``x``: float32 [n, d] (frozen precomputed embeddings)
=========== ======================================================================

Rows whose modality is absent have ``present[row] == False``; their tensors hold
zeros and models must not read them (fusions use the mask).
"""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from mmlib.utils import MMLibError

TASKS = ("regression", "binary", "multiclass")
KINDS = ("tabular", "text", "image", "embedding")


@dataclass
class Modality:
    """One modality: its tensors, a presence mask and descriptive info."""

    name: str  # e.g. "tabular", "text", "image"
    kind: str  # one of KINDS
    tensors: dict[str, torch.Tensor]
    present: torch.Tensor  # bool [n]
    # kind-specific facts the encoders need, e.g. tabular: num_columns, cat_columns,
    # cat_cardinalities (including the 0 slot); text: vocab (list), pad_id, unk_id;
    # image: size; embedding: dim.
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise MMLibError(f"Modality {self.name!r}: unknown kind {self.kind!r}; expected one of {KINDS}.")
        n = int(self.present.shape[0])
        for key, t in self.tensors.items():
            if t.shape[0] != n:
                raise MMLibError(
                    f"Modality {self.name!r}: tensor {key!r} has {t.shape[0]} rows but the presence mask has {n}."
                )
        self.present = self.present.to(torch.bool)

    @property
    def n(self) -> int:
        return int(self.present.shape[0])

    def index(self, idx: torch.Tensor) -> "Modality":
        return Modality(self.name, self.kind, {k: v[idx] for k, v in self.tensors.items()}, self.present[idx], self.info)


@dataclass
class MultimodalDataset:
    """Per-modality tensors + presence masks + target + task + fixed splits."""

    name: str
    modalities: dict[str, Modality]
    target: torch.Tensor  # float32 [n] for regression; int64 [n] for binary/multiclass
    task: str
    splits: dict[str, np.ndarray]  # "train" / "val" / "test" -> sorted row indices
    n_classes: int | None = None
    target_name: str = "target"
    # free-form facts: for spacecraft the planted shares and per-subset R² ceilings,
    # raw dataframes for CatBoost baselines, original texts for display, ...
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise MMLibError(f"Dataset {self.name!r}: unknown task {self.task!r}; expected one of {TASKS}.")
        n = int(self.target.shape[0])
        for m in self.modalities.values():
            if m.n != n:
                raise MMLibError(f"Dataset {self.name!r}: modality {m.name!r} has {m.n} rows but the target has {n}.")
        if self.task == "regression":
            self.target = self.target.to(torch.float32)
            if not torch.isfinite(self.target).all():
                bad = int((~torch.isfinite(self.target)).nonzero()[0])
                raise MMLibError(f"Dataset {self.name!r}: target has a NaN/inf value (first at row {bad}); drop or fill those rows.")
        else:
            self.target = self.target.to(torch.int64)
            n_cls = int(self.target.max().item()) + 1 if n else 0
            self.n_classes = self.n_classes or n_cls
            if len(torch.unique(self.target)) < 2:
                raise MMLibError(
                    f"Dataset {self.name!r}: the target {self.target_name!r} has a single class; "
                    "a classifier needs at least two. Check the target column or the filter applied to rows."
                )
        for key in ("train", "val", "test"):
            if key not in self.splits:
                raise MMLibError(f"Dataset {self.name!r}: split {key!r} is missing.")

    # ------------------------------------------------------------------ basics
    @property
    def n(self) -> int:
        return int(self.target.shape[0])

    @property
    def modality_names(self) -> list[str]:
        return list(self.modalities)

    @property
    def out_dim(self) -> int:
        """Width of the model output: 1 for regression and binary, n_classes otherwise."""
        return int(self.n_classes) if self.task == "multiclass" else 1

    def __repr__(self) -> str:
        mods = ", ".join(f"{m.name}:{m.kind}({m.present.float().mean():.0%} present)" for m in self.modalities.values())
        sizes = "/".join(str(len(self.splits[k])) for k in ("train", "val", "test"))
        return f"MultimodalDataset({self.name!r}, n={self.n}, task={self.task}, [{mods}], splits={sizes})"

    def describe(self) -> "Any":
        """A small DataFrame: one row per modality with kind, tensor shapes, presence."""
        import pandas as pd

        rows = []
        for m in self.modalities.values():
            rows.append(
                {
                    "modality": m.name,
                    "kind": m.kind,
                    "tensors": ", ".join(f"{k}{tuple(v.shape[1:])}" for k, v in m.tensors.items()),
                    "present_%": round(100 * float(m.present.float().mean()), 1),
                }
            )
        return pd.DataFrame(rows)

    # --------------------------------------------------------------- variants
    def subset_modalities(self, names: list[str] | tuple[str, ...]) -> "MultimodalDataset":
        """A shallow view with only the named modalities (same rows, splits, target)."""
        unknown = [n for n in names if n not in self.modalities]
        if unknown:
            raise MMLibError(f"Unknown modality {unknown}; this dataset has {self.modality_names}.")
        out = copy.copy(self)
        out.modalities = {n: self.modalities[n] for n in names}
        return out

    def with_modality(self, modality: Modality) -> "MultimodalDataset":
        """A shallow copy where one modality is replaced (e.g. corrupted or masked)."""
        out = copy.copy(self)
        out.modalities = dict(self.modalities)
        out.modalities[modality.name] = modality
        return out

    def to(self, device: str | torch.device) -> "MultimodalDataset":
        """A view with every tensor on ``device`` (uint8 images stay uint8).

        On an accelerator every view and every trainer of one dataset share a single device
        copy of each tensor (many fits on a GPU keep one copy of the images, not one per run);
        the copy is freed with the source tensor and refreshed after an in-place edit of it."""
        device = torch.device(device)
        out = copy.copy(self)
        out.modalities = {
            k: Modality(m.name, m.kind, {kk: _on_device(vv, device) for kk, vv in m.tensors.items()},
                        _on_device(m.present, device), m.info)
            for k, m in self.modalities.items()
        }
        out.target = _on_device(self.target, device)
        return out

    @property
    def device(self) -> torch.device:
        return self.target.device

    # ---------------------------------------------------------------- batches
    def batch(self, idx: torch.Tensor | np.ndarray) -> dict[str, Any]:
        """Index every tensor by ``idx``: ``{"inputs": {mod: {key: t}}, "present": {mod: bool}, "y": t, "idx": idx}``."""
        if isinstance(idx, np.ndarray):
            idx = torch.from_numpy(idx)
        idx = idx.to(self.device)
        return {
            "inputs": {name: {k: v[idx] for k, v in m.tensors.items()} for name, m in self.modalities.items()},
            "present": {name: m.present[idx] for name, m in self.modalities.items()},
            "y": self.target[idx],
            "idx": idx,
        }

    def batches(
        self,
        split: str | np.ndarray,
        batch_size: int = 256,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Yield batches of a split (or of explicit row indices) by tensor indexing."""
        rows = self.splits[split] if isinstance(split, str) else np.asarray(split)
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        if shuffle:
            perm = torch.randperm(len(rows_t), generator=generator)
            rows_t = rows_t[perm]
        stop = len(rows_t) - (len(rows_t) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            chunk = rows_t[start : start + batch_size]
            if len(chunk) == 0:
                break
            yield self.batch(chunk)

    def n_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        n = len(self.splits[split])
        return n // batch_size if drop_last else -(-n // batch_size)


# (id(source tensor), device) -> (weakref to it, its in-place version, device copy)
_DEVICE_COPIES: dict[tuple[int, str], tuple[weakref.ref, int, torch.Tensor]] = {}


def _on_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if t.device == device or device.type == "cpu":
        return t.to(device)
    key = (id(t), str(device))
    hit = _DEVICE_COPIES.get(key)
    if hit is not None and hit[0]() is t and hit[1] == t._version:
        return hit[2]
    moved = t.to(device)
    _DEVICE_COPIES[key] = (weakref.ref(t, lambda _ref, key=key: _DEVICE_COPIES.pop(key, None)), t._version, moved)
    return moved


def clear_device_copies() -> None:
    """Forget the shared device copies (views and trainers still holding one keep it)."""
    _DEVICE_COPIES.clear()


def make_splits(n: int, seed: int, val_frac: float = 0.15, test_frac: float = 0.15) -> dict[str, np.ndarray]:
    """Fixed random train/val/test row indices from a seed (sorted within each split)."""
    if not 0 < val_frac < 1 or not 0 < test_frac < 1 or val_frac + test_frac >= 1:
        raise MMLibError(f"val_frac={val_frac} and test_frac={test_frac} must be in (0, 1) and sum to less than 1.")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_test = int(round(n * test_frac))
    n_val = int(round(n * val_frac))
    return {
        "test": np.sort(perm[:n_test]),
        "val": np.sort(perm[n_test : n_test + n_val]),
        "train": np.sort(perm[n_test + n_val :]),
    }
