"""Strong non-neural baselines the fusion models must beat.

Both work on any ``MultimodalDataset`` whose ``meta`` carries the raw table
(``tabular_frame``, ``cat_columns``, ``num_columns``) and, for text, the raw
texts (``texts``, None where the text is absent):

- ``catboost_baseline``: gradient-boosted trees on the table, optionally with
  the texts as CatBoost ``text_features``; early stopping on the validation split.
- ``tfidf_linear_baseline``: TF-IDF word 1-2-grams (+ optional one-hot table and
  / or given embeddings) into Ridge (regression) or logistic regression; with
  ``regression_as_classes`` a regression target with a few distinct values (a 1-5
  star rating) is fitted as classes by a multinomial logistic regression and
  predicted as the expected value of its class probabilities.

Rows where a modality is absent in the dataset's presence mask are hidden from
the baseline too (missing table values / an empty text), so a baseline never
sees what a fusion model is denied. Missing texts become "" (these are baselines).
Both return ``{"val": metrics, "test": metrics, "train_time_s", "model",
"modalities", "n_params", ...}`` with metrics from ``mmlib.training.metrics.compute_metrics``.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mmlib.data.base import MultimodalDataset
from mmlib.training.metrics import compute_metrics
from mmlib.training.tasks import MAX_TARGET_VALUES, is_discrete, primary_metric
from mmlib.utils import MMLibError

MISSING_CATEGORY = "<missing>"
MAX_TARGET_CLASSES = MAX_TARGET_VALUES  # regression_as_classes: at most this many distinct target values


def discrete_target(dataset: MultimodalDataset, max_values: int = MAX_TARGET_CLASSES) -> bool:
    """True for a regression target with 2..``max_values`` distinct values in the training
    split, all integers (a star rating): one that ``regression_as_classes`` can fit as classes."""
    return dataset.task == "regression" and is_discrete(_y(dataset)[dataset.splits["train"]], max_values)


# ------------------------------------------------------------------- inputs
def _table(dataset: MultimodalDataset) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Raw table (numbers as float with NaN, categories as str) with absent rows blanked."""
    meta = dataset.meta
    missing = [k for k in ("tabular_frame", "cat_columns", "num_columns") if k not in meta]
    if missing:
        raise MMLibError(f"Dataset {dataset.name!r}: the baselines need meta keys {missing} (the raw table and its "
                         "column roles); this loader does not provide them.")
    frame: pd.DataFrame = meta["tabular_frame"]
    num_cols, cat_cols = list(meta["num_columns"]), list(meta["cat_columns"])
    if len(frame) != dataset.n:
        raise MMLibError(f"Dataset {dataset.name!r}: meta['tabular_frame'] has {len(frame)} rows, the dataset {dataset.n}.")
    out = pd.DataFrame(index=range(dataset.n))
    for c in num_cols:
        out[c] = pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64)
        out.loc[~np.isfinite(out[c].to_numpy()), c] = np.nan
    for c in cat_cols:
        out[c] = [MISSING_CATEGORY if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)
                  for v in frame[c].tolist()]
    tab = dataset.modalities.get("tabular")
    if tab is not None and not bool(tab.present.all()):
        absent = ~tab.present.cpu().numpy()
        out.loc[absent, num_cols] = np.nan
        out.loc[absent, cat_cols] = MISSING_CATEGORY
    return out, num_cols, cat_cols


def _texts(dataset: MultimodalDataset) -> list[str]:
    texts = dataset.meta.get("texts")
    if texts is None:
        raise MMLibError(f"Dataset {dataset.name!r} has no raw texts (meta['texts']); a text baseline cannot run on it.")
    if len(texts) != dataset.n:
        raise MMLibError(f"Dataset {dataset.name!r}: meta['texts'] has {len(texts)} rows, the dataset {dataset.n}.")
    absent = np.zeros(dataset.n, dtype=bool)
    for name in ("text",):
        m = dataset.modalities.get(name)
        if m is not None:
            absent |= ~m.present.cpu().numpy()
    return ["" if absent[i] or t is None or (isinstance(t, float) and np.isnan(t)) else str(t)
            for i, t in enumerate(texts)]


def _y(dataset: MultimodalDataset) -> np.ndarray:
    return dataset.target.detach().cpu().numpy()


def _metrics(dataset: MultimodalDataset, rows: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return compute_metrics(dataset.task, _y(dataset)[rows], pred, n_classes=dataset.n_classes)


# ----------------------------------------------------------------- catboost
def catboost_baseline(dataset: MultimodalDataset, use_text: bool = False, iterations: int = 800, seed: int = 0,
                      learning_rate: float | None = None, depth: int = 6, thread_count: int = 2,
                      verbose: bool = False, od_wait: int = 100,
                      return_predictions: bool = False) -> dict[str, Any]:
    """CatBoost on the table (categoricals native; NaN numbers handled by CatBoost),
    plus the texts as ``text_features`` with ``use_text``. Trained on the train
    split with the val split as eval set (early stopping after ``od_wait`` rounds
    without improvement, best iteration kept); metrics on val and test.

    ``n_params`` counts the leaf values of the fitted trees (trees x 2^depth x outputs).
    """
    from catboost import CatBoostClassifier, CatBoostRegressor, Pool

    table, num_cols, cat_cols = _table(dataset)
    X = table[num_cols + cat_cols].copy()
    text_cols: list[str] = []
    if use_text:
        X["__text__"] = _texts(dataset)
        text_cols = ["__text__"]
    y = _y(dataset)
    sp = dataset.splits

    def pool(rows: np.ndarray) -> Pool:
        return Pool(X.iloc[rows].reset_index(drop=True), label=y[rows], cat_features=cat_cols or None,
                    text_features=text_cols or None)

    params: dict[str, Any] = dict(iterations=iterations, depth=depth, random_seed=seed, thread_count=thread_count,
                                  od_type="Iter", od_wait=od_wait, use_best_model=True, allow_writing_files=False,
                                  verbose=verbose)
    if learning_rate is not None:
        params["learning_rate"] = learning_rate
    if dataset.task == "regression":
        model = CatBoostRegressor(loss_function="RMSE", **params)
    elif dataset.task == "binary":
        model = CatBoostClassifier(loss_function="Logloss", **params)
    else:
        model = CatBoostClassifier(loss_function="MultiClass", classes_count=int(dataset.n_classes), **params)

    train_pool, val_pool = pool(sp["train"]), pool(sp["val"])
    t0 = time.perf_counter()
    try:
        model.fit(train_pool, eval_set=val_pool)
    except Exception as exc:  # CatBoostError carries the reason; keep it in one readable line
        raise MMLibError(f"catboost_baseline on {dataset.name!r} failed: {type(exc).__name__}: {exc}") from exc
    train_time = time.perf_counter() - t0

    def predict(rows: np.ndarray) -> np.ndarray:
        p = pool(rows)
        if dataset.task == "regression":
            return np.asarray(model.predict(p), dtype=np.float64)
        proba = np.asarray(model.predict_proba(p), dtype=np.float64)
        return proba[:, 1] if dataset.task == "binary" else proba

    preds = {k: predict(sp[k]) for k in ("val", "test")}
    out_dim = int(dataset.n_classes) if dataset.task == "multiclass" else 1
    n_trees = int(model.tree_count_)
    result: dict[str, Any] = {
        "val": _metrics(dataset, sp["val"], preds["val"]),
        "test": _metrics(dataset, sp["test"], preds["test"]),
        "train_time_s": float(train_time),
        "model": "catboost" + ("+text" if use_text else ""),
        "modalities": ["tabular"] + (["text"] if use_text else []),
        "n_params": n_trees * (2**depth) * out_dim,
        "n_trees": n_trees,
        "features": list(X.columns),
        "best_iteration": int(model.get_best_iteration() or 0),
        "params": {k: v for k, v in params.items() if k not in ("verbose", "allow_writing_files")},
    }
    if return_predictions:
        result["predictions"] = preds
    return result


# ------------------------------------------------------------- tfidf linear
def tfidf_linear_baseline(dataset: MultimodalDataset, use_tabular: bool = False,
                          extra_embeddings: np.ndarray | str | None = None,
                          alpha: float | Sequence[float] | None = None, seed: int = 0,
                          ngram_range: tuple[int, int] = (1, 2), min_df: int = 2, max_features: int | None = 200_000,
                          regression_as_classes: bool = False, return_predictions: bool = False) -> dict[str, Any]:
    """TF-IDF of word 1-2-grams (fitted on the train split, sublinear tf) into a
    linear model: Ridge for regression, logistic regression (C = 1/alpha) for
    classification. Optionally concatenated with a one-hot table (``use_tabular``;
    numbers standardised with train statistics, NaN -> train median) and / or
    ``extra_embeddings`` (an array [n, d] aligned with the rows, or the name of a modality
    with a frozen embedding ``x``: an ``embedding`` modality, e.g. ``"text_minilm"``, or the
    ``*+tfidf`` text modality, whose ``x`` is the sentence embedding beside the n-gram bag).

    ``regression_as_classes`` (regression targets only): each distinct training target
    value is a class (at most ``MAX_TARGET_CLASSES``), a multinomial logistic regression
    is fitted, and the prediction is the expected value ``sum_k p_k * value_k``. On a
    skewed star rating this beats ridge (clothing Rating: see notebook 10): the squared
    loss of a linear model spends itself on the rare low ratings, the class probabilities do not.

    A sequence ``alpha`` is searched on the val split (primary metric); the
    chosen value is returned as ``alpha``. The default grid is (0.3, 1, 3, 10), and
    (0.03, 0.1, 0.3, 1) for ``regression_as_classes`` (a many-class text model wants
    less regularisation).
    """
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import OneHotEncoder

    sp = dataset.splits
    tr = sp["train"]
    y = _y(dataset)
    class_values = None
    if regression_as_classes:
        if dataset.task != "regression":
            raise MMLibError(f"tfidf_linear_baseline: regression_as_classes is for regression targets; "
                             f"{dataset.name!r} is {dataset.task}.")
        class_values = np.unique(y[tr])
        if len(class_values) > MAX_TARGET_CLASSES or len(class_values) < 2:
            raise MMLibError(f"tfidf_linear_baseline: regression_as_classes needs 2..{MAX_TARGET_CLASSES} distinct "
                             f"target values in the training split; {dataset.name!r} has {len(class_values)}.")
    if alpha is None:
        alpha = (0.03, 0.1, 0.3, 1.0) if regression_as_classes else (0.3, 1.0, 3.0, 10.0)
    texts = np.asarray(_texts(dataset), dtype=object)
    modalities = ["text"]
    t0 = time.perf_counter()
    # tiny datasets (tests, smoke runs) may not have min_df occurrences of anything
    eff_min_df = min_df if len(tr) >= 50 * min_df else 1
    vec = TfidfVectorizer(ngram_range=tuple(ngram_range), min_df=eff_min_df, max_features=max_features,
                          sublinear_tf=True, dtype=np.float32)
    try:
        vec.fit(texts[tr])
    except ValueError as exc:  # an empty vocabulary: every training text is empty
        raise MMLibError(f"tfidf_linear_baseline on {dataset.name!r}: no words in the training texts ({exc}).") from exc
    blocks = [vec.transform(texts)]

    if use_tabular:
        table, num_cols, cat_cols = _table(dataset)
        modalities.append("tabular")
        if num_cols:
            num = table[num_cols].to_numpy(dtype=np.float64)
            med = np.nanmedian(num[tr], axis=0)
            med = np.where(np.isfinite(med), med, 0.0)
            num = np.where(np.isfinite(num), num, med)
            mu, sd = num[tr].mean(axis=0), num[tr].std(axis=0)
            blocks.append(sparse.csr_matrix(((num - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)))
        if cat_cols:
            ohe = OneHotEncoder(handle_unknown="ignore", dtype=np.float32).fit(table.iloc[tr][cat_cols])
            blocks.append(ohe.transform(table[cat_cols]).tocsr())

    if extra_embeddings is not None:
        if isinstance(extra_embeddings, str):
            name = extra_embeddings
            m = dataset.modalities.get(name)
            if m is None or "x" not in m.tensors:  # an embedding modality, or a text one with its frozen embedding
                raise MMLibError(f"tfidf_linear_baseline: {name!r} is not a modality of {dataset.name!r} with a frozen "
                                 f"embedding (modalities: {dataset.modality_names}).")
            emb = m.tensors["x"].detach().cpu().numpy() * m.present.cpu().numpy()[:, None]
        else:
            name = "embeddings"
            emb = np.asarray(extra_embeddings)
        if emb.ndim != 2 or emb.shape[0] != dataset.n:
            raise MMLibError(f"tfidf_linear_baseline: extra_embeddings must be [n={dataset.n}, d]; got {emb.shape}.")
        if not np.isfinite(emb).all():
            row = int(np.flatnonzero(~np.isfinite(emb).all(axis=1))[0])
            raise MMLibError(f"tfidf_linear_baseline: extra_embeddings has NaN/inf (first at row {row}).")
        blocks.append(sparse.csr_matrix(emb.astype(np.float32)))
        modalities.append(name)

    X = sparse.hstack(blocks, format="csr")
    alphas = [float(alpha)] if np.isscalar(alpha) else [float(a) for a in alpha]
    if not alphas or min(alphas) <= 0:
        raise MMLibError(f"tfidf_linear_baseline: alpha must be positive; got {alpha!r}.")

    labels = np.searchsorted(class_values, y[tr]) if class_values is not None else None  # class index per row

    def fit(a: float):
        if labels is not None:
            return LogisticRegression(C=1.0 / a, max_iter=3000, random_state=seed).fit(X[tr], labels)
        if dataset.task == "regression":
            return Ridge(alpha=a, random_state=seed).fit(X[tr], y[tr])
        return LogisticRegression(C=1.0 / a, max_iter=3000, random_state=seed).fit(X[tr], y[tr])

    def predict(model, rows: np.ndarray) -> np.ndarray:
        if class_values is not None:  # expected target value under the class probabilities
            return _full_proba(model, X[rows], len(class_values)) @ class_values.astype(np.float64)
        if dataset.task == "regression":
            return np.asarray(model.predict(X[rows]), dtype=np.float64)
        proba = _full_proba(model, X[rows], int(dataset.n_classes))
        return proba[:, 1] if dataset.task == "binary" else proba

    key, higher = primary_metric(dataset.task)
    best = None
    for a in alphas:
        model = fit(a)
        val_pred = predict(model, sp["val"])
        score = _metrics(dataset, sp["val"], val_pred)[key]
        better = best is None or (np.isfinite(score) and (not np.isfinite(best[0]) or
                                                          (score > best[0] if higher else score < best[0])))
        if better:
            best = (score, a, model, val_pred)
    train_time = time.perf_counter() - t0
    _, a, model, val_pred = best
    test_pred = predict(model, sp["test"])
    n_params = int(np.size(model.coef_) + np.size(model.intercept_))
    result: dict[str, Any] = {
        "val": _metrics(dataset, sp["val"], val_pred),
        "test": _metrics(dataset, sp["test"], test_pred),
        "train_time_s": float(train_time),
        "model": ("tfidf+logreg_ev" if class_values is not None else
                  "tfidf+ridge" if dataset.task == "regression" else "tfidf+logreg")
                 + ("+tabular" if use_tabular else "") + (f"+{modalities[-1]}" if extra_embeddings is not None else ""),
        "modalities": modalities,
        "n_params": n_params,
        "alpha": a,
        "n_features": int(X.shape[1]),
        "n_tfidf_terms": len(vec.vocabulary_),
    }
    if class_values is not None:
        result["class_values"] = [float(v) for v in class_values]
    if return_predictions:
        result["predictions"] = {"val": val_pred, "test": test_pred}
    return result


def _full_proba(model, X, n_classes: int) -> np.ndarray:
    """predict_proba with a column per class, also for a class absent from the training rows."""
    proba = model.predict_proba(X)
    out = np.zeros((proba.shape[0], n_classes))
    out[:, model.classes_.astype(int)] = proba
    return out
