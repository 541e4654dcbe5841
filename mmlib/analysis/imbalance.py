"""Modality imbalance (seed 003 part 5, notebook 50): weaken one modality on purpose,
and the remedies that try to keep a fused model from ignoring it.

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

The experiment of notebook 50: ``pick_weak_modality`` chooses the modality to weaken,
``imbalance_conditions`` the weakenings, and ``imbalance_experiment`` trains every
(condition, remedy) over seeds and scores each model with the weakened modality
masked (``without_weak``) and with it alone (``weak_alone``: the fused model with
every other modality masked).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from mmlib.analysis.robustness import corrupt_batch, corruption_stats, drop_modality
from mmlib.analysis.summaries import Summary
from mmlib.data.base import Modality, MultimodalDataset
from mmlib.reporting.records import RecordWriter, load_records
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
_TRACKED = re.compile(r"^val_(?P<metric>.+?)_(?P<what>without|head)_(?P<modality>.+)$")
_OGM = re.compile(r"^ogm_coef_(?P<modality>.+)$")


def contribution_table(fit_result: Any, metric: str | None = None) -> pd.DataFrame:
    """Per-modality quantities tracked during training as a tidy frame
    ``(epoch, modality, quantity, value)``.

    From the trainer's history (``fit_result.history`` or a DataFrame):

    - ``without``: ``val_<metric>_without_<m>`` — validation score with ``m`` masked;
    - ``contribution``: ``val_<metric> − val_<metric>_without_<m>`` — what the model
      loses when ``m`` is masked (≈ 0: the modality is ignored);
    - ``head``: ``val_<metric>_head_<m>`` — validation score of the auxiliary unimodal
      head of ``m`` (the models built with ``aux_heads=True``);
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


# ------------------------------------------------------------------- experiment
@dataclass
class ImbalanceSummary(Summary):
    """``Summary`` of ``imbalance_experiment`` plus, per condition label, the contribution
    over training of every modality (seed 0, all remedies): ``contribution_table`` rows
    of quantity ``contribution`` with a ``remedy`` column."""

    contributions: dict[str, pd.DataFrame] = field(default_factory=dict)


def pick_weak_modality(ds: MultimodalDataset, weak: str, records_dir: Any, metric: str) -> str:
    """The modality to weaken: ``weak`` itself when it names a modality of ``ds``; for
    ``"strongest"`` the strongest single modality in notebook 10's published records
    (falling back to the largest single-modality ceiling, then the first modality)."""
    if weak == "auto":
        raise MMLibError('weak_modality="auto" was renamed to "strongest" (it weakens the strongest single modality).')
    if weak != "strongest":
        if weak not in ds.modalities:
            raise MMLibError(f"weak_modality={weak!r} is neither 'strongest' nor a modality of {ds.name}: "
                             f"{ds.modality_names}.")
        return weak
    try:
        recs = load_records(records_dir, dataset=ds.name, notebook="10_unimodal_baselines")
        recs = recs[recs["experiment"] == "unimodal"]
        col = f"metric_test_{metric}"
        if len(recs) and col in recs:
            best = recs.groupby("modality_set")[col].mean().idxmax()
            if best in ds.modalities:
                return best
    except Exception:  # no published records yet: fall back
        pass
    if "ceilings" in ds.meta:
        return max(ds.modality_names, key=lambda m: ds.meta["ceilings"].get(m, 0.0))
    return ds.modality_names[0]


def imbalance_conditions(ds: MultimodalDataset, weak: str, fewer_rows: float, corrupt: float,
                         truncate: float) -> list[dict]:
    """The weakenings to run: fewer rows and corrupted features of ``weak``, and truncated
    text (on ``weak`` if it is text, else on the first text modality)."""
    conds = [{"modality": weak, "how": "fewer_rows", "level": fewer_rows},
             {"modality": weak, "how": "corrupt", "level": corrupt}]
    texts = [m for m, mod in ds.modalities.items() if mod.kind == "text"]
    if texts:
        conds.append({"modality": weak if weak in texts else texts[0], "how": "truncate", "level": truncate})
    for c in conds:
        c["label"] = f"{c['modality']}:{c['how']}={c['level']:g}"
    return conds


def _verdicts(long: pd.DataFrame, conditions: list[dict], weak: str, metric: str) -> tuple[list[str], dict[str, str]]:
    """Per condition: does plain training adapt, collapse or degrade, and the best remedy."""
    clean = long[long.condition == "clean"]
    clean_test, clean_rel = clean["test"].mean(), clean["reliance_on_weak"].mean()
    lines = [f"Clean model: test {metric} {clean_test:.3f}; masking {weak} costs it {clean_rel:.3f}."]
    verdicts = {}
    for label in [c["label"] for c in conditions]:
        g = long[(long.condition == label)].groupby("remedy")[["test", "reliance_on_weak", "weak_alone"]].mean()
        if "none" not in g.index:
            continue
        base = g.loc["none"]
        if base["reliance_on_weak"] < 0.1 * max(clean_rel, 1e-6) and label.startswith(weak + ":"):
            verdict = "collapses onto the other modalities (the weakened one is nearly ignored)"
        elif clean_test - base["test"] < 0.01:
            verdict = "adapts (test score within 0.01 of the clean model)"
        else:
            verdict = f"degrades by {clean_test - base['test']:.3f}"
        verdicts[label] = verdict
        best = g["test"].idxmax()
        lines.append(f"**{label}**: plain training scores {base['test']:.3f} and relies on the weakened modality "
                     f"for {base['reliance_on_weak']:.3f} — it {verdict}. Best remedy: **{best}** "
                     f"({g.loc[best, 'test']:.3f}, {g.loc[best, 'test'] - base['test']:+.3f} vs none).")
    return lines, verdicts


def imbalance_experiment(ds: MultimodalDataset, conditions: list[dict], remedies: Mapping[str, tuple],
                         profile: Mapping, notebook: str, device: str, writer: RecordWriter, metric: str,
                         weak: str) -> ImbalanceSummary:
    """Train every (condition, remedy) over the profile's seeds (plus the clean model
    with no remedy); record the test score, the score with the weakened modality masked
    (``test_without_weak``) and with it alone (``test_weak_alone``: every other modality
    masked), and ``reliance_on_weak`` = test − without_weak; classify adapt / collapse / degrade."""
    from mmlib.training.experiments import run_fusion

    mods = ds.modality_names
    rows, contributions = [], {}
    settings = [({"modality": weak, "how": "none", "level": 0.0, "label": "clean"}, "none")]
    settings += [(c, r) for c in conditions for r in remedies]
    seeds = profile.get("imbalance_seeds") or profile["seeds"]
    for cond, remedy in settings:
        model_kwargs, train_kwargs = remedies[remedy]
        for seed in seeds:
            data = ds if cond["how"] == "none" else weaken(ds, cond["modality"], cond["how"], cond["level"], seed=seed)
            track = seed == seeds[0]
            run = run_fusion(data, "early", mods, seed, profile, notebook, "imbalance", condition=cond["label"],
                             model_kwargs=model_kwargs, train_kwargs={**train_kwargs, "track_modalities": track},
                             device=device, writer=None, model_name=remedy, progress=False)
            test = float(run.metrics["test"][metric])
            target = cond["modality"]
            without = float(drop_modality(run.trainer, target, "mask", "test")[metric])
            others = [m for m in mods if m != target]
            alone = float(run.trainer.evaluate("test", present_override={m: False for m in others})[metric]) \
                if others else test
            rec = dict(run.record)
            rec["metrics"] = {**rec["metrics"], "test_without_weak": without, "test_weak_alone": alone,
                              "reliance_on_weak": test - without}
            writer.add(rec)
            rows.append({"condition": cond["label"], "remedy": remedy, "seed": seed, "test": test,
                         "without_weak": without, "weak_alone": alone, "reliance_on_weak": test - without})
            if track:
                c = contribution_table(run.fit)
                c = c[c["quantity"] == "contribution"].assign(remedy=remedy)
                contributions.setdefault(cond["label"], []).append(c)
    long = pd.DataFrame(rows)
    table = long.groupby(["condition", "remedy"])[["test", "without_weak", "weak_alone", "reliance_on_weak"]].agg(
        ["mean", "std"]).round(4)
    lines, verdicts = _verdicts(long, conditions, weak, metric)
    return ImbalanceSummary(table, " ".join(lines), {"verdicts": verdicts}, long,
                            {k: pd.concat(v, ignore_index=True) for k, v in contributions.items()})


__all__ = ["WEAKEN_HOWS", "REMEDIES", "weaken", "contribution_table", "ImbalanceSummary", "pick_weak_modality",
           "imbalance_conditions", "imbalance_experiment"]
