"""Frozen embedding spaces for every dataset row (absent rows are zeros), cached on disk.

* text: all-MiniLM-L6-v2 sentence embeddings (``text_embeddings``), or a TF-IDF bag of
  words over the dataset's own vocabulary when MiniLM cannot be loaded;
* image: the bottleneck of a ``ConvAutoencoder`` trained without labels on the training
  images (``image_embeddings_autoencoder``). Seed 001 aligned *pretrained* CLIP image
  embeddings; a supervised encoder would leak the target into the "frozen" space, so
  the space is learnt by reconstruction.

The methods used are returned (``FrozenEmbeddings.method``), so reports can say which.
"""
from __future__ import annotations

import hashlib
import io
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmlib.models.alignment import ConvAutoencoder, find_modality
from mmlib.training.config import TrainConfig
from mmlib.training.objectives import ReconstructionObjective
from mmlib.training.trainer import Trainer
from mmlib.utils import MMLibError, resolve_device, set_seeds


@dataclass
class FrozenEmbeddings:
    """Frozen embeddings of one modality for every dataset row (absent rows are zeros)."""

    x: np.ndarray  # float32 [n, dim]
    method: str
    train_time_s: float = 0.0
    history: pd.DataFrame | None = None
    model: nn.Module | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # texts -> embeddings in this same space, for new queries (text spaces only)
    encoder: Callable[[list[str]], np.ndarray] | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])


def _fingerprint(*parts: Any) -> str:
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, torch.Tensor):
            p = p.detach().cpu().contiguous().numpy()
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode() + str(p.shape).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:16]


def image_embeddings_autoencoder(dataset: Any, dim: int = 64, epochs: int = 15, seed: int = 0,
                                 modality: str | None = None, batch_size: int = 128, lr: float = 2e-3,
                                 width: int = 16, device: str | torch.device = "auto",
                                 max_batches_per_epoch: int | None = None, cache: bool = True,
                                 progress: bool = False) -> FrozenEmbeddings:
    """A frozen image embedding space learnt without labels (no target is read).

    A ``ConvAutoencoder`` is trained to reconstruct the *training-split* images (MSE on
    pixels in [0, 1]); its ``dim``-wide bottleneck, computed for every row, is the
    embedding. Validation images give the reconstruction error per epoch; the weights
    of the best epoch are kept. Results are cached on disk (``mmlib.config.DATA_CACHE``)
    keyed by the pixels, the split and every argument, so a rerun with the same seed
    reads the same numbers instead of retraining.

    Why an autoencoder: seed 001 aligned *pretrained* CLIP image embeddings; offline we
    have no pretrained image model, and a supervised encoder would leak the target
    into the "frozen" space. A reconstruction objective keeps whatever is visually
    salient (hull colour, size, stripe, engines) without seeing any label.
    """
    from mmlib.config import DATA_CACHE

    m = find_modality(dataset, "image", modality)
    mod = dataset.modalities[m]
    pixels = mod.tensors["pixels"]
    present = mod.present.cpu().numpy()
    train_rows = np.asarray(dataset.splits["train"])
    train_rows = train_rows[present[train_rows]]
    val_rows = np.asarray(dataset.splits["val"])
    val_rows = val_rows[present[val_rows]]
    if len(train_rows) < 2:
        raise MMLibError(f"image_embeddings_autoencoder: only {len(train_rows)} training rows have an image.")
    dev = resolve_device(device)
    key = _fingerprint(pixels, present, train_rows, dim, epochs, seed, batch_size, lr, width, max_batches_per_epoch,
                       dev.type, torch.__version__)
    path = DATA_CACHE / "embeddings" / f"autoencoder-{dataset.name}-{key}.npz"
    if cache and path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                hist = pd.DataFrame({c: z[f"history/{c}"] for c in ("epoch", "train_mse", "val_mse")})
                return FrozenEmbeddings(z["x"], "autoencoder", float(z["train_time_s"]), hist, None,
                                        {"cached": True, "val_mse": float(z["val_mse"]), "cache_path": str(path)})
        except (OSError, KeyError, ValueError):
            pass  # a broken cache file is simply recomputed

    set_seeds(seed)
    model = ConvAutoencoder(dim=dim, size=int(pixels.shape[-1]), width=width)
    train_px = pixels[torch.as_tensor(train_rows)]
    val_px = pixels[torch.as_tensor(val_rows)] if len(val_rows) else train_px[:256]
    config = TrainConfig(epochs=int(epochs), batch_size=int(batch_size), lr=lr, weight_decay=1e-5, scheduler="onecycle",
                         grad_clip=None, patience=None, device=str(dev), seed=int(seed), progress=progress,
                         max_batches_per_epoch=max_batches_per_epoch)
    fit = Trainer(model, config=config, objective=ReconstructionObjective(train_px, val_px)).fit()
    train_time, best = fit.train_time_s, fit.best_val
    model.eval()
    x = np.zeros((len(present), dim), dtype=np.float32)
    rows = np.flatnonzero(present)
    with torch.no_grad():
        for s in range(0, len(rows), 1024):
            r = torch.as_tensor(rows[s:s + 1024])
            x[rows[s:s + 1024]] = model.encode(pixels[r].to(dev)).float().cpu().numpy()
    history = fit.history.rename(columns={"train_loss": "train_mse"})[["epoch", "train_mse", "val_mse"]]
    if cache:
        _save_npz(path, x=x, train_time_s=np.array(train_time), val_mse=np.array(best),
                  **{f"history/{c}": history[c].to_numpy() for c in history.columns})
    return FrozenEmbeddings(x, "autoencoder", train_time, history, model.cpu(), {"cached": False, "val_mse": best})


AE_DIM = 64  # width of the autoencoder image embedding used by the notebooks
AE_MAX_EPOCHS = 15  # the reconstruction error flattens well before this on spacecraft


def autoencoder_for_profile(dataset: Any, profile: Mapping[str, Any], device: str | torch.device = "auto",
                            progress: bool = False) -> FrozenEmbeddings:
    """``image_embeddings_autoencoder`` sized by a run profile (``AE_DIM`` wide, at most
    ``AE_MAX_EPOCHS`` epochs, the profile's first seed and batch cap). Notebooks 60 and 70
    both call this, so they share one cached image space per dataset and profile."""
    return image_embeddings_autoencoder(dataset, dim=AE_DIM, epochs=min(int(profile["epochs"]), AE_MAX_EPOCHS),
                                        seed=int(profile["seeds"][0]), device=device,
                                        max_batches_per_epoch=profile.get("max_batches_per_epoch"), progress=progress)


def image_embeddings_pretrained(dataset: Any, modality: str | None = None, size: int | None = None,
                                device: str | torch.device = "auto", progress: bool = False) -> FrozenEmbeddings:
    """Frozen EfficientNet-Lite0 (ImageNet) pooled features, 1280-d, for every row (absent rows
    zero): ``mmlib.models.pretrained.image_embeddings`` on the dataset's uint8 pixels resized to
    ``size`` (default ``DEFAULT_SIZE``), cached on disk keyed by the dataset name, the pixels
    and presence mask, the model and the size. No label is read. ``extra`` holds
    ``embed_time_s`` (the computation, also when read from the cache), ``cached``, ``size``,
    ``backbone_params``. Raises ``MMLibError`` when the weights cannot be fetched."""
    from mmlib.models import pretrained as PT

    m = find_modality(dataset, "image", modality)
    mod = dataset.modalities[m]
    x, info = PT.image_embeddings(mod.tensors["pixels"], mod.present, size=int(size or PT.DEFAULT_SIZE),
                                  cache_key=f"{dataset.name}-{m}", device=str(device), progress=progress)
    return FrozenEmbeddings(x, PT.MODEL_NAME, float(info["embed_time_s"]), extra=info)


IMAGE_ENCODERS = ("efficientnet", "efficientnet_finetune")  # values of a run profile's ``image_encoder``


def pretrained_image_inputs(dataset: Any, profile: Mapping[str, Any], modality: str | None = None,
                            device: str | torch.device = "auto", progress: bool = False
                            ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """What ``run_fusion`` needs for the pretrained image variant the profile names
    (``profile["image_encoder"]``): ``(dataset, model_kwargs, extra)``.

    ``efficientnet`` (frozen): the image modality becomes its cached EfficientNet-Lite0
    embeddings (kind ``embedding``, same name and mask), read by an ``EmbeddingMLP`` head.
    ``efficientnet_finetune``: the dataset unchanged and ``encoder_archs={m: "efficientnet"}``:
    the backbone in the model, trained at 1/100 of the learning rate (a GPU job).
    ``extra`` (for the records): the encoder, whether it is frozen, the input size, the
    backbone's parameter count and, when frozen, the embedding time (``embed_time_s``)."""
    from mmlib.data.embeddings import replace_with_embeddings
    from mmlib.models import pretrained as PT

    enc = profile.get("image_encoder") or IMAGE_ENCODERS[0]
    if enc not in IMAGE_ENCODERS:
        raise MMLibError(f"image_encoder={enc!r}; choose one of {IMAGE_ENCODERS}.")
    m = find_modality(dataset, "image", modality)
    if enc == "efficientnet_finetune":
        PT.fetch_weights()  # fail here, with the download's message, rather than inside build_model
        extra = {"image_encoder": enc, "frozen": False, "image_size": PT.DEFAULT_SIZE,
                 "backbone_params": PT.n_backbone_params()}
        return dataset, {"encoder_archs": {m: "efficientnet"}}, extra
    emb = image_embeddings_pretrained(dataset, modality=m, device=device, progress=progress)
    extra = {"image_encoder": enc, "frozen": True, "image_size": emb.extra["size"],
             "backbone_params": emb.extra["backbone_params"], "embed_time_s": round(emb.extra["embed_time_s"], 2),
             "embeddings_cached": emb.extra["cached"]}
    return replace_with_embeddings(dataset, {m: emb.x}), {}, extra


def pretrained_cost_table(records: Any) -> pd.DataFrame:
    """Cost of the pretrained image variants in ``records`` (those whose ``extra`` names an
    ``image_encoder``): trained parameters, frozen backbone parameters, input size, the one-off
    embedding time and the training time, averaged over seeds, per model."""
    rows = [{"model": r["model"], "trained params": r["n_params"], "backbone params": r["extra"]["backbone_params"],
             "frozen": r["extra"]["frozen"], "input px": r["extra"]["image_size"],
             "embedding time (s, once)": r["extra"].get("embed_time_s", float("nan")),
             "training time (s)": r["train_time_s"]}
            for r in records if "image_encoder" in (r.get("extra") or {})]
    if not rows:
        raise MMLibError("pretrained_cost_table: no record of a pretrained image variant.")
    g = pd.DataFrame(rows).groupby("model", sort=False)
    out = g[[c for c in rows[0] if c not in ("model", "frozen")]].mean().round(2)
    for c in ("trained params", "backbone params", "input px"):
        out[c] = out[c].round().astype(int)
    out.insert(2, "frozen", g["frozen"].first())
    return out


def _save_npz(path: Any, **arrays: np.ndarray) -> None:
    from mmlib.utils import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:  # a read-only cache only costs recomputation
        warnings.warn(f"could not write the embedding cache {path}: {exc}", stacklevel=2)


def _dataset_texts(dataset: Any, modality: str) -> list[str | None]:
    texts = dataset.meta.get("texts")
    if isinstance(texts, Mapping):
        texts = texts.get(modality)
    if texts is None:
        texts = dataset.meta.get("raw_texts")
    if texts is None or len(texts) != dataset.n:
        raise MMLibError(f"dataset {dataset.name!r} keeps no raw texts for {modality!r} in meta['texts'] / "
                         "meta['raw_texts']; frozen sentence embeddings need the original strings.")
    present = dataset.modalities[modality].present.cpu().numpy() if modality in dataset.modalities else None
    return [t if (present is None or present[i]) else None for i, t in enumerate(texts)]


def bag_of_words_embeddings(dataset: Any, modality: str = "text") -> FrozenEmbeddings:
    """TF-IDF over the dataset's own vocabulary (fitted on the training split), L2-normalised:
    the fallback frozen text space when MiniLM is unavailable."""
    tokens = dataset.modalities[modality].tensors["tokens"].cpu()
    vocab_size = int(dataset.modalities[modality].info.get("vocab_size") or int(tokens.max()) + 1)
    counts = torch.zeros(len(tokens), vocab_size)
    counts.scatter_add_(1, tokens.long().clamp(0, vocab_size - 1), torch.ones_like(tokens, dtype=torch.float32))
    counts[:, 0] = 0.0  # padding
    train = torch.as_tensor(np.asarray(dataset.splits["train"]))
    df = (counts[train] > 0).float().sum(0)
    idf = torch.log((1 + len(train)) / (1 + df)) + 1.0
    x = F.normalize(torch.log1p(counts) * idf, dim=1)
    x[~dataset.modalities[modality].present.cpu()] = 0.0
    info = dataset.modalities[modality].info
    vocab, max_len = info.get("vocab"), int(info.get("max_len") or tokens.shape[1])

    def encode(texts: list[str]) -> np.ndarray:
        if vocab is None:
            raise MMLibError(f"modality {modality!r} keeps no vocabulary; new texts cannot be encoded.")
        tok = vocab.encode(list(texts), max_len).long().clamp(0, vocab_size - 1)
        c = torch.zeros(len(tok), vocab_size).scatter_add_(1, tok, torch.ones_like(tok, dtype=torch.float32))
        c[:, 0] = 0.0
        return F.normalize(torch.log1p(c) * idf, dim=1).numpy()

    return FrozenEmbeddings(x.numpy().astype(np.float32), "tfidf-bow", 0.0, extra={"vocab_size": vocab_size},
                            encoder=encode)


_QUERY_CACHE: list[str] = []


def _query_cache_dir() -> str:
    if not _QUERY_CACHE:
        import atexit
        import shutil
        import tempfile

        _QUERY_CACHE.append(tempfile.mkdtemp(prefix="mmlib-queries-"))
        atexit.register(shutil.rmtree, _QUERY_CACHE[0], ignore_errors=True)
    return _QUERY_CACHE[0]


def text_embeddings(dataset: Any, method: str = "auto", modality: str = "text", progress: bool = False
                    ) -> FrozenEmbeddings:
    """Frozen text embeddings for every row (absent rows are zeros).

    method: ``minilm`` (384-d all-MiniLM-L6-v2 via ``mmlib.data.sentence.encode_texts``,
    cached on disk), ``bow`` (TF-IDF bag of words over the dataset's vocabulary), or
    ``auto``: MiniLM when it can be loaded, else the bag of words with a warning. The
    returned ``method`` says which one was used."""
    if method not in ("auto", "minilm", "bow"):
        raise MMLibError(f"text_embeddings: unknown method {method!r}; use 'auto', 'minilm' or 'bow'.")
    if method == "bow":
        return bag_of_words_embeddings(dataset, modality)
    try:
        from mmlib.data.sentence import encode_texts
    except ImportError as exc:
        if method == "minilm":
            raise MMLibError(f"text_embeddings: MiniLM is not available ({exc}).") from exc
        warnings.warn(f"MiniLM is not available ({exc}); using a TF-IDF bag of words instead.", stacklevel=2)
        return bag_of_words_embeddings(dataset, modality)
    texts = _dataset_texts(dataset, modality)
    rows = [i for i, t in enumerate(texts) if t]
    t0 = time.perf_counter()
    try:
        emb = encode_texts([texts[i] for i in rows], cache_key=f"{dataset.name}-{modality}", progress=progress)
    except Exception as exc:  # a missing model file, a broken install: fall back only when asked to
        if method == "minilm":
            raise
        warnings.warn(f"MiniLM could not encode the texts ({exc}); using a TF-IDF bag of words instead.", stacklevel=2)
        return bag_of_words_embeddings(dataset, modality)
    emb = emb.detach().cpu().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
    x = np.zeros((dataset.n, emb.shape[1]), dtype=np.float32)
    x[rows] = emb.astype(np.float32)

    def encode(new_texts: list[str]) -> np.ndarray:
        # ad-hoc queries: cached in a per-process temporary folder, not in the shared data cache
        return np.asarray(encode_texts(list(new_texts), cache_key="queries", cache_dir=_query_cache_dir(),
                                       progress=False), dtype=np.float32)

    return FrozenEmbeddings(x, "minilm", time.perf_counter() - t0, encoder=encode)
