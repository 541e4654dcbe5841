"""Modality attribution: how much of a fused model's score each modality earns.

The value of a subset of modalities is a score (``subset_values_by_masking``: the
trained model with the other modalities masked at inference, meaningful only where the
model was trained with them missing; ``subset_values_interventional``: the other
modalities taken from random background rows, averaged over draws; or a model
retrained on that subset); ``shapley_values`` splits the full score minus that of a constant
prediction (``constant_prediction`` / ``constant_metrics``, the empty subset) fairly
among the modalities, exactly, over ``all_subsets``. ``shapley_table`` puts the split in
a DataFrame. ``modality_weights`` reads the weights that weighting fusions give each
modality themselves.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from mmlib.analysis.robustness import check_modality, split_rows, trainer_dataset, trainer_modalities
from mmlib.training.metrics import compute_metrics
from mmlib.training.tasks import get_task, primary_metric
from mmlib.utils import MMLibError


def all_subsets(players: Sequence[str]) -> list[frozenset[str]]:
    """Every subset of ``players``, the empty set first, by size."""
    players = list(players)
    return [frozenset(c) for r in range(len(players) + 1) for c in itertools.combinations(players, r)]


def shapley_values(value: Mapping[frozenset[str], float], players: Sequence[str]) -> dict[str, float]:
    """Exact Shapley values of a cooperative game over ``players`` (all subsets):

        φ_i = Σ_{S ⊆ N∖{i}} |S|! (n − |S| − 1)! / n! · (v(S ∪ {i}) − v(S)).

    ``value`` must give v(S) for every subset S, the empty set included (e.g. the
    score of a constant prediction); a missing subset is an error rather than a
    silent 0. The values add up to v(N) − v(∅) (efficiency).
    """
    players = list(players)
    if len(set(players)) != len(players) or not players:
        raise MMLibError(f"shapley_values: players must be distinct and non-empty, got {players}.")
    value = {frozenset(k): float(v) for k, v in value.items()}
    missing = [sorted(s) for s in all_subsets(players) if s not in value]
    if missing:
        raise MMLibError(f"shapley_values: no value for subset(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                         "every subset, the empty one included, needs a value.")
    n = len(players)
    out = {}
    for p in players:
        others = [q for q in players if q != p]
        total = 0.0
        for r in range(n):
            w = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
            for coal in itertools.combinations(others, r):
                s = frozenset(coal)
                total += w * (value[s | {p}] - value[s])
        out[p] = total
    return out


def _metric_from(metrics: Mapping[str, float], metric: str, split: str) -> float:
    for key in (metric, f"{split}_{metric}"):
        if key in metrics:
            return float(metrics[key])
    raise MMLibError(f"Metric {metric!r} not among the evaluation's metrics {sorted(metrics)}.")


def constant_prediction(ds, n: int) -> np.ndarray:
    """The best input-free prediction for ``n`` rows, in the format ``Trainer.predict``
    returns: the training mean (regression), the positive-class rate (binary) or the
    class prior (multiclass, [n, C])."""
    y = ds.target[torch.as_tensor(split_rows(ds, "train"), device=ds.target.device)].detach().cpu()
    if ds.task == "regression":
        return np.full(n, float(y.double().mean()))
    if ds.task == "binary":
        return np.full(n, float(y.double().mean()))
    prior = torch.bincount(y.long(), minlength=int(ds.n_classes)).double()
    prior = (prior / prior.sum()).numpy()
    return np.tile(prior, (n, 1))


def constant_metrics(ds, split: str = "test") -> dict[str, float]:
    """Metrics of ``constant_prediction`` on ``split`` (R² ≈ 0, AUC 0.5, ...)."""
    rows = split_rows(ds, split)
    y = ds.target[torch.as_tensor(rows, device=ds.target.device)].detach().cpu().numpy()
    return compute_metrics(ds.task, y, constant_prediction(ds, len(rows)), n_classes=ds.n_classes)


def subset_values_by_masking(trainer: Any, modalities: Sequence[str] | None = None, split: str = "test",
                             metric: str | None = None) -> dict[frozenset[str], float]:
    """The value of every subset S of ``modalities`` (default: the model's) for a trained
    model: ``metric`` on ``split`` with every modality outside S masked at inference.
    The empty set is the metric of a constant prediction (training mean / class
    prior), not of the model with everything masked; so is any subset holding none of
    the modalities the model reads (a modality the model ignores gets Shapley value 0).
    ``metric`` defaults to the task's primary metric. Feed the result to ``shapley_values``.
    Only meaningful when every masked path was trained
    (``mmlib.analysis.robustness.missing_path_trained``); otherwise use
    ``subset_values_interventional``."""
    ds = trainer_dataset(trainer)
    mods = list(modalities) if modalities is not None else trainer_modalities(trainer)
    for m in mods:
        check_modality(ds, m)
    metric = metric or primary_metric(ds.task)[0]
    used = set(trainer_modalities(trainer))
    values: dict[frozenset[str], float] = {frozenset(): _metric_from(constant_metrics(ds, split), metric, split)}
    for s in all_subsets(mods):
        if not s & used:  # nothing the model reads: no information, the same value as the empty set
            values[s] = values[frozenset()]
            continue
        override = {m: False for m in mods if m not in s}
        values[s] = _metric_from(trainer.evaluate(split, present_override=override or None), metric, split)
    return values


def _donor_transform(ds, replaced: Sequence[str], donors: torch.Tensor, pos: torch.Tensor):
    """A batch transform that gives every row the ``replaced`` modalities (tensors and
    presence) of its donor row ``donors[pos[idx]]``."""

    def transform(batch: dict[str, Any]) -> dict[str, Any]:
        idx = batch["idx"]
        donor = donors[pos[idx.cpu()]]
        out = dict(batch)
        out["inputs"], out["present"] = dict(batch["inputs"]), dict(batch["present"])
        for m in replaced:
            mod = ds.modalities[m]
            d = donor.to(mod.present.device)
            out["inputs"][m] = {k: t[d] for k, t in mod.tensors.items()}
            out["present"][m] = mod.present[d]
        return out

    return transform


def subset_values_interventional(trainer: Any, modalities: Sequence[str] | None = None, split: str = "test",
                                 background: str = "train", draws: int = 8, seed: int = 0,
                                 metric: str | None = None) -> dict[frozenset[str], float]:
    """Interventional subset values for a trained model: v(S) is ``metric`` on ``split`` of
    the predictions averaged over ``draws`` background draws, where in each draw every
    row takes the modalities outside S (their tensors *and* presence) from one random
    row of the ``background`` split (the same donor row for all of them, so their joint
    distribution is kept; donors drawn with ``seed``, the same for every subset).

    Unlike masking (``subset_values_by_masking``), this never asks the model for a
    path it was not trained on: every input it sees is a real row's. v(N) is the
    model's own score; v(∅) (every modality the model reads from the donor) uses the
    same K draws, so the finite-K spread that remains in the averaged predictions
    lowers v(∅) and v(S) alike and largely cancels in the Shapley differences (a
    modality the model ignores, or that is pure noise, gets about 0). Predictions are
    averaged in ``trainer.predict``'s units (original units for regression,
    probabilities for classification) and scored with the task's metrics; ``metric``
    defaults to the task's primary metric. Feed the result to ``shapley_values``."""
    ds = trainer_dataset(trainer)
    mods = list(modalities) if modalities is not None else trainer_modalities(trainer)
    for m in mods:
        check_modality(ds, m)
    if int(draws) < 1:
        raise MMLibError(f"subset_values_interventional: draws={draws}; give at least 1 background draw.")
    task = get_task(ds.task)
    metric = metric or task.metric
    rows = torch.as_tensor(split_rows(ds, split), dtype=torch.long)
    bg = torch.as_tensor(split_rows(ds, background), dtype=torch.long)
    if len(bg) == 0 or len(rows) == 0:
        raise MMLibError(f"subset_values_interventional: split {split!r} or background {background!r} has no rows.")
    y = ds.target[rows.to(ds.target.device)].detach().cpu().numpy()

    def score(pred: np.ndarray) -> float:
        return _metric_from(task.metrics(y, pred, ds.n_classes), metric, split)

    used = set(trainer_modalities(trainer))
    gen = torch.Generator().manual_seed(int(seed))
    donors = bg[torch.randint(len(bg), (int(draws), len(rows)), generator=gen)]
    pos = torch.full((ds.n,), -1, dtype=torch.long)
    pos[rows] = torch.arange(len(rows))
    by_replaced: dict[frozenset[str], float] = {}  # subsets that replace the same modalities share a value
    values: dict[frozenset[str], float] = {}
    for s in all_subsets(mods):
        replaced = [m for m in mods if m not in s and m in used]
        key = frozenset(replaced)
        if key not in by_replaced:
            if not replaced:
                by_replaced[key] = score(trainer.predict(rows.numpy()))
            else:
                total = sum(trainer.predict(rows.numpy(), transform=_donor_transform(ds, replaced, donors[k], pos))
                            for k in range(int(draws)))
                by_replaced[key] = score(total / int(draws))
        values[s] = by_replaced[key]
    return values


def shapley_table(value: Mapping[frozenset[str], float], players: Sequence[str]) -> pd.DataFrame:
    """Shapley values as a DataFrame (modality, shapley, share of v(N) − v(∅), solo value v({m}))."""
    phi = shapley_values(value, players)
    total = value[frozenset(players)] - value[frozenset()]
    return pd.DataFrame({
        "modality": list(phi),
        "shapley": [phi[p] for p in phi],
        "share": [phi[p] / total if total else np.nan for p in phi],
        "solo": [value[frozenset([p])] - value[frozenset()] for p in phi],
    })


def modality_weights(runs: Mapping[str, Any], split: str = "test", batch_size: int = 1024) -> pd.DataFrame:
    """Mean per-row modality weight on ``split`` for every run whose fusion exposes
    ``weights`` (late, learned weights, gated, attention): how the fusion itself splits its
    attention among the modalities."""
    rows = {}
    for name, run in runs.items():
        model, ds = run.model, run.trainer.data
        mods = list(model.encoders.keys()) if hasattr(model, "encoders") else []
        model.eval()
        acc, n = None, 0
        with torch.no_grad():
            for b in ds.batches(split, batch_size):
                out = model(b["inputs"], b["present"])
                w = out.get("weights")
                if w is None:
                    break
                w = w.float()
                acc = w.sum(0) if acc is None else acc + w.sum(0)
                n += len(w)
        if acc is not None and n and acc.numel() == len(mods):
            rows[name] = pd.Series((acc / n).cpu().numpy(), index=mods)
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).T.round(3)


__all__ = ["all_subsets", "shapley_values", "shapley_table", "constant_prediction", "constant_metrics",
           "subset_values_by_masking", "subset_values_interventional", "modality_weights"]
