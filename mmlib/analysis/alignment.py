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

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from mmlib.data.pairs import Pairs, embedding_pairs, modality_pairs
from mmlib.training.config import TrainConfig
from mmlib.training.objectives import CONTRASTIVE_LOSSES as LOSSES
from mmlib.training.objectives import ContrastiveObjective, embed_pairs, evaluate_pairs
from mmlib.training.trainer import Trainer
from mmlib.utils import MMLibError, resolve_device, set_seeds

__all__ = ["LOSSES", "Pairs", "modality_pairs", "embedding_pairs", "embed_pairs", "evaluate_pairs", "ContrastiveFit",
           "fit_contrastive", "linear_probe", "shared_keywords", "shared_groups", "center", "factor_probes",
           "alignment_metrics", "format_summary", "AlignmentRun", "run_alignment", "translator_query_encoder"]


# --------------------------------------------------------------------------- training
@dataclass
class ContrastiveFit:
    """What ``fit_contrastive`` returns: the per-epoch history and the run's facts."""

    history: pd.DataFrame  # epoch, train_loss, val_loss, val_R@1/5/10, val_MRR, lr, temperature, epoch_time_s
    train_time_s: float
    best_epoch: int
    epochs_run: int
    best_value: float
    monitor: str
    device: str
    n_params: int
    temperature: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def fit_contrastive(model: nn.Module, train_pairs: Pairs, val_pairs: Pairs, loss: str = "infonce", epochs: int = 20,
                    lr: float = 1e-3, batch_size: int = 256, weight_decay: float = 1e-4, scheduler: str | None = "cosine",
                    patience: int | None = 3, monitor: str = "R@10", temperature: float = 0.07,
                    learn_temperature: bool = False, grad_clip: float | None = 1.0, device: str | torch.device = "auto",
                    amp: bool = True, seed: int = 0, max_batches_per_epoch: int | None = None,
                    progress: bool = False) -> ContrastiveFit:
    """Train ``model`` so that ``train_pairs.a[i]`` and ``train_pairs.b[i]`` embed close together,
    with the lab's one ``Trainer`` and a ``ContrastiveObjective``.

    loss: ``infonce`` (symmetric, against every other pair of the batch) or ``cosine``
    (``1 - cos`` of each pair alone). The temperature is the model's own ``logit_scale``
    when it has one (``TwoTower``), else ``temperature`` (learnt with ``learn_temperature``).
    AdamW with a cosine learning-rate schedule; early stopping after ``patience`` epochs
    without improvement of ``monitor`` on the validation pairs (``R@1``/``R@5``/``R@10``/``MRR``
    of a→b retrieval: higher is better; ``loss``: the validation loss, lower is better);
    the best weights are restored at the end. Mixed precision on CUDA only.
    """
    if scheduler not in (None, "none", "cosine"):
        raise MMLibError(f"fit_contrastive: unknown scheduler {scheduler!r}; use 'cosine' or None.")
    if epochs < 1:
        raise MMLibError(f"fit_contrastive: epochs must be >= 1, got {epochs}.")
    objective = ContrastiveObjective(train_pairs, val_pairs, loss=loss, monitor=monitor, temperature=temperature,
                                     learn_temperature=learn_temperature)
    dev = resolve_device(device)
    config = TrainConfig(epochs=int(epochs), lr=lr, batch_size=int(batch_size), weight_decay=weight_decay,
                         scheduler=scheduler or "none", patience=patience, min_delta=1e-6, grad_clip=grad_clip,
                         device=str(dev), amp="auto" if amp else "off", seed=int(seed),
                         max_batches_per_epoch=max_batches_per_epoch, progress=progress)
    fit = Trainer(model, config=config, objective=objective).fit()
    model.eval()
    return ContrastiveFit(history=fit.history, train_time_s=fit.train_time_s, best_epoch=fit.best_epoch,
                          epochs_run=fit.epochs_run, best_value=fit.best_val, monitor=monitor, device=fit.device,
                          n_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
                          temperature=objective.current_temperature(model) if loss == "infonce" else None)


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
