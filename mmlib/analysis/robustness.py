"""Robustness of a trained model: a modality dropped at inference, noise at levels,
and robustness curves with MultiBench's relative / effective robustness scores.

Everything here works on a trained ``mmlib.training.trainer.Trainer`` through its two
inference hooks, so no model is modified:

- ``present_override={modality: False}`` flags a modality absent for every row:
  the model takes its own missing-modality path (seed 003 part 3, "drop at
  inference");
- ``transform=callable(batch) -> batch`` rewrites a batch before the forward pass
  (zero / mean imputation, noise at a level).

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
TABULAR_NOISE_SCALE = 3.0  # std of the noise on standardised numeric columns at level 1
IMAGE_NOISE_SCALE = 128.0  # std of the pixel noise (uint8 scale) at level 1
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


def corruption_stats(ds, modality: str) -> dict[str, Any]:
    """What ``corrupt_batch`` needs to know about a modality beyond one batch: the
    vocabulary size (text), category cardinalities (tabular) and the training-split
    feature std (embedding)."""
    check_modality(ds, modality)
    m = ds.modalities[modality]
    info = dict(m.info)
    stats: dict[str, Any] = {}
    if m.kind == "text":
        v = info.get("vocab_size") or (len(info["vocab"]) if info.get("vocab") is not None else 0)
        stats["vocab_size"] = max(int(v or 0), int(m.tensors["tokens"].max()) + 1)
    elif m.kind == "tabular" and "cat" in m.tensors and m.tensors["cat"].shape[1]:
        cards = info.get("cat_cardinalities")
        data_max = (m.tensors["cat"].max(dim=0).values + 1).tolist()
        stats["cat_cardinalities"] = [max(int(c), int(d)) for c, d in zip(cards, data_max)] if cards else data_max
    elif m.kind == "embedding":
        stats["feature_std"] = _float_mean_std(m.tensors["x"], _present_train_rows(ds, modality))[1].float()
    return stats


# -------------------------------------------------------------------- corruption
def _uniform_ids(shape, low: torch.Tensor | int, high: torch.Tensor | int, generator) -> torch.Tensor:
    """Integers uniform in [low, high) (``low``/``high`` may broadcast per column); drawn on the CPU."""
    u = torch.rand(shape, generator=generator)
    low_t = torch.as_tensor(low, dtype=torch.float64)
    span = (torch.as_tensor(high, dtype=torch.float64) - low_t).clamp(min=1)
    return (low_t + torch.floor(u.double() * span)).clamp(max=(low_t + span - 1)).long()


def corrupt_batch(batch: dict[str, Any], modality: str, level: float, generator: torch.Generator | None = None,
                  stats: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A copy of ``batch`` with ``modality``'s inputs corrupted at ``level`` in [0, 1].

    ========= =================================================================
    kind      corruption at level ``l``
    ========= =================================================================
    tabular   numeric columns (standardised) + N(0, (3·l)²); each categorical
              cell replaced with prob. ``l`` by a uniform random known level
    text      each non-padding token replaced with prob. ``l`` by a uniform
              random vocabulary id (not padding, not OOV)
    image     pixels + N(0, (128·l)²), rounded and clipped to [0, 255]
    embedding features + N(0, (l · feature std)²) per dimension
    ========= =================================================================

    Level 0 returns identical inputs; level 1 replaces the signal. Random numbers
    come from ``generator`` (a CPU ``torch.Generator``; the global RNG if None), so
    the result is the same on every device for the same generator state.
    ``stats`` (from ``corruption_stats``) gives the vocabulary size, category
    cardinalities and embedding std; without it they are read off the batch.
    Rows where the modality is absent keep their zeros. The presence mask, other
    modalities and the input batch are left untouched.
    """
    level = _check_level(level)
    if modality not in batch["inputs"]:
        raise MMLibError(f"The batch has no modality {modality!r}; it has {list(batch['inputs'])}.")
    tensors = batch["inputs"][modality]
    kind = kind_of(tensors)
    stats = dict(stats or {})
    new: dict[str, torch.Tensor] = dict(tensors)

    if kind == "tabular":
        if "num" in tensors and tensors["num"].numel():
            num = tensors["num"]
            noise = torch.randn(num.shape, generator=generator).to(num.device, num.dtype)
            new["num"] = num + (TABULAR_NOISE_SCALE * level) * noise
        if "cat" in tensors and tensors["cat"].numel():
            cat = tensors["cat"]
            cards = stats.get("cat_cardinalities") or (cat.max(dim=0).values + 1).tolist()
            high = torch.tensor([max(int(c), 2) for c in cards])
            swap = torch.rand(cat.shape, generator=generator) < level
            ids = _uniform_ids(cat.shape, 1, high, generator)  # 1.. = known levels (0 = unknown)
            new["cat"] = torch.where(swap.to(cat.device), ids.to(cat.device, cat.dtype), cat)
    elif kind == "text":
        tok = tensors["tokens"]
        vocab = int(stats.get("vocab_size") or (int(tok.max()) + 1 if tok.numel() else 2))
        swap = torch.rand(tok.shape, generator=generator) < level
        low, high = (2, vocab) if vocab > 2 else (1, 2)  # 0 = padding, 1 = out-of-vocabulary
        ids = _uniform_ids(tok.shape, low, high, generator)
        swap = swap.to(tok.device) & (tok != 0)
        new["tokens"] = torch.where(swap, ids.to(tok.device, tok.dtype), tok)
    elif kind == "image":
        px = tensors["pixels"]
        noise = torch.randn(px.shape, generator=generator).to(px.device)
        new["pixels"] = (px.float() + (IMAGE_NOISE_SCALE * level) * noise).round().clamp(0, 255).to(px.dtype)
    else:  # embedding
        x = tensors["x"]
        std = stats.get("feature_std")
        if std is None:
            std = x.float().std(dim=0, unbiased=False) if x.shape[0] > 1 else torch.ones(x.shape[1:])
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        new["x"] = x + level * torch.as_tensor(std, device=x.device, dtype=x.dtype) * noise

    present = batch.get("present", {}).get(modality)
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
    "DROP_MODES", "kind_of", "imputation_values", "corruption_stats", "corrupt_batch", "drop_modality_hooks",
    "drop_modality", "robustness_curve", "relative_robustness", "effective_robustness",
]
