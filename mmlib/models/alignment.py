"""Alignment models (seeds 001 and 004) and the image autoencoder.

* Translators (seed 001) map a frozen text embedding into a frozen image space:
  ``MLPTranslator`` (the baseline, trained with a cosine loss) and ``ResidualTranslator``
  (the final model, trained with InfoNCE).
* ``TwoTower`` (seed 004): a text tower and an image tower trained from scratch into one
  shared L2-normalised space.
* ``ConvAutoencoder``: learns an image embedding without labels (the bottleneck).

A pair model offers ``pair_embeddings(a, b, normalize=True) -> (za, zb)``; it is trained
by ``mmlib.training`` with the contrastive objective.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmlib.models.encoders import build_encoder, init_weights
from mmlib.utils import MMLibError

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: temperature never below 0.01


# --------------------------------------------------------------------------- translators (seed 001)
def _pair(za: torch.Tensor, zb: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return (F.normalize(za, dim=-1), F.normalize(zb, dim=-1)) if normalize else (za, zb)


class MLPTranslator(nn.Module):
    """Seed 001's baseline: L2-normalised input → Linear → ReLU → Dropout → Linear.

    Trained with the cosine loss (``1 - cos``); the output is left unnormalised so that
    cosine and euclidean retrieval can be compared (the losses normalise)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 1024, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.normalize(x.float(), dim=-1))

    def pair_embeddings(self, a: torch.Tensor, b: torch.Tensor, normalize: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        return _pair(self(a), b.float(), normalize)


class _ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ResidualTranslator(nn.Module):
    """Seed 001's final model: a linear projection (the identity path) plus residual hidden
    blocks (Linear → LayerNorm → GELU → Dropout → Linear → LayerNorm); trained with InfoNCE.

    The first block reads the (L2-normalised) input and is added to the projection;
    further blocks refine the result (``h = GELU(h) ; h = h + block(h)``).
    ``final_activation=True`` applies GELU to the output as seed 001 did; it is off by
    default because a GELU before L2-normalisation confines outputs to (almost) the
    non-negative orthant, while the target embeddings have both signs."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 1024, n_blocks: int = 1, dropout: float = 0.1,
                 final_activation: bool = False):
        super().__init__()
        if n_blocks < 1:
            raise MMLibError(f"ResidualTranslator: n_blocks must be >= 1, got {n_blocks}.")
        self.proj = nn.Linear(in_dim, out_dim)
        self.blocks = nn.ModuleList([_ResidualBlock(in_dim, hidden, out_dim, dropout)] +
                                    [_ResidualBlock(out_dim, hidden, out_dim, dropout) for _ in range(n_blocks - 1)])
        self.final_activation = bool(final_activation)
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)  # GELU/LayerNorm stack: variance-preserving init
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.float(), dim=-1)
        h = self.proj(x) + self.blocks[0](x)
        for block in self.blocks[1:]:
            h = F.gelu(h)
            h = h + block(h)
        return F.gelu(h) if self.final_activation else h

    def pair_embeddings(self, a: torch.Tensor, b: torch.Tensor, normalize: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        return _pair(self(a), b.float(), normalize)


TRANSLATORS = {"mlp": MLPTranslator, "residual": ResidualTranslator}


def make_translator(arch: str, in_dim: int, out_dim: int, **kw: Any) -> nn.Module:
    """``"mlp"`` (seed 001's baseline) or ``"residual"`` (its final model), with options ``kw``."""
    if arch not in TRANSLATORS:
        raise MMLibError(f"Unknown translator {arch!r}; choose one of {list(TRANSLATORS)}.")
    return TRANSLATORS[arch](in_dim, out_dim, **kw)


# --------------------------------------------------------------------------- two-tower (seed 004)
class TwoTower(nn.Module):
    """Text tower and image tower, each with a projection head into one shared
    ``dim``-wide L2-normalised space, trained from scratch with symmetric InfoNCE.

    ``text_encoder`` / ``image_encoder``: modules with ``out_dim`` that take the
    modality's tensor dict (e.g. ``TextGRU`` on ``{"tokens"}``, ``ImageCNN`` on
    ``{"pixels"}``). The temperature is CLIP's learnable logit scale (or fixed)."""

    def __init__(self, text_encoder: nn.Module, image_encoder: nn.Module, dim: int = 128, temperature: float = 0.07,
                 learn_temperature: bool = True):
        super().__init__()
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.text_proj = nn.Sequential(nn.GELU(), nn.Linear(text_encoder.out_dim, dim))
        self.image_proj = nn.Sequential(nn.GELU(), nn.Linear(image_encoder.out_dim, dim))
        init_weights(self.text_proj)
        init_weights(self.image_proj)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)
        self.dim = int(dim)

    @property
    def temperature(self) -> float:
        return float(1.0 / self.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE))

    def encode_text(self, tensors: Mapping[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        z = self.text_proj(self.text_encoder(dict(tensors))).float()
        return F.normalize(z, dim=-1) if normalize else z

    def encode_image(self, tensors: Mapping[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        z = self.image_proj(self.image_encoder(dict(tensors))).float()
        return F.normalize(z, dim=-1) if normalize else z

    def pair_embeddings(self, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], normalize: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_text(a, normalize), self.encode_image(b, normalize)

    def param_counts(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"text": count(self.text_encoder) + count(self.text_proj),
                "image": count(self.image_encoder) + count(self.image_proj),
                "total": count(self)}


def find_modality(dataset: Any, kind: str, name: str | None) -> str:
    if name is not None:
        if name not in dataset.modalities:
            raise MMLibError(f"dataset {dataset.name!r} has no modality {name!r}; it has {dataset.modality_names}.")
        return name
    for m, mod in dataset.modalities.items():
        if mod.kind == kind:
            return m
    raise MMLibError(f"dataset {dataset.name!r} has no {kind} modality (it has "
                     f"{[f'{m}:{mod.kind}' for m, mod in dataset.modalities.items()]}); text-image alignment "
                     "needs both a token text and an image modality.")


def has_text_and_image(dataset: Any) -> bool:
    """Whether ``dataset`` has a token text modality and an image modality (what a two-tower model needs)."""
    kinds = {m.kind for m in dataset.modalities.values()}
    return {"text", "image"} <= kinds


def build_two_tower(dataset: Any, dim: int = 128, feat_dim: int = 128, text_modality: str | None = None,
                    image_modality: str | None = None, text_arch: str = "bigru", image_arch: str = "cnn_small",
                    temperature: float = 0.07, learn_temperature: bool = True,
                    text_kwargs: dict[str, Any] | None = None, image_kwargs: dict[str, Any] | None = None) -> TwoTower:
    """A ``TwoTower`` for a dataset with a token text and an image modality: a text encoder
    (``text_arch="bigru"``, ``"gru"`` or ``"bow"``) and an ``ImageCNN`` (``cnn_small`` /
    ``cnn_wide``) from ``mmlib.models.encoders``, each ``feat_dim`` wide, projected to ``dim``.

    The text tower reads both directions by default: on ``spacecraft`` what a caption shares
    with its image (colour, stripe) sits early in the sentence, and a forward-only GRU
    trained from scratch with a contrastive loss does not carry it to the end (a 600-row
    run: Recall@10 at the random level with ``"gru"``, 4.3x random with ``"bigru"``)."""
    t = find_modality(dataset, "text", text_modality)
    i = find_modality(dataset, "image", image_modality)
    text_enc = build_encoder(dataset.modalities[t], text_arch, out_dim=feat_dim, **(text_kwargs or {}))
    image_enc = build_encoder(dataset.modalities[i], image_arch, out_dim=feat_dim, **(image_kwargs or {}))
    model = TwoTower(text_enc, image_enc, dim=dim, temperature=temperature, learn_temperature=learn_temperature)
    model.config = {"dim": dim, "feat_dim": feat_dim, "text_modality": t, "image_modality": i, "text_arch": text_arch,
                    "image_arch": image_arch, "temperature": temperature, "learn_temperature": learn_temperature}
    return model




# --------------------------------------------------------------------------- frozen embedding spaces
class ConvAutoencoder(nn.Module):
    """A small convolutional autoencoder for uint8 images: strided convs down to 4×4,
    a linear bottleneck of ``dim`` (the image embedding), and the mirror image back up."""

    def __init__(self, dim: int = 64, size: int = 32, width: int = 32):
        super().__init__()
        n_down = int(round(math.log2(size / 4)))
        if size < 8 or 4 * 2**n_down != size:
            raise MMLibError(f"ConvAutoencoder: image size {size} must be a power of two >= 8.")
        chans = [3] + [min(width * 2**i, 128) for i in range(n_down)]
        enc: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            enc += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)]
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(chans[-1] * 16, dim))
        dec: list[nn.Module] = [nn.Linear(dim, chans[-1] * 16), nn.Unflatten(1, (chans[-1], 4, 4))]
        rev = chans[::-1]
        for i, (c_in, c_out) in enumerate(zip(rev[:-1], rev[1:])):
            last = i == len(rev) - 2
            dec += [nn.LeakyReLU(0.1), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
            if not last:
                dec += [nn.BatchNorm2d(c_out)]
        self.decoder = nn.Sequential(*dec, nn.Sigmoid())
        self.dim, self.size = int(dim), int(size)
        init_weights(self, negative_slope=0.1)

    @staticmethod
    def to_float(pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder((self.to_float(pixels) - 0.5) / 0.25)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(pixels))
