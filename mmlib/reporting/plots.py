"""The few plotting helpers the notebooks share (matplotlib + seaborn).

Every function returns the matplotlib Figure; every axis is titled and labelled.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

sns.set_theme(style="whitegrid", context="notebook")


def image_grid(pixels, titles: Sequence[str] | None = None, ncols: int = 8, title: str = "Images",
               scale: float = 1.3):
    """uint8 [n, 3, H, W] (tensor or array) as a grid with optional per-image captions."""
    arr = pixels.cpu().numpy() if hasattr(pixels, "cpu") else np.asarray(pixels)
    n = len(arr)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale, nrows * scale * 1.15), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(arr[i].transpose(1, 2, 0), interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def bar(df: pd.DataFrame, x: str, y: str, title: str, xlabel: str, ylabel: str, hue: str | None = None,
        err: str | None = None, ref: float | None = None, ref_label: str | None = None, horizontal: bool = False):
    """A bar chart from a tidy frame; ``err`` names a column of error-bar half-widths (e.g. std)."""
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * df[x].nunique() + 3), 4))
    if hue is None:
        vals = df[y].to_numpy()
        pos = np.arange(len(df))
        if horizontal:
            ax.barh(pos, vals, xerr=None if err is None else df[err].fillna(0), color=sns.color_palette()[0])
            ax.set_yticks(pos, df[x].astype(str))
        else:
            ax.bar(pos, vals, yerr=None if err is None else df[err].fillna(0), color=sns.color_palette()[0], capsize=3)
            ax.set_xticks(pos, df[x].astype(str), rotation=30, ha="right")
    else:
        sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax, errorbar="sd")
        ax.tick_params(axis="x", rotation=30)
    if ref is not None:
        (ax.axvline if horizontal else ax.axhline)(ref, color="k", ls="--", lw=1, label=ref_label)
        if ref_label:
            ax.legend()
    ax.set_title(title)
    ax.set_xlabel(ylabel if horizontal else xlabel)
    ax.set_ylabel(xlabel if horizontal else ylabel)
    fig.tight_layout()
    return fig


def lines(df: pd.DataFrame, x: str, y: str, hue: str, title: str, xlabel: str, ylabel: str,
          style: str | None = None, ref: float | None = None, ref_label: str | None = None):
    """Mean line with a ± std band over seeds (seaborn's errorbar='sd')."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    sns.lineplot(data=df, x=x, y=y, hue=hue, style=style, errorbar="sd", marker="o", ax=ax)
    if ref is not None:
        ax.axhline(ref, color="k", ls="--", lw=1, label=ref_label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def learning_curves(histories: dict[str, pd.DataFrame], metric: str, title: str = "Learning curves"):
    """Train and validation loss per epoch (left) and the validation metric (right) for several runs."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, h) in enumerate(histories.items()):
        c = sns.color_palette()[i % 10]
        a1.plot(h["epoch"], h["train_loss"], color=c, ls="-", label=f"{name} train")
        a1.plot(h["epoch"], h["val_loss"], color=c, ls="--", label=f"{name} val")
        if metric in h:
            a2.plot(h["epoch"], h[metric], color=c, marker="o", ms=3, label=name)
    a1.set_title("Loss (solid: train, dashed: validation)")
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss")
    a1.set_yscale("log")
    a2.set_title(f"Validation {metric}")
    a2.set_xlabel("epoch")
    a2.set_ylabel(metric)
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def heatmap(table: pd.DataFrame, title: str, xlabel: str, ylabel: str, fmt: str = ".3f", cmap: str = "viridis"):
    fig, ax = plt.subplots(figsize=(1.1 * table.shape[1] + 3, 0.5 * table.shape[0] + 2))
    sns.heatmap(table, annot=True, fmt=fmt, cmap=cmap, ax=ax, cbar=True)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def hist(values: Iterable[float], title: str, xlabel: str, bins: int = 50):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(np.asarray(list(values)), bins=bins, color=sns.color_palette()[0])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    fig.tight_layout()
    return fig
