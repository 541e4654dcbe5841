"""``embeddings``: your own precomputed per-modality embeddings from an ``.npz`` file.

Seeds 001 and 002 work on embeddings computed elsewhere (CLIP images, Qwen or
MiniLM texts). This loader turns such a file into a ``MultimodalDataset`` whose
modalities are all of kind ``embedding`` (``tensors["x"]`` float32 [n, d]), so
every fusion model and the contrastive tools read it like any other dataset.

File layout (``numpy.savez``; ``save_embeddings`` writes it)::

    text                 float [n, d_text]   a modality, named by its key
    image/embeddings     float [n, d_image]  also a modality ("image"): seed 001's layout
    target               [n]                 optional; another name with ``target=...``
    ids                  [n]                 optional row identifiers
    captions/text        str [n]             optional raw texts (kept in ``meta["texts"]``)

Every other ``<name>/<field>`` entry (``images/names``, ``captions/ids``) is kept in
``meta["extra_arrays"]`` but is not a modality. A row whose embedding is all NaN or
all zero is *absent* for that modality (its presence mask is False); any other
NaN/inf is an error naming the array and the row.
"""
from __future__ import annotations

import copy
import io
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mmlib.data.base import TASKS, Modality, MultimodalDataset, make_splits
from mmlib.utils import MMLibError, atomic_write_bytes

EMB_SUFFIX = "/embeddings"
RESERVED = ("ids", "target")
# "auto" treats an integer (or string) target with at most this many distinct values as classes
MAX_AUTO_CLASSES = 20


# --------------------------------------------------------------------------- reading
def _open_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise MMLibError(f"embeddings: file not found: {path}. Pass the path of an .npz written by numpy.savez "
                         "(or mmlib.data.embeddings.save_embeddings).")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            out = {}
            for k in keys:
                try:
                    out[k] = npz[k]
                except ValueError as exc:  # object arrays need pickle, which we refuse (untrusted files)
                    raise MMLibError(f"embeddings: array {k!r} in {path} holds Python objects ({exc}); "
                                     "store numbers (or fixed-width strings) instead.") from exc
            return out
    except MMLibError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise MMLibError(f"embeddings: cannot read {path} as an .npz archive ({exc}); "
                         "write it with numpy.savez or mmlib.data.embeddings.save_embeddings.") from exc


def _modality_keys(arrays: Mapping[str, np.ndarray], target_key: str | None) -> dict[str, str]:
    """modality name -> key in the file: ``<m>/embeddings`` or a top-level numeric array ``<m>``."""
    found: dict[str, str] = {}
    for key, arr in arrays.items():
        if key.endswith(EMB_SUFFIX) and key.count("/") == 1:
            name = key[: -len(EMB_SUFFIX)]
        elif "/" not in key and key not in RESERVED and key != target_key and arr.dtype.kind in "fiub":
            name = key
        else:
            continue
        if name in found:
            raise MMLibError(f"embeddings: modality {name!r} appears twice in the file ({found[name]!r} and "
                             f"{key!r}); keep one of them.")
        found[name] = key
    return found


def _describe_file(arrays: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items())


def _infer_task(y: np.ndarray) -> str:
    if y.dtype.kind in "USb":
        return "binary" if len(np.unique(y)) == 2 else "multiclass"
    if y.dtype.kind in "iu" or (y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        k = len(np.unique(y))
        if k == 2:
            return "binary"
        if k <= MAX_AUTO_CLASSES and y.dtype.kind in "iu":
            return "multiclass"
    return "regression"


def _encode_target(y: np.ndarray, task: str, name: str, where: str) -> tuple[torch.Tensor, list[Any] | None]:
    if task == "regression":
        if y.dtype.kind not in "fiub":
            raise MMLibError(f"embeddings: target {name!r} in {where} is not numeric ({y.dtype}); a regression "
                             "target must be numbers (use task='multiclass' for labels).")
        yf = y.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(yf))
        if bad.size:
            raise MMLibError(f"embeddings: target {name!r} in {where} has a NaN/inf value at row {bad[0]} "
                             f"({bad.size} such row(s) in all); drop or fill those rows.")
        return torch.from_numpy(yf.astype(np.float32)), None
    # classes: map the distinct values to 0..C-1 (in sorted order)
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        bad = np.flatnonzero(~np.isfinite(y))
        raise MMLibError(f"embeddings: target {name!r} in {where} has a NaN/inf value at row {bad[0]}.")
    levels, codes = np.unique(y, return_inverse=True)
    if task == "binary" and len(levels) != 2:
        raise MMLibError(f"embeddings: task='binary' but target {name!r} in {where} has {len(levels)} distinct "
                         f"values ({levels[:10].tolist()}...); use task='multiclass' or 'regression'.")
    return torch.from_numpy(codes.astype(np.int64)), levels.tolist()


def load_embeddings(path: str | Path, target: str | None = None, task: str = "auto",
                    modalities: Sequence[str] | None = None, seed: int = 0, val_frac: float = 0.15,
                    test_frac: float = 0.15, n_rows: int | None = None) -> MultimodalDataset:
    """Load an ``.npz`` of per-modality embeddings as a ``MultimodalDataset``.

    path: the ``.npz`` file. target: name of the target array (default ``"target"``).
    task: ``auto`` (integer/str with ≤ 20 levels → classes, else regression),
    ``regression``, ``binary``, ``multiclass``, or ``none`` for a file without a target
    (retrieval / alignment only: the target is a placeholder of zeros and
    ``meta["has_target"]`` is False). modalities: keep only these (default: all found).
    seed / val_frac / test_frac: the fixed random splits. n_rows: keep a random subset
    of this many rows (drawn from ``seed``; the row order is kept).
    """
    path = Path(path)
    where = str(path)
    if task not in (*TASKS, "auto", "none"):
        raise MMLibError(f"embeddings: unknown task {task!r}; use 'auto', 'none' or one of {TASKS}.")
    arrays = _open_npz(path)
    if not arrays:
        raise MMLibError(f"embeddings: {path} holds no arrays.")
    target_key = target if target is not None else ("target" if "target" in arrays else None)
    if target is not None and target not in arrays:
        raise MMLibError(f"embeddings: target array {target!r} not found in {path}. The file holds: "
                         f"{_describe_file(arrays)}.")

    found = _modality_keys(arrays, target_key)
    if not found:
        raise MMLibError(f"embeddings: no embedding arrays in {path}. Name them '<modality>' or "
                         f"'<modality>/embeddings' (2-D, numeric). The file holds: {_describe_file(arrays)}.")
    names = list(modalities) if modalities is not None else list(found)
    unknown = [m for m in names if m not in found]
    if unknown or not names:
        raise MMLibError(f"embeddings: unknown modality {unknown or names} for {path}; the file has the "
                         f"modalities {list(found)} (arrays: {_describe_file(arrays)}).")

    # --- shapes and lengths
    for m in names:
        arr = arrays[found[m]]
        if arr.ndim != 2:
            raise MMLibError(f"embeddings: array {found[m]!r} in {path} has shape {arr.shape}; an embedding array "
                             "must be 2-D [rows, dim].")
        if arr.shape[1] == 0:
            raise MMLibError(f"embeddings: array {found[m]!r} in {path} has 0 columns.")
        if arr.dtype.kind not in "fiub":
            raise MMLibError(f"embeddings: array {found[m]!r} in {path} is not numeric ({arr.dtype}).")
    lengths = {found[m]: arrays[found[m]].shape[0] for m in names}
    if target_key is not None:
        lengths[target_key] = arrays[target_key].shape[0] if arrays[target_key].ndim else -1
    id_key = "ids" if "ids" in arrays else None
    if id_key:
        lengths[id_key] = arrays[id_key].shape[0] if arrays[id_key].ndim else -1
    if len(set(lengths.values())) != 1:
        detail = ", ".join(f"{k!r} has {v} rows" for k, v in lengths.items())
        raise MMLibError(f"embeddings: arrays in {path} disagree in length: {detail}. Every modality, the target "
                         "and the ids need one row per sample, in the same order.")
    n_total = next(iter(lengths.values()))
    if n_total < 3:
        raise MMLibError(f"embeddings: {path} has {n_total} rows; at least 3 are needed for train/val/test splits.")

    rows = np.arange(n_total)
    if n_rows is not None and int(n_rows) < n_total:
        rng = np.random.default_rng([seed, 11])
        rows = np.sort(rng.choice(n_total, size=int(n_rows), replace=False))
    n = len(rows)

    # --- modalities: all-NaN / all-zero rows are absent; other non-finite values are errors
    mods: dict[str, Modality] = {}
    for m in names:
        x = arrays[found[m]][rows].astype(np.float32)
        finite = np.isfinite(x)
        all_nan = np.isnan(x).all(axis=1)
        partial = ~finite.all(axis=1) & ~all_nan
        if partial.any():
            r = int(rows[np.flatnonzero(partial)[0]])
            raise MMLibError(f"embeddings: array {found[m]!r} in {path} has a NaN/inf value in row {r} "
                             f"({int(partial.sum())} such row(s) in all). A row that is entirely NaN (or zero) counts as "
                             "a missing modality; fix or drop partially broken rows.")
        x[all_nan] = 0.0
        present = ~(x == 0).all(axis=1)
        mods[m] = Modality(m, "embedding", {"x": torch.from_numpy(x)}, torch.from_numpy(present),
                           {"dim": int(x.shape[1]), "source_key": found[m]})

    # --- target
    if target_key is None:
        if task != "none":
            raise MMLibError(f"embeddings: {path} has no 'target' array and no target=... was given. Name the "
                             "target array with target='<name>', or pass task='none' to load the embeddings "
                             f"for retrieval / alignment only. The file holds: {_describe_file(arrays)}.")
        y_t, levels, task_out, has_target = torch.zeros(n), None, "regression", False
    else:
        if task == "none":
            raise MMLibError(f"embeddings: task='none' but a target ({target_key!r}) is in {path}; pass a task.")
        y = arrays[target_key]
        if y.ndim != 1:
            y = y.reshape(len(y), -1)
            if y.shape[1] != 1:
                raise MMLibError(f"embeddings: target {target_key!r} in {path} has shape {arrays[target_key].shape};"
                                 " it must be 1-D (one value per row).")
            y = y[:, 0]
        y = y[rows]
        task_out = _infer_task(y) if task == "auto" else task
        y_t, levels = _encode_target(y, task_out, target_key, where)
        has_target = True

    meta: dict[str, Any] = {"source": where, "has_target": has_target, "rows": rows, "class_levels": levels,
                            "modality_keys": {m: found[m] for m in names}}
    if id_key:
        meta["ids"] = arrays[id_key][rows]
    texts = {k.split("/")[0]: arrays[k][rows].tolist() for k in arrays
             if k.endswith("/text") and arrays[k].dtype.kind == "U" and arrays[k].shape[:1] == (n_total,)}
    if texts:
        meta["texts"] = texts
        meta["raw_texts"] = next(iter(texts.values()))
    used = {*(found[m] for m in names), target_key, id_key, *(f"{k}/text" for k in texts)}
    meta["extra_arrays"] = {k: v for k, v in arrays.items() if k not in used}

    splits = make_splits(n, seed, val_frac, test_frac)
    return MultimodalDataset(path.stem, mods, y_t, task_out, splits, target_name=target_key or "none", meta=meta)


# --------------------------------------------------------------------------- writing
def save_embeddings(path: str | Path, arrays: Mapping[str, Any], target: Any = None, ids: Any = None) -> Path:
    """Write per-modality embeddings (``{"text": [n, d], "image": [n, d2], ...}``, numpy or
    torch; keys may also be ``"<m>/embeddings"``), an optional ``target`` [n] and ``ids`` [n]
    to an ``.npz`` that ``load_embeddings`` reads. Written atomically. Returns the path."""
    path = Path(path)
    if path.suffix != ".npz":
        raise MMLibError(f"save_embeddings: {path} should end in .npz.")
    out: dict[str, np.ndarray] = {}
    for k, v in arrays.items():
        a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        if k in RESERVED:
            raise MMLibError(f"save_embeddings: {k!r} is reserved; pass it as the {k}= argument.")
        out[k] = a
    for k, v in (("target", target), ("ids", ids)):
        if v is not None:
            out[k] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    buf = io.BytesIO()
    np.savez(buf, **out)
    atomic_write_bytes(path, buf.getvalue())
    return path


# --------------------------------------------------------------------------- in memory
def replace_with_embeddings(dataset: MultimodalDataset, embeddings: Mapping[str, Any],
                            keep: Sequence[str] | None = None, info: Mapping[str, Mapping[str, Any]] | None = None
                            ) -> MultimodalDataset:
    """A shallow copy of ``dataset`` where each modality named in ``embeddings`` becomes a
    frozen ``embedding`` modality (same name, same presence mask, absent rows zeroed).

    ``embeddings[m]``: [n, d] for every row of the dataset (numpy or torch). ``keep``: the
    modalities of the result (default: the replaced ones plus every other modality).
    This is how seed 002's two-branch model is fed: e.g. MiniLM text + autoencoder image.
    """
    out = copy.copy(dataset)
    mods = dict(dataset.modalities)
    for m, x in embeddings.items():
        x_t = x.detach().float().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, np.float32))
        if x_t.ndim != 2 or x_t.shape[0] != dataset.n:
            raise MMLibError(f"replace_with_embeddings: embeddings for {m!r} have shape {tuple(x_t.shape)}; "
                             f"expected [{dataset.n}, d] (one row per dataset row).")
        if m in mods:
            present = mods[m].present.cpu().clone()
        else:
            present = ~(x_t == 0).all(dim=1)
        if not torch.isfinite(x_t[present]).all():
            bad = int((~torch.isfinite(x_t).all(dim=1) & present).nonzero()[0])
            raise MMLibError(f"replace_with_embeddings: embeddings for {m!r} have a NaN/inf value in row {bad}.")
        x_t = x_t.clone()
        x_t[~present] = 0.0
        extra = dict((info or {}).get(m, {}))
        dev = dataset.device
        mods[m] = Modality(m, "embedding", {"x": x_t.contiguous().to(dev)}, present.to(dev),
                           {"dim": int(x_t.shape[1]), **extra})
    names = list(keep) if keep is not None else list(mods)
    unknown = [m for m in names if m not in mods]
    if unknown:
        raise MMLibError(f"replace_with_embeddings: unknown modality {unknown}; available: {list(mods)}.")
    out.modalities = {m: mods[m] for m in names}
    return out


__all__ = ["load_embeddings", "save_embeddings", "replace_with_embeddings"]
