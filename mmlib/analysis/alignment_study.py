"""Notebook 60's study (seeds 001 and 004): text ↔ image alignment, experiment by experiment.

Each function is one block of ``notebooks/60_contrastive_alignment.ipynb``: it trains or
reads what the block needs through ``mmlib.analysis.alignment`` / ``spaces`` /
``retrieval`` and ``mmlib.models.alignment``, adds the block's result records to the
notebook's ``RecordWriter`` (saving is left to the notebook), and returns DataFrames.
The ``*_conclusion`` functions write the prose under a table from that table alone, so
every number in a sentence is a computed one.

Order of use (the notebook's order; records keep their fields and their order)::

    spaces = frozen_spaces(ds, P, device)              # 1: MiniLM text + autoencoder image, centred
    probes = probe_table(ds, spaces, writer, seed)     #    linear probes of the planted factors
    pairs = spaces.pairs()
    refs = reference_points(ds, pairs["test"], writer, seed)      # 2: random and the ceiling
    translation = translation_runs(pairs, P["seeds"], fit, writer, extra=...)  # 3: seed 001
    two_tower = two_tower_runs(ds, P["seeds"], fit, writer)       # 4: seed 004
    searchers = build_searchers(ds, spaces, two_tower[seed].model, translation, trans, seed, device)  # 6
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from mmlib.analysis import alignment as C
from mmlib.analysis import retrieval as R
from mmlib.analysis import spaces as S
from mmlib.models import alignment as A
from mmlib.reporting.records import fmt_mean_std
from mmlib.training.experiments import summary_table
from mmlib.utils import MMLibError

SPLITS = ("train", "val", "test")
# retrieval metrics shown in the tables (test split; t2i = text→image, i2t = image→text)
SHOWN = [f"test_{d}_{k}" for d in ("t2i", "i2t") for k in ("R@1", "R@5", "R@10", "MRR")]
SHOWN_NAMES = [f"{d} {k}" for d in ("text→image", "image→text") for k in ("R@1", "R@5", "R@10", "MRR")]
# seed 001's grid, architecture × loss: the baseline (mlp + cosine) and the final model first
TRANSLATORS = (("mlp", "cosine"), ("residual", "infonce"), ("mlp", "infonce"), ("residual", "cosine"))
SEED001 = TRANSLATORS[:2]  # the two configurations seed 001 itself trained
TRANSLATOR_HIDDEN = 512  # hidden width of both translators
TRANSLATOR_LR = 1e-3
TWO_TOWER = "two_tower_bigru_cnn"  # record name of seed 004's model
TWO_TOWER_SIZE = {"dim": 128, "feat_dim": 128}  # shared space width, encoder output width
TWO_TOWER_LR = 2e-3
# spacecraft's planted factors: captions name colour and stripe only
PROBE_FACTORS = ("color", "striped", "engines", "shape", "heading", "size_class")
R10 = "test_t2i_R@10"
PRETRAINED_SPACE = "image_efficientnet"  # probe column / record name of the pretrained image space
PRETRAINED_EXPERIMENT = "translation_pretrained"  # seed 001 between two pretrained spaces
PRETRAINED_SUFFIX = "_efficientnet"  # its translators: <arch>_<loss>_efficientnet


# --------------------------------------------------------------------------- setup
def not_applicable(ds: Any) -> str | None:
    """None when ``ds`` has a token text and an image modality; else the one-paragraph
    markdown saying why the study does not apply (the notebook shows it and skips the rest)."""
    if A.has_text_and_image(ds):
        return None
    kinds = ", ".join(f"{m} ({mod.kind})" for m, mod in ds.modalities.items())
    return (f"**Not applicable:** `{ds.name}` has no image modality (it has {kinds}). Text–image "
            "alignment, retrieval and search need both a text and an image for each row, so the rest of "
            "this notebook is skipped.")


def fit_settings(profile: Mapping[str, Any], device: str = "auto") -> dict[str, Any]:
    """The training sizes from a run profile, shared by every alignment model of the study
    (keyword arguments of ``mmlib.analysis.alignment.run_alignment``)."""
    return dict(epochs=profile["epochs"], patience=profile["patience"], batch_size=profile["batch_size"],
                max_batches_per_epoch=profile["max_batches_per_epoch"], device=device)


@dataclass
class FrozenSpaces:
    """The two frozen spaces for every dataset row, raw and centred on the training mean."""

    text: S.FrozenEmbeddings
    image: S.FrozenEmbeddings
    x_text: np.ndarray  # text.x minus its training mean
    x_image: np.ndarray  # image.x minus its training mean
    rows: dict[str, np.ndarray]  # split -> dataset rows
    both: np.ndarray  # bool per row: text and image both present
    # the pretrained image space (frozen EfficientNet-Lite0), when asked for and available
    pretrained: S.FrozenEmbeddings | None = None
    x_pretrained: np.ndarray | None = None  # pretrained.x minus its training mean
    pretrained_error: str | None = None  # why there is no pretrained space, when it was asked for

    def pairs(self, centred: bool = True, image: str = "autoencoder") -> dict[str, C.Pairs]:
        """Text/image embedding pairs per split, on rows with both modalities; ``image``:
        ``"autoencoder"`` or ``"pretrained"`` (the EfficientNet space)."""
        if image == "pretrained":
            if self.pretrained is None:
                raise MMLibError(f"no pretrained image space: {self.pretrained_error or 'not asked for'}")
            xt, xi = (self.x_text, self.x_pretrained) if centred else (self.text.x, self.pretrained.x)
        else:
            xt, xi = (self.x_text, self.x_image) if centred else (self.text.x, self.image.x)
        return {s: C.embedding_pairs(xt, xi, self.rows[s], present=self.both) for s in SPLITS}


def frozen_spaces(ds: Any, profile: Mapping[str, Any], device: str = "auto", text_method: str = "auto",
                  pretrained_image: bool = False) -> FrozenSpaces:
    """MiniLM (or TF-IDF) text embeddings and the profile's autoencoder image space (cached,
    notebook 70 reuses it), both centred on the training rows (``alignment.center``). With
    ``pretrained_image`` also the frozen EfficientNet-Lite0 space (cached; when its weights
    cannot be fetched, ``pretrained_error`` says why and the study goes on without it)."""
    text = S.text_embeddings(ds, method=text_method)
    image = S.autoencoder_for_profile(ds, profile, device=device)
    rows = {s: np.asarray(ds.splits[s]) for s in SPLITS}
    both = (ds.modalities["text"].present & ds.modalities["image"].present).cpu().numpy()
    out = FrozenSpaces(text, image, C.center(text.x, rows["train"]), C.center(image.x, rows["train"]), rows, both)
    if pretrained_image:
        try:
            out.pretrained = S.image_embeddings_pretrained(ds, device=device)
            out.x_pretrained = C.center(out.pretrained.x, rows["train"])
        except MMLibError as exc:
            out.pretrained_error = str(exc)
    return out


def spaces_text(spaces: FrozenSpaces) -> str:
    """One markdown sentence: which spaces, how wide, and the autoencoder's validation error."""
    img = spaces.image
    how = "read from the cache" if img.extra.get("cached") else f"trained in {img.train_time_s:.0f} s"
    text = (f"Text space: **{spaces.text.method}**, {spaces.text.dim}-d. Image space: autoencoder bottleneck, "
            f"{img.dim}-d, best validation reconstruction MSE {img.extra['val_mse']:.4f} ({how}).")
    pre = spaces.pretrained
    if pre is not None:
        e = pre.extra
        text += (f" Pretrained image space: **EfficientNet-Lite0** (ImageNet, frozen), {pre.dim}-d, images resized "
                 f"to {e['size']} px, {e['backbone_params']:,} backbone parameters; {e['n_images']:,} images embedded "
                 f"in {e['embed_time_s']:.0f} s" + (" (read from the cache)." if e["cached"] else "."))
    elif spaces.pretrained_error:
        text += f" No pretrained image space: {spaces.pretrained_error}"
    return text


def autoencoder_curve(spaces: FrozenSpaces) -> pd.DataFrame:
    """The autoencoder's reconstruction error per epoch, long: epoch, split, mse."""
    return spaces.image.history.melt(id_vars="epoch", value_vars=["train_mse", "val_mse"], var_name="split",
                                     value_name="mse")


def probe_table(ds: Any, spaces: FrozenSpaces, writer: Any, seed: int) -> pd.DataFrame | None:
    """Linear-probe test accuracy of each planted factor in each centred space (rows: factor;
    columns: text, image, majority), one ``frozen_space_probe`` record per (space, factor);
    None when the dataset has no ground-truth factors."""
    if "latent" not in ds.meta:
        return None
    factors = ds.meta["latent"][list(PROBE_FACTORS)]
    xs = {"text": spaces.x_text, "image": spaces.x_image}
    if spaces.x_pretrained is not None:
        xs[PRETRAINED_SPACE] = spaces.x_pretrained
    probes = C.factor_probes(xs, factors, spaces.rows["train"], spaces.rows["test"])
    names = {"text": f"text_{spaces.text.method}", "image": "image_autoencoder", PRETRAINED_SPACE: PRETRAINED_SPACE}
    for _, r in probes.iterrows():
        writer.add(experiment="frozen_space_probe", model=names[r["space"]], modalities=[r["space"]],
                   condition=f"factor={r['factor']}", seed=seed,
                   metrics={"test_probe_accuracy": r["accuracy"], "test_majority_rate": r["majority"]})
    table = probes.pivot(index="factor", columns="space", values="accuracy")
    table["majority"] = probes.groupby("factor")["majority"].first()
    return table


# --------------------------------------------------------------------------- reference points
def reference_points(ds: Any, test_pairs: C.Pairs, writer: Any, seed: int) -> dict[str, dict[str, float]]:
    """``random`` (exact expectation over the test pairs) and, where the shared factors are
    known, ``shared_factor_ceiling``: name -> {R@1, R@5, R@10, MRR}; one ``reference`` record each."""
    refs = {"random": R.random_baseline(len(test_pairs))}
    groups = C.shared_groups(ds)
    if groups is not None:
        refs["shared_factor_ceiling"] = R.group_ceiling(groups[test_pairs.rows], groups[test_pairs.rows])
    for name, vals in refs.items():
        writer.add(experiment="reference", model=name, modalities=["text", "image"], seed=seed,
                   metrics={f"test_t2i_{k}": v for k, v in vals.items()} | {f"test_i2t_{k}": v for k, v in vals.items()},
                   n_params=0, train_time_s=0.0, epochs=0, device="none")
    return refs


def reference_table(refs: Mapping[str, Mapping[str, float]], n_test: int) -> pd.DataFrame:
    return pd.DataFrame(refs).T.round(4).rename_axis(f"reference ({n_test} test pairs)")


# --------------------------------------------------------------------------- seed 001: translators
def translation_runs(pairs: Mapping[str, C.Pairs], seeds: Sequence[int], fit: Mapping[str, Any], writer: Any,
                     configs: Sequence[tuple[str, str]] = TRANSLATORS, condition: str = "",
                     extra: Mapping[str, Any] | None = None, experiment: str = "translation", suffix: str = ""
                     ) -> dict[tuple[str, int], C.AlignmentRun]:
    """Train each (architecture, loss) of ``configs`` over ``seeds`` on the text→image pairs;
    one ``experiment`` record each (model ``<arch>_<loss><suffix>``). Keyed by (model, seed)."""
    d_text, d_image = pairs["train"].a.shape[1], pairs["train"].b.shape[1]
    runs = {}
    for arch, loss in configs:
        for seed in seeds:
            runs[f"{arch}_{loss}{suffix}", seed] = C.run_alignment(
                partial(A.make_translator, arch, d_text, d_image, hidden=TRANSLATOR_HIDDEN), pairs["train"],
                pairs["val"], pairs["test"], experiment=experiment, model_name=f"{arch}_{loss}{suffix}",
                condition=condition, seed=seed, loss=loss, lr=TRANSLATOR_LR, writer=writer, extra=extra, **fit)
    return runs


def pretrained_translation_runs(spaces: FrozenSpaces, seeds: Sequence[int], fit: Mapping[str, Any], writer: Any
                                ) -> dict[tuple[str, int], C.AlignmentRun]:
    """Seed 001's two translators (``SEED001``) between two *pretrained* spaces: the frozen text
    space into the frozen EfficientNet-Lite0 image space (centred), over ``seeds``; records
    ``translation_pretrained``, models ``<arch>_<loss>_efficientnet``. Empty without that space."""
    if spaces.pretrained is None:
        return {}
    return translation_runs(spaces.pairs(image="pretrained"), seeds, fit, writer, configs=SEED001,
                            experiment=PRETRAINED_EXPERIMENT, suffix=PRETRAINED_SUFFIX,
                            extra={"text_space": spaces.text.method, "image_space": spaces.pretrained.method,
                                   "image_size": spaces.pretrained.extra.get("size")})


def space_comparison(records: Sequence[Mapping[str, Any]], random: Mapping[str, float]) -> pd.DataFrame:
    """Seed 001's two translators, text→image R@10 and MRR (mean ± std over seeds) into the
    autoencoder space and into the EfficientNet space, with random's values: one row per
    (translator, image space)."""
    recs = [r for r in records if not r["condition"] and (
        r["experiment"] == PRETRAINED_EXPERIMENT
        or (r["experiment"] == "translation" and tuple(r["model"].split("_")) in SEED001))]
    table = summary_table(recs, by=("experiment", "model"), metrics=[R10, "test_t2i_MRR"]).reset_index()
    table["image space"] = np.where(table["experiment"] == PRETRAINED_EXPERIMENT, "EfficientNet-Lite0 (ImageNet)",
                                    "autoencoder (no labels)")
    table["translator"] = table["model"].str.removesuffix(PRETRAINED_SUFFIX)
    table["R@10 / random"] = table[f"{R10}_mean"].astype(float) / random["R@10"]
    cols = ["translator", "image space", f"{R10}_mean", f"{R10}_std", "R@10 / random", "test_t2i_MRR_mean"]
    return table[cols].set_index(["translator", "image space"]).astype(float).round(4)


def space_conclusion(comp: pd.DataFrame, random: Mapping[str, float]) -> str:
    """Per translator: Recall@10 into the EfficientNet space against the autoencoder space and random."""
    parts = []
    for tr in dict.fromkeys(comp.index.get_level_values(0)):
        sub = comp.xs(tr, level=0)
        pre = sub[sub.index.str.startswith("EfficientNet")]
        ae = sub[sub.index.str.startswith("autoencoder")]
        if len(pre) and len(ae):
            parts.append(f"{tr}: {float(pre[f'{R10}_mean'].iloc[0]):.3f} into EfficientNet "
                         f"({float(pre['R@10 / random'].iloc[0]):.1f}× random) against "
                         f"{float(ae[f'{R10}_mean'].iloc[0]):.3f} into the autoencoder space")
    if not parts:
        return "No translator into the pretrained image space was trained."
    return (f"Text→image Recall@10 (random {random['R@10']:.3f}): " + "; ".join(parts) + ".")


def translation_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Mean/std over seeds of the shown metrics per translator (main condition only)."""
    return summary_table([r for r in records if r["experiment"] == "translation" and not r["condition"]],
                         by=("model",), metrics=SHOWN)


def loss_architecture_grid(trans: pd.DataFrame) -> pd.DataFrame:
    """Text→image Recall@10 (mean over seeds) as architecture × loss."""
    grid = trans[f"{R10}_mean"].astype(float).rename_axis("model").reset_index()
    grid[["architecture", "loss"]] = grid["model"].str.split("_", expand=True)
    return grid.pivot(index="architecture", columns="loss", values=f"{R10}_mean")


def _ms(table: pd.DataFrame, row: Any, metric: str) -> str:
    return fmt_mean_std(float(table.at[row, f"{metric}_mean"]), float(table.at[row, f"{metric}_std"]))


def translation_conclusion(trans: pd.DataFrame, random: Mapping[str, float]) -> str:
    """Final model vs baseline, and the average effect of the loss and of the architecture."""
    grid = loss_architecture_grid(trans)
    loss_gain = (grid["infonce"] - grid["cosine"]).mean()
    arch_gain = (grid.loc["residual"] - grid.loc["mlp"]).mean()
    return (f"Seed 001's final model (residual + InfoNCE) reaches text→image Recall@10 "
            f"{_ms(trans, 'residual_infonce', R10)} against {_ms(trans, 'mlp_cosine', R10)} for the baseline "
            f"(MLP + cosine); random is {random['R@10']:.3f}. Averaged over the two architectures, switching the "
            f"loss from cosine to InfoNCE changes Recall@10 by {loss_gain:+.3f}; averaged over the two losses, "
            f"switching the MLP for the residual network changes it by {arch_gain:+.3f}.")


def centring_ablation(spaces: FrozenSpaces, translation: Mapping[tuple[str, int], C.AlignmentRun], seed: int,
                      fit: Mapping[str, Any], writer: Any) -> pd.DataFrame:
    """Seed 001's two configurations again on the uncentred spaces (``seed`` only; records with
    condition ``uncentred``): text→image R@10 centred vs uncentred per model."""
    raw = translation_runs(spaces.pairs(centred=False), [seed], fit, writer, configs=SEED001, condition="uncentred")
    rows = [{"model": name, "centred": translation[name, seed].record["metrics"][R10],
             "uncentred": raw[name, seed].record["metrics"][R10]} for name, _ in raw]
    return pd.DataFrame(rows).set_index("model").round(4).rename_axis(f"text→image R@10, seed {seed}")


# --------------------------------------------------------------------------- seed 004: two towers
def two_tower_runs(ds: Any, seeds: Sequence[int], fit: Mapping[str, Any], writer: Any
                   ) -> dict[int, C.AlignmentRun]:
    """Seed 004's BiGRU + CNN two-tower model from scratch with symmetric InfoNCE, per seed;
    one ``two_tower`` record each."""
    pairs = {s: C.modality_pairs(ds, s, "text", "image") for s in SPLITS}
    return {seed: C.run_alignment(partial(A.build_two_tower, ds, **TWO_TOWER_SIZE), pairs["train"], pairs["val"],
                                  pairs["test"], experiment="two_tower", model_name=TWO_TOWER, seed=seed,
                                  loss="infonce", lr=TWO_TOWER_LR, writer=writer, **fit)
            for seed in seeds}


def two_tower_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return summary_table([r for r in records if r["experiment"] == "two_tower"], by=("model",), metrics=SHOWN)


def training_histories(two_tower: Mapping[int, C.AlignmentRun],
                       translation: Mapping[tuple[str, int], C.AlignmentRun], seed: int) -> dict[str, pd.DataFrame]:
    """Per-epoch histories of the two-tower model and seed 001's two translators (``seed``)."""
    return {"two-tower": two_tower[seed].fit.history,
            "residual + InfoNCE": translation["residual_infonce", seed].fit.history,
            "MLP + cosine": translation["mlp_cosine", seed].fit.history}


# --------------------------------------------------------------------------- all models
def overall_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Every translation, two-tower and reference record, by (experiment, model, condition)."""
    recs = [r for r in records if r["experiment"] in ("translation", PRETRAINED_EXPERIMENT, "two_tower", "reference")]
    return summary_table(recs, by=("experiment", "model", "condition"), metrics=SHOWN)


def main_models(overall: pd.DataFrame) -> pd.DataFrame:
    """The trained models of ``overall_table`` in their main condition, one row per model (floats)."""
    main = overall.xs("", level="condition").reset_index()
    main = main[main["experiment"] != "reference"]
    return main.astype({c: float for c in main.columns if c.endswith(("_mean", "_std"))})


def plot_overall(main: pd.DataFrame, refs: Mapping[str, Mapping[str, float]]):
    """Text→image Recall@10 per model with the random baseline (dashed) and, where known,
    the shared-information ceiling (dotted). Returns the Figure."""
    from mmlib.reporting import plots

    rand = refs["random"]["R@10"]
    fig = plots.bar(main, x="model", y=f"{R10}_mean", err=f"{R10}_std",
                    title="Text→image Recall@10 on the test split (mean ± std over seeds)", xlabel="model",
                    ylabel="Recall@10", ref=rand, ref_label=f"random ({rand:.3f})")
    if "shared_factor_ceiling" in refs:
        ceiling = refs["shared_factor_ceiling"]["R@10"]
        fig.axes[0].axhline(ceiling, color="tab:red", ls=":", lw=1.2,
                            label=f"shared-information ceiling ({ceiling:.3f})")
        fig.axes[0].legend(fontsize=8)
    return fig


def overall_conclusion(main: pd.DataFrame, refs: Mapping[str, Mapping[str, float]]) -> str:
    """The best model by text→image Recall@10 against random (and the ceiling), and the
    two-tower model's MRR against random."""
    rand = refs["random"]
    best = main.sort_values(f"{R10}_mean", ascending=False).iloc[0]
    ceiling_txt = ""
    if "shared_factor_ceiling" in refs:
        ceiling = refs["shared_factor_ceiling"]["R@10"]
        ceiling_txt = (f", {best[f'{R10}_mean'] / ceiling:.0%} of the shared-information ceiling "
                       f"({ceiling:.3f})")
    tt = main.set_index("model")
    return (f"Best text→image Recall@10: **{best['model']}** with "
            f"{fmt_mean_std(best[f'{R10}_mean'], best[f'{R10}_std'])}, "
            f"{best[f'{R10}_mean'] / rand['R@10']:.1f}× the random {rand['R@10']:.3f}{ceiling_txt}. "
            f"Two-tower MRR text→image {_ms(tt, TWO_TOWER, 'test_t2i_MRR')} vs random {rand['MRR']:.3f}.")


def distance_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Cosine vs euclidean text→image R@10 and MRR (means over seeds) per trained model."""
    dist = summary_table([r for r in records if r["experiment"] in ("translation", PRETRAINED_EXPERIMENT, "two_tower")
                          and r["condition"] == ""], by=("model",),
                         metrics=[R10, "test_t2i_euclidean_R@10", "test_t2i_MRR", "test_t2i_euclidean_MRR"])
    dist = dist[[c for c in dist.columns if c.endswith("_mean")]].astype(float)
    dist.columns = ["R@10 cosine", "R@10 euclidean", "MRR cosine", "MRR euclidean"]
    dist["R@10 euclidean − cosine"] = dist["R@10 euclidean"] - dist["R@10 cosine"]
    return dist.round(4)


def distance_conclusion(dist: pd.DataFrame) -> str:
    worst = dist["R@10 euclidean − cosine"].idxmin()
    return (f"The largest change from switching to euclidean distance is for **{worst}** "
            f"({dist.loc[worst, 'R@10 euclidean − cosine']:+.3f} Recall@10).")


# --------------------------------------------------------------------------- search examples
def build_searchers(ds: Any, spaces: FrozenSpaces, two_tower_model: Any,
                    translation: Mapping[tuple[str, int], C.AlignmentRun], trans: pd.DataFrame, seed: int,
                    device: str = "auto") -> dict[str, R.Searcher]:
    """Searchers over the test images: the two-tower model (the default of
    ``retrieval.search``) and, when the text space can encode new queries, the translator with
    the best mean text→image R@10 in ``trans`` (its ``seed`` run)."""
    searchers = {"two-tower": R.Searcher.from_dataset(two_tower_model, ds, split="test", device=device)}
    best = trans[f"{R10}_mean"].astype(float).idxmax()
    if spaces.text.encoder is not None:
        img_rows = searchers["two-tower"].item_index
        encode = C.translator_query_encoder(translation[best, seed].model, spaces.text.encoder,
                                            spaces.text.x[spaces.rows["train"]].mean(axis=0))
        searchers[f"translator ({best})"] = R.Searcher(encode, spaces.x_image[img_rows], item_index=img_rows,
                                                       item_labels=searchers["two-tower"].item_labels,
                                                       make_default=False)
    return searchers


def _caption_keywords(labels: Sequence[str], keywords: Sequence[str], row: int) -> str:
    return " ".join(w for w in labels[row].replace(",", " ").split() if w in keywords)


def keyword_caption(ds: Any, keywords: Sequence[str]) -> Callable[[int], str] | None:
    """row -> the shared keywords (colour, stripe) of that row's own caption, or None when
    the dataset has no known keywords or no raw captions."""
    labels = ds.meta.get("raw_texts")
    if not keywords or labels is None:
        return None
    return partial(_caption_keywords, labels, list(keywords))


def search_precision(searchers: Mapping[str, R.Searcher], queries: Sequence[str], k: int,
                     keywords: Sequence[str], writer: Any, seed: int) -> pd.DataFrame | None:
    """Keyword precision@k (``retrieval.keyword_precision``) per query (rows) and searcher
    (columns); one ``search_examples`` record per finite value. None without keywords."""
    if not keywords:
        return None
    prec = pd.DataFrame({name: [R.keyword_precision(s.search(q, k), q, keywords) for q in queries]
                         for name, s in searchers.items()}, index=pd.Index(list(queries), name="query"))
    for name in prec.columns:
        for q, v in prec[name].items():
            if np.isfinite(v):
                writer.add(experiment="search_examples", model=name, modalities=["text", "image"], condition=q,
                           seed=seed, metrics={f"test_keyword_precision@{k}": float(v)})
    return prec


def precision_conclusion(prec: pd.DataFrame, k: int) -> str:
    return (f"Mean keyword precision@{k}: "
            + "; ".join(f"{name} {prec[name].mean():.2f}" for name in prec.columns) + ".")


__all__ = ["SHOWN", "SHOWN_NAMES", "TRANSLATORS", "SEED001", "TWO_TOWER", "PROBE_FACTORS", "not_applicable",
           "fit_settings", "FrozenSpaces", "frozen_spaces", "PRETRAINED_SPACE", "PRETRAINED_EXPERIMENT",
           "pretrained_translation_runs", "space_comparison", "space_conclusion", "spaces_text", "autoencoder_curve", "probe_table",
           "reference_points", "reference_table", "translation_runs", "translation_table", "loss_architecture_grid",
           "translation_conclusion", "centring_ablation", "two_tower_runs", "two_tower_table", "training_histories",
           "overall_table", "main_models", "plot_overall", "overall_conclusion", "distance_table",
           "distance_conclusion", "build_searchers", "keyword_caption", "search_precision", "precision_conclusion"]
