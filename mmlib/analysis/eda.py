"""Small tables for the EDA notebook, generic over modalities."""
from __future__ import annotations

import numpy as np
import pandas as pd

from mmlib.data.base import MultimodalDataset


def missingness(ds: MultimodalDataset) -> pd.DataFrame:
    """Per modality and split: the share of rows where the modality is present."""
    rows = []
    for name, m in ds.modalities.items():
        for split, idx in ds.splits.items():
            rows.append({"modality": name, "split": split, "present_%": round(100 * float(m.present[idx].float().mean()), 2)})
    return pd.DataFrame(rows).pivot(index="modality", columns="split", values="present_%")[["train", "val", "test"]]


def text_examples(ds: MultimodalDataset, k: int = 8, seed: int = 0) -> pd.DataFrame:
    texts = ds.meta.get("texts")
    if texts is None:
        return pd.DataFrame()
    rng = np.random.default_rng(seed)
    idx = rng.choice(ds.n, size=min(k, ds.n), replace=False)
    return pd.DataFrame({"row": idx, "text": [texts[i] for i in idx],
                         ds.target_name: ds.target[idx].cpu().numpy().round(3)})


def token_unit(ds: MultimodalDataset, modality: str = "text") -> str:
    """What the ids of a text modality count: ``"n-grams"`` (the TF-IDF bag of the
    ``*tfidf`` text encoders), ``"word pieces"`` (MiniLM's tokenizer) or ``"tokens"`` (words)."""
    arch = ds.modalities[modality].info.get("encoder_arch")
    return {"tfidf": "n-grams", "minilm": "word pieces"}.get(arch, "tokens")


def token_lengths(ds: MultimodalDataset, modality: str = "text") -> pd.Series:
    tokens = ds.modalities[modality].tensors["tokens"]
    present = ds.modalities[modality].present
    return pd.Series((tokens[present] != 0).sum(1).cpu().numpy(), name="tokens")


def ceilings_table(ds: MultimodalDataset) -> pd.DataFrame:
    """spacecraft only: R² of the Bayes-optimal predictor per subset of modalities."""
    c = ds.meta["ceilings"]
    rows = [{"modalities": k, "n_modalities": 0 if k == "none" else len(k.split("+")), "ceiling_r2": round(v, 4)}
            for k, v in c.items() if k != "none"]
    return pd.DataFrame(rows).sort_values(["n_modalities", "ceiling_r2"]).reset_index(drop=True)


def shares_table(ds: MultimodalDataset) -> pd.DataFrame:
    from mmlib.data.spacecraft import VISIBLE_IN

    where = {**{k: " + ".join(sorted(v)) for k, v in VISIBLE_IN.items()}, "synergy": "text × image (jointly only)",
             "noise": "nowhere"}
    return pd.DataFrame([{"part": k, "share_of_variance": v, "visible_in": where[k]}
                         for k, v in ds.meta["shares"].items()])


def numeric_correlations(ds: MultimodalDataset, top: int = 14) -> pd.DataFrame:
    """Correlation matrix of the numeric columns most correlated with the target."""
    frame = ds.meta["tabular_frame"][ds.meta["num_columns"]].astype(float)
    y = pd.Series(ds.target.cpu().numpy().astype(float), index=frame.index, name=ds.target_name)
    corr_y = frame.corrwith(y).abs().sort_values(ascending=False)
    cols = list(corr_y.index[:top])
    return pd.concat([frame[cols], y], axis=1).corr().round(2)


def validation_table(ds: MultimodalDataset) -> pd.DataFrame:
    """The data problems the loader's policies handled (``folder``: NaN numbers imputed, missing or
    corrupt images and empty texts made absent), one row per column and problem, with the number
    of rows and their first CSV line numbers (header = line 1); empty when there were none."""
    rows = ds.meta.get("validation") or []
    cols = ["column", "problem", "rows", "first_csv_lines", "handled_as"]
    return pd.DataFrame([{k: (", ".join(map(str, r[k])) if k == "first_csv_lines" else r[k]) for k in cols}
                         for r in rows], columns=cols)
