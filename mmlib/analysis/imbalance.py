"""Modality imbalance (seed 003 part 5): weaken one modality on purpose, and the
remedies that try to keep a fused model from ignoring it.

``weaken(dataset, modality, how, level)`` returns a *new* dataset (the original is
untouched) where one modality is weaker:

- ``"fewer_rows"``: the modality is removed from a fraction ``level`` of the
  *training* rows (validation and test untouched): less data to learn it from;
- ``"corrupt"``: its features are corrupted at ``level`` in every split, once, with
  ``mmlib.analysis.robustness.corrupt_batch`` semantics: a noisier signal;
- ``"truncate"`` (text only): each text keeps only its first round((1 − level)·L)
  tokens (L its own length): the signal at the end of the sentence is lost.

Remedies are configured through existing knobs (``REMEDIES``): modality dropout
(``build_model(..., modality_dropout=p)``), unimodal auxiliary losses
(``aux_heads=True`` + ``TrainConfig(aux_weight=w)``) and OGM-GE, on-the-fly
gradient modulation (Peng et al. 2022; ``aux_heads=True`` + ``TrainConfig(ogm_alpha=a)``).
``contribution_table`` turns the per-modality quantities the trainer tracks each
epoch into a tidy frame for plotting contribution over training.
"""
from __future__ import annotations

import copy
import re
from typing import Any

import numpy as np
import pandas as pd
import torch

from mmlib.data.base import Modality, MultimodalDataset
from mmlib.analysis.robustness import corrupt_batch, corruption_stats
from mmlib.utils import MMLibError

WEAKEN_HOWS = ("fewer_rows", "corrupt", "truncate")
_CHUNK = 2048

# Remedy name -> (build_model keyword arguments, TrainConfig keyword arguments).
REMEDIES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # plain training: the baseline every remedy is compared with
    "none": ({}, {}),
    # each (row, modality) is hidden with prob. 0.3 during training: the head must cope with any subset
    "modality_dropout": ({"modality_dropout": 0.3}, {}),
    # a linear head per modality, trained on its own features with weight 0.5 next to the fused loss
    "aux_losses": ({"aux_heads": True}, {"aux_weight": 0.5}),
    # OGM-GE: damp the gradients of the modality that currently dominates (alpha 0.5), plus Gaussian noise.
    # The trainer scores each modality with its unimodal head; a small aux weight trains those heads (AdamW
    # scales their updates independently of the weight) while barely touching the encoders.
    "ogm_ge": ({"aux_heads": True}, {"ogm_alpha": 0.5, "aux_weight": 0.05}),
}


def _round_half_up(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.floor(torch.as_tensor(x, dtype=torch.float64) + 0.5).long()


def _other_present(ds: MultimodalDataset, modality: str) -> torch.Tensor:
    others = [m.present for name, m in ds.modalities.items() if name != modality]
    if not others:
        return torch.zeros(ds.n, dtype=torch.bool, device=ds.modalities[modality].present.device)
    return torch.stack(others, dim=1).any(dim=1)


def weaken(dataset: MultimodalDataset, modality: str, how: str, level: float, seed: int = 0) -> MultimodalDataset:
    """A copy of ``dataset`` with ``modality`` weakened (see the module docstring).

    - ``fewer_rows``: ``round(level · n_train)`` training rows, drawn uniformly from
      ``seed``, lose the modality (presence False, tensors zeroed). A drawn row where
      it is the only modality present keeps it (every row keeps one modality), and a
      row that already lacked it stays as it was.
    - ``corrupt``: every row's features are corrupted at ``level`` (one draw from ``seed``).
    - ``truncate``: text only; rows keep their first round-half-up((1 − level)·L) tokens.

    Only ``modality``'s tensors are copied; the others are shared with ``dataset``
    (neither is modified). ``meta["weakened"]`` records what was done.
    """
    if modality not in dataset.modalities:
        raise MMLibError(f"Unknown modality {modality!r}; dataset {dataset.name!r} has {dataset.modality_names}.")
    if how not in WEAKEN_HOWS:
        raise MMLibError(f"Unknown way to weaken {how!r}; choose one of {WEAKEN_HOWS}.")
    level = float(level)
    if not 0.0 <= level <= 1.0:
        raise MMLibError(f"weaken: level={level} must be in [0, 1].")
    mod = dataset.modalities[modality]
    tensors = {k: v.clone() for k, v in mod.tensors.items()}
    present = mod.present.clone()
    detail: dict[str, Any] = {"modality": modality, "how": how, "level": level, "seed": int(seed)}

    if how == "fewer_rows":
        train = torch.as_tensor(dataset.splits["train"], dtype=torch.long)
        g = torch.Generator().manual_seed(int(seed))
        k = int(_round_half_up(level * len(train)))
        chosen = train[torch.randperm(len(train), generator=g)[:k]].to(present.device)
        chosen = chosen[_other_present(dataset, modality)[chosen]]  # never leave a row with nothing
        present[chosen] = False
        for t in tensors.values():
            t[chosen.to(t.device)] = 0
        detail.update(rows_removed=int(mod.present[chosen].sum()),
                      train_present_fraction=float(present[train.to(present.device)].float().mean()))
    elif how == "corrupt":
        stats = corruption_stats(dataset, modality)
        g = torch.Generator().manual_seed(int(seed))
        for start in range(0, dataset.n, _CHUNK):
            sl = slice(start, start + _CHUNK)
            batch = {"inputs": {modality: {k: t[sl] for k, t in tensors.items()}},
                     "present": {modality: present[sl]}}
            out = corrupt_batch(batch, modality, level, generator=g, stats=stats)["inputs"][modality]
            for k, t in tensors.items():
                t[sl] = out[k]
    else:  # truncate
        if mod.kind != "text":
            raise MMLibError(f"weaken(how='truncate') needs a text modality; {modality!r} is {mod.kind}.")
        tok = tensors["tokens"]
        lengths = (tok != 0).sum(dim=1)
        keep = _round_half_up((1.0 - level) * lengths.double().cpu()).to(tok.device)
        # keep the first `keep` non-padding tokens of each row (tokens are left-aligned; robust if not)
        rank = torch.cumsum((tok != 0).long(), dim=1)
        tok[(rank > keep[:, None]) & (tok != 0)] = 0
        detail.update(mean_tokens_before=float(lengths[present].float().mean()) if present.any() else 0.0,
                      mean_tokens_after=float((tok != 0).sum(dim=1)[present].float().mean()) if present.any() else 0.0)

    new_mod = Modality(mod.name, mod.kind, tensors, present, copy.copy(mod.info))
    out = dataset.with_modality(new_mod)
    out.meta = dict(dataset.meta)
    out.meta["weakened"] = detail
    return out


# ----------------------------------------------------------------- contribution
_TRACKED = re.compile(r"^val_(?P<metric>.+?)_(?P<what>without|only)_(?P<modality>.+)$")
_OGM = re.compile(r"^ogm_coef_(?P<modality>.+)$")


def contribution_table(fit_result: Any, metric: str | None = None) -> pd.DataFrame:
    """Per-modality quantities tracked during training as a tidy frame
    ``(epoch, modality, quantity, value)``.

    From the trainer's history (``fit_result.history`` or a DataFrame):

    - ``without``: ``val_<metric>_without_<m>`` — validation score with ``m`` masked;
    - ``contribution``: ``val_<metric> − val_<metric>_without_<m>`` — what the model
      loses when ``m`` is masked (≈ 0: the modality is ignored);
    - ``only``: ``val_<metric>_only_<m>`` — validation score with only ``m`` present;
    - ``ogm_coef``: ``ogm_coef_<m>`` — OGM-GE's gradient coefficient (1 = untouched).

    ``metric`` picks one metric when several are tracked (default: the first seen).
    The metric's name is kept in ``frame.attrs["metric"]``.
    """
    hist = fit_result if isinstance(fit_result, pd.DataFrame) else getattr(fit_result, "history", None)
    if not isinstance(hist, pd.DataFrame):
        raise MMLibError("contribution_table: expected a FitResult (with a `history` DataFrame) or a DataFrame.")
    epochs = hist["epoch"].to_numpy() if "epoch" in hist else np.arange(1, len(hist) + 1)
    tracked = [(c, _TRACKED.match(c)) for c in hist.columns]
    tracked = [(c, m) for c, m in tracked if m]
    if metric is None and tracked:
        metric = tracked[0][1]["metric"]
    frames = []

    def add(col: str, modality: str, quantity: str, values) -> None:
        frames.append(pd.DataFrame({"epoch": epochs, "modality": modality, "quantity": quantity,
                                    "value": pd.to_numeric(pd.Series(values), errors="coerce").to_numpy()}))

    for col, m in tracked:
        if m["metric"] != metric:
            continue
        add(col, m["modality"], m["what"], hist[col])
        full = f"val_{metric}"
        if m["what"] == "without" and full in hist:
            add(col, m["modality"], "contribution", hist[full].to_numpy(dtype=float) - hist[col].to_numpy(dtype=float))
    for col in hist.columns:
        m = _OGM.match(col)
        if m:
            add(col, m["modality"], "ogm_coef", hist[col])
    if not frames:
        out = pd.DataFrame({"epoch": pd.Series(dtype=int), "modality": pd.Series(dtype=str),
                            "quantity": pd.Series(dtype=str), "value": pd.Series(dtype=float)})
    else:
        out = pd.concat(frames, ignore_index=True).dropna(subset=["value"])
        out = out.sort_values(["quantity", "modality", "epoch"], kind="stable").reset_index(drop=True)
    out.attrs["metric"] = metric
    return out


__all__ = ["WEAKEN_HOWS", "REMEDIES", "weaken", "contribution_table"]
