"""``folder``: your own CSV + image folder (the seed-000 layout).

Column roles are parameters: numeric and categorical tabular columns, one text
column, one image-path column (relative to ``image_root``, default: the CSV's
folder) and the target. Images are decoded once with Pillow into a uint8 tensor
and cached on disk (keyed by the file list, sizes, modification times and the
image size), so a second load does no decoding at all.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmlib.config import DATA_CACHE
from mmlib.data.base import Modality, MultimodalDataset, make_splits
from mmlib.data.tabular import TabularEncoder, check_columns
from mmlib.data.text import Vocab
from mmlib.utils import MMLibError

MISSING_IMAGE_POLICIES = ("raise", "absent")


def load_folder(csv_path: str | Path, target: str, num_columns: list[str] | None = None,
                cat_columns: list[str] | None = None, text_column: str | None = None,
                image_column: str | None = None, image_root: str | Path | None = None, task: str = "auto",
                image_size: int = 32, text_max_len: int = 32, min_freq: int = 1, seed: int = 0,
                val_frac: float = 0.15, test_frac: float = 0.15, nan_policy: str = "raise",
                missing_images: str = "raise", cache: bool = True, n_rows: int | None = None) -> MultimodalDataset:
    """Load a CSV with tabular / text / image-path columns into a ``MultimodalDataset``.

    ``num_columns`` / ``cat_columns`` default to every other column by dtype
    (excluding the target, text, image and an ``id`` column). ``task="auto"``
    picks regression for a float target with many values, binary for two
    values, multiclass for a few integer levels. ``missing_images="absent"``
    marks rows whose image file is missing as lacking the image modality
    instead of stopping.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise MMLibError(f"folder: CSV file {csv_path} does not exist; pass the path of your table as csv_path.")
    try:
        frame = pd.read_csv(csv_path)
    except Exception as exc:  # pandas raises many types; the user needs one message
        raise MMLibError(f"folder: could not read {csv_path} as CSV ({type(exc).__name__}: {exc}).") from exc
    if n_rows is not None:
        frame = frame.iloc[: int(n_rows)].reset_index(drop=True)
    source = str(csv_path)
    roles = [target] + [c for c in (text_column, image_column) if c]
    check_columns(frame, roles, source)
    if missing_images not in MISSING_IMAGE_POLICIES:
        raise MMLibError(f"folder: missing_images={missing_images!r}; use one of {MISSING_IMAGE_POLICIES}.")
    if image_column and (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
                         or image_size < 1):
        raise MMLibError(f"folder: image_size={image_size!r}; use the side of the square images in pixels (e.g. 32).")

    reserved = set(roles) | {"id"}
    if num_columns is None and cat_columns is None:
        cands = [c for c in frame.columns if c not in reserved]
        num_columns = [c for c in cands if pd.api.types.is_numeric_dtype(frame[c])]
        cat_columns = [c for c in cands if c not in num_columns]
    num_columns, cat_columns = list(num_columns or []), list(cat_columns or [])
    check_columns(frame, num_columns + cat_columns, source)

    n = len(frame)
    if n < 10:
        raise MMLibError(f"folder: {csv_path} has {n} rows; at least 10 are needed to make train/val/test splits.")
    splits = make_splits(n, seed, val_frac, test_frac)
    y, task, n_classes = _target(frame[target], target, task, source)

    mods: dict[str, Modality] = {}
    if num_columns or cat_columns:
        enc = TabularEncoder(num_columns, cat_columns, nan_policy=nan_policy).fit(frame, splits["train"], source)
        num, cat = enc.transform(frame, source)
        mods["tabular"] = Modality("tabular", "tabular", {"num": num, "cat": cat}, torch.ones(n, dtype=torch.bool),
                                   enc.info())
    texts: list[str | None] | None = None
    if text_column:
        raw = frame[text_column]
        texts = [None if pd.isna(t) or not str(t).strip() else str(t) for t in raw]
        present = torch.tensor([t is not None for t in texts])
        vocab = Vocab.build([texts[i] for i in splits["train"] if texts[i] is not None], min_freq=min_freq)
        tokens = vocab.encode(texts, text_max_len)
        mods["text"] = Modality("text", "text", {"tokens": tokens}, present,
                                {"vocab_size": len(vocab), "max_len": text_max_len, "vocab": vocab})
    if image_column:
        root = Path(image_root) if image_root is not None else csv_path.parent
        pixels, present = load_images(frame[image_column].tolist(), root, image_size, missing_images, cache)
        mods["image"] = Modality("image", "image", {"pixels": pixels}, present, {"size": image_size})
    if not mods:
        raise MMLibError("folder: no modality was given; name tabular columns, a text_column and/or an image_column.")

    meta = {
        "tabular_frame": frame[num_columns + cat_columns],
        "tabular_encoder": enc if (num_columns or cat_columns) else None,
        "num_columns": num_columns,
        "cat_columns": cat_columns,
        "texts": texts,
        "source": source,
    }
    return MultimodalDataset(csv_path.stem, mods, y, task, splits, n_classes=n_classes, target_name=target, meta=meta)


def _target(col: pd.Series, name: str, task: str, source: str):
    if col.isna().all():
        raise MMLibError(f"{source}: target column {name!r} is empty (all values missing).")
    if col.isna().any():
        row = int(np.flatnonzero(col.isna().to_numpy())[0])
        raise MMLibError(f"{source}: target column {name!r} is missing at row {row} ({int(col.isna().sum())} rows); "
                         "drop those rows first.")
    values = col.to_numpy()
    n_unique = len(pd.unique(values))
    if task == "auto":
        if n_unique == 2:
            task = "binary"
        elif pd.api.types.is_integer_dtype(col) and n_unique <= 20:
            task = "multiclass"
        elif pd.api.types.is_numeric_dtype(col):
            task = "regression"
        else:
            task = "multiclass"
    if task == "regression":
        try:
            y = col.astype(float).to_numpy()
        except ValueError as exc:
            raise MMLibError(f"{source}: target {name!r} is not numeric; use task='multiclass' or 'binary'.") from exc
        if not np.isfinite(y).all():
            row = int(np.flatnonzero(~np.isfinite(y))[0])
            raise MMLibError(f"{source}: target {name!r} has an infinite value at row {row}.")
        return torch.from_numpy(y.astype(np.float32)), task, None
    levels = sorted(pd.unique(values).tolist(), key=str)
    if len(levels) < 2:
        raise MMLibError(f"{source}: target {name!r} has a single class ({levels[0]!r}); a classifier needs two or more.")
    lookup = {v: i for i, v in enumerate(levels)}
    y = np.array([lookup[v] for v in values], dtype=np.int64)
    if task == "binary" and len(levels) != 2:
        raise MMLibError(f"{source}: task='binary' but target {name!r} has {len(levels)} classes; use 'multiclass'.")
    return torch.from_numpy(y), task, len(levels)


def load_images(paths: list[str], root: Path, image_size: int, missing: str = "raise", cache: bool = True):
    """Decode every image once into uint8 [n, 3, S, S] (converted to RGB, resized when
    needed, each once with a warning), with an on-disk cache."""
    from PIL import Image, UnidentifiedImageError

    files = [root / str(p) if not pd.isna(p) else None for p in paths]
    key = hashlib.sha256()
    key.update(f"{image_size}|{root.resolve()}".encode())
    for f in files:
        if f is not None and f.is_file():
            st = f.stat()
            key.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
        else:
            key.update(f"{f}|missing".encode())
    cache_file = DATA_CACHE / "images" / f"{key.hexdigest()[:24]}.pt"
    if cache and cache_file.is_file():
        blob = torch.load(cache_file)
        return blob["pixels"], blob["present"]

    n = len(files)
    pixels = np.zeros((n, 3, image_size, image_size), dtype=np.uint8)
    present = np.ones(n, dtype=bool)
    converted = resized = 0
    for i, f in enumerate(files):
        if f is None or not f.is_file():
            if missing == "absent":
                present[i] = False
                continue
            what = f"not found: {f}" if f is not None else "not given (the image-path cell is empty)"
            raise MMLibError(f"folder: image file for row {i} {what}. Fix the path (relative to image_root="
                             f"{root}) or pass missing_images='absent' to treat such rows as lacking an image.")
        try:
            with Image.open(f) as im:
                im.load()
                if im.mode != "RGB":
                    converted += 1
                    im = im.convert("RGB")
                if im.size != (image_size, image_size):
                    resized += 1
                    im = im.resize((image_size, image_size), Image.BILINEAR)
                pixels[i] = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise MMLibError(f"folder: image file {f} (row {i}) is corrupt or truncated ({exc}); "
                             "replace or remove it.") from exc
    if converted:
        warnings.warn(f"folder: {converted} image(s) were not RGB and were converted to RGB.", stacklevel=2)
    if resized:
        warnings.warn(f"folder: {resized} image(s) were not {image_size}x{image_size} and were resized.", stacklevel=2)
    out = torch.from_numpy(pixels), torch.from_numpy(present)
    if cache:
        from mmlib.utils import atomic_write_bytes
        import io

        buf = io.BytesIO()
        torch.save({"pixels": out[0], "present": out[1]}, buf)
        atomic_write_bytes(cache_file, buf.getvalue())
    return out
