"""Named run profiles: how big a run every notebook does.

A notebook takes one parameter ``profile`` and reads its sizes from here, so the
same notebook is a 1-minute smoke test, the committed report, or a long GPU run::

    P = get_profile(profile, seed_offset=seed_offset)   # in the cell after the `parameters` cell
    ds = load_for_profile(dataset, P)
    for seed in P["seeds"]: ...

All profiles share the same keys (``PROFILE_KEYS``); a notebook may read any of
them. The numbers are a first guess, kept in this one table so they are tuned in
one place. ``get_profile`` adds two keys that say which profile this is:
``name`` and ``seed_offset`` (``seed_offset=K`` adds K to ``seeds``: an
independent rerun of the same study with other seeds, on the same data and splits).

**Budgets in optimizer steps.** ``epochs`` / ``batch_size`` / ``patience`` are what a large
dataset gets; where a profile becomes a ``TrainConfig`` for a dataset
(``train_config_from_profile(profile, n_train=...)``, which ``run_fusion`` calls with the
train split's size) the rule of ``mmlib.training.config.size_budget`` applies: first the batch
is capped to ≤ n_train / ``min_batches_per_epoch`` (a power of two, at least 32), then epochs
are raised until epochs × steps ≥ the step floor (patience scaled alike). The floor is
``min_steps`` steps of the profile's batch size; a capped batch b gets
min_steps × √(batch_size / b) steps, since smaller batches take noisier steps. Standard profile:
``min_steps`` 390, so both built-in datasets keep their budgets (spacecraft 8,400 train rows:
batch 256, 33 steps × 12 epochs = 396; clothing 16,440 rows: 65 × 12 = 780) and a 1,500-row
dataset (1,050 train rows) gets batch 64, a floor of 390 × √4 = 780 steps, 17 steps per epoch,
at most 46 epochs, patience 16. Measured there (early fusion, 3 seeds, test R²): the old 60
steps 0.600/0.668/0.662, best epoch = last epoch in all three; a flat 390 steps
0.775/0.766/0.753 with two seeds still improving at the last epoch; 780 steps 0.784/0.787/0.751,
early stopping ended two and the third peaked at epoch 39 of 46. A flat 780 would double
spacecraft's epochs for no measured gain (seed 0 early fusion 0.939 → 0.937). Full:
``min_steps`` 1600 leaves both datasets as they were (60 epochs).
Smoke switches the rule off.

| key | meaning |
|---|---|
| ``seeds`` | seeds each experiment runs over (mean ± std is over these) |
| ``n_rows`` | dataset size cap; ``None`` = the dataset's own default size |
| ``epochs`` | maximum training epochs per model |
| ``patience`` | early-stopping patience in epochs; ``None`` = no early stopping |
| ``batch_size`` | training batch size |
| ``max_batches_per_epoch`` | cap on batches per epoch (smoke only); ``None`` = full epochs |
| ``min_steps`` | training budget floor in optimizer steps of ``batch_size`` rows (× √(``batch_size`` / capped batch) when the batch is capped): when ``epochs`` × steps-per-epoch is below it, ``epochs`` is raised to reach it and ``patience`` by the same factor (early stopping still decides the end); ``None`` = off |
| ``min_batches_per_epoch`` | batch-size cap for small data: the batch is at most the largest power of two ≤ train rows / this (never below 32, never above ``batch_size``); ``None`` = off |
| ``noise_levels`` | corruption strengths for robustness curves (0 = clean, 1 = signal fully replaced) |
| ``catboost_iterations`` | boosting rounds for the CatBoost baselines |
| ``catboost_text_iterations`` | boosting rounds for CatBoost with text features (much slower per round) |
| ``image_arch`` | image encoder of the notebooks' models (``cnn_strided`` is fast on a CPU; ``cnn_wide`` recovers the image part best, for a GPU) |
| ``image_encoder`` | the pretrained image branch the notebooks add next to the scratch CNNs (datasets with images): ``"efficientnet"`` = frozen EfficientNet-Lite0 ImageNet features at 128 px, computed once per dataset and cached (``spacecraft``'s 12,000 images: 16 min on one thread of a busy 2-core CPU, 81 s per 1,000; an MLP head reads them), ``"efficientnet_finetune"`` = the backbone inside the model, fine-tuned at 1/100 of ``lr`` (a GPU job: 3.4M backbone parameters) |
| ``image_size`` | side of the square images, in pixels |
| ``lr`` / ``weight_decay`` | AdamW learning rate (peak of the OneCycle schedule) and weight decay |
| ``executor`` | where the notebooks' grids of runs train when the runner / notebook does not say: ``"local"`` (one run after the other) or ``"ray"`` (``mmlib.training.executor``). ``standard``: ``ray``, measured faster on a 2-core CPU (notebook 40's grid on spacecraft, 24 runs: 387 s on Ray with 2 workers × 1 thread against 581 s locally, 1.50×); if no Ray instance can start, the runs train locally with a warning. ``smoke``: ``local`` (the tests' tiny runs; Ray has its own tests). ``full``: ``local`` (a GPU: a Ray task asks for no GPU unless ``MMLIB_RAY_GPUS_PER_RUN`` says so, and GPU sharing was not measured) |
| ``regression_loss`` | the networks' loss on a regression target when a notebook does not name one: ``None`` = the task's default, ``"mse"`` on the standardised target (every profile); ``"auto"`` = ``"ce_ev"`` when the training target has 2..20 distinct integer values (a star rating: one logit per value, cross-entropy, prediction = expected value, as in Rothe et al.'s DEX; ``mmlib.training.supervised``), else ``"mse"``; or a loss name (``"mse"``, ``"huber"``, ``"ce_ev"``) for every regression dataset. On ``clothing`` ``ce_ev`` did not beat ``mse`` on validation (standard, 3 seeds; README, "The expected-value head"), so no profile uses it |
| ``text_encoder`` | how a real text is given to the models (loaders that offer a choice: ``clothing``, ``folder``): ``"mpnet+tfidf"`` (standard) = frozen 768-d all-mpnet-base-v2 sentence embeddings beside a sparse TF-IDF bag of word 1-2-grams, in one text modality (``mmlib.models.sparse_text``: an EmbeddingBag reads the bag, an MLP the embedding; ~17 s per model on ``clothing`` on a 2-core CPU), used when the model is in the data cache (``python -m mmlib.data.mpnet`` fetches it once, ~400 MB); without it the profile falls back to ``"minilm+tfidf"`` with a warning (``mmlib.data.sentence.profile_text_encoder``); chosen on the networks' validation score: the best network on ``clothing`` reads 0.663 validation R² with it against 0.649 with ``"mpnet"`` alone (committed reports of 7a58288 and 13858e7; the stack of whole models, whose weights are fitted on the validation split, scores 0.690 test R² with it against 0.696); ``"mpnet"`` = the embedding alone (~10 s per model); ``"minilm"`` (smoke) = frozen 384-d all-MiniLM-L6-v2 embeddings (bundled; ~4 s per model), ``"gru"`` = word tokens for a GRU trained from scratch (~30 s per model there), ``"minilm_finetune"`` (full) = MiniLM's own word pieces into the MiniLM transformer, fine-tuned end to end at 1/100 of ``lr`` (a GPU job: ~22M parameters per model), ``"tfidf"`` / ``"minilm+tfidf"`` = the TF-IDF bag alone or beside MiniLM; ``spacecraft``'s captions are always tokens |
"""
from __future__ import annotations

import copy
import numbers
from typing import Any

from mmlib.utils import MMLibError

PROFILES: dict[str, dict[str, Any]] = {
    # Tests and CI: every notebook end to end in about a minute on CPU. Numbers mean nothing.
    "smoke": {
        "seeds": [0],
        "n_rows": 800,
        "epochs": 2,
        "patience": None,
        "batch_size": 128,
        "max_batches_per_epoch": 3,
        "noise_levels": [0.0, 0.5, 1.0],
        "catboost_iterations": 50,
        "catboost_text_iterations": 20,
        "image_size": 32,
        "image_encoder": "efficientnet",
        "image_arch": "cnn_strided",
        "text_encoder": "minilm",
        "lr": 0.006,
        "weight_decay": 0.0,
        "executor": "local",
        "min_steps": None,
        "min_batches_per_epoch": None,
        "regression_loss": None,
    },
    # The committed reports: 3 seeds, full datasets; ~15-20 min per dataset on a 2-core CPU.
    "standard": {
        "seeds": [0, 1, 2],
        "n_rows": None,
        "epochs": 12,
        "patience": 4,
        "batch_size": 256,
        "max_batches_per_epoch": None,
        "noise_levels": [0.0, 0.25, 0.5, 0.75, 1.0],
        "catboost_iterations": 500,
        "catboost_text_iterations": 200,
        "image_size": 32,
        "image_encoder": "efficientnet",
        "image_arch": "cnn_strided",
        "text_encoder": "mpnet+tfidf",
        "lr": 0.006,
        "weight_decay": 0.0,
        "executor": "ray",
        "min_steps": 390,
        "min_batches_per_epoch": 16,
        "regression_loss": None,
    },
    # One GPU: 5 seeds, longer training, bigger images, finer robustness curves.
    "full": {
        "seeds": [0, 1, 2, 3, 4],
        "n_rows": None,
        "epochs": 60,
        "patience": 10,
        "batch_size": 256,
        "max_batches_per_epoch": None,
        "noise_levels": [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0],
        "catboost_iterations": 2000,
        "catboost_text_iterations": 1000,
        "image_size": 64,
        "image_encoder": "efficientnet_finetune",
        "image_arch": "cnn_wide",
        "text_encoder": "minilm_finetune",
        "lr": 0.006,
        "weight_decay": 0.0,
        "executor": "local",
        "min_steps": 1600,
        "min_batches_per_epoch": 16,
        "regression_loss": None,
    },
}

PROFILE_KEYS: tuple[str, ...] = tuple(PROFILES["standard"])
# Keys ``get_profile`` adds to its copy: which profile it is (not overridable).
PROVENANCE_KEYS: tuple[str, ...] = ("name", "seed_offset")


def profile_names() -> list[str]:
    """Profile names, smallest first."""
    return list(PROFILES)


def get_profile(name: str, seed_offset: int = 0, **overrides: Any) -> dict[str, Any]:
    """A fresh copy of profile ``name`` (so a notebook may edit it freely).

    ``overrides`` replace single keys (``get_profile("smoke", epochs=5)``); an
    unknown key is an error rather than a silently ignored typo. ``seed_offset``
    (a non-negative integer) is added to every seed of the profile, after the
    overrides: ``get_profile("standard", seed_offset=10)["seeds"] == [10, 11, 12]``.
    The copy also says where it came from: ``P["name"]`` and ``P["seed_offset"]``.
    """
    if not isinstance(name, str) or name not in PROFILES:
        raise MMLibError(f"Unknown profile {name!r}. Valid profiles: {', '.join(PROFILES)}.")
    if not isinstance(seed_offset, numbers.Integral) or isinstance(seed_offset, bool) or seed_offset < 0:
        raise MMLibError(f"get_profile({name!r}): seed_offset must be a non-negative integer, got {seed_offset!r}.")
    prof = copy.deepcopy(PROFILES[name])
    unknown = sorted(set(overrides) - set(PROFILE_KEYS))
    if unknown:
        raise MMLibError(f"get_profile({name!r}): unknown key(s) {unknown}. Valid keys: {', '.join(PROFILE_KEYS)}.")
    prof.update(copy.deepcopy(overrides))
    k = int(seed_offset)
    prof["seeds"] = [int(s) + k for s in prof["seeds"]]
    prof["name"], prof["seed_offset"] = name, k
    return prof


def _check_profiles() -> None:
    # All profiles must share exactly the same keys, or a notebook works on one and breaks on another.
    for pname, prof in PROFILES.items():
        if set(prof) != set(PROFILE_KEYS):
            raise AssertionError(f"profile {pname!r} keys differ from 'standard': {sorted(set(prof) ^ set(PROFILE_KEYS))}")


_check_profiles()

__all__ = ["PROFILES", "PROFILE_KEYS", "PROVENANCE_KEYS", "get_profile", "profile_names"]
