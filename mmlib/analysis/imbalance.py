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

Remedies are configured through existing knobs (``REMEDIES``, all on ``BASE_MODEL``, the
concatenation fusion with a linear head): modality dropout (``build_model(...,
modality_dropout=p)``), unimodal auxiliary losses (``aux_heads=True`` +
``TrainConfig(aux_weight=w)``), OGM-GE as published (Peng et al. 2022;
``TrainConfig(ogm_alpha=a)``) and our smooth variant of it (``ogm_variant="smooth"``).
``contribution_table`` turns the per-modality quantities the trainer tracks each
epoch into a tidy frame for plotting contribution over training.

The experiment of notebook 50: ``pick_weak_modality`` chooses the modality to weaken,
``imbalance_conditions`` the weakenings, and ``imbalance_experiment`` trains every
(condition, remedy), the clean data included, over the profile's seeds and scores each
model with the weakened modality masked (``without_weak``) and with it alone
(``weak_alone``: the fused model with every other modality masked).
``remedy_verdicts`` compares like with like: within one condition (same weakened
modality, same weakening), each remedy against no remedy, by paired-bootstrap
intervals over the test rows (``mmlib.analysis.verdicts``); the postmortem uses it too.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from mmlib.analysis.robustness import corrupt_batch, corruption_stats
from mmlib.analysis.summaries import Summary, as_frame
from mmlib.analysis.verdicts import Evidence, fmt_delta
from mmlib.data.base import Modality, MultimodalDataset
from mmlib.reporting.records import RecordWriter, load_records
from mmlib.utils import MMLibError

WEAKEN_HOWS = ("fewer_rows", "corrupt", "truncate")
_CHUNK = 2048

# The model every remedy is applied to: early fusion with a linear head over the concatenated
# encoder features, the concatenation fusion OGM-GE was published for (Peng et al. 2022), so
# that every remedy, OGM-GE as published included, is compared on the same model.
BASE_MODEL: dict[str, Any] = {"head_layers": 0}

# Remedy name -> (build_model keyword arguments, TrainConfig keyword arguments), on top of BASE_MODEL.
REMEDIES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # plain training, no modality dropout: the baseline every remedy is compared with
    "none": ({"modality_dropout": 0.0}, {}),
    # each (row, modality) is hidden with prob. 0.3 during training: the head must cope with any subset
    "modality_dropout": ({"modality_dropout": 0.3}, {}),
    # a linear head per modality, trained on its own features with weight 0.5 next to the fused loss
    "aux_losses": ({"modality_dropout": 0.0, "aux_heads": True}, {"aux_weight": 0.5}),
    # OGM-GE as published: the fused model's own per-modality contributions score each modality, the
    # dominant one's encoder gradients are scaled by 1 − tanh(α·ρ) (α 0.5), Gaussian noise on every branch
    "ogm_ge": ({"modality_dropout": 0.0}, {"ogm_alpha": 0.5}),
    # our earlier variant, named apart: unimodal auxiliary heads score the modalities (a small aux weight
    # trains them), coefficient 1 − tanh(α·relu(ρ − 1)), noise only on the damped branch
    "ogm_ge_smooth": ({"modality_dropout": 0.0, "aux_heads": True},
                      {"ogm_alpha": 0.5, "aux_weight": 0.05, "ogm_variant": "smooth"}),
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


MASKED_EXPERIMENT = "imbalance_weak_masked"  # records of the same runs scored with the weakened modality masked
_WORDS = {"better": "helps", "worse": "hurts", "not separable": "not separable"}


def _masked_frame(recs: pd.DataFrame) -> pd.DataFrame:
    """The weak-masked records; from the main records' ``test_without_weak`` when there are
    none (records without per-row predictions of the masked model)."""
    masked = recs[recs["experiment"] == MASKED_EXPERIMENT]
    if len(masked) or "metric_test_without_weak" not in recs:
        return masked
    main = recs[recs["experiment"] == "imbalance"]
    return main.assign(run_id=None, **{c: main["metric_test_without_weak"] for c in main.columns
                                       if c.startswith("metric_test_") and c != "metric_test_without_weak"})


def _plain_verdict(ev: Evidence, main: pd.DataFrame, masked: pd.DataFrame, label: str) -> str:
    """Does plain training adapt, collapse onto the other modalities, or degrade under ``label``?"""
    pick = lambda f, cond: f[(f["condition"] == cond) & (f["model"] == "none")]  # noqa: E731
    deg = ev.compare(pick(main, label), pick(main, "clean"))
    rel = ev.compare(pick(main, label), pick(masked, label))
    clean_rel = ev.compare(pick(main, "clean"), pick(masked, "clean"))
    if clean_rel["verdict"] == "better" and rel["verdict"] != "better":
        masked = {"delta": -rel["delta"], "low": -rel["high"], "high": -rel["low"]}
        return (f"collapses onto the other modalities: masking the weakened one changes its score by "
                f"{fmt_delta(masked)} (" + ("not separable from 0" if rel["verdict"] == "not separable"
                                            else "it scores better without it")
                + f"; the clean model loses {fmt_delta(clean_rel)})")
    if not np.isfinite(deg["low"]):
        return f"changes by {fmt_delta(deg)} against the clean model (one seed and no per-row predictions: not judged)"
    if deg["verdict"] == "worse":
        return f"degrades: {fmt_delta(deg)} against the clean model"
    return f"adapts: {fmt_delta(deg)} against the clean model ({deg['verdict']})"


def remedy_verdicts(records: pd.DataFrame, evidence: Evidence) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """Like with like: per condition of notebook 50's ``records`` (``clean`` first, then each
    weakening), plain training against the clean model, and each remedy against no remedy on
    the same condition, seeds and test rows, with the weakened modality masked at test time
    and with every input. Returns a table (one row per condition × remedy), one sentence
    per condition and ``{condition: plain-training verdict}``. ``evidence`` decides each
    comparison (paired bootstrap with predictions, else the seed spread)."""
    recs = records[records["experiment"].isin(["imbalance", MASKED_EXPERIMENT])]
    main, masked = recs[recs["experiment"] == "imbalance"], _masked_frame(recs)
    labels = list(dict.fromkeys(["clean", *main["condition"]]))
    rows, lines, plain = [], [], {}
    mean = lambda f: float(np.mean(list(evidence.scores(f).values()) or [np.nan]))  # noqa: E731
    for label in labels:
        g, gm = main[main["condition"] == label], masked[masked["condition"] == label]
        if "none" not in set(g["model"]):
            continue
        extra = g["extra"].iloc[0] if "extra" in g and isinstance(g["extra"].iloc[0], dict) else {}
        mod = extra.get("masked_modality") or (label.split(":")[0] if ":" in label else "the weakened modality")
        line = f"**{label}**: "
        if label != "clean":
            plain[label] = _plain_verdict(evidence, main, masked, label)
            line += f"plain training {plain[label]}. "
        by: dict[str, dict[str, list[str]]] = {"masked": {}, "full": {}}
        for remedy in [r for r in dict.fromkeys(g["model"]) if r != "none"]:
            a, am = g[g["model"] == remedy], gm[gm["model"] == remedy]
            d_full = evidence.compare(a, g[g["model"] == "none"])
            d_mask = evidence.compare(am, gm[gm["model"] == "none"])
            by["full"].setdefault(_WORDS[d_full["verdict"]], []).append(f"{remedy} {fmt_delta(d_full)}")
            by["masked"].setdefault(_WORDS[d_mask["verdict"]], []).append(f"{remedy} {fmt_delta(d_mask)}")
            rows.append({"condition": label, "remedy": remedy, "masked_modality": mod, "test": mean(a),
                         "vs_none": fmt_delta(d_full), "verdict": _WORDS[d_full["verdict"]], "weak_masked": mean(am),
                         "vs_none_weak_masked": fmt_delta(d_mask), "verdict_weak_masked": _WORDS[d_mask["verdict"]],
                         "method": d_mask["method"]})
        for key, what in (("masked", f"with {mod} masked at test time"), ("full", "with every input")):
            if by[key]:
                line += (f"Against no remedy {what}: " + "; ".join(f"{w}: {', '.join(v)}" for w, v in by[key].items())
                         + ". ")
        if line != f"**{label}**: ":
            lines.append(line.strip())
    table = pd.DataFrame(rows)
    if len(table):
        table = table.set_index(["condition", "remedy"])
    return table, lines, plain


def imbalance_experiment(ds: MultimodalDataset, conditions: list[dict], remedies: Mapping[str, tuple],
                         profile: Mapping, notebook: str, device: str, writer: RecordWriter, metric: str,
                         weak: str, n_boot: int = 1000) -> ImbalanceSummary:
    """Train every (condition, remedy), the clean data included, over the profile's seeds;
    record the test score, the score with the weakened modality masked
    (``test_without_weak``) and with it alone (``test_weak_alone``: every other modality
    masked), and ``reliance_on_weak`` = test − without_weak. Each run writes two records
    with their test predictions: experiment ``imbalance`` and ``imbalance_weak_masked``
    (the same model with the weakened modality masked). The text is ``remedy_verdicts``."""
    from mmlib.training.experiments import run_fusion

    mods = ds.modality_names
    rows, contributions, preds = [], {}, {}
    start = len(writer)
    clean = {"modality": weak, "how": "none", "level": 0.0, "label": "clean"}
    seeds = [int(s) for s in profile["seeds"]]
    for cond in [clean, *conditions]:
        for remedy, (model_kwargs, train_kwargs) in remedies.items():
            for seed in seeds:
                data = ds if cond["how"] == "none" else weaken(ds, cond["modality"], cond["how"], cond["level"], seed=seed)
                track = seed == seeds[0]
                run = run_fusion(data, "early", mods, seed, profile, notebook, "imbalance", condition=cond["label"],
                                 model_kwargs={**BASE_MODEL, **model_kwargs},
                                 train_kwargs={**train_kwargs, "track_modalities": track},
                                 device=device, writer=None, model_name=remedy, progress=False)
                target = cond["modality"]
                test = float(run.metrics["test"][metric])
                masked = dict(run.trainer.evaluate("test", present_override={target: False}))
                without = float(masked[metric])
                others = [m for m in mods if m != target]
                alone = float(run.trainer.evaluate("test", present_override={m: False for m in others})[metric]) \
                    if others else test
                rec = dict(run.record)
                rec["metrics"] = {**rec["metrics"], "test_without_weak": without, "test_weak_alone": alone,
                                  "reliance_on_weak": test - without}
                rec["extra"] = {**rec["extra"], "masked_modality": target}
                for r, p in ((rec, run.trainer.predict("test")),
                             ({**rec, "experiment": MASKED_EXPERIMENT, "metrics": {f"test_{k}": v for k, v in masked.items()}},
                              run.trainer.predict("test", present_override={target: False}))):
                    preds[writer.add(r, predictions=p)["run_id"]] = np.asarray(p)
                rows.append({"condition": cond["label"], "remedy": remedy, "seed": seed, "test": test,
                             "without_weak": without, "weak_alone": alone, "reliance_on_weak": test - without})
                if track:
                    c = contribution_table(run.fit)
                    c = c[c["quantity"] == "contribution"].assign(remedy=remedy)
                    contributions.setdefault(cond["label"], []).append(c)
    long = pd.DataFrame(rows)
    table = long.groupby(["condition", "remedy"], sort=False)[["test", "without_weak", "weak_alone",
                                                               "reliance_on_weak"]].agg(["mean", "std"]).round(4)
    y_test = ds.target.detach().cpu().numpy()[np.asarray(ds.splits["test"])]
    ev = Evidence(metric, preds, y_test, task=ds.task, n_boot=n_boot)
    remedies_table, lines, plain = remedy_verdicts(as_frame(writer.records[start:]), ev)
    text = (f"Each remedy against no remedy on the same condition and seeds ({ev.note('bootstrap')}; "
            "helps / hurts: the interval excludes 0). " + " ".join(lines))
    return ImbalanceSummary(table, text, {"verdicts": plain, "remedies": remedies_table}, long,
                            {k: pd.concat(v, ignore_index=True) for k, v in contributions.items()})


__all__ = ["WEAKEN_HOWS", "REMEDIES", "MASKED_EXPERIMENT", "weaken", "contribution_table", "ImbalanceSummary",
           "pick_weak_modality", "imbalance_conditions", "remedy_verdicts", "imbalance_experiment"]
