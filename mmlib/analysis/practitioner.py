"""The baselines a practitioner tries first, run as one set on a dataset: CatBoost on the
table (with the texts as text features when there are texts) and TF-IDF + a linear model
(with the one-hot table, with each embedding modality, and for a star-rating target the
expected value of a multinomial logistic regression). ``practitioner_baselines`` fits
them for one seed, ``baselines_over_seeds`` for each seed of a profile,
``add_baseline_record`` writes one as a result record (with its test predictions) and
``baseline_predictions`` returns them per seed as members of
``mmlib.analysis.stacking.stacked_ensemble``. The models themselves live in
``mmlib.models.baselines``.

Fits go through the run cache (``mmlib.training.runcache``, keyed by the dataset, the
baseline and its arguments, seed included), so notebook 40 reads back notebook 10's fits.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from mmlib.data.base import MultimodalDataset
from mmlib.models.baselines import catboost_baseline, discrete_target, tfidf_linear_baseline
from mmlib.reporting.records import RecordWriter
from mmlib.training import runcache


def baseline_experiment(model: str) -> str:
    """The experiment name of a baseline's records: ``catboost`` or ``tfidf``."""
    return "catboost" if model.startswith("catboost") else "tfidf"


def add_baseline_record(writer: RecordWriter, res: Mapping[str, Any], experiment: str | None, model: str, seed: int,
                        condition: str = "", y_test: Any = None) -> dict:
    """One record from a baselines.* result dict ({"val": metrics, "test": metrics, ...}), with its
    test-split predictions when the result carries them (``return_predictions=True``).
    ``experiment`` None: ``baseline_experiment(model)``; ``y_test``: the targets of those
    predictions when they are not the writer's (a record on another target)."""
    metrics = {f"{split}_{k}": v for split in ("train", "val", "test") if split in res for k, v in res[split].items()}
    pred = (res.get("predictions") or {}).get("test")
    return writer.add(experiment=experiment or baseline_experiment(model), model=model, fusion="none",
                      modalities=list(res["modalities"]), condition=condition, seed=seed, metrics=metrics,
                      n_params=int(res.get("n_params") or 0), train_time_s=float(res.get("train_time_s", 0.0)),
                      epochs=int(res.get("n_trees") or 0), device="cpu", predictions=pred, y_test=y_test,
                      extra={k: v for k, v in res.items() if k in ("n_trees", "params", "alpha", "cached", "fitted_seed")})


def _fit(fn: Callable[..., dict[str, Any]], ds: MultimodalDataset, **kwargs: Any) -> dict[str, Any]:
    """``fn(ds, **kwargs)`` through the run cache (a hit says ``cached: True``)."""
    key = runcache.run_key(ds, {"baseline": fn.__name__, **kwargs}) if runcache.enabled() else None
    hit = runcache.load(key) if key else None
    if hit is not None:
        return {**hit, "cached": True}
    res = fn(ds, **kwargs)
    if key:
        runcache.save(key, res)
    return res


def practitioner_baselines(ds: MultimodalDataset, profile: Mapping, seed: int = 0, with_embeddings: bool = True,
                           return_predictions: bool = False, seeded_only: bool = False,
                           unimodal_variants: bool = False) -> dict[str, dict[str, Any]]:
    """One fit of each practitioner baseline that applies to ``ds``, by record name: CatBoost on
    the table (with the texts as text features when there are texts), TF-IDF + linear with the
    one-hot table, and (``with_embeddings``) the same with each frozen embedding appended (an
    ``embedding`` modality's, or the sentence embedding of a ``*+tfidf`` text modality);
    for a regression target with a few integer values (a star rating) also TF-IDF + multinomial
    logistic regression predicting the expected value (text only: with the one-hot table, whose
    ~1,000 Clothing IDs a weakly regularised logistic regression over-fits, it scored test R²
    0.604 against 0.624 on clothing). Values are ``mmlib.models.baselines`` result dicts.
    ``seeded_only``: only the models whose fit depends on the seed (CatBoost); ``unimodal_variants``:
    with both a table and texts, also CatBoost on the table alone and TF-IDF on the text alone
    (the unimodal baselines the multimodal ones are compared with)."""
    out: dict[str, dict[str, Any]] = {}
    has_table, has_text = "tabular_frame" in ds.meta, ds.meta.get("texts") is not None
    rp = dict(return_predictions=return_predictions)
    if has_table and has_text and unimodal_variants:
        out["catboost_tabular"] = _fit(catboost_baseline, ds, use_text=False, seed=seed, **rp,
                                       iterations=profile["catboost_iterations"])
    if has_table:
        out["catboost_tabular" + ("+text" if has_text else "")] = _fit(
            catboost_baseline, ds, use_text=has_text, seed=seed, **rp,
            iterations=profile["catboost_text_iterations" if has_text else "catboost_iterations"])
    if has_text and not seeded_only:
        variants = [dict(use_tabular=False)] if has_table and unimodal_variants else []
        variants.append(dict(use_tabular=has_table))
        if discrete_target(ds):
            variants.append(dict(regression_as_classes=True))
        variants += [dict(use_tabular=has_table, extra_embeddings=m) for m, mod in ds.modalities.items()
                     if with_embeddings and "x" in mod.tensors]  # a frozen embedding (also beside a TF-IDF bag)
        for kw in variants:
            res = _fit(tfidf_linear_baseline, ds, seed=seed, **rp, **kw)
            out[res["model"]] = res
    return out


def baselines_over_seeds(ds: MultimodalDataset, profile: Mapping, seeds: Sequence[int], with_embeddings: bool = True,
                         return_predictions: bool = True) -> dict[int, dict[str, dict[str, Any]]]:
    """``{seed: practitioner_baselines(..., unimodal_variants=True)}`` for every seed, so a baseline's
    spread over seeds is measured like a network's (CatBoost is refitted with ``random_seed=seed``).

    The TF-IDF + linear fits do not depend on the seed (ridge's closed form, logistic
    regression's lbfgs): they are fitted once, at the first seed, and that same fit stands
    for every seed, so their predictions are identical across seeds and their spread is 0.
    That is honest: refitting with another seed would give the same model
    (``fitted_seed`` in each result says which seed was fitted)."""
    seeds = [int(s) for s in seeds]
    fixed = practitioner_baselines(ds, profile, seeds[0], with_embeddings, return_predictions, unimodal_variants=True)
    fixed = {k: {**v, "fitted_seed": seeds[0]} for k, v in fixed.items()}
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for seed in seeds:
        seeded = {} if seed == seeds[0] else practitioner_baselines(ds, profile, seed, with_embeddings, return_predictions,
                                                                     seeded_only=True, unimodal_variants=True)
        out[seed] = {k: ({**seeded[k], "fitted_seed": seed} if k in seeded else v) for k, v in fixed.items()}
    return out


def baseline_predictions(ds: MultimodalDataset, profile: Mapping, seeds: Sequence[int],
                         with_embeddings: bool = True) -> dict[str, dict[int, dict[str, Any]]]:
    """``{name: {seed: result}}`` of ``baselines_over_seeds`` (each result with its
    ``modalities`` and validation / test ``predictions``), the ``baselines`` of
    ``mmlib.analysis.stacking.stacked_ensemble``."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for seed, fits in baselines_over_seeds(ds, profile, seeds, with_embeddings).items():
        for name, res in fits.items():
            out.setdefault(name, {})[seed] = res
    return out


__all__ = ["baseline_experiment", "add_baseline_record", "practitioner_baselines", "baselines_over_seeds",
           "baseline_predictions"]
