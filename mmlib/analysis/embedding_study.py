"""Notebook 70's study (seed 002): the experiment loops, tables and computed sentences.

The models, target transforms and losses are ``mmlib.analysis.embedding_fusion``'s; this
module runs its configurations in the notebook's order, adds the records, and writes the
prose under each table from that table alone (every number in a sentence is computed).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mmlib.analysis import embedding_fusion as E
from mmlib.analysis.errors import error_by_bins, worst_best
from mmlib.training.experiments import summary_table

SHOWN = ["test_smape", "test_mae", "test_rmse", "test_r2"]
SHOWN_NAMES = ["SMAPE %", "MAE", "RMSE", "R²"]
MODEL = {"hidden": 128, "feat_dim": 128}  # branch width (EmbeddingMLP / tabular MLP) and fusion width
BASELINE = ("standard", "mse")  # z-scored target + MSE: the plain baseline
LOG_VARIANTS = (("log", "mse"), ("log", "huber"), ("log", "smape"), ("log", "weighted_smape"))
FUSIONS = (("attention", {"heads": 4}), ("moe", {"n_experts": 3}))  # seed 002's advanced variants
TWO_BRANCH = "two_branch"  # record name of the two-branch concatenation


def condition(mode: str, loss: str) -> str:
    """The record condition of a (target transform, loss) pair, as ``run_target_variant`` writes it."""
    return f"target={mode},loss={loss}"


BASELINE_CONDITION = condition(*BASELINE)


def split_condition(cond: str) -> tuple[str, str]:
    """``"target=log,loss=smape"`` -> ``("log", "smape")``."""
    mode, loss = (part.split("=")[1] for part in cond.split(","))
    return mode, loss


def branches_text(branches: Mapping[str, Any]) -> str:
    """One markdown sentence on the two branches (``frozen_fusion_dataset``'s description)."""
    text = (f"Branches: {', '.join(f'`{b}`' for b in branches['branches'])}; text embeddings: "
            f"**{branches['text_method']}**; image embeddings: **{branches['image_method'] or 'none (no images)'}**; "
            f"loader options: `{branches['load_options']}`.")
    e = branches.get("image_extra")
    if e:
        text += (f" The image branch is frozen EfficientNet-Lite0 (ImageNet, {e['backbone_params']:,} backbone "
                 f"parameters) on images resized to {e['size']} px: embedding took {e['embed_time_s']:.0f} s"
                 + (" (read from the cache)." if e["cached"] else "."))
    if branches.get("image_note"):
        text += " " + branches["image_note"]
    return text


def log_target_ok(y: Any) -> bool:
    """A log target needs positive values."""
    return bool(np.min(np.asarray(y, dtype=float)) > 0)


def target_text(y: Any, name: str) -> str:
    """Range, median and skewness of the target (and of its log, when positive)."""
    y = np.asarray(y, dtype=float)
    text = (f"`{name}` ranges from {y.min():.4g} to {y.max():.4g} (median {np.median(y):.4g}); "
            f"skewness {E.skewness(y):+.2f}")
    if log_target_ok(y):
        return text + f", and {E.skewness(np.log(y)):+.2f} after the log."
    return text + "; it is not positive, so the log variants are skipped."


def target_variants(log_ok: bool) -> list[tuple[str, str]]:
    """(target transform, loss) pairs to compare: the baseline, and the log ones when the target allows."""
    return [BASELINE] + (list(LOG_VARIANTS) if log_ok else [])


def target_and_loss_runs(ds: Any, profile: Mapping[str, Any], writer: Any, device: str = "auto",
                         log_ok: bool = True) -> dict[tuple[str, str, str, int], E.VariantRun]:
    """The two-branch model for each ``target_variants`` pair over the profile's seeds
    (``target_and_loss`` records); keyed by (model, target transform, loss, seed)."""
    runs = {}
    for mode, loss in target_variants(log_ok):
        for seed in profile["seeds"]:
            runs[TWO_BRANCH, mode, loss, seed] = E.run_target_variant(
                ds, fusion="early", target_mode=mode, loss=loss, seed=seed, profile=profile,
                experiment="target_and_loss", model_name=TWO_BRANCH, writer=writer, device=device, model_kwargs=MODEL)
    return runs


def target_and_loss_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return summary_table([r for r in records if r["experiment"] == "target_and_loss"], by=("condition",),
                         metrics=SHOWN + ["val_smape"])


def lowest_val_smape(table: pd.DataFrame) -> str:
    """The row (condition or model) with the lowest mean validation SMAPE: chosen on validation, not test."""
    return table["val_smape_mean"].astype(float).idxmin()


def loss_conclusion(tl: pd.DataFrame, best_cond: str, log_ok: bool) -> str:
    """The chosen configuration against the baseline, and what weighting the SMAPE changes."""
    def f(c: str, m: str) -> float:
        return float(tl.at[c, f"{m}_mean"])

    base = BASELINE_CONDITION
    text = (f"Lowest validation SMAPE: **{best_cond}** (test SMAPE {f(best_cond, 'test_smape'):.2f} %, R² "
            f"{f(best_cond, 'test_r2'):.3f})")
    text += (" — the plain baseline itself." if best_cond == base else
             f", against {f(base, 'test_smape'):.2f} % and R² {f(base, 'test_r2'):.3f} for the z-scored target "
             "with MSE.")
    if log_ok:
        s, w = condition("log", "smape"), condition("log", "weighted_smape")
        text += (f" Weighting the SMAPE changes test SMAPE from {f(s, 'test_smape'):.2f} % to "
                 f"{f(w, 'test_smape'):.2f} % and R² from {f(s, 'test_r2'):.3f} to {f(w, 'test_r2'):.3f}.")
    return text


def fusion_variant_runs(ds: Any, profile: Mapping[str, Any], best_cond: str, writer: Any, device: str = "auto"
                        ) -> dict[tuple[str, str, str, int], E.VariantRun]:
    """Attention and MoE fusion with the chosen target transform and loss, over the profile's
    seeds (``fusion_variant`` records); keyed like ``target_and_loss_runs``."""
    mode, loss = split_condition(best_cond)
    runs = {}
    for fusion, extra in FUSIONS:
        for seed in profile["seeds"]:
            runs[fusion, mode, loss, seed] = E.run_target_variant(
                ds, fusion=fusion, target_mode=mode, loss=loss, seed=seed, profile=profile,
                experiment="fusion_variant", model_name=fusion, writer=writer, device=device,
                model_kwargs={**MODEL, **extra})
    return runs


def fusion_table(records: Sequence[Mapping[str, Any]], best_cond: str) -> pd.DataFrame:
    """Two-branch, attention and MoE under ``best_cond``, by model."""
    chosen = [r for r in records if r["experiment"] in ("target_and_loss", "fusion_variant")
              and r["condition"] == best_cond]
    return summary_table(chosen, by=("model",), metrics=SHOWN + ["val_smape"])


def fusion_conclusion(fv: pd.DataFrame, best_model: str) -> str:
    """Parameter counts, the model chosen on validation and the two-branch reference."""
    return ("Parameters: " + ", ".join(f"{m} {int(fv.at[m, 'n_params']):,}" for m in fv.index) + ". "
            f"Lowest validation SMAPE: **{best_model}** (test SMAPE {float(fv.at[best_model, 'test_smape_mean']):.2f} %, "
            f"R² {float(fv.at[best_model, 'test_r2_mean']):.3f}); the two-branch concatenation has test SMAPE "
            f"{float(fv.at[TWO_BRANCH, 'test_smape_mean']):.2f} %.")


def baseline_and_best(runs: Mapping[tuple[str, str, str, int], E.VariantRun], best_model: str, best_cond: str,
                      seed: int) -> dict[str, E.VariantRun]:
    """``"<model> · <condition>"`` -> run (``seed``), for the baseline and the chosen configuration."""
    return {f"{TWO_BRANCH} · {BASELINE_CONDITION}": runs[(TWO_BRANCH, *BASELINE, seed)],
            f"{best_model} · {best_cond}": runs[(best_model, *split_condition(best_cond), seed)]}


def error_by_bin_tables(compare: Mapping[str, E.VariantRun], n_bins: int, writer: Any, modalities: Sequence[str],
                        seed: int) -> dict[str, pd.DataFrame]:
    """``error_by_bins`` of each run's test predictions (name -> table); one ``error_by_bins``
    record per (run, bin), its condition ``<condition>;bin=<b>``."""
    bins = {name: error_by_bins(r.y_test, r.pred_test, bins=n_bins) for name, r in compare.items()}
    for name, t in bins.items():
        model, cond = name.split(" · ")
        for _, b in t.iterrows():
            writer.add(experiment="error_by_bins", model=model, modalities=list(modalities),
                       condition=f"{cond};bin={int(b['bin'])}", seed=seed,
                       metrics={"test_smape": b["smape"], "test_mae": b["mae"], "test_bias": b["bias"],
                                "bin_y_min": b["y_min"], "bin_y_max": b["y_max"]})
    return bins


def bins_conclusion(bins: Mapping[str, pd.DataFrame]) -> str:
    """SMAPE in the lowest and highest bin for the first (baseline) and last (best) table,
    and the regression towards the middle when both over-predict low and under-predict high."""
    b0, b1 = list(bins.values())[0], list(bins.values())[-1]
    text = (f"Baseline SMAPE is {b0['smape'].iloc[0]:.1f} % in the lowest bin and {b0['smape'].iloc[-1]:.1f} % in "
            f"the highest; the best configuration has {b1['smape'].iloc[0]:.1f} % and {b1['smape'].iloc[-1]:.1f} %.")
    if min(b0["bias"].iloc[0], b1["bias"].iloc[0]) > 0 and max(b0["bias"].iloc[-1], b1["bias"].iloc[-1]) < 0:
        text += (f" Both over-predict the lowest bin by {b0['bias'].iloc[0]:.4g} and {b1['bias'].iloc[0]:.4g} and "
                 f"under-predict the highest by {-b0['bias'].iloc[-1]:.4g} and {-b1['bias'].iloc[-1]:.4g} on "
                 "average: a regression towards the middle.")
    return text


def extremes(run: E.VariantRun, ds: Any, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``k`` worst and best test predictions of ``run`` (``worst_best``), with the row's own
    text (first 90 characters) where the dataset keeps it."""
    worst, best = worst_best(run.y_test, run.pred_test, k=k, ids=run.test_rows)
    texts = ds.meta.get("raw_texts") or ds.meta.get("texts")
    if texts is not None and not isinstance(texts, dict):
        for t in (worst, best):
            t["text"] = [(texts[i] or "")[:90] for i in t["id"]]
    return worst, best


def extremes_conclusion(worst: pd.DataFrame, best: pd.DataFrame, y_test: Any) -> str:
    return (f"The worst {len(worst)} have true values with median {worst['y_true'].median():.4g} (test median "
            f"{np.median(y_test):.4g}) and mean absolute error {worst['abs_error'].mean():.4g}; the best "
            f"{len(best)} have median true value {best['y_true'].median():.4g}.")


__all__ = ["SHOWN", "SHOWN_NAMES", "MODEL", "BASELINE", "BASELINE_CONDITION", "LOG_VARIANTS", "FUSIONS", "TWO_BRANCH",
           "condition", "split_condition", "branches_text", "log_target_ok", "target_text", "target_variants",
           "target_and_loss_runs", "target_and_loss_table", "lowest_val_smape", "loss_conclusion",
           "fusion_variant_runs", "fusion_table", "fusion_conclusion", "baseline_and_best", "error_by_bin_tables",
           "bins_conclusion", "extremes", "extremes_conclusion"]
