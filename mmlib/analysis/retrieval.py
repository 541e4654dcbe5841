"""Cross-modal retrieval: similarities, Recall@K / MRR against the exact random
baseline, a text searcher over item embeddings, and a live search box.

Convention: ``sim`` is [n_queries, n_items] with *higher = more similar*, and
query ``i``'s true match is item ``i`` (so ``n_queries <= n_items``).

Ties are scored by their expectation under a random tie-break, so a model that
gives every item the same score gets exactly the random baseline (Recall@K =
K/n, MRR = H_n/n) instead of a lucky or unlucky fixed order.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mmlib.training.metrics import DEFAULT_KS, harmonic, match_ranks, mrr, recall_at_k
from mmlib.utils import MMLibError, resolve_device

METRICS = ("cosine", "euclidean", "manhattan", "dot")


# --------------------------------------------------------------------------- similarity
def _as_tensor(x: Any, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.float().cpu()
    if t.ndim != 2:
        raise MMLibError(f"{name} must be 2-D [rows, dim], got shape {tuple(t.shape)}.")
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t).all(dim=1)).nonzero()[0])
        raise MMLibError(f"{name} has a NaN/inf value in row {bad}.")
    return t


def similarity(a: Any, b: Any, metric: str = "cosine") -> np.ndarray:
    """[len(a), len(b)] similarity, higher = closer. ``cosine``; ``euclidean`` and
    ``manhattan`` (negated distances on the vectors as given, *not* normalised: on
    L2-normalised vectors euclidean ranks exactly like cosine); ``dot``."""
    if metric not in METRICS:
        raise MMLibError(f"Unknown similarity metric {metric!r}; choose one of {METRICS}.")
    ta, tb = _as_tensor(a, "a"), _as_tensor(b, "b")
    if ta.shape[1] != tb.shape[1]:
        raise MMLibError(f"similarity: a has dim {ta.shape[1]} but b has dim {tb.shape[1]}; embed both in one space.")
    if metric == "cosine":
        return (F.normalize(ta, dim=1) @ F.normalize(tb, dim=1).T).numpy()
    if metric == "dot":
        return (ta @ tb.T).numpy()
    p = 2.0 if metric == "euclidean" else 1.0
    return (-torch.cdist(ta.double(), tb.double(), p=p)).float().numpy()


def random_baseline(n_items: int, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Exact expectations for a random ranking of ``n_items``: Recall@K = min(K, n)/n, MRR = H_n / n."""
    n = int(n_items)
    if n < 1:
        raise MMLibError(f"random_baseline: n_items must be >= 1, got {n_items}.")
    out = {f"R@{int(k)}": min(int(k), n) / n for k in ks}
    out["MRR"] = float(harmonic(n)[n] / n)
    return out


def group_ceiling(query_groups: Sequence[Any], item_groups: Sequence[Any], ks: Sequence[int] = DEFAULT_KS
                  ) -> dict[str, float]:
    """Best expected Recall@K / MRR when only a shared factor (e.g. colour + stripe) can be
    matched: each query's match is then a random pick among the items of its group.
    ``query_groups[i]`` and ``item_groups[i]`` label query i and its match (same group)."""
    qg, ig = np.asarray(query_groups), np.asarray(item_groups)
    if len(qg) > len(ig):
        raise MMLibError("group_ceiling: more queries than items.")
    values, counts = np.unique(ig, return_counts=True)
    size = dict(zip(values.tolist(), counts.tolist()))
    gsize = np.array([size.get(v, 1) for v in qg.tolist()], dtype=np.int64)
    out = {f"R@{int(k)}": float(np.minimum(1.0, int(k) / gsize).mean()) for k in ks}
    h = harmonic(int(gsize.max()))
    out["MRR"] = float((h[gsize] / gsize).mean())
    return out


def retrieval_metrics(sim: Any, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall@K for each K, MRR and the median rank of the match."""
    out = recall_at_k(sim, ks)
    out["MRR"] = mrr(sim)
    out["median_rank"] = float(np.median(match_ranks(sim)))
    return out


def retrieval_report(query_emb: Any, item_emb: Any, ks: Sequence[int] = DEFAULT_KS,
                     metrics: Sequence[str] = ("cosine", "euclidean"), query_name: str = "text",
                     item_name: str = "image", with_random: bool = True) -> pd.DataFrame:
    """Retrieval in both directions (query→item and item→query) for each similarity metric,
    plus the exact random baseline. Row i of ``query_emb`` and of ``item_emb`` is a pair.

    Columns: direction, similarity, R@K..., MRR, median_rank, n_items."""
    qa, ia = _as_tensor(query_emb, "query_emb"), _as_tensor(item_emb, "item_emb")
    if len(qa) != len(ia):
        raise MMLibError(f"retrieval_report: {len(qa)} query rows but {len(ia)} item rows; row i of each must be a pair.")
    rows = []
    for direction, (x, y) in {f"{query_name}→{item_name}": (qa, ia), f"{item_name}→{query_name}": (ia, qa)}.items():
        for metric in metrics:
            rows.append({"direction": direction, "similarity": metric,
                         **retrieval_metrics(similarity(x, y, metric), ks), "n_items": len(y)})
        if with_random:
            base = random_baseline(len(y), ks)
            rows.append({"direction": direction, "similarity": "random (expected)", **base,
                         "median_rank": (len(y) + 1) / 2.0, "n_items": len(y)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- search
_DEFAULT_SEARCHER: "Searcher | None" = None


class Searcher:
    """Text → top-K items in a shared embedding space (seed 004's search).

    ``Searcher(two_tower, items, vocab=vocab, max_len=32)``: queries are tokenised with
    ``vocab`` and embedded by the model's text tower; ``items`` are either image pixels
    (uint8 [n, 3, H, W], embedded once by the image tower) or precomputed item embeddings.

    ``Searcher(encode_fn, item_embeddings)``: ``encode_fn(list_of_texts) -> [m, d]`` puts
    queries in the items' space (e.g. MiniLM + a trained translator).

    ``item_index`` maps item positions to dataset rows (shown in the ``item`` column);
    ``item_labels`` (e.g. the items' own captions) are shown in a ``label`` column.
    The last Searcher built becomes the default of ``mmlib.analysis.retrieval.search``.
    """

    def __init__(self, model: Any, items: Any, vocab: Any = None, max_len: int | None = None,
                 item_index: Sequence[int] | None = None, item_labels: Sequence[str] | None = None,
                 metric: str = "cosine", batch_size: int = 512, device: str | torch.device = "auto",
                 make_default: bool = True):
        if metric not in METRICS:
            raise MMLibError(f"Searcher: unknown metric {metric!r}; choose one of {METRICS}.")
        self.metric = metric
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.model = model
        self.vocab = vocab
        self.max_len = max_len
        is_tower = hasattr(model, "encode_text") and hasattr(model, "encode_image")
        if not is_tower and not callable(model):
            raise MMLibError("Searcher: pass a two-tower model (with encode_text / encode_image) or a function "
                             "texts -> query embeddings.")
        if is_tower and vocab is None:
            raise MMLibError("Searcher: a two-tower model needs the text vocabulary (vocab=dataset.modalities"
                             "['text'].info['vocab']) to tokenise queries.")
        if is_tower and max_len is None:
            raise MMLibError("Searcher: a two-tower model needs max_len (the token length it was trained with).")
        self._is_tower = is_tower
        items_t = items.get("pixels") if isinstance(items, Mapping) else items
        items_t = items_t if isinstance(items_t, torch.Tensor) else torch.as_tensor(np.asarray(items_t))
        if items_t.ndim == 4:
            if not is_tower:
                raise MMLibError("Searcher: raw images need a two-tower model to embed them; pass item embeddings.")
            self.item_embeddings = self._embed_images(items_t)
        elif items_t.ndim == 2:
            self.item_embeddings = _as_tensor(items_t, "item embeddings")
        else:
            raise MMLibError(f"Searcher: items must be images [n, 3, H, W] or embeddings [n, d]; got {tuple(items_t.shape)}.")
        n = len(self.item_embeddings)
        self.item_index = np.arange(n) if item_index is None else np.asarray(item_index)
        if len(self.item_index) != n:
            raise MMLibError(f"Searcher: item_index has {len(self.item_index)} entries for {n} items.")
        self.item_labels = None if item_labels is None else list(item_labels)
        if self.item_labels is not None and len(self.item_labels) != n:
            raise MMLibError(f"Searcher: item_labels has {len(self.item_labels)} entries for {n} items.")
        if make_default:
            global _DEFAULT_SEARCHER
            _DEFAULT_SEARCHER = self

    @classmethod
    def from_dataset(cls, model: Any, dataset: Any, split: str = "test", text_modality: str = "text",
                     image_modality: str = "image", device: str | torch.device = "auto", **kw: Any) -> "Searcher":
        """A searcher over the images of ``split`` (rows with an image), labelled by their captions."""
        for m in (text_modality, image_modality):
            if m not in dataset.modalities:
                raise MMLibError(f"Searcher.from_dataset: dataset {dataset.name!r} has no {m!r} modality "
                                 f"(it has {dataset.modality_names}).")
        rows = np.asarray(dataset.splits[split])
        rows = rows[dataset.modalities[image_modality].present.cpu().numpy()[rows]]
        info = dataset.modalities[text_modality].info
        texts = dataset.meta.get("raw_texts")
        labels = [texts[i] for i in rows] if texts is not None else None
        pixels = dataset.modalities[image_modality].tensors["pixels"][torch.as_tensor(rows)]
        return cls(model, pixels, vocab=info.get("vocab"), max_len=info.get("max_len"), item_index=rows,
                   item_labels=labels, device=device, **kw)

    # ------------------------------------------------------------------ embed
    @torch.no_grad()
    def _embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        self.model.to(self.device)
        out = [self.model.encode_image({"pixels": pixels[s:s + self.batch_size].to(self.device)}).float().cpu()
               for s in range(0, len(pixels), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 1)

    @torch.no_grad()
    def encode_queries(self, texts: Sequence[str]) -> torch.Tensor:
        texts = [str(t) for t in texts]
        if self._is_tower:
            tokens = self.vocab.encode(texts, int(self.max_len)).to(self.device)
            self.model.eval()
            self.model.to(self.device)
            q = self.model.encode_text({"tokens": tokens}).float().cpu()
        else:
            q = self.model(texts)
            q = q.detach().float().cpu() if isinstance(q, torch.Tensor) else torch.as_tensor(np.asarray(q)).float()
        if q.ndim != 2 or q.shape[1] != self.item_embeddings.shape[1]:
            raise MMLibError(f"Searcher: query embeddings have shape {tuple(q.shape)}, items have dim "
                             f"{self.item_embeddings.shape[1]}; the encoder must map texts into the items' space.")
        return q

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` the two-tower vocabulary does not know (they read as <unk>)."""
        if not self._is_tower:
            return []
        from mmlib.data.text import tokenize

        return [w for w in tokenize(text) if w not in self.vocab.stoi]

    # ----------------------------------------------------------------- search
    def search(self, query_text: str, k: int = 5) -> pd.DataFrame:
        """Top-``k`` items for one query: rank (1 = best), item (dataset row), score (higher = closer)."""
        return self.search_many([query_text], k)[0]

    def search_many(self, queries: Sequence[str], k: int = 5) -> list[pd.DataFrame]:
        if isinstance(queries, str):
            raise MMLibError("search_many takes a list of query strings; use search() for one.")
        if not queries:
            return []
        if int(k) < 1:
            raise MMLibError(f"search: k must be >= 1, got {k}.")
        k = min(int(k), len(self.item_embeddings))
        sim = torch.from_numpy(similarity(self.encode_queries(queries), self.item_embeddings, self.metric))
        scores, idx = torch.topk(sim, k, dim=1)  # sorted, best first
        out = []
        for q, (sc, ix) in enumerate(zip(scores.numpy(), idx.numpy())):
            df = pd.DataFrame({"rank": np.arange(1, k + 1), "item": self.item_index[ix], "score": sc.round(4)})
            if self.item_labels is not None:
                df["label"] = [self.item_labels[j] for j in ix]
            out.append(df)
        return out

    def __repr__(self) -> str:
        kind = "two-tower" if self._is_tower else "function"
        return f"Searcher({kind}, {len(self.item_embeddings)} items, dim={self.item_embeddings.shape[1]}, {self.metric})"


def search(query_text: str, k: int = 5, searcher: Searcher | None = None) -> pd.DataFrame:
    """Top-``k`` items for ``query_text`` with ``searcher`` (default: the last Searcher built)."""
    s = searcher or _DEFAULT_SEARCHER
    if s is None:
        raise MMLibError("mmlib.analysis.retrieval.search: no searcher yet; build one with Searcher(...) or "
                         "Searcher.from_dataset(model, dataset) first.")
    return s.search(query_text, k)


def keyword_precision(results: pd.DataFrame, query: str, keywords: Sequence[str],
                      labels: Sequence[str] | None = None) -> float:
    """Fraction of retrieved items whose label contains every keyword that the query
    contains (e.g. colour words and "striped"/"plain"): a precision@k for free-text
    queries that have no single true item. ``labels``: the item labels by dataset row
    (default: the ``label`` column of ``results``). NaN when the query has no keyword."""
    from mmlib.data.text import tokenize

    wanted = [k for k in keywords if k in set(tokenize(query))]
    if not wanted or not len(results):
        return float("nan")
    texts = results["label"].tolist() if labels is None else [labels[int(i)] for i in results["item"]]
    hits = [all(k in set(tokenize(t or "")) for k in wanted) for t in texts]
    return float(np.mean(hits))


# --------------------------------------------------------------------------- display
def _pixels_of(dataset: Any, image_modality: str) -> torch.Tensor:
    if image_modality not in dataset.modalities or dataset.modalities[image_modality].kind != "image":
        raise MMLibError(f"dataset {dataset.name!r} has no image modality {image_modality!r}; "
                         f"it has {dataset.modality_names}.")
    return dataset.modalities[image_modality].tensors["pixels"]


def plot_search_results(searcher: Searcher, dataset: Any, queries: Sequence[str], k: int = 8,
                        image_modality: str = "image", caption: Callable[[int], str] | None = None,
                        title: str = "Top-K images retrieved for each text query"):
    """A grid: one row per query (its text on the left), its top-``k`` images left to right,
    each captioned with its score (and ``caption(row)`` when given). Returns the Figure."""
    import matplotlib.pyplot as plt

    pixels = _pixels_of(dataset, image_modality)
    results = searcher.search_many(list(queries), k)
    k = len(results[0]) if results else k
    fig, axes = plt.subplots(len(queries), k, figsize=(1.35 * k + 1.6, 1.7 * len(queries)), squeeze=False)
    for r, (q, res) in enumerate(zip(queries, results)):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(res):
                ax.axis("off")
                continue
            row = int(res["item"].iloc[c])
            ax.imshow(pixels[row].cpu().numpy().transpose(1, 2, 0), interpolation="nearest")
            cap = f"#{c + 1} s={res['score'].iloc[c]:.2f}"
            if caption is not None:
                cap += "\n" + caption(row)
            ax.set_title(cap, fontsize=7)
        axes[r][0].set_ylabel(_wrap(q, 22), fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def is_headless() -> bool:
    """True when this kernel runs without a live frontend (papermill, nbconvert, the report
    runner, pytest): interactive widgets would only show a placeholder there.
    ``MMLIB_HEADLESS=1`` / ``0`` forces the answer."""
    forced = os.environ.get("MMLIB_HEADLESS")
    if forced is not None:
        return forced.strip().lower() not in ("", "0", "false", "no")
    try:
        from IPython import get_ipython

        ip = get_ipython()
    except ImportError:
        return True
    if ip is None or getattr(ip, "kernel", None) is None:
        return True  # plain python / terminal IPython: no widget frontend
    markers = ("papermill", "nbconvert", "nbclient", "mmlib.reports", "mmlib/reporting", "pytest")
    pid = os.getppid()
    for _ in range(3):  # the kernel's parent (and grandparents): who started it?
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            try:
                import psutil

                proc = psutil.Process(pid)
                cmd, ppid = " ".join(proc.cmdline()), proc.ppid()
            except Exception:  # psutil missing or the process gone: assume a live frontend
                return False
        if any(m in cmd for m in markers):
            return True
        if pid <= 1 or ppid == pid:
            break
        pid = ppid
    return False


def search_widget(searcher: Searcher, dataset: Any, k: int = 8, image_modality: str = "image",
                  caption: Callable[[int], str] | None = None, placeholder: str = "a striped red cruiser"):
    """A live search box for JupyterLab: type a description, press Enter, see the top-``k``
    images. Returns the ipywidgets container (display it as a cell's last value)."""
    try:
        import ipywidgets as widgets
    except ImportError as exc:  # pragma: no cover - ipywidgets is a dependency
        raise MMLibError("search_widget needs ipywidgets (pip install ipywidgets).") from exc
    import matplotlib.pyplot as plt
    from IPython.display import display

    _pixels_of(dataset, image_modality)  # fail early, not inside the callback
    box = widgets.Text(value="", placeholder=placeholder, description="Search:", continuous_update=False,
                       layout=widgets.Layout(width="60%"))
    kslider = widgets.IntSlider(value=k, min=1, max=min(24, len(searcher.item_embeddings)), description="top K")
    out = widgets.Output()

    def run(_: Any = None) -> None:
        with out:
            out.clear_output(wait=True)
            q = box.value.strip()
            if not q:
                print("Type a description (e.g. 'a plain blue freighter') and press Enter.")
                return
            unknown = searcher.unknown_words(q)
            if unknown:
                print(f"words the text tower never saw (read as <unk>): {', '.join(unknown)}")
            fig = plot_search_results(searcher, dataset, [q], kslider.value, image_modality, caption,
                                      title=f"Top {kslider.value} for: {q}")
            display(fig)
            plt.close(fig)  # shown once, in the output area only

    box.observe(run, names="value")
    kslider.observe(run, names="value")
    run()
    return widgets.VBox([widgets.HBox([box, kslider]), out])


__all__ = ["similarity", "recall_at_k", "mrr", "match_ranks", "random_baseline", "group_ceiling", "retrieval_metrics",
           "retrieval_report", "Searcher", "search", "keyword_precision", "plot_search_results", "search_widget", "is_headless"]
