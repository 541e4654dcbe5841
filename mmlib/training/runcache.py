"""A cache of trained runs shared by the notebooks.

Several notebooks train the same configuration (the single-modality models of 10
are the baselines of 20 and the subsets of 30's Shapley values; 20's early fusion
is 30's and 40's reference). A run is keyed by everything that determines its
result: the dataset's tensors, splits and target, the model and training
configuration, the seed, and the source of the mmlib package itself (any code
change invalidates every entry). A hit restores the trained weights and the
recorded fit instead of training again; records say ``extra.cached = true`` and
keep the original training time.

Disable with ``MMLIB_RUN_CACHE=0``. Entries live in ``<DATA_CACHE>/runs``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from mmlib.config import DATA_CACHE
from mmlib.utils import atomic_write_bytes


def enabled() -> bool:
    return os.environ.get("MMLIB_RUN_CACHE", "1") not in ("0", "false", "no")


@lru_cache(maxsize=1)
def code_version() -> str:
    root = Path(__file__).resolve().parent.parent  # the mmlib package
    h = hashlib.sha1()
    # the code a trained run depends on; editing reports, plots or prose leaves the cache valid
    files = [*root.glob("data/*.py"), *root.glob("models/*.py"), *root.glob("training/*.py"),
             *(root / "analysis" / f for f in ("robustness.py", "imbalance.py", "planted.py")), root / "utils.py"]
    for p in sorted(files):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def dataset_fingerprint(ds: Any) -> str:
    h = hashlib.sha1()
    h.update(f"{ds.name}|{ds.task}|{ds.n}|{ds.target_name}".encode())
    h.update(ds.target.detach().cpu().contiguous().numpy().tobytes())
    for k in ("train", "val", "test"):
        h.update(ds.splits[k].tobytes())
    for name, m in ds.modalities.items():
        h.update(f"{name}|{m.kind}".encode())
        h.update(m.present.detach().cpu().contiguous().numpy().tobytes())
        for key, t in sorted(m.tensors.items()):
            h.update(key.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def run_key(ds: Any, spec: dict[str, Any]) -> str:
    payload = json.dumps({"data": dataset_fingerprint(ds), "code": code_version(), **spec}, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:24]


def _path(key: str) -> Path:
    return DATA_CACHE / "runs" / f"{key}.pt"


def load(key: str) -> dict[str, Any] | None:
    if not enabled():
        return None
    p = _path(key)
    if not p.is_file():
        return None
    try:
        return torch.load(p, weights_only=False, map_location="cpu")
    except Exception:  # a corrupt entry is a miss, never a crash
        return None


def save(key: str, entry: dict[str, Any]) -> None:
    if not enabled():
        return
    buf = io.BytesIO()
    torch.save(entry, buf)
    atomic_write_bytes(_path(key), buf.getvalue())
