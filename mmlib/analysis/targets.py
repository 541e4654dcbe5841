"""The dataset's other targets (notebook 20): the same models trained on a target other
than the primary one, e.g. clothing's binary ``Recommended IND``. The caller loads the
dataset with that target (``mmlib.data.load_for_profile(name, profile, target=...)``);
``other_target_experiment`` trains each single modality and each fusion over seeds, fits
the practitioner baselines once, records everything (experiment ``other_target``,
condition ``target=<target>``) and summarises every test metric of that task per model.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from mmlib.analysis.practitioner import add_baseline_record, practitioner_baselines
from mmlib.analysis.summaries import Summary, as_frame
from mmlib.data.base import MultimodalDataset
from mmlib.reporting.records import RecordWriter, fmt_mean_std
from mmlib.training.tasks import primary_metric


def _test_metrics_by_model(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """mean ± std over seeds of every test metric present, per model (``_<metric>``: the mean)."""
    metrics = [c[len("metric_test_"):] for c in df.columns
               if c.startswith("metric_test_") and df[c].notna().any() and "recovered" not in c]
    rows = []
    for model, g in df.groupby("model", sort=False):
        row = {"model": model, "modalities": g["modality_set"].iloc[0], "seeds": len(g)}
        for m in metrics:
            row[m] = fmt_mean_std(g[f"metric_test_{m}"].mean(), g[f"metric_test_{m}"].std(ddof=1), None)
            row[f"_{m}"] = g[f"metric_test_{m}"].mean()
        rows.append(row)
    return pd.DataFrame(rows).set_index("model"), metrics


def other_target_experiment(ds: MultimodalDataset, profile: Mapping, notebook: str, device: str,
                            writer: RecordWriter, fusions: Sequence[str] = ("early",), unimodal: bool = True,
                            baselines: bool = True) -> Summary:
    """The same models on ``ds``, loaded with another target (``ds.target_name``): each
    single modality and each of ``fusions`` over the profile's seeds, plus one fit each of
    CatBoost (tabular + text) and TF-IDF + linear (+ tabular) where the dataset has raw
    texts. Records: experiment ``other_target``, condition ``target=<target>``.
    The summary table has mean ± std of every test metric of that task per model."""
    from mmlib.training.experiments import run_over_seeds

    target = ds.target_name
    cond = f"target={target}"
    start = len(writer.records)
    kw = dict(profile=profile, notebook=notebook, experiment="other_target", condition=cond, device=device,
              writer=writer, progress=False)
    if unimodal:
        for m in ds.modality_names:
            run_over_seeds(ds, "early", [m], profile["seeds"], model_name=f"{m}_only", **kw)
    for f in fusions:
        run_over_seeds(ds, f, None, profile["seeds"], model_name=f"{f}_fusion", **kw)
    if baselines and "tabular_frame" in ds.meta:
        # one fit each (seed 0): CatBoost's seed moves its score by ~0.002 here, and with text features a
        # multiclass fit on clothing takes ~85 s on a 2-core CPU
        seed = profile["seeds"][0]
        for name, res in practitioner_baselines(ds, profile, seed, with_embeddings=False).items():
            add_baseline_record(writer, res, "other_target", name, seed, condition=cond)
    table, metrics = _test_metrics_by_model(as_frame(writer.records[start:]))
    key, higher = primary_metric(ds.task)
    order = table[f"_{key}"].sort_values(ascending=not higher).index
    table = table.loc[order]
    best = order[0]
    text = (f"**{target}** ({ds.task}, {ds.n:,} rows): best test {key} **{best}** ({table.loc[best, key]}); "
            + ", ".join(f"{m} {table.loc[best, m]}" for m in metrics if m != key) + ".")
    return Summary(table[[c for c in table.columns if not c.startswith("_")]], text,
                   {"best": best, "task": ds.task, "metric": key})


__all__ = ["other_target_experiment"]
