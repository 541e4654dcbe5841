"""Shared fixtures: a tiny synthetic 3-modality dataset built directly on the
``MultimodalDataset`` contract, so model / trainer tests need no generator."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlib.data.base import Modality, MultimodalDataset, make_splits


def make_tiny_dataset(n: int = 300, seed: int = 0, task: str = "regression", missing: float = 0.1,
                      image_size: int = 16, text_len: int = 6) -> MultimodalDataset:
    """Tabular (2 numeric + 1 categorical), text tokens and small images; the target
    depends on all three so a fused model can beat any single modality."""
    g = np.random.default_rng(seed)
    num = g.normal(size=(n, 2)).astype(np.float32)
    cat = g.integers(1, 4, size=(n, 1))
    word = g.integers(2, 10, size=n)                     # informative token id
    tokens = np.zeros((n, text_len), dtype=np.int64)
    lengths = g.integers(1, text_len + 1, size=n)
    for i in range(n):
        tokens[i, : lengths[i]] = g.integers(10, 20, size=lengths[i])
        tokens[i, 0] = word[i]
    bright = g.integers(0, 2, size=n)                    # informative image factor
    pixels = g.integers(0, 60, size=(n, 3, image_size, image_size)).astype(np.uint8)
    pixels[bright == 1, :, 4:12, 4:12] = 220
    y = num[:, 0] + 0.5 * (cat[:, 0] - 2) + 0.3 * (word - 5.5) / 2.3 + 0.8 * (bright - 0.5) * 2
    y = (y + 0.1 * g.normal(size=n)).astype(np.float32)

    present = {m: torch.from_numpy(g.random(n) >= missing) for m in ("tabular", "text", "image")}
    none = ~(present["tabular"] | present["text"] | present["image"])
    present["tabular"][none] = True
    mods = {
        "tabular": Modality("tabular", "tabular", {"num": torch.from_numpy(num), "cat": torch.from_numpy(cat)},
                            present["tabular"], {"num_columns": ["a", "b"], "cat_columns": ["c"], "cat_cardinalities": [4]}),
        "text": Modality("text", "text", {"tokens": torch.from_numpy(tokens)}, present["text"],
                         {"vocab_size": 20, "max_len": text_len}),
        "image": Modality("image", "image", {"pixels": torch.from_numpy(pixels)}, present["image"],
                          {"size": image_size}),
    }
    for m in mods.values():  # absent rows hold zeros, as the contract says
        for k, t in m.tensors.items():
            t[~m.present] = 0
    if task == "regression":
        target = torch.from_numpy(y)
    elif task == "binary":
        target = torch.from_numpy((y > np.median(y)).astype(np.int64))
    else:
        target = torch.from_numpy(np.digitize(y, np.quantile(y, [1 / 3, 2 / 3])).astype(np.int64))
    return MultimodalDataset("tiny", mods, target, task, make_splits(n, seed))


@pytest.fixture
def tiny_dataset() -> MultimodalDataset:
    return make_tiny_dataset()


@pytest.fixture
def tiny_classification() -> MultimodalDataset:
    return make_tiny_dataset(task="multiclass")


@pytest.fixture(autouse=True)
def _no_run_cache(monkeypatch):
    """Unit tests train for real: a cache hit must never stand in for a reproducibility check."""
    monkeypatch.setenv("MMLIB_RUN_CACHE", "0")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module: tiny models on a shared 2-core machine only lose by more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
