"""``folder``: your own CSV + image folder (the seed-000 layout).

Column roles are parameters: numeric and categorical tabular columns, one text
column, one image-path column (relative to ``image_root``, default: the CSV's
folder) and the target. Images are decoded once with Pillow into a uint8 tensor
and cached on disk (keyed by the file list, sizes, modification times and the
image size), so a second load does no decoding at all.

One validation pass looks at the whole table before anything is trained: every
problem (a missing column, missing target values, NaN/inf or non-numeric numbers,
missing, empty or corrupt image files) is collected and raised as *one* error
listing each column, the count, the first CSV line numbers (the header is line 1)
and what to do. Problems a policy handles (``nan_policy="impute"``,
``missing_images="absent"``, ``bad_images="absent"``, empty texts) are kept in
``ds.meta["validation"]`` (``mmlib.analysis.eda.validation_table`` shows them).
"""
from __future__ import annotations

import csv
import hashlib
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mmlib.config import DATA_CACHE
from mmlib.data.base import Modality, MultimodalDataset, make_splits
from mmlib.data.tabular import TabularEncoder
from mmlib.data.text import Vocab
from mmlib.utils import MMLibError

MISSING_IMAGE_POLICIES = ("raise", "absent")
BAD_IMAGE_POLICIES = ("raise", "absent")
TEXT_ENCODERS = ("tokens", "minilm", "minilm_finetune", "mpnet", "tfidf", "minilm+tfidf", "mpnet+tfidf")
TEXT_ENCODER_ALIASES = {"gru": "tokens", "bow": "tokens", "embedding": "minilm", "all-mpnet-base-v2": "mpnet"}
WORDPIECE_MAX_LEN = 128
MAX_LINES_SHOWN = 5
# status of each image cell
_OK, _NOT_FOUND, _EMPTY_CELL, _CORRUPT = 0, 1, 2, 3
_ID_NAME = re.compile(r"^(id|index|uuid|guid|unnamed:\s*\d+)$|[_\s.-]id$", re.IGNORECASE)
_CAMEL_ID = re.compile(r"[a-z0-9](Id|ID)$")
_MIN_ROWS_UNIQUE_ID = 20  # below this, a column unique per row may be so by chance


def id_like_columns(frame: pd.DataFrame, columns: list[str]) -> dict[str, str]:
    """Columns that look like row identifiers, with the reason: named like an id (``id``,
    ``*_id``, ``userId``, ``Unnamed: 0``, ...) or integer / text values unique per row."""
    out = {}
    for c in columns:
        name = str(c)
        if _ID_NAME.search(name.strip()) or _CAMEL_ID.search(name.strip()):
            out[c] = "named like an id"
            continue
        col = frame[c]
        if len(col) >= _MIN_ROWS_UNIQUE_ID and col.notna().all() and col.nunique() == len(col) and (
                pd.api.types.is_integer_dtype(col) or not pd.api.types.is_numeric_dtype(col)):
            out[c] = "unique per row"
    return out


def load_folder(csv_path: str | Path, target: str, num_columns: list[str] | None = None,
                cat_columns: list[str] | None = None, text_column: str | None = None,
                image_column: str | None = None, image_root: str | Path | None = None, task: str = "auto",
                image_size: int = 32, text_max_len: int = 32, min_freq: int = 1, seed: int = 0,
                val_frac: float = 0.15, test_frac: float = 0.15, nan_policy: str = "raise",
                missing_images: str = "raise", bad_images: str = "raise", text_encoder: str = "tokens",
                cache: bool = True, n_rows: int | None = None) -> MultimodalDataset:
    """Load a CSV with tabular / text / image-path columns into a ``MultimodalDataset``.

    ``num_columns`` / ``cat_columns`` default to every other column by dtype, without
    ID-like columns (see ``id_like_columns``; one warning names them): list the columns
    yourself to keep one. ``task="auto"`` picks regression for a numeric target with
    many values, binary for two values, multiclass for a few integer levels.
    ``n_rows``: a random sample of that many rows (drawn from ``seed``, file order kept).
    ``text_encoder``: ``"tokens"`` (word ids for a GRU / bag of words), ``"minilm"``
    (frozen all-MiniLM-L6-v2 sentence embeddings, cached), ``"mpnet"`` (frozen 768-d
    all-mpnet-base-v2 embeddings, cached; the model is fetched once, ~400 MB:
    ``python -m mmlib.data.mpnet``), ``"minilm_finetune"``, ``"tfidf"`` (a TF-IDF bag of word
    1-2-grams fitted on the training rows, read by an EmbeddingBag) or ``"minilm+tfidf"`` /
    ``"mpnet+tfidf"`` (that bag beside the frozen embedding, in one text modality).
    ``missing_images`` / ``bad_images`` = ``"absent"`` mark rows whose image file is
    missing (or whose cell is empty) / corrupt or unreadable as lacking the image
    instead of stopping. Every problem is reported at once (see the module doc).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise MMLibError(f"folder: CSV file {csv_path} does not exist; pass the path of your table as csv_path.")
    for key, value, allowed in (("missing_images", missing_images, MISSING_IMAGE_POLICIES),
                                ("bad_images", bad_images, BAD_IMAGE_POLICIES)):
        if value not in allowed:
            raise MMLibError(f"folder: {key}={value!r}; use one of {allowed}.")
    text_encoder = TEXT_ENCODER_ALIASES.get(text_encoder, text_encoder)
    if text_encoder not in TEXT_ENCODERS:
        raise MMLibError(f"folder: text_encoder={text_encoder!r}; use one of {TEXT_ENCODERS}.")
    if image_column and (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
                         or image_size < 1):
        raise MMLibError(f"folder: image_size={image_size!r}; use the side of the square images in pixels (e.g. 32).")
    try:
        frame = pd.read_csv(csv_path)
    except Exception as exc:  # pandas raises many types; the user needs one message
        raise MMLibError(f"folder: could not read {csv_path} as CSV ({type(exc).__name__}: {exc}).") from exc
    source = str(csv_path)
    v = _Validation(csv_path, len(frame))

    if n_rows is not None and int(n_rows) < len(frame):
        keep = np.sort(np.random.default_rng(seed).permutation(len(frame))[: int(n_rows)])
        frame = frame.iloc[keep]
    rows = frame.index.to_numpy()  # positions in the file, for CSV line numbers
    frame = frame.reset_index(drop=True)

    roles = [target] + [c for c in (text_column, image_column) if c]
    listed = list(num_columns or []) + list(cat_columns or [])
    absent_cols = [c for c in dict.fromkeys(roles + listed) if c not in frame.columns]
    if absent_cols:
        v.error(", ".join(map(repr, absent_cols)), "column(s) not found", 0, [],
                f"use the CSV's column names: {', '.join(map(str, list(frame.columns)[:40]))}")
    if num_columns is None and cat_columns is None:
        cands = [c for c in frame.columns if c not in set(roles)]
        ids = id_like_columns(frame, cands)
        if ids:
            warnings.warn(f"folder: ID-like column(s) left out of the tabular features: "
                          f"{', '.join(f'{c!r} ({why})' for c, why in ids.items())}. List num_columns / cat_columns "
                          "yourself to use them.", stacklevel=2)
        cands = [c for c in cands if c not in ids]
        num_columns = [c for c in cands if pd.api.types.is_numeric_dtype(frame[c])]
        cat_columns = [c for c in cands if c not in num_columns]
    num_columns = [c for c in (num_columns or []) if c in frame.columns]
    cat_columns = [c for c in (cat_columns or []) if c in frame.columns]

    if target in frame.columns:
        _check_target(frame[target], target, task, rows, v)
    for col in num_columns:
        _check_numeric(frame[col], col, nan_policy, rows, v)
    texts: list[str | None] | None = None
    if text_column and text_column in frame.columns:
        texts = [None if pd.isna(t) or not str(t).strip() else str(t) for t in frame[text_column]]
        empty = np.flatnonzero([t is None for t in texts])
        if len(empty):
            v.handled(repr(text_column), "empty or missing text", empty, rows[empty], "the row lacks the text modality")
    pixels = status = None
    root = Path(image_root) if image_root is not None else csv_path.parent
    if image_column and image_column in frame.columns:
        pixels, status = load_images(frame[image_column].tolist(), root, image_size, cache)
        for code, what, policy, key, fix in (
                (_NOT_FOUND, "image file not found", missing_images, "missing_images",
                 f"fix the paths (relative to image_root={root})"),
                (_EMPTY_CELL, "image-path cell empty", missing_images, "missing_images", "fill the cells"),
                (_CORRUPT, "image file corrupt or unreadable", bad_images, "bad_images",
                 "replace or remove the files")):
            bad = np.flatnonzero(status == code)
            if not len(bad):
                continue
            example = f" (e.g. {frame[image_column].iloc[bad[0]]})" if code != _EMPTY_CELL else ""
            if policy == "raise":
                v.error(repr(image_column), what + example, len(bad), rows[bad], f"{fix}, or pass {key}='absent'")
            else:
                v.handled(repr(image_column), what + example, bad, rows[bad], "the row lacks the image")
    n = len(frame)
    if n < 10:
        v.error("(all)", f"only {n} rows", n, [], "at least 10 rows are needed to make train/val/test splits")
    v.raise_if_any(source)

    splits = make_splits(n, seed, val_frac, test_frac)
    y, task, n_classes = _target(frame[target], target, task, source)
    mods: dict[str, Modality] = {}
    enc = None
    if num_columns or cat_columns:
        enc = TabularEncoder(num_columns, cat_columns, nan_policy=nan_policy).fit(frame, splits["train"], source)
        num, cat = enc.transform(frame, source)
        mods["tabular"] = Modality("tabular", "tabular", {"num": num, "cat": cat}, torch.ones(n, dtype=torch.bool),
                                   enc.info())
    if texts is not None:
        mods["text"] = _text_modality(texts, splits["train"], text_encoder, text_max_len, min_freq, csv_path)
    if pixels is not None:
        mods["image"] = Modality("image", "image", {"pixels": pixels}, torch.from_numpy(status == _OK),
                                 {"size": image_size})
    if not mods:
        raise MMLibError("folder: no modality was given; name tabular columns, a text_column and/or an image_column.")
    meta = {
        "tabular_frame": frame[num_columns + cat_columns],
        "tabular_encoder": enc,
        "num_columns": num_columns,
        "cat_columns": cat_columns,
        "texts": texts,
        "source": source,
        "csv_lines": rows + 2,
        "text_encoder": text_encoder if texts is not None else None,
        "validation": v.handled_rows,
    }
    return MultimodalDataset(csv_path.stem, mods, y, task, splits, n_classes=n_classes, target_name=target, meta=meta)


class _Validation:
    """Collects every problem of one load; ``raise_if_any`` raises them as one error."""

    def __init__(self, csv_path: Path, n_file_rows: int) -> None:
        self.csv_path, self.n_file_rows = csv_path, n_file_rows
        self.errors: list[dict[str, Any]] = []
        self.handled_rows: list[dict[str, Any]] = []
        self._lines: np.ndarray | None = None

    def lines(self, file_rows) -> list[int]:
        """CSV line numbers (header = line 1) of rows at these positions of the file."""
        if self._lines is None:
            self._lines = _record_lines(self.csv_path, self.n_file_rows)
        return [int(self._lines[r]) for r in list(file_rows)[:MAX_LINES_SHOWN]]

    def error(self, column: str, problem: str, count: int, file_rows, fix: str) -> None:
        self.errors.append({"column": column, "problem": problem, "rows": int(count),
                            "first_csv_lines": self.lines(file_rows), "what_to_do": fix})

    def handled(self, column: str, problem: str, bad, file_rows, action: str) -> None:
        self.handled_rows.append({"column": column, "problem": problem, "rows": int(len(bad)),
                                  "first_csv_lines": self.lines(file_rows), "handled_as": action})

    def raise_if_any(self, source: str) -> None:
        if not self.errors:
            return
        items = []
        for e in self.errors:
            where = f" (first CSV lines: {', '.join(map(str, e['first_csv_lines']))})" if e["first_csv_lines"] else ""
            count = f"{e['rows']} row(s): " if e["rows"] else ""
            items.append(f"  - column {e['column']}: {count}{e['problem']}{where}. To do: {e['what_to_do']}.")
        raise MMLibError(f"folder: {source} has {len(self.errors)} problem(s); nothing was loaded. Line numbers are "
                         "CSV lines (the header is line 1).\n" + "\n".join(items))


def _record_lines(csv_path: Path, n: int) -> np.ndarray:
    """The CSV line on which each data record starts (header = line 1; a quoted field may span lines)."""
    starts: list[int] = []
    try:
        with open(csv_path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f)
            next(reader, None)
            prev = reader.line_num
            for rec in reader:
                if rec and any(x.strip() for x in rec):
                    starts.append(prev + 1)
                prev = reader.line_num
    except (OSError, csv.Error):
        starts = []
    return np.asarray(starts) if len(starts) == n else np.arange(n) + 2


def _check_target(col: pd.Series, name: str, task: str, rows: np.ndarray, v: _Validation) -> None:
    miss = np.flatnonzero(col.isna().to_numpy())
    if len(miss) == len(col):
        v.error(repr(name), f"target column {name!r} is empty (all values missing)", len(col), [],
                "choose another target column")
        return
    if len(miss):
        v.error(repr(name), "target value missing", len(miss), rows[miss], "drop those rows or fill the target")
    if task == "regression" or (task == "auto" and pd.api.types.is_numeric_dtype(col)):
        vals = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(col.notna().to_numpy() & ~np.isfinite(vals))
        if len(bad):
            v.error(repr(name), "target not a finite number", len(bad), rows[bad],
                    "fix the values, or use task='multiclass' / 'binary' for labels")


def _check_numeric(col: pd.Series, name: str, nan_policy: str, rows: np.ndarray, v: _Validation) -> None:
    vals = pd.to_numeric(col, errors="coerce")
    text = np.flatnonzero((vals.isna() & col.notna()).to_numpy())
    if len(text):
        v.error(repr(name), f"non-numeric value (e.g. {col.iloc[text[0]]!r})", len(text), rows[text],
                "list the column in cat_columns, or fix the values")
    arr = vals.to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(arr) & ~(vals.isna() & col.notna()).to_numpy())
    if not len(bad):
        return
    if nan_policy == "impute":
        v.handled(repr(name), "NaN/inf number", bad, rows[bad], "imputed with the training median")
    else:
        v.error(repr(name), "NaN/inf number", len(bad), rows[bad],
                "fix the values, or pass nan_policy='impute' (the training median)")


def _target(col: pd.Series, name: str, task: str, source: str):
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
        return torch.from_numpy(y.astype(np.float32)), task, None
    levels = sorted(pd.unique(values).tolist(), key=str)
    if len(levels) < 2:
        raise MMLibError(f"{source}: target {name!r} has a single class ({levels[0]!r}); a classifier needs two or more.")
    lookup = {val: i for i, val in enumerate(levels)}
    y = np.array([lookup[val] for val in values], dtype=np.int64)
    if task == "binary" and len(levels) != 2:
        raise MMLibError(f"{source}: task='binary' but target {name!r} has {len(levels)} classes; use 'multiclass'.")
    return torch.from_numpy(y), task, len(levels)


def _text_modality(texts: list[str | None], train: np.ndarray, encoder: str, max_len: int, min_freq: int,
                   csv_path: Path) -> Modality:
    present = torch.tensor([t is not None for t in texts], dtype=torch.bool)
    if encoder == "tokens":
        vocab = Vocab.build([texts[i] for i in train if texts[i] is not None], min_freq=min_freq)
        return Modality("text", "text", {"tokens": vocab.encode(texts, max_len)}, present,
                        {"vocab_size": len(vocab), "max_len": max_len, "vocab": vocab})
    from mmlib.data import sentence

    if encoder == "minilm_finetune":
        ids = sentence.wordpiece_ids(texts, max_len=WORDPIECE_MAX_LEN)
        return Modality("text", "text", {"tokens": ids}, present,
                        {"vocab_size": int(ids.max()) + 1 if ids.numel() else 2, "max_len": WORDPIECE_MAX_LEN,
                         "tokenizer": sentence.DEFAULT_MODEL, "encoder_arch": "minilm"})
    model = sentence.MPNET_MODEL if encoder.startswith("mpnet") else sentence.DEFAULT_MODEL
    x = sentence.encode_texts(texts, model_name=model, cache_key=f"folder-{csv_path.stem}",
                              progress=False) if encoder != "tfidf" else None
    if encoder.endswith("tfidf"):  # the sparse n-gram bag, beside the frozen embedding when there is one
        from mmlib.data.tfidf import tfidf_text

        tensors, info = tfidf_text(texts, train, x, model)
        return Modality("text", "text", tensors, present, info)
    return Modality("text", "embedding", {"x": torch.from_numpy(x)}, present,
                    {"dim": int(x.shape[1]), "model": model})


def load_images(paths: list[str], root: Path, image_size: int, cache: bool = True) -> tuple[torch.Tensor, np.ndarray]:
    """Decode every image once into uint8 [n, 3, S, S] (converted to RGB, resized when
    needed, each once with a warning), with an on-disk cache. Returns the pixels and a
    status per row: 0 decoded, 1 file not found, 2 empty cell, 3 corrupt or unreadable
    (those rows are zeros; the caller applies its policies)."""
    from PIL import Image

    files = [root / str(p) if not pd.isna(p) and str(p).strip() else None for p in paths]
    key = hashlib.sha256()
    key.update(f"v2|{image_size}|{root.resolve()}".encode())
    for f in files:
        if f is not None and f.is_file():
            st = f.stat()
            key.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
        else:
            key.update(f"{f}|missing".encode())
    cache_file = DATA_CACHE / "images" / f"{key.hexdigest()[:24]}.pt"
    if cache and cache_file.is_file():
        blob = torch.load(cache_file)
        return blob["pixels"], blob["status"].numpy()

    n = len(files)
    pixels = np.zeros((n, 3, image_size, image_size), dtype=np.uint8)
    status = np.zeros(n, dtype=np.int8)
    converted = resized = 0
    for i, f in enumerate(files):
        if f is None or not f.is_file():
            status[i] = _EMPTY_CELL if f is None else _NOT_FOUND
            continue
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
        except (OSError, SyntaxError, ValueError):  # PIL's UnidentifiedImageError is an OSError; so is EACCES
            status[i] = _CORRUPT
    if converted:
        warnings.warn(f"folder: {converted} image(s) were not RGB and were converted to RGB.", stacklevel=2)
    if resized:
        warnings.warn(f"folder: {resized} image(s) were not {image_size}x{image_size} and were resized.", stacklevel=2)
    out = torch.from_numpy(pixels), status
    if cache:
        import io

        from mmlib.utils import atomic_write_bytes

        buf = io.BytesIO()
        torch.save({"pixels": out[0], "status": torch.from_numpy(status)}, buf)
        atomic_write_bytes(cache_file, buf.getvalue())
    return out
