"""Robustness of a trained model: a modality dropped at inference, noise at levels,
and robustness curves with MultiBench's relative / effective robustness scores.

Everything here works on a trained ``mmlib.training.trainer.Trainer`` through its two
inference hooks, so no model is modified:

- ``present_override={modality: False}`` flags a modality absent for every row:
  the model takes its own missing-modality path (seed 003 part 3, "drop at
  inference");
- ``transform=callable(batch) -> batch`` rewrites a batch before the forward pass
  (zero / mean imputation, noise at a level).

Masking is only meaningful where the model was trained with the modality missing
(``missing_path_trained``: modality dropout, or >= 1 % of training rows lack it);
elsewhere a masked score measures an untrained path and is flagged, not reported
as a finding. Noise has one meaning for every kind (``corrupt_batch``): level 0 is
the clean input, level 1 the signal replaced by noise with the modality's own
training-split marginal.

Batches follow ``mmlib.data.base``: ``{"inputs": {mod: {key: tensor}}, "present":
{mod: bool tensor}, "y": tensor, "idx": tensor}``; the modality kind is read from
the tensor keys (``num``/``cat`` tabular, ``tokens`` text, ``pixels`` image, ``x``
embedding). Attribution (Shapley values over modalities) is in
``mmlib.analysis.attribution``; error tables in ``mmlib.analysis.errors``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from mmlib.utils import MMLibError

DROP_MODES = ("mask", "zero", "mean")
_CHUNK = 2048  # rows per chunk when computing statistics over a whole split


# --------------------------------------------------------------------- helpers
def trainer_dataset(trainer: Any):
    """The dataset a trainer evaluates on (``Trainer.data``: already on its device)."""
    for attr in ("data", "dataset"):
        ds = getattr(trainer, attr, None)
        if ds is not None and hasattr(ds, "modalities"):
            return ds
    raise MMLibError(f"{type(trainer).__name__} holds no dataset (`data`); pass an mmlib.training.trainer.Trainer.")


def trainer_modalities(trainer: Any) -> list[str]:
    """The modalities the trainer's model reads (the dataset's when the model does not say)."""
    model = getattr(trainer, "model", None)
    mods = getattr(model, "modalities", None)
    return list(mods) if mods is not None else list(trainer_dataset(trainer).modalities)


def check_modality(ds, modality: str) -> None:
    """Raise a clear MMLibError when ``ds`` has no modality ``modality``."""
    if modality not in ds.modalities:
        raise MMLibError(f"Unknown modality {modality!r}; dataset {ds.name!r} has {list(ds.modalities)}.")


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 <= level <= 1.0 or math.isnan(level):
        raise MMLibError(f"Corruption level {level} is outside [0, 1] (0 = clean, 1 = signal replaced).")
    return level


def kind_of(tensors: Mapping[str, torch.Tensor]) -> str:
    """The modality kind from its tensor keys (see ``mmlib.data.base``)."""
    keys = set(tensors)
    if keys & {"num", "cat"}:
        return "tabular"
    if "tokens" in keys:
        return "text"
    if "pixels" in keys:
        return "image"
    if "x" in keys:
        return "embedding"
    raise MMLibError(f"Cannot tell the modality kind from tensor keys {sorted(keys)}; expected num/cat, tokens, "
                     "pixels or x.")


def split_rows(ds, split: str | np.ndarray) -> np.ndarray:
    """The row indices of a named split of ``ds`` (an index array passes through)."""
    if isinstance(split, str):
        if split not in ds.splits:
            raise MMLibError(f"Unknown split {split!r}; dataset {ds.name!r} has {list(ds.splits)}.")
        return np.asarray(ds.splits[split])
    return np.asarray(split)


def _present_train_rows(ds, modality: str) -> torch.Tensor:
    m = ds.modalities[modality]
    rows = torch.as_tensor(split_rows(ds, "train"), dtype=torch.long, device=m.present.device)
    rows = rows[m.present[rows]]
    if len(rows) == 0:
        raise MMLibError(f"Modality {modality!r} is absent from every training row: no statistics to impute from.")
    return rows


def _float_mean_std(t: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position mean and std of ``t[rows]`` (float64 accumulation, in chunks)."""
    s = torch.zeros(t.shape[1:], dtype=torch.float64, device=t.device)
    s2 = torch.zeros_like(s)
    for start in range(0, len(rows), _CHUNK):
        x = t[rows[start:start + _CHUNK]].double()
        s += x.sum(0)
        s2 += (x * x).sum(0)
    n = len(rows)
    mean = s / n
    var = (s2 / n - mean * mean).clamp(min=0.0)
    return mean, var.sqrt()


def _int_mode(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Per-position most frequent value of an integer tensor over ``rows`` (ties → smallest id)."""
    x = t[rows].long()
    flat = x.reshape(len(rows), -1)
    lo = int(flat.min())
    counts = torch.zeros(flat.shape[1], int(flat.max()) - lo + 1, dtype=torch.long, device=flat.device)
    counts.scatter_add_(1, (flat - lo).T.contiguous(), torch.ones_like(flat.T))
    return (counts.argmax(dim=1) + lo).reshape(x.shape[1:]).to(t.dtype)


def imputation_values(ds, modality: str) -> dict[str, torch.Tensor]:
    """What "mean" imputation puts in: per key, the training-split mean over present
    rows for float tensors (per column / pixel / dimension; images rounded to uint8)
    and the per-position mode for integer ids (token ids, category ids)."""
    check_modality(ds, modality)
    m = ds.modalities[modality]
    rows = _present_train_rows(ds, modality)
    out = {}
    for key, t in m.tensors.items():
        if t.dtype == torch.uint8:  # pixels: the mean image
            out[key] = _float_mean_std(t, rows)[0].round().clamp(0, 255).to(torch.uint8)
        elif t.is_floating_point():
            out[key] = _float_mean_std(t, rows)[0].to(t.dtype)
        else:
            out[key] = _int_mode(t, rows)
    return out


# ---------------------------------------------------------------- missing paths
def missing_path_trained(trainer: Any, modality: str, min_fraction: float = 0.01) -> bool:
    """Whether the trained model has seen ``modality`` absent during training, i.e. whether
    masking it at inference uses a path the model learned: True when the model trains
    with modality dropout (``trainer.model.modality_dropout > 0``) or when at least
    ``min_fraction`` (1 %) of the training-split rows lack the modality. A modality the
    model does not read counts as trained (masking it changes nothing). False means a
    masked figure for it measures an untrained path, never a finding."""
    ds = trainer_dataset(trainer)
    check_modality(ds, modality)
    model = getattr(trainer, "model", None)
    if float(getattr(model, "modality_dropout", 0) or 0) > 0 or modality not in trainer_modalities(trainer):
        return True
    present = ds.modalities[modality].present
    rows = torch.as_tensor(split_rows(ds, "train"), dtype=torch.long, device=present.device)
    if len(rows) == 0:
        return False
    return float((~present[rows].bool()).float().mean()) >= min_fraction


def untrained_paths(trainer: Any, modalities: Iterable[str]) -> list[str]:
    """The modalities among ``modalities`` whose missing path the model never trained
    (``missing_path_trained`` False), in the given order."""
    return [m for m in modalities if not missing_path_trained(trainer, m)]


_CONTINUOUS = ("num", "x", "pixels")
_DISCRETE = ("cat", "tokens")


def _marginal(key: str, t: torch.Tensor, rows: torch.Tensor, info: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The marginal statistics of tensor ``key`` over ``rows`` (CPU tensors)."""
    if key in ("num", "x"):  # per column / dimension
        mean, std = _float_mean_std(t, rows)
        return {"mean": mean.float().cpu(), "std": std.float().cpu()}
    if key == "pixels":  # per channel, over every pixel of the present rows
        mean, std = _float_mean_std(t, rows)  # per pixel position; pooled per channel below
        c_mean = mean.reshape(mean.shape[0], -1).mean(1)
        c_sq = (std.reshape(std.shape[0], -1) ** 2 + mean.reshape(mean.shape[0], -1) ** 2).mean(1)
        return {"mean": c_mean.float().cpu(), "std": (c_sq - c_mean ** 2).clamp(min=0).sqrt().float().cpu()}
    x = t[rows].long().cpu()
    if key == "cat":  # per column: frequencies of each level
        cards = list(info.get("cat_cardinalities") or [])
        probs = []
        for j in range(x.shape[1]):
            size = max(int(cards[j]) if j < len(cards) else 0, int(x[:, j].max()) + 1 if len(x) else 1)
            probs.append(torch.bincount(x[:, j], minlength=size).double())
        return {"probs": probs}
    # tokens: one marginal over every non-padding position
    size = max(int(info.get("vocab_size") or 0), int(x.max()) + 1 if x.numel() else 1)
    return {"probs": torch.bincount(x[x != 0], minlength=size).double()}


def corruption_stats(ds, modality: str) -> dict[str, dict[str, Any]]:
    """The training-split marginal of each of ``modality``'s tensors (rows where it is
    present), which ``corrupt_batch`` draws its noise from: per tensor key,
    ``{"mean", "std"}`` for continuous tensors (``num`` per column, ``x`` per
    dimension, ``pixels`` per channel) and ``{"probs"}`` (unnormalised counts) for
    discrete ones (``cat``: one vector per column; ``tokens``: one vector over the
    non-padding positions)."""
    check_modality(ds, modality)
    m = ds.modalities[modality]
    rows = _present_train_rows(ds, modality)
    return {k: _marginal(k, t, rows, m.info) for k, t in m.tensors.items() if k in _CONTINUOUS + _DISCRETE}


# -------------------------------------------------------------------- corruption
def _draw(counts: torch.Tensor, shape, generator) -> torch.Tensor | None:
    """Ids drawn from the (unnormalised) frequencies ``counts`` by inverse CDF; None if all zero."""
    total = float(counts.sum())
    if total <= 0:
        return None
    cdf = torch.cumsum(counts.double(), 0) / total
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return torch.searchsorted(cdf, u, right=True).clamp(max=len(counts) - 1)


def _mix_continuous(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, level: float, generator,
                    channel: bool) -> torch.Tensor:
    """μ + sqrt(1 − l)(x − μ) + sqrt(l)·σ·ε, with μ, σ per column (per channel if ``channel``)."""
    shape = (1, -1) + (1,) * (x.ndim - 2) if channel else (1,) + tuple(x.shape[1:])
    mu = mean.to(x.device, torch.float32).reshape(shape)
    sd = std.to(x.device, torch.float32).reshape(shape)
    eps = torch.randn(x.shape, generator=generator).to(x.device)
    out = mu + math.sqrt(1.0 - level) * (x.float() - mu) + math.sqrt(level) * sd * eps
    if x.dtype == torch.uint8:
        return out.round().clamp(0, 255).to(torch.uint8)
    return out.to(x.dtype)


def _swap_discrete(t: torch.Tensor, draws: torch.Tensor | None, level: float, generator,
                   keep: torch.Tensor | None = None) -> torch.Tensor:
    swap = torch.rand(t.shape, generator=generator) < level
    if draws is None:
        return t
    swap = swap.to(t.device)
    if keep is not None:
        swap &= ~keep
    return torch.where(swap, draws.to(t.device, t.dtype), t)


def corrupt_batch(batch: dict[str, Any], modality: str, level: float, generator: torch.Generator | None = None,
                  stats: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A copy of ``batch`` with ``modality``'s inputs corrupted at ``level`` in [0, 1].

    One meaning for every kind: level 0 is the clean input; level 1 replaces the
    signal by noise with the modality's own marginal statistics (training split, rows
    where it is present; ``corruption_stats``).

    - Continuous tensors (tabular ``num`` per column, embedding ``x`` per dimension,
      image ``pixels`` per channel), with train mean μ and std σ:
      ``x' = μ + sqrt(1 − l)·(x − μ) + sqrt(l)·σ·ε``, ε ~ N(0, 1) per element. The
      variance stays the marginal σ² at every level, the correlation with the clean
      input is sqrt(1 − l), and level 1 is pure N(μ, σ²) noise. Pixels are then
      rounded, clipped to [0, 255] and kept uint8; the clipping moves the marginal a
      little where μ ± 2σ leaves [0, 255] (mean pulled inwards, std reduced).
    - Discrete tensors (tabular ``cat``, text ``tokens``): each element independently,
      with probability ``l``, is replaced by a draw from its column's (``cat``) or the
      non-padding token (``tokens``) training marginal. Padding stays padding and no
      padding is added, so text lengths are kept.

    Random numbers come from ``generator`` (a CPU ``torch.Generator``; the global RNG
    if None), so the result is the same on every device for the same generator state,
    and the same generator state at two levels gives nested corruptions (common random
    numbers). ``stats`` (from ``corruption_stats``) gives the marginals; without it
    they are read off the batch's present rows. Rows where the modality is absent keep
    their zeros. The presence mask, other modalities and the input batch are left
    untouched; level 0 returns the input tensors themselves.
    """
    level = _check_level(level)
    if modality not in batch["inputs"]:
        raise MMLibError(f"The batch has no modality {modality!r}; it has {list(batch['inputs'])}.")
    tensors = batch["inputs"][modality]
    kind_of(tensors)  # a clear error for an unknown layout
    new: dict[str, torch.Tensor] = dict(tensors)
    present = batch.get("present", {}).get(modality)
    if level > 0:
        if stats is None:
            rows = torch.arange(len(next(iter(tensors.values()))))
            if present is not None:
                rows = rows[present.bool().cpu()]
            stats = {k: _marginal(k, t, rows.to(t.device), {}) for k, t in tensors.items()
                     if k in _CONTINUOUS + _DISCRETE and len(rows) and t.numel()}
        for key, t in tensors.items():
            st = stats.get(key)
            if st is None or not t.numel():
                continue
            if key in _CONTINUOUS:
                new[key] = _mix_continuous(t, st["mean"], st["std"], level, generator, channel=key == "pixels")
            elif key == "cat":
                cols = [_swap_discrete(t[:, j], _draw(p, t.shape[:1], generator), level, generator)
                        for j, p in enumerate(st["probs"])]
                new[key] = torch.stack(cols, 1) if cols else t
            else:  # tokens
                new[key] = _swap_discrete(t, _draw(st["probs"], t.shape, generator), level, generator, keep=t == 0)
    if present is not None and not bool(present.all()):
        absent = ~present.to(torch.bool)
        for k, t in new.items():
            if t is not tensors[k]:
                t[absent.to(t.device)] = 0
    out = dict(batch)
    out["inputs"] = dict(batch["inputs"])
    out["inputs"][modality] = new
    return out


# ----------------------------------------------------------- drop at inference
def _imputing_transform(modality: str, fill: Mapping[str, torch.Tensor] | None) -> Callable[[dict], dict]:
    """A batch transform that puts zeros (``fill`` None) or ``fill`` values into every
    row of ``modality`` and flags it present."""

    def transform(batch: dict[str, Any]) -> dict[str, Any]:
        tensors = batch["inputs"][modality]
        new = {}
        for k, t in tensors.items():
            if fill is None:
                new[k] = torch.zeros_like(t)
            else:
                new[k] = fill[k].to(t.device, t.dtype).expand_as(t).clone()
        out = dict(batch)
        out["inputs"] = {**batch["inputs"], modality: new}
        p = batch["present"][modality]
        out["present"] = {**batch["present"], modality: torch.ones_like(p, dtype=torch.bool)}
        return out

    return transform


def drop_modality_hooks(trainer: Any, modality: str, mode: str = "mask"
                        ) -> tuple[dict[str, bool] | None, Callable[[dict], dict] | None]:
    """The ``(present_override, transform)`` pair that removes ``modality`` at inference
    (see ``drop_modality``); usable with ``trainer.predict`` too."""
    ds = trainer_dataset(trainer)
    check_modality(ds, modality)
    if mode not in DROP_MODES:
        raise MMLibError(f"Unknown drop mode {mode!r}; choose one of {DROP_MODES}.")
    if mode == "mask":
        return {modality: False}, None
    fill = None if mode == "zero" else imputation_values(ds, modality)
    return None, _imputing_transform(modality, fill)


def drop_modality(trainer: Any, modality: str, mode: str = "mask", split: str = "test") -> dict[str, float]:
    """Metrics of a trained model on ``split`` with ``modality`` removed at inference.

    - ``"mask"``: the modality is flagged absent for every row; the model takes its
      own missing-modality path (what a deployed model sees when an input is missing);
    - ``"zero"``: its inputs are replaced by zeros but flagged present (a naive
      pipeline that fills a missing input with zeros);
    - ``"mean"``: its inputs are replaced by the training-split mean (numeric
      tensors, per column / pixel / dimension) or mode (token and category ids,
      per position) and flagged present (mean imputation).

    In ``zero`` and ``mean`` every row is imputed, including rows where the modality
    was missing to begin with. A model that does not read ``modality`` is unaffected.
    A ``"mask"`` score is only a finding when ``missing_path_trained(trainer, modality)``.
    """
    override, transform = drop_modality_hooks(trainer, modality, mode)
    return trainer.evaluate(split, present_override=override, transform=transform)


# ------------------------------------------------------------ robustness curves
def robustness_curve(trainer: Any, modality: str, levels: Iterable[float], split: str = "test",
                     seed: int = 0) -> pd.DataFrame:
    """Metrics on ``split`` with ``modality`` corrupted at each level (``corrupt_batch``).

    One row per level, columns ``level`` then the metrics of ``trainer.evaluate``.
    Every level restarts the same random stream (``seed``), so the curve is smooth
    in the level (common random numbers) and reproducible; level 0 equals the clean
    evaluation exactly.
    """
    ds = trainer_dataset(trainer)
    check_modality(ds, modality)
    levels = [_check_level(lv) for lv in levels]
    if not levels:
        raise MMLibError("robustness_curve: give at least one noise level, e.g. [0, 0.25, 0.5, 0.75, 1].")
    stats = corruption_stats(ds, modality)
    rows = []
    for level in levels:
        gen = torch.Generator().manual_seed(int(seed))

        def transform(batch, level=level, gen=gen):
            return corrupt_batch(batch, modality, level, generator=gen, stats=stats)

        metrics = trainer.evaluate(split, transform=transform)
        rows.append({"level": level, **metrics})
    return pd.DataFrame(rows)


def _curve(levels: Sequence[float], scores: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(levels, dtype=float).ravel()
    y = np.asarray(scores, dtype=float).ravel()
    if x.shape != y.shape or len(x) < 2:
        raise MMLibError(f"{what}: need at least two levels and one score per level "
                         f"(got {len(x)} levels, {len(y)} scores).")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if x[-1] == x[0]:
        raise MMLibError(f"{what}: the levels span no range ({x[0]}).")
    return x, y


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x) / 2))


def relative_robustness(levels: Sequence[float], scores: Sequence[float]) -> float:
    """MultiBench's relative robustness: the area under the metric-vs-noise curve,
    normalised by the range of levels,

        RR = ∫ f(l) dl / (l_max − l_min)    (trapezoid rule over the given levels).

    MultiBench (Liang et al. 2021, ``eval_scripts/robustness.py``) sums trapezoids of
    width 0.1 over 11 levels in [0, 1], which is this formula on that grid. A flat
    curve at score s gives s. Higher is better for a higher-is-better metric; for an
    error metric (MAE) lower is better. (MultiBench then min-max normalises over its
    pool of benchmarked methods; that step needs the pool and is left out.)
    """
    x, y = _curve(levels, scores, "relative_robustness")
    return _trapezoid(x, y) / (x[-1] - x[0])


def effective_robustness(levels: Sequence[float], scores: Sequence[float], ref_scores: Sequence[float]) -> float:
    """MultiBench's effective robustness: how much better a model holds up than a
    reference (late fusion in MultiBench) once both curves start from the same clean
    score,

        ER = ∫ [(f(l) − f(l₀)) − (ref(l) − ref(l₀))] dl / (l_max − l_min),

    with l₀ the lowest (clean) level, by the trapezoid rule. Positive: the model
    loses less than the reference as noise grows. MultiBench computes
    ``sum(f − (ref + f[0] − ref[0]))`` over its 11 levels (the same quantity as an
    unnormalised sum instead of an area, then min-max normalised over its pool);
    the area keeps the number comparable across level grids.
    """
    x, y = _curve(levels, scores, "effective_robustness")
    xr, r = _curve(levels, ref_scores, "effective_robustness (reference)")
    gain = (y - y[0]) - (r - r[0])
    return _trapezoid(x, gain) / (x[-1] - x[0])


__all__ = [
    "DROP_MODES", "kind_of", "imputation_values", "missing_path_trained", "untrained_paths", "corruption_stats",
    "corrupt_batch", "drop_modality_hooks",
    "drop_modality", "robustness_curve", "relative_robustness", "effective_robustness",
]
