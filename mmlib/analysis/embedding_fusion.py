"""Seed 002: fusing frozen embeddings to predict a positive, skewed target.

Seed 002 predicts prices from two frozen embeddings (CLIP image, Qwen text): one
branch per embedding (L2-normalised with a learnable scale), concatenation, a
regression head; an advanced variant with attention and a gated mixture of three
experts; log-price targets and a weighted SMAPE loss; error analysis by price bins.

Here the branches are the ``EmbeddingMLP`` encoders and the fusions of
``mmlib.models`` (``early`` = the two-branch concatenation, ``attention``, ``moe``
with three experts), trained by ``mmlib.training.trainer.Trainer``. What this module adds:

* ``frozen_fusion_dataset``: the two frozen branches for a dataset. Text always gets
  MiniLM sentence embeddings; the second branch, when there are images, is a frozen
  pretrained image embedding as in seed 002 (EfficientNet-Lite0 ImageNet features,
  ``mmlib.models.pretrained``; the label-free autoencoder of ``mmlib.analysis.spaces`` when
  its weights cannot be fetched, or on request), else the tabular modality.
  ``spacecraft`` is loaded with its positive, right-skewed ``cost`` target.
* ``TargetScaler``: the target transform, ``standard`` (z-score) or ``log`` (log,
  then z-score), with its exact inverse.
* ``make_loss``: MSE / Huber on the transformed target, or SMAPE computed on the
  *original* scale (the prediction is inverted inside the loss), optionally
  ``weighted_smape``: each row weighted by (frequency of its target's bin)^-½
  (equal-width bins of the transformed training target), so the sparse tails of a
  skewed target count more than their share of rows.
* ``run_target_variant``: seed, build, train, predict on the original scale, score
  (SMAPE / MAE / RMSE / R²) and record one configuration.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch

from mmlib.data.base import MultimodalDataset
from mmlib.training.metrics import compute_metrics
from mmlib.models import build_model
from mmlib.training.tasks import get_task
from mmlib.utils import MMLibError, set_seeds

TARGET_MODES = ("standard", "log")
LOSSES = ("mse", "huber", "smape", "weighted_smape")
# loader options that give a dataset a positive, skewed target (seed 002's setting)
POSITIVE_TARGET_OPTIONS: dict[str, dict[str, Any]] = {"spacecraft": {"task": "cost"}}


# --------------------------------------------------------------------------- data
def load_source(name: str, profile: Mapping[str, Any], **overrides: Any) -> MultimodalDataset:
    """Load the registered dataset ``name`` for this study: a positive, skewed target where the
    loader offers one (seed 002's setting) and the loader's own frozen MiniLM text when it has one."""
    import inspect

    from mmlib.data import get_loader, load_for_profile

    accepted = inspect.signature(get_loader(name)).parameters
    options = dict(POSITIVE_TARGET_OPTIONS.get(name, {}))
    if "text_encoder" in accepted:
        options["text_encoder"] = "minilm"  # the loader's own frozen MiniLM text modality
    options.update(overrides)
    ds = load_for_profile(name, profile, **options)
    ds.meta = {**ds.meta, "load_options": options}
    return ds


IMAGE_METHODS = ("auto", "efficientnet", "autoencoder")


def _image_space(ds: MultimodalDataset, modality: str, profile: Mapping[str, Any], method: str, device: str,
                 progress: bool, info: dict[str, Any]) -> Any:
    """The frozen image branch: EfficientNet-Lite0 (ImageNet) features, or the autoencoder of
    notebook 60; ``auto`` falls back to the autoencoder, saying why in ``info["image_note"]``."""
    from mmlib.analysis import spaces

    if method not in IMAGE_METHODS:
        raise MMLibError(f"frozen_fusion_dataset: unknown image_method {method!r}; choose one of {IMAGE_METHODS}.")
    if method in ("auto", "efficientnet"):
        try:
            emb = spaces.image_embeddings_pretrained(ds, modality=modality, device=device, progress=progress)
            info["image_extra"] = {k: emb.extra[k] for k in ("size", "embed_time_s", "cached", "backbone_params")}
            return emb
        except MMLibError as exc:
            if method == "efficientnet":
                raise
            info["image_note"] = f"EfficientNet-Lite0 unavailable ({exc}); the autoencoder image space is used."
    return spaces.autoencoder_for_profile(ds, profile, device=device, progress=progress)


def frozen_fusion_dataset(ds: MultimodalDataset, profile: Mapping[str, Any], device: str = "auto",
                          progress: bool = False, image_method: str = "auto") -> tuple[MultimodalDataset, dict[str, Any]]:
    """``ds`` with two frozen embedding branches (see the module docstring); any
    ``MultimodalDataset`` works, e.g. one from ``load_source`` or built in memory.
    ``image_method``: ``auto`` (EfficientNet-Lite0 when its weights can be fetched, else the
    autoencoder), ``efficientnet`` or ``autoencoder``.

    Returns the dataset (its modalities are the two branches) and a dict describing
    them (``branches``, ``text_method``, ``image_method``, ``load_options``, and for
    EfficientNet ``image_extra``: size, embedding time, cached, backbone parameters)."""
    from mmlib.analysis import spaces
    from mmlib.data.embeddings import replace_with_embeddings

    name = ds.name
    options = dict(ds.meta.get("load_options", {}))
    info: dict[str, Any] = {"load_options": options, "text_method": None, "image_method": None}
    replace: dict[str, np.ndarray] = {}
    for m, mod in ds.modalities.items():
        if mod.kind == "text":
            emb = spaces.text_embeddings(ds, method="auto", modality=m, progress=progress)
            replace[m] = emb.x
            info["text_method"] = emb.method
        elif mod.kind == "image":
            emb = _image_space(ds, m, profile, image_method, device, progress, info)
            replace[m] = emb.x
            info["image_method"] = emb.method
    if any(mod.kind == "embedding" for m, mod in ds.modalities.items() if m not in replace):
        info["text_method"] = info["text_method"] or "minilm"
    out = replace_with_embeddings(ds, replace) if replace else ds
    branches = [m for m, mod in out.modalities.items() if mod.kind == "embedding"]
    if len(branches) < 2:  # seed 002 has two branches: add the tabular one when there is no image
        branches += [m for m, mod in out.modalities.items() if mod.kind == "tabular"][: 2 - len(branches)]
    if len(branches) < 2:
        raise MMLibError(f"{name}: two branches are needed for embedding fusion; found {branches} among "
                         f"{[f'{m}:{mod.kind}' for m, mod in out.modalities.items()]}.")
    out = out.subset_modalities(branches)
    if out.task != "regression":
        raise MMLibError(f"{name}: embedding fusion here is a regression study; the target is {out.task!r}.")
    info["branches"] = branches
    return out, info


# --------------------------------------------------------------------------- target
@dataclass
class TargetScaler:
    """``standard``: z = (y − mean) / std. ``log``: z = (log y − mean) / std (y > 0 needed).
    ``lo`` / ``hi`` bound z when inverting, so a wild early prediction cannot overflow exp."""

    mode: str
    mean: float
    std: float
    lo: float
    hi: float

    @classmethod
    def fit(cls, y_train: Any, mode: str) -> "TargetScaler":
        if mode not in TARGET_MODES:
            raise MMLibError(f"Unknown target mode {mode!r}; choose one of {TARGET_MODES}.")
        y = np.asarray(y_train, dtype=np.float64)
        if mode == "log":
            bad = int((y <= 0).sum())
            if bad:
                raise MMLibError(f"A log target needs y > 0; {bad} training value(s) are <= 0 (min {y.min():.4g}). "
                                 "Use target mode 'standard' or shift the target.")
            y = np.log(y)
        mean, std = float(y.mean()), float(y.std()) or 1.0
        z = (y - mean) / std
        margin = 2.0 * (z.max() - z.min())
        return cls(mode, mean, std, float(z.min() - margin), float(z.max() + margin))

    def transform(self, y: Any) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if self.mode == "log":
            y = np.log(np.clip(y, 1e-12, None))
        return ((y - self.mean) / self.std).astype(np.float32)

    def inverse(self, z: Any) -> Any:
        """Back to the original scale (torch in → torch out, else numpy)."""
        if isinstance(z, torch.Tensor):
            v = z.float().clamp(self.lo, self.hi) * self.std + self.mean
            return torch.exp(v) if self.mode == "log" else v
        v = np.clip(np.asarray(z, dtype=np.float64), self.lo, self.hi) * self.std + self.mean
        return np.exp(v) if self.mode == "log" else v


def with_target(dataset: MultimodalDataset, scaler: TargetScaler) -> MultimodalDataset:
    """A shallow copy whose target is ``scaler.transform(target)``; the original values are
    kept in ``meta["y_original"]``."""
    if dataset.task != "regression":
        raise MMLibError(f"Target transforms apply to regression; {dataset.name!r} is {dataset.task!r}.")
    y = dataset.target.detach().cpu().numpy().astype(np.float64)
    out = copy.copy(dataset)
    out.target = torch.from_numpy(scaler.transform(y)).to(dataset.target.device)
    out.meta = {**dataset.meta, "y_original": y, "target_scaler": scaler}
    return out


def density_weights(z_train: Any, bins: int = 20, power: float = 0.5, max_weight: float = 10.0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges (equal width over the training range) and per-bin weights ∝ frequency^-power
    (0.5: a square-root re-balancing, softer than full inverse frequency, which lets a few
    tail rows dominate), clipped at ``max_weight`` × the smallest and normalised to mean 1
    over the training rows."""
    z = np.asarray(z_train, dtype=np.float64)
    edges = np.linspace(z.min(), z.max(), int(bins) + 1)
    counts = np.bincount(np.clip(np.digitize(z, edges[1:-1]), 0, bins - 1), minlength=bins).astype(float)
    w = np.where(counts > 0, np.maximum(counts, 1.0) ** -float(power), 0.0)
    w = np.minimum(w, max_weight * w[w > 0].min())
    idx = np.clip(np.digitize(z, edges[1:-1]), 0, bins - 1)
    w = w / w[idx].mean()
    return edges, w


def make_loss(name: str, scaler: TargetScaler, z_train: Any = None, bins: int = 20, power: float = 0.5,
              eps: float = 1e-6) -> Callable[..., torch.Tensor]:
    """``loss(pred, y, weight=None)`` on the transformed target ``y``: ``mse`` / ``huber``
    there; ``smape`` / ``weighted_smape`` between the predictions and targets mapped back to
    the original scale (a fraction, 2|p − y| / (|p| + |y|)); the weighted one needs the
    transformed training targets ``z_train`` for its bin weights."""
    if name not in LOSSES:
        raise MMLibError(f"Unknown loss {name!r}; choose one of {LOSSES}.")
    if name in ("mse", "huber"):
        return get_task("regression").loss(name)
    edges_t = w_t = None
    if name == "weighted_smape":
        if z_train is None:
            raise MMLibError("weighted_smape needs z_train (the transformed training targets) for its weights.")
        edges, w = density_weights(z_train, bins, power)
        edges_t, w_t = torch.tensor(edges[1:-1], dtype=torch.float32), torch.tensor(w, dtype=torch.float32)

    def loss(pred: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        p = pred.float().reshape(-1)
        t = y.float().reshape(-1)
        po, to = scaler.inverse(p), scaler.inverse(t)
        per = 2 * (po - to).abs() / (po.abs() + to.abs() + eps)
        if w_t is not None:
            idx = torch.bucketize(t, edges_t.to(t.device))
            row_w = w_t.to(t.device)[idx]
            weight = row_w if weight is None else weight * row_w
        if weight is None:
            return per.mean()
        return (per * weight).sum() / weight.sum().clamp(min=1e-12)

    return loss


# --------------------------------------------------------------------------- runs
@dataclass
class VariantRun:
    """One trained configuration, with its test predictions on the original scale."""

    model: Any
    trainer: Any
    fit: Any
    scaler: TargetScaler
    metrics: dict[str, dict[str, float]]  # split -> {r2, rmse, mae, smape} on the original scale
    test_rows: np.ndarray
    y_test: np.ndarray
    pred_test: np.ndarray
    record: dict[str, Any] = field(default_factory=dict)


def run_target_variant(dataset: MultimodalDataset, *, fusion: str, target_mode: str, loss: str, seed: int,
                       profile: Mapping[str, Any], experiment: str, model_name: str | None = None,
                       notebook: str | None = None, writer: Any = None, device: str = "auto",
                       model_kwargs: Mapping[str, Any] | None = None, train_kwargs: Mapping[str, Any] | None = None,
                       progress: bool = False) -> VariantRun:
    """Train ``fusion`` on ``dataset`` with the target transformed by ``target_mode`` and
    trained with ``loss``; early stopping follows the validation R² of the transformed
    target. Metrics (train / val / test) are computed after mapping predictions back to the
    original scale. The record's condition is ``"target=<mode>,loss=<loss>"``."""
    from mmlib.training.experiments import record_run, train_config_from_profile
    from mmlib.training.supervised import SupervisedObjective
    from mmlib.training.trainer import Trainer

    train_rows = np.asarray(dataset.splits["train"])
    y = dataset.target.detach().cpu().numpy().astype(np.float64)
    scaler = TargetScaler.fit(y[train_rows], target_mode)
    ds_t = with_target(dataset, scaler)
    config = train_config_from_profile(profile, n_train=len(train_rows), seed=int(seed), device=device, progress=progress,
                                       **dict(train_kwargs or {}))
    set_seeds(int(seed))
    model = build_model(ds_t, fusion=fusion, **dict(model_kwargs or {}))
    objective = SupervisedObjective(ds_t, loss_fn=make_loss(loss, scaler, z_train=scaler.transform(y[train_rows])),
                                    standardize=False)  # the scaler above is this run's target transform
    trainer = Trainer(model, config=config, objective=objective)
    fit = trainer.fit()
    metrics: dict[str, dict[str, float]] = {}
    preds: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        rows = np.asarray(dataset.splits[split])
        preds[split] = np.asarray(scaler.inverse(trainer.predict(split)), dtype=np.float64)
        metrics[split] = compute_metrics("regression", y[rows], preds[split])
    record = record_run(model, fit, metrics, writer=writer, notebook=notebook or "embedding_fusion",
                        dataset=dataset.name, experiment=experiment, model_name=model_name or f"{fusion}_fusion",
                        fusion=fusion, modalities=dataset.modality_names, condition=f"target={target_mode},loss={loss}",
                        seed=seed, extra={"target_mode": target_mode, "loss": loss, "best_epoch": fit.best_epoch,
                                          "monitor": fit.monitor, "model_kwargs": dict(model_kwargs or {})},
                        predictions=preds["test"], y_test=y[np.asarray(dataset.splits["test"])])
    test_rows = np.asarray(dataset.splits["test"])
    return VariantRun(model, trainer, fit, scaler, metrics, test_rows, y[test_rows], preds["test"], record)


def skewness(y: Any) -> float:
    """Sample skewness (third standardised moment)."""
    y = np.asarray(y, dtype=np.float64)
    s = y.std()
    return float(((y - y.mean()) ** 3).mean() / s**3) if s > 0 else 0.0


def bins_long(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """``error_by_bins`` tables of several models stacked into one tidy frame (a ``model`` column)."""
    return pd.concat([t.assign(model=name) for name, t in tables.items()], ignore_index=True)


__all__ = ["TARGET_MODES", "LOSSES", "IMAGE_METHODS", "POSITIVE_TARGET_OPTIONS", "frozen_fusion_dataset", "TargetScaler", "with_target",
           "density_weights", "make_loss", "VariantRun", "run_target_variant", "skewness", "bins_long"]
