"""Fusion modules: combine per-modality features into a prediction.

Every fusion is built as ``Fusion(dims, out_dim, hidden=64, **kw)`` where ``dims``
maps modality name → feature width, and is called as
``fusion(feats, present) -> dict`` with ``feats[m]`` [b, d_m] and ``present[m]``
bool [b]. The output holds ``"pred"`` [b, out_dim] and, where it makes sense,
``"weights"`` [b, M] (per-row modality weights in the order of ``dims``, summing
to 1 over the present modalities) and ``"unimodal"`` {m: [b, out_dim]}.

Missing modalities: a fusion never reads the features of an absent (row, modality)
pair; it replaces them with a learned "absent" embedding of that modality
(``Fusion.absent``, zeros at initialisation; ``torch.where``, so even a NaN there
cannot leak), and fusions that weigh modalities renormalise the weights over the
present ones. A row with no modality present gets a finite, input-independent
prediction. Trained with modality dropout (``MultimodalModel``), the absent
embeddings are what a model uses when a modality is missing at inference.

``"contributions"`` {m: [b, out_dim]} (early fusion with a linear head, late fusion)
split the prediction into per-modality terms that sum to it: what OGM-GE (Peng et
al. 2022) scores each modality by.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from mmlib.models.encoders import _mlp, init_weights
from mmlib.utils import MMLibError


# ---------------------------------------------------------------------- helpers
def _projector(in_dim: int, hidden: int) -> nn.Sequential:
    # LayerNorm puts every modality on the same scale, so learned weights compare like with like
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.ReLU())


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to ``mask``; rows with nothing present get all zeros."""
    logits = logits.float().masked_fill(~mask, float("-inf"))
    top = logits.max(dim=-1, keepdim=True).values
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(logits - top) * mask
    return e / e.sum(dim=-1, keepdim=True).clamp(min=1e-12)


class Fusion(nn.Module):
    """Base class: keeps the modality order and turns inputs into masked tensors."""

    def __init__(self, dims: dict[str, int], out_dim: int, hidden: int = 64):
        super().__init__()
        if not dims:
            raise MMLibError(f"{type(self).__name__}: needs at least one modality (dims is empty).")
        self.names = list(dims)
        self.dims = {m: int(d) for m, d in dims.items()}
        self.out_dim = int(out_dim)
        self.hidden = int(hidden)
        self.absent = nn.ParameterDict({m: nn.Parameter(torch.zeros(int(d))) for m, d in dims.items()})

    def _inputs(self, feats: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Features with absent rows replaced by the learned absent embedding (in ``self.names``
        order) and the mask [b, M]."""
        missing = [m for m in self.names if m not in feats or m not in present]
        if missing:
            raise MMLibError(f"{type(self).__name__}: no features/presence for modality {missing}; "
                             f"it was built for {self.names}.")
        mask = torch.stack([present[m].to(torch.bool) for m in self.names], dim=1)
        xs = [torch.where(mask[:, i:i + 1], feats[m], self.absent[m].to(feats[m].dtype).expand_as(feats[m]))
              for i, m in enumerate(self.names)]
        return xs, mask


# ------------------------------------------------------------------------ early
class EarlyFusion(Fusion):
    """Concatenate the features and the presence indicators → MLP head.

    ``head_layers=0`` makes the head one linear layer: the concatenation fusion of
    Peng et al. (2022), whose prediction splits into per-modality ``"contributions"``
    (each modality's weight block times its features and presence indicator, plus an
    equal share of the bias) that OGM-GE scores."""

    def __init__(self, dims: dict[str, int], out_dim: int, hidden: int = 64, dropout: float = 0.0,
                 head_layers: int = 2):
        super().__init__(dims, out_dim, hidden)
        if head_layers not in (0, 1, 2):
            raise MMLibError(f"EarlyFusion: head_layers={head_layers}; use 0 (linear), 1 or 2 hidden layers.")
        width = sum(self.dims.values()) + len(dims)
        layers: list[nn.Module] = []
        for _ in range(head_layers):
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        self.head = nn.Sequential(*layers, nn.Linear(width, out_dim))
        self.head_layers = int(head_layers)
        init_weights(self)

    def forward(self, feats, present):
        xs, mask = self._inputs(feats, present)
        z = torch.cat(xs + [mask.to(xs[0].dtype)], dim=1)
        out = {"pred": self.head(z)}
        if self.head_layers == 0:
            out["contributions"] = self._contributions(xs, mask)
        return out

    def _contributions(self, xs: list[torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        lin = self.head[-1]
        n = len(self.names)
        out, start = {}, 0
        for i, (m, x) in enumerate(zip(self.names, xs)):
            w = lin.weight[:, start:start + x.shape[1]]
            ind = lin.weight[:, sum(self.dims.values()) + i]
            out[m] = x @ w.T.to(x.dtype) + mask[:, i:i + 1].to(x.dtype) * ind.to(x.dtype) + lin.bias.to(x.dtype) / n
            start += x.shape[1]
        return out


# ------------------------------------------------------------------------- late
class LateFusion(Fusion):
    """One head per modality; the prediction is the mean of the present modalities' predictions.

    By construction it is additive across modalities, so it cannot model a cross-modal
    interaction (e.g. y = a·b with a from one modality and b from another)."""

    def __init__(self, dims: dict[str, int], out_dim: int, hidden: int = 64, dropout: float = 0.0):
        super().__init__(dims, out_dim, hidden)
        self.heads = nn.ModuleDict({m: _mlp(d, hidden, out_dim, dropout) for m, d in self.dims.items()})
        init_weights(self)

    def forward(self, feats, present):
        xs, mask = self._inputs(feats, present)
        uni = {m: self.heads[m](x) for m, x in zip(self.names, xs)}
        w = mask.float() / mask.sum(dim=1, keepdim=True).clamp(min=1)
        stacked = torch.stack([uni[m] for m in self.names], dim=1)  # [b, M, out]
        parts = stacked * w.unsqueeze(-1).to(stacked.dtype)
        return {"pred": parts.sum(dim=1), "weights": w, "unimodal": uni,
                "contributions": {m: parts[:, i] for i, m in enumerate(self.names)}}


# ------------------------------------------------------------- learned weights
class LearnedWeightFusion(Fusion):
    """Per-modality projection, one learned scalar weight per modality (softmaxed over
    the present ones), weighted sum → head. The weights are global, not per row."""

    def __init__(self, dims: dict[str, int], out_dim: int, hidden: int = 64, dropout: float = 0.0):
        super().__init__(dims, out_dim, hidden)
        self.proj = nn.ModuleDict({m: _projector(d, hidden) for m, d in self.dims.items()})
        self.logits = nn.Parameter(torch.zeros(len(dims)))  # equal weights at the start
        self.head = _mlp(hidden, hidden, out_dim, dropout)
        init_weights(self)

    def forward(self, feats, present):
        xs, mask = self._inputs(feats, present)
        w = masked_softmax(self.logits.expand(mask.shape[0], -1), mask)
        h = torch.stack([self.proj[m](x) for m, x in zip(self.names, xs)], dim=1)  # [b, M, hidden]
        fused = (h * w.unsqueeze(-1).to(h.dtype)).sum(dim=1)
        return {"pred": self.head(fused), "weights": w}


# ------------------------------------------------------------------------ gated
class GatedFusion(Fusion):
    """Per-row gates computed from the concatenated features (+ presence) weigh the
    projected modalities. ``gate="softmax"``: gates sum to 1 over present modalities;
    ``gate="sigmoid"``: independent gates in (0, 1), averaged over present modalities."""

    GATES = ("softmax", "sigmoid")

    def __init__(self, dims: dict[str, int], out_dim: int, hidden: int = 64, dropout: float = 0.0,
                 gate: str = "softmax"):
        super().__init__(dims, out_dim, hidden)
        if gate not in self.GATES:
            raise MMLibError(f"GatedFusion: unknown gate {gate!r}; expected one of {self.GATES}.")
        self.gate = gate
        self.proj = nn.ModuleDict({m: _projector(d, hidden) for m, d in self.dims.items()})
        self.gate_net = _mlp(sum(self.dims.values()) + len(dims), hidden, len(dims), 0.0)
        self.head = _mlp(hidden, hidden, out_dim, dropout)
        init_weights(self)

    def forward(self, feats, present):
        xs, mask = self._inputs(feats, present)
        logits = self.gate_net(torch.cat(xs + [mask.to(xs[0].dtype)], dim=1))
        h = torch.stack([self.proj[m](x) for m, x in zip(self.names, xs)], dim=1)  # [b, M, hidden]
        if self.gate == "softmax":
            g = masked_softmax(logits, mask)
            fused = (h * g.unsqueeze(-1).to(h.dtype)).sum(dim=1)
            weights = g
        else:
            g = torch.sigmoid(logits.float()) * mask
            n = mask.sum(dim=1, keepdim=True).clamp(min=1)
            fused = (h * g.unsqueeze(-1).to(h.dtype)).sum(dim=1) / n.to(h.dtype)
            weights = g / g.sum(dim=1, keepdim=True).clamp(min=1e-12)
        return {"pred": self.head(fused), "weights": weights, "gates": g}


# -------------------------------------------------------------------- attention
class _AttentionBlock(nn.Module):
    """A pre-norm Transformer encoder layer (the same maths as ``nn.TransformerEncoderLayer``
    with ``norm_first=True``) that also returns its head-averaged attention weights,
    which the stock layer does not expose."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.norm1(x)
        a, w = self.attn(q, q, q, key_padding_mask=pad, need_weights=True, average_attn_weights=True)
        x = x + self.drop(a)
        x = x + self.drop(self.ff(self.norm2(x)))
        return x, w  # w: [b, M_query, M_key]


class AttentionFusion(Fusion):
    """Each modality becomes a token (projection + learned modality-type embedding);
    Transformer layers attend over the present tokens (key padding mask); masked mean
    pool → head. ``"weights"``: attention each modality receives, averaged over layers,
    heads and present queries."""

    def __init__(self, dims: dict[str, int], out_dim: int, hidden: int = 64, dropout: float = 0.0,
                 heads: int = 4, layers: int = 1):
        super().__init__(dims, out_dim, hidden)
        if hidden % heads:
            raise MMLibError(f"AttentionFusion: hidden={hidden} must be divisible by heads={heads}.")
        if layers < 1:
            raise MMLibError(f"AttentionFusion: layers={layers}; use 1 or more.")
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in self.dims.items()})
        self.type_emb = nn.Parameter(torch.randn(len(dims), hidden) * 0.02)
        self.blocks = nn.ModuleList(_AttentionBlock(hidden, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.head = _mlp(hidden, hidden, out_dim, dropout)
        init_weights(self.proj)
        init_weights(self.head)

    def forward(self, feats, present):
        xs, mask = self._inputs(feats, present)
        tokens = torch.stack([self.proj[m](x) for m, x in zip(self.names, xs)], dim=1) + self.type_emb
        # a row with nothing present would have every key masked (NaN softmax): let it attend to its
        # type embeddings only (its features are zeros) and pool nothing from them below
        empty = ~mask.any(dim=1, keepdim=True)
        pad = ~(mask | empty)
        att = torch.zeros(mask.shape, device=mask.device)
        for block in self.blocks:
            tokens, w = block(tokens, pad)
            att = att + w.float().masked_fill(pad.unsqueeze(-1), 0.0).sum(dim=1)
        n_q = mask.sum(dim=1, keepdim=True).clamp(min=1).float()
        weights = att / (n_q * len(self.blocks)) * mask
        tokens = self.norm(tokens)
        m = mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        return {"pred": self.head(pooled), "weights": weights}


# ------------------------------------------------------------ low-rank tensor
class LowRankTensorFusion(Fusion):
    """Low-rank multimodal fusion (LMF, Liu et al. 2018).

    Each modality vector gets a 1 appended, z_m = [1, x_m]; rank-r factors W_m map it to
    r vectors of width ``hidden``; the fused vector is Σ_r λ_r ∏_m (W_m^(r) z_m) + b,
    i.e. the full outer-product tensor fusion at a fraction of its size. An absent
    modality has z_m = [1, 0, …, 0], so only its bias path contributes."""

    def __init__(self, dims: dict[str, int], out_dim: int, hidden: int = 64, dropout: float = 0.0, rank: int = 4):
        super().__init__(dims, out_dim, hidden)
        if rank < 1:
            raise MMLibError(f"LowRankTensorFusion: rank={rank}; use 1 or more.")
        self.rank = rank
        self.factors = nn.ParameterDict({m: nn.Parameter(torch.empty(rank, d + 1, hidden))
                                         for m, d in self.dims.items()})
        self.rank_weights = nn.Parameter(torch.empty(1, rank))
        self.bias = nn.Parameter(torch.zeros(hidden))
        for p in self.factors.values():
            nn.init.xavier_normal_(p)
        nn.init.xavier_normal_(self.rank_weights)
        self.norm = nn.LayerNorm(hidden)  # the product of M factors varies a lot in scale
        self.head = _mlp(hidden, hidden, out_dim, dropout)
        init_weights(self.head)

    def forward(self, feats, present):
        xs, mask = self._inputs(feats, present)
        prod = None
        for m, x in zip(self.names, xs):
            z = torch.cat([torch.ones_like(x[:, :1]), x], dim=1)  # [b, d+1]
            f = torch.einsum("bd,rdh->rbh", z, self.factors[m].to(z.dtype))
            prod = f if prod is None else prod * f
        fused = torch.einsum("r,rbh->bh", self.rank_weights[0].to(prod.dtype), prod) + self.bias.to(prod.dtype)
        return {"pred": self.head(self.norm(fused))}


# --------------------------------------------------------------------- bilinear
class BilinearFusion(Fusion):
    """Project each modality to ``proj_dim``; sum of pairwise bilinear interactions
    (one ``nn.Bilinear`` per pair) + linear terms + presence indicators → head.
    An absent modality's projection is zero, so its interactions reduce to biases."""

    def __init__(self, dims: dict[str, int], out_dim: int, hidden: int = 64, dropout: float = 0.0,
                 proj_dim: int = 16):
        super().__init__(dims, out_dim, hidden)
        self.proj = nn.ModuleDict({m: _projector(d, proj_dim) for m, d in self.dims.items()})
        self.pairs = [(i, j) for i in range(len(dims)) for j in range(i + 1, len(dims))]
        self.bilinear = nn.ModuleList(nn.Bilinear(proj_dim, proj_dim, hidden) for _ in self.pairs)
        self.linear = nn.Linear(proj_dim * len(dims) + len(dims), hidden)
        self.head = _mlp(hidden, hidden, out_dim, dropout)
        init_weights(self)
        for bl in self.bilinear:  # fan-in of a bilinear term is proj_dim²
            nn.init.normal_(bl.weight, std=1.0 / proj_dim)
            nn.init.zeros_(bl.bias)

    def forward(self, feats, present):
        xs, mask = self._inputs(feats, present)
        zs = [torch.where(mask[:, i:i + 1], self.proj[m](x), 0.0) for i, (m, x) in enumerate(zip(self.names, xs))]
        h = self.linear(torch.cat(zs + [mask.to(zs[0].dtype)], dim=1))
        for (i, j), bl in zip(self.pairs, self.bilinear):
            h = h + bl(zs[i], zs[j])
        return {"pred": self.head(torch.relu(h))}


# ------------------------------------------------------------ mixture of experts
class MoEFusion(Fusion):
    """A softmax gate over the concatenated features (+ presence) mixes ``n_experts``
    expert MLPs that all read that concatenation (seed 002). ``"gates"`` [b, E]."""

    def __init__(self, dims: dict[str, int], out_dim: int, hidden: int = 64, dropout: float = 0.0,
                 n_experts: int = 3):
        super().__init__(dims, out_dim, hidden)
        if n_experts < 1:
            raise MMLibError(f"MoEFusion: n_experts={n_experts}; use 1 or more.")
        in_dim = sum(self.dims.values()) + len(dims)
        self.gate = nn.Linear(in_dim, n_experts)
        self.experts = nn.ModuleList(_mlp(in_dim, hidden, out_dim, dropout) for _ in range(n_experts))
        init_weights(self)
        nn.init.zeros_(self.gate.weight)  # start from a uniform mixture

    def forward(self, feats, present):
        xs, mask = self._inputs(feats, present)
        z = torch.cat(xs + [mask.to(xs[0].dtype)], dim=1)
        gates = torch.softmax(self.gate(z).float(), dim=-1)
        outs = torch.stack([e(z) for e in self.experts], dim=1)  # [b, E, out]
        pred = (outs * gates.unsqueeze(-1).to(outs.dtype)).sum(dim=1)
        return {"pred": pred, "gates": gates}


FUSIONS: dict[str, type] = {
    "early": EarlyFusion,
    "late": LateFusion,
    "learned_weights": LearnedWeightFusion,
    "gated": GatedFusion,
    "attention": AttentionFusion,
    "lowrank_tensor": LowRankTensorFusion,
    "bilinear": BilinearFusion,
    "moe": MoEFusion,
}

__all__ = ["Fusion", "FUSIONS", "masked_softmax", "EarlyFusion", "LateFusion", "LearnedWeightFusion", "GatedFusion",
           "AttentionFusion", "LowRankTensorFusion", "BilinearFusion", "MoEFusion"]
