"""Run one configuration (dataset × fusion × modalities × seed), evaluate it and
record it: the glue that keeps the notebooks thin.

>>> P = get_profile("smoke")
>>> runs = run_over_seeds(ds, "early", ["tabular", "text"], P["seeds"], profile=P,
...                       notebook="20_simple_fusion", experiment="simple_fusion", writer=writer)
>>> summary_table(writer.records, metrics=("test_r2", "val_r2"))

Every run seeds python / numpy / torch first (``mmlib.utils.set_seeds``), so the
same seed gives the same record on CPU.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
import torch

from mmlib.data.base import MultimodalDataset
from mmlib.models import MultimodalModel, build_model
from mmlib.analysis.planted import has_planted_structure, planted_recovery
from mmlib.reporting.records import RecordWriter, make_record, records_to_frame
from mmlib.training import runcache
from mmlib.training.config import size_budget
from mmlib.training.supervised import model_out_dim
from mmlib.training.tasks import EV_LOSS, is_discrete
from mmlib.training.trainer import FitResult, TrainConfig, Trainer
from mmlib.utils import MMLibError, set_seeds

# profile key -> TrainConfig field it sets
PROFILE_TO_TRAIN = {"epochs": "epochs", "patience": "patience", "batch_size": "batch_size",
                    "max_batches_per_epoch": "max_batches_per_epoch", "lr": "lr", "weight_decay": "weight_decay"}
DEFAULT_SUMMARY_BY = ("model", "fusion", "modality_set", "condition")


@dataclass
class RunResult:
    """One trained configuration: the model, its trainer (for further evaluation),
    the fit summary, metrics per split and the result record."""

    model: MultimodalModel
    trainer: Trainer
    fit: FitResult
    metrics: dict[str, dict[str, float]]  # split -> {metric: value}
    record: dict[str, Any]
    test_predictions: Any = None  # the test-split predictions (None when test was not evaluated)
    fields: dict[str, Any] | None = None  # the record's fields before the writer's provenance (record_fields)


def train_config_from_profile(profile: Mapping[str, Any], n_train: int | None = None, **overrides: Any) -> TrainConfig:
    """A ``TrainConfig`` sized by a run profile (``epochs``, ``patience``, ``batch_size``,
    ``max_batches_per_epoch``), with ``overrides`` for any TrainConfig field. An
    unknown field is an error naming the valid ones.

    With ``n_train`` (rows of the train split) the profile's size rule applies
    (``mmlib.training.config.size_budget``: ``min_batches_per_epoch`` caps the batch,
    ``min_steps`` raises epochs and patience), so a small dataset gets as many optimizer
    steps as a large one; an explicit ``epochs`` / ``batch_size`` / ``patience`` override wins."""
    valid = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise MMLibError(f"Unknown training option(s) {unknown}. TrainConfig fields: {', '.join(sorted(valid))}.")
    cfg = {field: profile[key] for key, field in PROFILE_TO_TRAIN.items() if key in profile}
    if n_train is not None and "epochs" in cfg and "batch_size" in cfg:
        sized = size_budget(int(n_train), cfg["epochs"], cfg["batch_size"], cfg.get("patience"),
                            min_steps=profile.get("min_steps"),
                            min_batches_per_epoch=profile.get("min_batches_per_epoch"),
                            max_batches_per_epoch=cfg.get("max_batches_per_epoch"))
        cfg.update({k: sized[k] for k in ("epochs", "batch_size", "patience") if k in cfg})
    cfg.update(overrides)
    return TrainConfig.from_dict(cfg)


def default_model_name(fusion: str, modalities: Sequence[str]) -> str:
    """``"<modality>_only"`` for one modality, ``"<fusion>_fusion"`` otherwise."""
    return f"{modalities[0]}_only" if len(modalities) == 1 else f"{fusion}_fusion"


def _jsonable(obj: Any) -> Any:
    """A JSON-safe copy (anything exotic becomes its string form)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def record_fields(model: Any, fit: FitResult, metrics: Mapping[str, Mapping[str, float]], *, experiment: str,
                  model_name: str, fusion: str, modalities: Sequence[str], condition: str, seed: int,
                  extra: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of one trained model's record (metrics ``{split: {name: value}}`` flattened to
    ``<split>_<name>``, modalities sorted, parameters, time, epochs, device): JSON-safe, so a
    worker of another process can send them back."""
    counts = model.param_counts()
    return dict(experiment=experiment, model=model_name, fusion=fusion, modalities=sorted(modalities),
                condition=condition, seed=int(seed),
                metrics={f"{s}_{k}": float(v) for s, ms in metrics.items() for k, v in ms.items()},
                n_params=int(counts["total"]), train_time_s=float(fit.train_time_s), epochs=int(fit.epochs_run),
                device=str(fit.device),
                extra=_jsonable({**dict(extra), "n_params_by_branch": {k: int(v) for k, v in counts.items()}}))


def add_record(fields: Mapping[str, Any], *, writer: RecordWriter | None, notebook: str, dataset: str,
               predictions: Any = None, y_test: Any = None) -> dict[str, Any]:
    """Add ``record_fields`` to ``writer`` when given (with the test ``predictions`` and their
    targets ``y_test``, kept beside the records for paired comparisons), else make the record stand-alone."""
    if writer is not None:
        return writer.add(**fields, predictions=predictions, y_test=y_test)
    return make_record(notebook=notebook, dataset=dataset, **fields)


def record_run(model: Any, fit: FitResult, metrics: Mapping[str, Mapping[str, float]], *, writer: RecordWriter | None,
               notebook: str, dataset: str, experiment: str, model_name: str, fusion: str, modalities: Sequence[str],
               condition: str, seed: int, extra: Mapping[str, Any], predictions: Any = None,
               y_test: Any = None) -> dict[str, Any]:
    """The result record of one trained model (``record_fields``); added to ``writer`` when
    given (with its test ``predictions`` and their targets ``y_test``), else made stand-alone."""
    fields = record_fields(model, fit, metrics, experiment=experiment, model_name=model_name, fusion=fusion,
                           modalities=modalities, condition=condition, seed=seed, extra=extra)
    return add_record(fields, writer=writer, notebook=notebook, dataset=dataset, predictions=predictions, y_test=y_test)


def regression_loss(dataset: MultimodalDataset, profile: Mapping[str, Any],
                    train_kwargs: Mapping[str, Any]) -> str | None:
    """The loss a run trains with when the caller did not name one: the profile's
    ``regression_loss`` for a regression target (``"auto"``: ``ce_ev`` when the training target
    has 2..20 distinct integer values — a star rating — else the task's default ``mse``); None
    leaves the task's default. A ``loss`` or ``loss_options`` in ``train_kwargs`` always wins."""
    choice = profile.get("regression_loss")
    if not choice or dataset.task != "regression" or "loss" in train_kwargs or "loss_options" in train_kwargs:
        return train_kwargs.get("loss")
    if choice == "auto":
        rows = torch.as_tensor(dataset.splits["train"], device=dataset.target.device)
        return EV_LOSS if is_discrete(dataset.target[rows]) else None
    return str(choice)


@dataclass
class _Prepared:
    mods: list[str]
    model_kwargs: dict[str, Any]
    train_kwargs: dict[str, Any]
    model: MultimodalModel
    trainer: Trainer
    spec: dict[str, Any]


def _prepare(dataset: MultimodalDataset, fusion: str, modalities: Sequence[str] | None, seed: int,
             profile: Mapping[str, Any], model_kwargs: Mapping[str, Any] | None, train_kwargs: Mapping[str, Any] | None,
             device: str, progress: bool) -> _Prepared:
    """Seed, build the model and its Trainer (nothing trained yet); ``spec`` keys the run cache."""
    mods = list(modalities) if modalities is not None else list(dataset.modality_names)
    model_kwargs = dict(model_kwargs or {})
    train_kwargs = dict(train_kwargs or {})
    for key in ("fusion", "modalities"):
        if key in model_kwargs:
            raise MMLibError(f"run_fusion: pass {key!r} as its own argument, not inside model_kwargs.")
    train_kwargs.setdefault("progress", progress)
    if profile.get("image_arch"):  # the profile picks the image encoder unless the caller did
        archs = dict(model_kwargs.get("encoder_archs") or {})
        for m in mods:
            if dataset.modalities[m].kind == "image":
                archs.setdefault(m, profile["image_arch"])
        if archs:
            model_kwargs["encoder_archs"] = archs
    loss = regression_loss(dataset, profile, train_kwargs)
    if loss is not None:
        train_kwargs["loss"] = loss
        if loss == EV_LOSS:
            model_kwargs.setdefault("out_dim", model_out_dim(dataset, EV_LOSS))
    config = train_config_from_profile(profile, n_train=len(dataset.splits["train"]), seed=int(seed), device=device,
                                       **train_kwargs)

    set_seeds(int(seed), deterministic=bool(getattr(config, "deterministic", False)))
    model = build_model(dataset, fusion=fusion, modalities=mods, **model_kwargs)
    trainer = Trainer(model, dataset, config)
    spec = {"fusion": fusion, "modalities": mods, "model_kwargs": _jsonable(model_kwargs),
            "train": {k: v for k, v in config.to_dict().items() if k not in ("progress", "device", "checkpoint_path")},
            "device": str(trainer.device) if hasattr(trainer, "device") else device}
    return _Prepared(mods, model_kwargs, train_kwargs, model, trainer, spec)


def run_fusion(dataset: MultimodalDataset, fusion: str, modalities: Sequence[str] | None, seed: int,
               profile: Mapping[str, Any], notebook: str, experiment: str, condition: str = "",
               model_kwargs: Mapping[str, Any] | None = None, train_kwargs: Mapping[str, Any] | None = None,
               device: str = "auto", writer: RecordWriter | None = None,
               evaluate_splits: Sequence[str] = ("val", "test"), model_name: str | None = None,
               extra: Mapping[str, Any] | None = None, progress: bool = True) -> RunResult:
    """Seed, build, train and evaluate one model; record it.

    - ``fusion``: a key of ``mmlib.models.FUSIONS``; ``modalities``: the model's inputs
      (None = all of the dataset's); ``model_kwargs`` go to ``build_model`` (e.g.
      ``modality_dropout``, ``aux_heads``, ``encoder_archs``) and ``train_kwargs`` to
      ``TrainConfig`` on top of the profile's sizes (e.g. ``lr``, ``aux_weight``).
    - Metrics are computed on ``train`` (for the overfitting gap) and on every split in
      ``evaluate_splits``, prefixed by the split (``train_r2``, ``val_r2``, ``test_r2``).
      On a dataset with planted structure the record also carries
      ``test_recovered_<part>`` (``mmlib.analysis.planted``).
    - The record (``model`` = ``model_name`` or ``default_model_name``, modalities
      sorted, total parameters, train time, epochs run, device) is added to ``writer``
      if one is given, and returned in ``RunResult.record`` either way.
    - Under ``torchrun`` (``mmlib.training.distributed``) the Trainer trains with DDP; such a
      run neither reads nor writes the run cache.
    """
    prep = _prepare(dataset, fusion, modalities, seed, profile, model_kwargs, train_kwargs, device, progress)
    model, trainer, mods = prep.model, prep.trainer, prep.mods
    use_cache = runcache.enabled() and getattr(trainer, "dist", None) is None
    key = runcache.run_key(dataset, prep.spec) if use_cache else None
    hit = runcache.load(key) if key else None
    if hit is not None:
        model.load_state_dict(hit["state_dict"])
        fit = hit["fit"]
        fit.trainer = trainer
        trainer._fit_called = True
    else:
        fit = trainer.fit()
        if key:
            runcache.save(key, {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                                "fit": dataclasses.replace(fit, trainer=None)})

    splits = list(dict.fromkeys(["train", *evaluate_splits]))
    metrics = {split: dict(trainer.evaluate(split)) for split in splits}
    test_pred = trainer.predict("test") if "test" in splits else None
    if test_pred is not None and has_planted_structure(dataset):
        metrics["test"].update(planted_recovery(dataset, dataset.splits["test"], test_pred))

    extra = {"best_epoch": fit.best_epoch, "best_val": fit.best_val, "stopped_early": fit.stopped_early,
             "max_epochs": int(trainer.config.epochs), "patience": trainer.config.patience,
             "model_kwargs": prep.model_kwargs,
             "train_kwargs": {k: v for k, v in prep.train_kwargs.items() if k != "progress"},
             "cached": hit is not None, **dict(extra or {})}
    fields = record_fields(model, fit, metrics, experiment=experiment,
                           model_name=model_name or default_model_name(fusion, mods), fusion=fusion, modalities=mods,
                           condition=condition, seed=seed, extra=extra)
    record = add_record(fields, writer=writer, notebook=notebook, dataset=dataset.name, predictions=test_pred,
                        y_test=None if test_pred is None else dataset.target[dataset.splits["test"]].numpy())
    return RunResult(model=model, trainer=trainer, fit=fit, metrics=metrics, record=record,
                     test_predictions=test_pred, fields=fields)


def restore_run(dataset: MultimodalDataset, call: Mapping[str, Any], trained: Mapping[str, Any]) -> RunResult:
    """The ``RunResult`` of a run another process trained (``mmlib.training.executor``): the model
    and its Trainer rebuilt here with the trained weights, the record made from the worker's fields
    and added to ``call["writer"]`` exactly as ``run_fusion`` would have."""
    c = dict(call)
    prep = _prepare(dataset, c["fusion"], c.get("modalities"), c["seed"], c["profile"], c.get("model_kwargs"),
                    c.get("train_kwargs"), c.get("device", "auto"), c.get("progress", True))
    prep.model.load_state_dict(trained["state_dict"])
    fit = dataclasses.replace(trained["fit"], trainer=prep.trainer)
    prep.trainer._fit_called = True
    pred = trained.get("test_predictions")
    record = add_record(trained["fields"], writer=c.get("writer"), notebook=c["notebook"], dataset=dataset.name,
                        predictions=pred,
                        y_test=None if pred is None else dataset.target[dataset.splits["test"]].numpy())
    return RunResult(model=prep.model, trainer=prep.trainer, fit=fit, metrics=trained["metrics"], record=record,
                     test_predictions=pred, fields=trained["fields"])


def _resolve_executor(executor: Any, workers: int, ray_address: str | None, profile: Mapping[str, Any] | None) -> Any:
    from mmlib.training.executor import get_executor

    if executor not in (None, ""):
        return get_executor(executor, workers=workers, ray_address=ray_address)
    # the profile's default: Ray where it measured faster, local when no Ray instance can start
    return get_executor((profile or {}).get("executor") or "local", workers=workers, ray_address=ray_address,
                        fallback_local=True)


def run_over_seeds(dataset: MultimodalDataset, fusion: str, modalities: Sequence[str] | None, seeds: Iterable[int],
                   progress: bool = True, executor: Any = None, workers: int = 0, ray_address: str | None = None,
                   **kwargs: Any) -> list[RunResult]:
    """``run_fusion`` once per seed (same arguments otherwise); a progress bar over the
    seeds unless ``progress=False`` (which also silences the trainer's bar).

    ``executor``: ``"local"`` (one run after the other, here), ``"ray"`` (``workers`` runs at
    once on a local Ray instance, or on the cluster at ``ray_address`` / ``MMLIB_RAY_ADDRESS``),
    an ``mmlib.training.executor.Executor``, or None: the profile's ``executor``. Results
    and records come back in seed order either way."""
    return run_grid(dataset, [dict(fusion=fusion, modalities=modalities)], seeds, progress=progress,
                    executor=executor, workers=workers, ray_address=ray_address, **kwargs)[0]


def run_grid(dataset: MultimodalDataset, grid: Sequence[Mapping[str, Any]], seeds: Iterable[int],
             progress: bool = True, executor: Any = None, workers: int = 0, ray_address: str | None = None,
             **common: Any) -> list[list[RunResult]]:
    """Every configuration of ``grid`` over every seed, submitted to one executor at once.

    Each entry of ``grid`` is a dict of ``run_fusion`` arguments (``fusion``, ``modalities``,
    ``model_name``, ``experiment``, ``model_kwargs``, ...) on top of ``common``. Returns one
    list of ``RunResult`` per entry, in grid order, seeds in order; records are added to
    ``writer`` in that order too, whichever executor trained them (see ``run_over_seeds``)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise MMLibError("run_over_seeds: no seeds given (the profile's `seeds` list is empty?).")
    if "seed" in common or any("seed" in g for g in grid):
        raise MMLibError("run_grid: the seeds are its own argument, not part of a configuration.")
    ex = _resolve_executor(executor, workers, ray_address, common.get("profile"))
    configs = [{"modalities": None, **common, **dict(g)} for g in grid]
    if ex.name != "local":
        calls = [{**c, "seed": s, "progress": False} for c in configs for s in seeds]
        flat = ex.run(dataset, calls)
        return [flat[i * len(seeds):(i + 1) * len(seeds)] for i in range(len(configs))]
    out = []
    for c in configs:
        it: Iterable[int] = seeds
        if progress and len(seeds) > 1:
            from tqdm.auto import tqdm

            mods = list(c["modalities"]) if c.get("modalities") is not None else list(dataset.modality_names)
            name = c.get("model_name") or default_model_name(c["fusion"], mods)
            it = tqdm(seeds, desc=f"{name} over seeds", leave=False)
        out.append([ex.run(dataset, [{**c, "seed": s, "progress": progress}])[0] for s in it])
    return out


# ------------------------------------------------------------------------ tables
def _records_frame(records: pd.DataFrame | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    if isinstance(records, pd.DataFrame):
        if "metrics" in records.columns:  # pd.DataFrame(writer.records): metrics still a dict per row
            return records_to_frame(records.to_dict("records"))
        return records
    return records_to_frame(list(records))


def summary_table(records: pd.DataFrame | Iterable[Mapping[str, Any]], by: Sequence[str] = DEFAULT_SUMMARY_BY,
                  metrics: Sequence[str] | None = None, digits: int = 4) -> pd.DataFrame:
    """Mean and std (over seeds) of ``metrics`` per group of ``by``.

    ``records``: result records (``writer.records``, a list of dicts, ``pd.DataFrame`` of
    them, or a ``load_records`` frame). ``metrics``: names such as ``"test_r2"`` (a
    ``metric_`` prefix is accepted); default: every ``test_*`` metric except the planted
    ``recovered_*`` ones. Columns: ``<metric>_mean``, ``<metric>_std`` (NaN for one
    seed), ``n`` (records in the group), and the mean ``n_params``, ``train_time_s``
    and ``epochs`` where recorded. Indexed by the ``by`` columns (those present).
    """
    df = _records_frame(records)
    if not len(df):
        raise MMLibError("summary_table: no records to summarise.")
    by = [b for b in by if b in df.columns]
    if not by:
        raise MMLibError(f"summary_table: none of the grouping columns are in the records ({list(df.columns)}).")
    available = [c[len("metric_"):] for c in df.columns if c.startswith("metric_")]
    if metrics is None:
        metrics = [m for m in available
                   if m.startswith("test_") and "_recovered_" not in m and df[f"metric_{m}"].notna().any()]
    else:
        metrics = [m[len("metric_"):] if m.startswith("metric_") else m for m in metrics]
        missing = [m for m in metrics if m not in available]
        if missing:
            raise MMLibError(f"summary_table: no metric {missing} in these records. Available: {', '.join(available)}.")
    df = df.copy()
    extras = [c for c in ("n_params", "train_time_s", "epochs") if c in df.columns]
    for c in extras:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    g = df.groupby(by, sort=False, dropna=False)
    out = pd.DataFrame(index=g.size().index)
    for m in metrics:
        col = g[f"metric_{m}"]
        out[f"{m}_mean"] = col.mean()
        out[f"{m}_std"] = col.std(ddof=1)
    out["n"] = g.size().astype(int)
    for c in extras:
        if df[c].notna().any():
            out[c] = g[c].mean()
    if "n_params" in out:
        out["n_params"] = out["n_params"].round().astype("Int64")
    return out.round(digits)


__all__ = ["RunResult", "train_config_from_profile", "default_model_name", "record_fields", "add_record", "record_run",
           "run_fusion", "restore_run", "run_over_seeds", "run_grid", "summary_table", "PROFILE_TO_TRAIN"]
