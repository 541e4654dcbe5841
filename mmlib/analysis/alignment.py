"""Contrastive alignment of text and images (seeds 001 and 004): pairs, training, retrieval.

* **Translation** (seed 001): a frozen text embedding space and a frozen image
  embedding space are given (``mmlib.analysis.spaces``); learn ``f(text) ≈ image`` so
  that a caption finds its image by cosine similarity. ``MLPTranslator`` + cosine loss
  is seed 001's baseline; ``ResidualTranslator`` + symmetric InfoNCE its final model.
* **Two-tower** (seed 004): a text encoder and an image encoder, trained from
  scratch, each followed by a projection head into one shared L2-normalised
  space, with a symmetric (CLIP-style) InfoNCE loss. No pretrained multimodal
  model is used anywhere.

``fit_contrastive`` trains either on *pairs* ``(a, b)``: row i of ``a`` and row i
of ``b`` are the same sample (``a`` = text side, ``b`` = image side). Each side is
a tensor [n, d] (embeddings) or a dict of tensors (``{"tokens": ...}``,
``{"pixels": ...}``). A model provides ``pair_embeddings(a, b, normalize=True) ->
(za, zb)`` (with ``normalize=False`` the raw vectors, for euclidean retrieval).
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from mmlib.analysis.retrieval import mrr, recall_at_k
from mmlib.models.alignment import MAX_LOGIT_SCALE
from mmlib.models.losses import cosine_loss, info_nce
from mmlib.utils import MMLibError, resolve_device, set_seeds

LOSSES = ("infonce", "cosine")


# --------------------------------------------------------------------------- pairs
class Pairs(NamedTuple):
    """Row i of ``a`` (text side) and row i of ``b`` (image side) belong together;
    ``rows`` are their dataset row indices."""

    a: Any
    b: Any
    rows: np.ndarray

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.rows)


def _take(x: Any, idx: torch.Tensor) -> Any:
    if isinstance(x, Mapping):
        return {k: v[idx.to(v.device)] for k, v in x.items()}
    return x[idx.to(x.device)]


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Mapping):
        return {k: v.to(device) for k, v in x.items()}
    return x.to(device)


def modality_pairs(dataset: Any, split: str | np.ndarray, a: str = "text", b: str = "image") -> Pairs:
    """Pairs of the two modalities' tensors on the rows of ``split`` where both are present."""
    for m in (a, b):
        if m not in dataset.modalities:
            raise MMLibError(f"dataset {dataset.name!r} has no modality {m!r}; it has {dataset.modality_names}.")
    rows = np.asarray(dataset.splits[split] if isinstance(split, str) else split)
    ma, mb = dataset.modalities[a], dataset.modalities[b]
    both = (ma.present & mb.present).cpu().numpy()[rows]
    rows = rows[both]
    idx = torch.as_tensor(rows, dtype=torch.long)
    return Pairs(_take(ma.tensors, idx), _take(mb.tensors, idx), rows)


def embedding_pairs(a: Any, b: Any, rows: Sequence[int] | np.ndarray, present: np.ndarray | None = None) -> Pairs:
    """Pairs from two embedding matrices [n, d] (all dataset rows) restricted to ``rows``
    (and to rows where ``present`` is True, when given)."""
    rows = np.asarray(rows)
    if present is not None:
        rows = rows[np.asarray(present, bool)[rows]]
    ta = a.detach().float().cpu() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a, np.float32))
    tb = b.detach().float().cpu() if isinstance(b, torch.Tensor) else torch.as_tensor(np.asarray(b, np.float32))
    idx = torch.as_tensor(rows, dtype=torch.long)
    return Pairs(ta[idx], tb[idx], rows)


# --------------------------------------------------------------------------- training
class _Temperature(nn.Module):
    """A CLIP-style logit scale for models that do not own one (the translators)."""

    def __init__(self, temperature: float, learn: bool):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn)


def _temperature_of(scale: nn.Parameter) -> torch.Tensor:
    return 1.0 / scale.exp().clamp(max=MAX_LOGIT_SCALE)


def _temperature_value(scale: nn.Parameter) -> float:
    return float(_temperature_of(scale.detach()))


@dataclass
class ContrastiveFit:
    """What ``fit_contrastive`` returns: the per-epoch history and the run's facts."""

    history: pd.DataFrame  # epoch, train_loss, val_loss, val_R@1/5/10, val_MRR, lr, temperature, time_s
    train_time_s: float
    best_epoch: int
    epochs_run: int
    best_value: float
    monitor: str
    device: str
    n_params: int
    temperature: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def embed_pairs(model: nn.Module, pairs: Pairs, batch_size: int = 512, device: str | torch.device = "auto",
                normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's embeddings of both sides of ``pairs`` (eval mode, CPU float32 tensors);
    L2-normalised unless ``normalize=False`` (then the raw vectors the model produces)."""
    dev = resolve_device(device)
    model.eval()
    model.to(dev)
    za, zb = [], []
    for s in range(0, len(pairs), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(pairs)))
        a, b = model.pair_embeddings(_to(_take(pairs.a, idx), dev), _to(_take(pairs.b, idx), dev), normalize)
        za.append(a.float().cpu())
        zb.append(b.float().cpu())
    return torch.cat(za), torch.cat(zb)


def _autocast(device: torch.device, amp: bool) -> tuple[Callable[[], Any], torch.amp.GradScaler | None]:
    if not (amp and device.type == "cuda"):
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast(device_type="cuda", dtype=dtype)), scaler


def fit_contrastive(model: nn.Module, train_pairs: Pairs, val_pairs: Pairs, loss: str = "infonce", epochs: int = 20,
                    lr: float = 1e-3, batch_size: int = 256, weight_decay: float = 1e-4, scheduler: str | None = "cosine",
                    patience: int | None = 3, monitor: str = "R@10", temperature: float = 0.07,
                    learn_temperature: bool = False, grad_clip: float | None = 1.0, device: str | torch.device = "auto",
                    amp: bool = True, seed: int = 0, max_batches_per_epoch: int | None = None,
                    progress: bool = False) -> ContrastiveFit:
    """Train ``model`` so that ``train_pairs.a[i]`` and ``train_pairs.b[i]`` embed close together.

    loss: ``infonce`` (symmetric, against every other pair of the batch) or ``cosine``
    (``1 - cos`` of each pair alone). The temperature is the model's own ``logit_scale``
    when it has one (``TwoTower``), else ``temperature`` (learnt with ``learn_temperature``).
    Adam(W) with a cosine learning-rate schedule; early stopping after ``patience`` epochs
    without improvement of ``monitor`` on the validation pairs (``R@1``/``R@5``/``R@10``/``MRR``
    of a→b retrieval: higher is better; ``loss``: the validation loss, lower is better);
    the best weights are restored in memory at the end. Mixed precision on CUDA only.
    """
    if loss not in LOSSES:
        raise MMLibError(f"fit_contrastive: unknown loss {loss!r}; choose one of {LOSSES}.")
    higher = monitor != "loss"
    if monitor not in ("loss", "R@1", "R@5", "R@10", "MRR"):
        raise MMLibError(f"fit_contrastive: unknown monitor {monitor!r}; use 'R@1', 'R@5', 'R@10', 'MRR' or 'loss'.")
    if scheduler not in (None, "none", "cosine"):
        raise MMLibError(f"fit_contrastive: unknown scheduler {scheduler!r}; use 'cosine' or None.")
    if len(train_pairs) < 2 or len(val_pairs) < 2:
        raise MMLibError(f"fit_contrastive: needs at least 2 train and 2 validation pairs (got {len(train_pairs)} "
                         f"and {len(val_pairs)}); contrastive losses compare pairs with each other.")
    if epochs < 1:
        raise MMLibError(f"fit_contrastive: epochs must be >= 1, got {epochs}.")
    set_seeds(seed)
    dev = resolve_device(device)
    model.to(dev)
    temp_mod = None if hasattr(model, "logit_scale") else _Temperature(temperature, learn_temperature).to(dev)
    scale = model.logit_scale if temp_mod is None else temp_mod.logit_scale
    params = [p for p in model.parameters() if p.requires_grad]
    if temp_mod is not None and learn_temperature:
        params.append(temp_mod.logit_scale)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    n_train = len(train_pairs)
    drop_last = n_train > batch_size  # a last tiny batch makes InfoNCE trivially easy
    per_epoch = n_train // batch_size if drop_last else 1
    if max_batches_per_epoch is not None:
        per_epoch = max(1, min(per_epoch, int(max_batches_per_epoch)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * per_epoch) if scheduler == "cosine" else None
    autocast, scaler = _autocast(dev, amp)
    train_a, train_b = _to(train_pairs.a, dev), _to(train_pairs.b, dev)
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        if loss == "cosine":
            return cosine_loss(za, zb)
        return info_nce(za, zb, temperature=_temperature_of(scale))

    rows_hist = []
    best_state, best_value, best_epoch, bad_epochs = None, None, 0, 0
    t0 = time.perf_counter()
    epoch_iter: Any = range(1, epochs + 1)
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc=f"{type(model).__name__} ({loss})", leave=False)
    for epoch in epoch_iter:
        model.train()
        perm = torch.randperm(n_train, generator=gen)
        total, count = 0.0, 0
        for bi in range(per_epoch):
            idx = perm[bi * batch_size:(bi + 1) * batch_size]
            if len(idx) < 2:
                break
            with autocast():
                za, zb = model.pair_embeddings(_take(train_a, idx), _take(train_b, idx))
                batch_loss = loss_fn(za, zb)
            if not torch.isfinite(batch_loss):
                raise MMLibError(f"fit_contrastive: the loss became {batch_loss.item()} at epoch {epoch}, batch {bi}; "
                                 "lower the learning rate or check the inputs for extreme values.")
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(batch_loss).backward()
                scaler.unscale_(opt)
            else:
                batch_loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if sched is not None:
                sched.step()
            with torch.no_grad():
                scale.clamp_(max=math.log(MAX_LOGIT_SCALE))
            total += float(batch_loss.detach()) * len(idx)
            count += len(idx)
        val = evaluate_pairs(model, val_pairs, loss=loss, batch_size=batch_size, temperature=_temperature_value(scale),
                             device=dev)
        row = {"epoch": epoch, "train_loss": total / max(count, 1), "val_loss": val["loss"],
               **{f"val_{k}": v for k, v in val.items() if k != "loss"},
               "lr": opt.param_groups[0]["lr"], "temperature": _temperature_value(scale),
               "time_s": time.perf_counter() - t0}
        rows_hist.append(row)
        value = val["loss"] if monitor == "loss" else val[monitor]
        improved = best_value is None or (value > best_value + 1e-6 if higher else value < best_value - 1e-6)
        if improved:
            best_value, best_epoch, bad_epochs = value, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
            if temp_mod is not None:
                best_scale = temp_mod.logit_scale.detach().clone()
        else:
            bad_epochs += 1
        if progress:
            epoch_iter.set_postfix(train=f"{row['train_loss']:.3f}", val=f"{val['loss']:.3f}",
                                   r10=f"{val['R@10']:.3f}")
        if patience is not None and bad_epochs >= patience:
            break
    train_time = time.perf_counter() - t0
    if best_state is not None:
        model.load_state_dict(best_state)
        if temp_mod is not None:
            with torch.no_grad():
                temp_mod.logit_scale.copy_(best_scale)
    model.eval()
    hist = pd.DataFrame(rows_hist)
    return ContrastiveFit(history=hist, train_time_s=train_time, best_epoch=best_epoch, epochs_run=len(hist),
                          best_value=float(best_value), monitor=monitor, device=str(dev),
                          n_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
                          temperature=_temperature_value(scale) if loss == "infonce" else None)


@torch.no_grad()
def evaluate_pairs(model: nn.Module, pairs: Pairs, loss: str = "infonce", batch_size: int = 256,
                   temperature: float = 0.07, device: str | torch.device = "auto",
                   ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Loss (mean over consecutive batches of ``batch_size``, as in training) and a→b
    retrieval Recall@K / MRR over all of ``pairs`` (cosine similarity)."""
    za, zb = embed_pairs(model, pairs, batch_size=max(batch_size, 512), device=device)
    losses, weights = [], []
    for s in range(0, len(za), batch_size):
        a, b = za[s:s + batch_size], zb[s:s + batch_size]
        if len(a) < 2:
            continue
        losses.append(float(cosine_loss(a, b) if loss == "cosine" else info_nce(a, b, temperature=temperature)))
        weights.append(len(a))
    sim = za @ zb.T
    out = {"loss": float(np.average(losses, weights=weights)) if losses else float("nan")}
    out.update(recall_at_k(sim, ks))
    out["MRR"] = mrr(sim)
    return out




def linear_probe(x: np.ndarray, labels: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray,
                 alpha: float = 1.0) -> float:
    """Test accuracy of a linear classifier (ridge, one-vs-rest, on standardised features)
    fitted on frozen embeddings ``x``: how readable a factor (e.g. the hull colour) is in an
    embedding space, without training the space. Closed form, so it is fast and deterministic."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(x[train_rows])
    clf = RidgeClassifier(alpha=alpha).fit(sc.transform(x[train_rows]), labels[train_rows])
    return float((clf.predict(sc.transform(x[test_rows])) == labels[test_rows]).mean())


# --------------------------------------------------------------------------- what text and image share
def shared_keywords(dataset: Any) -> list[str]:
    """Caption words that name something the image shows, where the dataset knows them:
    on ``spacecraft`` the hull colours and "striped"/"plain"; elsewhere
    ``meta["visible_keywords"]`` or nothing. Used to score free-text search results."""
    if dataset.name == "spacecraft":
        from mmlib.data.spacecraft import COLORS

        return [*COLORS, "striped", "plain"]
    return list(dataset.meta.get("visible_keywords", []))


def shared_groups(dataset: Any) -> np.ndarray | None:
    """Per row, the label of everything text and image *both* show (spacecraft: colour ×
    stripe, 10 groups), or None when unknown. Within a group captions cannot tell images
    apart, which caps retrieval (``mmlib.analysis.retrieval.group_ceiling``)."""
    latent = dataset.meta.get("latent")
    if dataset.name == "spacecraft" and latent is not None:
        return (latent["color"].to_numpy() * 2 + latent["striped"].to_numpy()).astype(np.int64)
    return None


# --------------------------------------------------------------------------- experiments
def center(x: np.ndarray, rows: Sequence[int] | np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
    """``x`` minus the mean of its ``rows`` (the training split); rows absent in ``present`` stay zero.

    Frozen embedding spaces (the autoencoder bottleneck, MiniLM, CLIP) share a large
    common direction; centring removes it, without which a cosine loss is already
    low for a translator that outputs that mean direction for every caption."""
    x = np.asarray(x, dtype=np.float32)
    rows = np.asarray(rows)
    if present is not None:
        rows = rows[np.asarray(present, bool)[rows]]
    out = x - x[rows].mean(axis=0, keepdims=True)
    if present is not None:
        out[~np.asarray(present, bool)] = 0.0
    return out


def factor_probes(spaces: Mapping[str, np.ndarray], factors: pd.DataFrame, train_rows: np.ndarray,
                  test_rows: np.ndarray) -> pd.DataFrame:
    """Linear-probe test accuracy of each ground-truth factor (columns of ``factors``)
    in each frozen embedding space, next to the majority-class rate (what a blind guess gets).
    Columns: space, factor, accuracy, majority."""
    rows = []
    for factor in factors.columns:
        y = factors[factor].to_numpy()
        majority = float(pd.Series(y[test_rows]).value_counts(normalize=True).iloc[0])
        for name, x in spaces.items():
            rows.append({"space": name, "factor": factor, "accuracy": round(linear_probe(x, y, train_rows, test_rows), 3),
                         "majority": round(majority, 3)})
    return pd.DataFrame(rows)


def alignment_metrics(report: pd.DataFrame, prefix: str = "test") -> dict[str, float]:
    """Flatten a ``retrieval_report`` into record metrics: ``<prefix>_t2i_R@10`` (cosine),
    ``<prefix>_t2i_euclidean_R@10``, ... (``t2i`` = first direction, ``i2t`` = second)."""
    out: dict[str, float] = {}
    directions = list(dict.fromkeys(report["direction"]))
    for d in directions:
        q, _, i = d.partition("→")
        tag = f"{q[:1]}2{i[:1]}"
        for _, r in report[report["direction"] == d].iterrows():
            sim = r["similarity"]
            if sim.startswith("random"):
                continue
            name = tag if sim == "cosine" else f"{tag}_{sim}"
            for col in report.columns:
                if col.startswith("R@") or col in ("MRR", "median_rank"):
                    out[f"{prefix}_{name}_{col}"] = float(r[col])
    return out


def format_summary(summary: pd.DataFrame, metrics: Sequence[str], names: Sequence[str] | None = None,
                   digits: int = 3) -> pd.DataFrame:
    """A ``summary_table`` (``<metric>_mean`` / ``_std`` columns) as compact "mean ± std" strings
    (std left out for a single seed), one column per metric named by ``names``."""
    from mmlib.reporting.records import fmt_mean_std

    out = pd.DataFrame(index=summary.index)
    for m, name in zip(metrics, names or metrics):
        mean, std = summary[f"{m}_mean"].astype(float), summary[f"{m}_std"].astype(float)
        out[name] = [fmt_mean_std(a, b, digits=digits) for a, b in zip(mean, std)]
    if "n" in summary:
        out["seeds"] = summary["n"].astype(int)
    return out


@dataclass
class AlignmentRun:
    """One trained alignment model: the fit, its test retrieval report and its record fields."""

    model: nn.Module
    fit: ContrastiveFit
    report: pd.DataFrame
    record: dict[str, Any]


def run_alignment(build: Callable[[], nn.Module] | nn.Module, train: Pairs, val: Pairs, test: Pairs, *, experiment: str,
                  model_name: str,
                  seed: int, loss: str = "infonce", epochs: int = 20, patience: int | None = 3, batch_size: int = 256,
                  lr: float = 1e-3, max_batches_per_epoch: int | None = None, condition: str = "",
                  modalities: Sequence[str] = ("text", "image"), device: str | torch.device = "auto",
                  writer: Any = None, progress: bool = False, extra: Mapping[str, Any] | None = None,
                  **fit_kwargs: Any) -> AlignmentRun:
    """Seed, build (``build()``, so the initial weights follow the seed; an already built
    module is used as is), train with ``fit_contrastive``, report test retrieval both ways
    (cosine on the normalised embeddings, euclidean on the raw ones, with the random
    baseline) and add a result record to ``writer`` (metrics ``test_t2i_R@K``, ...)."""
    from mmlib.analysis.retrieval import random_baseline, retrieval_report

    set_seeds(seed)
    model = build if isinstance(build, nn.Module) else build()
    fit = fit_contrastive(model, train, val, loss=loss, epochs=epochs, patience=patience, batch_size=batch_size,
                          lr=lr, max_batches_per_epoch=max_batches_per_epoch, seed=seed, device=device,
                          progress=progress, **fit_kwargs)
    za, zb = embed_pairs(model, test, device=device, normalize=False)
    report = retrieval_report(za, zb, metrics=("cosine", "euclidean"))
    metrics = alignment_metrics(report)
    metrics.update({f"test_random_{k}": v for k, v in random_baseline(len(test)).items()})
    metrics.update({f"val_best_{fit.monitor}": fit.best_value})
    fields = dict(experiment=experiment, model=model_name, fusion="none", modalities=list(modalities),
                  condition=condition, seed=int(seed), metrics=metrics, n_params=int(fit.n_params),
                  train_time_s=float(fit.train_time_s), epochs=int(fit.epochs_run), device=fit.device,
                  extra={"loss": loss, "best_epoch": fit.best_epoch, "temperature": fit.temperature,
                         "n_test_pairs": len(test), **dict(extra or {})})
    record = writer.add(**fields) if writer is not None else fields
    return AlignmentRun(model, fit, report, record)


def translator_query_encoder(translator: nn.Module, encode_texts: Callable[[list[str]], np.ndarray],
                             text_mean: np.ndarray | None = None) -> Callable[[list[str]], np.ndarray]:
    """texts → frozen text embedding (``encode_texts``, minus ``text_mean`` if the translator
    was trained on centred inputs) → translated into the image space: a query encoder for
    ``mmlib.analysis.retrieval.Searcher`` over image embeddings."""
    def encode(texts: list[str]) -> np.ndarray:
        x = np.asarray(encode_texts(list(texts)), dtype=np.float32)
        if text_mean is not None:
            x = x - np.asarray(text_mean, dtype=np.float32).reshape(1, -1)
        translator.eval()
        dev = next(translator.parameters()).device
        with torch.no_grad():
            return translator(torch.from_numpy(x).to(dev)).float().cpu().numpy()

    return encode
