"""The baselines a practitioner tries first, run as one set on a dataset: CatBoost on the
table (with the texts as text features when there are texts) and TF-IDF + a linear model
(with the one-hot table, with each embedding modality, and for a star-rating target the
expected value of a multinomial logistic regression). ``practitioner_baselines`` fits
them, ``add_baseline_record`` writes one as a result record and ``baseline_predictions``
returns their validation / test predictions as members of
``mmlib.analysis.stacking.stacked_ensemble``. The models themselves live in
``mmlib.models.baselines``.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mmlib.data.base import MultimodalDataset
from mmlib.models.baselines import catboost_baseline, discrete_target, tfidf_linear_baseline
from mmlib.reporting.records import RecordWriter


def add_baseline_record(writer: RecordWriter, res: Mapping[str, Any], experiment: str, model: str, seed: int,
                        condition: str = "") -> dict:
    """One record from a baselines.* result dict ({"val": metrics, "test": metrics, ...})."""
    metrics = {f"{split}_{k}": v for split in ("train", "val", "test") if split in res for k, v in res[split].items()}
    return writer.add(experiment=experiment, model=model, fusion="none", modalities=list(res["modalities"]),
                      condition=condition, seed=seed, metrics=metrics, n_params=int(res.get("n_params") or 0),
                      train_time_s=float(res.get("train_time_s", 0.0)), epochs=int(res.get("n_trees") or 0),
                      device="cpu", extra={k: v for k, v in res.items() if k in ("n_trees", "params")})


def practitioner_baselines(ds: MultimodalDataset, profile: Mapping, seed: int = 0, with_embeddings: bool = True,
                           return_predictions: bool = False) -> dict[str, dict[str, Any]]:
    """One fit of each practitioner baseline that applies to ``ds``, by record name: CatBoost on
    the table (with the texts as text features when there are texts), TF-IDF + linear with the
    one-hot table, and (``with_embeddings``) the same with each ``embedding`` modality appended;
    for a regression target with a few integer values (a star rating) also TF-IDF + multinomial
    logistic regression predicting the expected value (text only: with the one-hot table, whose
    ~1,000 Clothing IDs a weakly regularised logistic regression over-fits, it scored test R²
    0.604 against 0.624 on clothing). Values are ``mmlib.models.baselines`` result dicts."""
    out: dict[str, dict[str, Any]] = {}
    has_table, has_text = "tabular_frame" in ds.meta, ds.meta.get("texts") is not None
    if has_table:
        out["catboost_tabular" + ("+text" if has_text else "")] = catboost_baseline(
            ds, use_text=has_text, seed=seed, return_predictions=return_predictions,
            iterations=profile["catboost_text_iterations" if has_text else "catboost_iterations"])
    if has_text:
        res = tfidf_linear_baseline(ds, use_tabular=has_table, seed=seed, return_predictions=return_predictions)
        out[res["model"]] = res
        if discrete_target(ds):
            res = tfidf_linear_baseline(ds, regression_as_classes=True, seed=seed, return_predictions=return_predictions)
            out[res["model"]] = res
        for m, mod in (ds.modalities.items() if with_embeddings else ()):
            if mod.kind == "embedding":
                res = tfidf_linear_baseline(ds, use_tabular=has_table, extra_embeddings=m, seed=seed,
                                            return_predictions=return_predictions)
                out[res["model"]] = res
    return out


def baseline_predictions(ds: MultimodalDataset, profile: Mapping, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Validation and test predictions of ``practitioner_baselines``, for
    ``mmlib.analysis.stacking.stacked_ensemble``."""
    return {name: res["predictions"] for name, res in
            practitioner_baselines(ds, profile, seed, return_predictions=True).items()}


__all__ = ["add_baseline_record", "practitioner_baselines", "baseline_predictions"]
