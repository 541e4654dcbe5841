"""Verdicts a rerun does not flip: paired bootstrap intervals over the test rows.

A claim ("fusion beats the best single modality", "this remedy helps") is decided here
from a 95 % interval, never from a threshold on a difference of means:

- ``paired_delta``: metric(A) − metric(B) with a two-level paired bootstrap: seeds, then
  test rows. Each replicate draws one resample of test-row indices (the same rows for
  every seed and both systems) and, when there are several seeds, a resample of the
  seeds (with replacement); per drawn seed both systems are scored on the drawn rows and
  the differences are averaged. ``delta`` is the average over seeds on all rows, ``low``
  / ``high`` the 2.5 / 97.5 percentiles over the replicates. Rows alone would leave out
  the between-seed variance of training: with three seeds whose differences are +0.007,
  +0.013 and −0.002, rows alone exclude 0 while a rerun with other seeds may not; with
  the seed level the interval reaches the negative seed. A system given one prediction
  set (a deterministic baseline) is reused for every seed of the other.
- ``rank_systems``: the best system by mean is called best only when its interval
  against every other system excludes 0 in the better direction; otherwise the group
  not separable from it is returned (``tied``).
- ``spread_delta`` / ``rank_by_spread``: the fallback when per-row predictions are
  missing: mean difference ± 1.96 standard errors over seeds (a system with one score
  counts as fixed; two single scores give no interval at all).
- ``Evidence``: the same on result records (predictions looked up by ``run_id``), with
  the bootstrap where every record compared has predictions and the seed spread otherwise.

Metrics come from ``mmlib.training.tasks.get_task(task).metrics``; r2, accuracy and
roc_auc have vectorised versions over the replicates (equal to them, see the tests),
any other metric is computed replicate by replicate.
"""
from __future__ import annotations

import warnings
from typing import Any, Hashable, Iterator, Mapping

import numpy as np
import pandas as pd

from mmlib.training.metrics import MetricWarning, higher_is_better
from mmlib.training.tasks import get_task
from mmlib.reporting.records import fmt_mean_std
from mmlib.utils import MMLibError

N_BOOT = 1000
_BLOCK = 50  # replicates per block of the count matrix: memory is _BLOCK × n_test floats
TASK_OF_METRIC = {"r2": "regression", "roc_auc": "binary", "accuracy": "multiclass"}
SPREAD_NOTE = "no per-row predictions: seed spread only (mean difference ± 1.96 standard errors over seeds)"


def bootstrap_note(n_rows: int, n_boot: int = N_BOOT) -> str:
    return (f"two-level paired bootstrap: seeds, then the {n_rows:,} test rows ({n_boot} replicates, the same "
            "rows for every system and seed); 95 % intervals")


# ----------------------------------------------------------------- metrics
def _prepare(pred: Any, task: str) -> np.ndarray:
    p = np.asarray(pred, dtype=np.float64)
    if task != "multiclass" and p.ndim == 2 and p.shape[1] in (1, 2):
        p = p[:, -1]  # [n, 1] values or [n, 2] probabilities -> the value / P(class 1)
    return p


def _counts(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks [b, n] of bootstrap counts: how often each test row is drawn in each replicate."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, _BLOCK):
        b = min(_BLOCK, n_boot - start)
        flat = (np.arange(b)[:, None] * n + rng.integers(0, n, size=(b, n))).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _r2(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    yc = y - y.mean()  # centred: the weighted total sum of squares without cancellation
    sw = w.sum(axis=1)
    tot = w @ (yc**2) - (w @ yc) ** 2 / sw
    res = w @ ((y - p) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tot > 0, 1.0 - res / tot, np.nan)


def _accuracy(y: np.ndarray, p: np.ndarray, w: np.ndarray, task: str) -> np.ndarray:
    if p.ndim == 2:
        hard = p.argmax(axis=1)
    else:
        hard = (p >= 0.5).astype(np.int64) if task == "binary" else p.astype(np.int64)
    return w @ (hard == y.astype(np.int64)).astype(np.float64) / w.sum(axis=1)


def _roc_auc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mann–Whitney AUC with ties counted 1/2, weighting each row by its bootstrap count."""
    order = np.argsort(p, kind="mergesort")
    ps = p[order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    pos = (y[order] == 1).astype(np.float64)
    ws = w[:, order]
    gp = np.add.reduceat(ws * pos, starts, axis=1)
    gn = np.add.reduceat(ws * (1.0 - pos), starts, axis=1)
    below = np.cumsum(gn, axis=1) - gn
    den = gp.sum(axis=1) * gn.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (gp * (below + 0.5 * gn)).sum(axis=1) / den, np.nan)


def _generic(y: np.ndarray, p: np.ndarray, w: np.ndarray, task: str, metric: str) -> np.ndarray:
    t, rows, out = get_task(task), np.arange(len(y)), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        for counts in w.astype(np.int64):
            idx = np.repeat(rows, counts)
            out.append(t.metrics(y[idx], p[idx])[metric])
    return np.asarray(out, dtype=np.float64)


def weighted_metric(y: Any, pred: Any, task: str, metric: str, weights: np.ndarray) -> np.ndarray:
    """``metric`` of ``pred`` against ``y`` for each row of ``weights`` [b, n] (row counts of a
    resample: the metric of the rows repeated that often); vectorised for r2 / accuracy / roc_auc."""
    task = get_task(task).name
    if metric not in get_task(task).metric_names:
        raise MMLibError(f"Metric {metric!r} is not a {task} metric; choose one of {get_task(task).metric_names}.")
    y = np.asarray(y, dtype=np.float64).ravel()
    p = _prepare(pred, task)
    if len(p) != len(y):
        raise MMLibError(f"predictions have {len(p)} rows but there are {len(y)} test targets.")
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if metric == "r2":
        return _r2(y, p, w)
    if metric == "accuracy":
        return _accuracy(y, p, w, task)
    if metric == "roc_auc":
        return _roc_auc(y, p, w)
    return _generic(y, p, w, task, metric)


class _Scorer:
    """Metric of many prediction sets on all rows and on the same bootstrap replicates."""

    def __init__(self, y: Any, task: str, metric: str, n_boot: int, seed: int):
        self.y, self.task, self.metric = np.asarray(y).ravel(), get_task(task).name, metric
        self.n_boot, self.seed = int(n_boot), int(seed)

    def __call__(self, preds: Mapping[Hashable, Any]) -> dict[Hashable, tuple[float, np.ndarray]]:
        keys = list(preds)
        n = len(self.y)
        full = {k: float(weighted_metric(self.y, preds[k], self.task, self.metric, np.ones((1, n)))[0]) for k in keys}
        blocks: dict[Hashable, list[np.ndarray]] = {k: [] for k in keys}
        for w in _counts(n, self.n_boot, self.seed):
            for k in keys:
                blocks[k].append(weighted_metric(self.y, preds[k], self.task, self.metric, w))
        return {k: (full[k], np.concatenate(blocks[k])) for k in keys}


def _seed_map(preds: Any) -> dict[Hashable, Any]:
    """``{seed: array}``; a bare array (or a one-entry dict) is one fixed set."""
    if isinstance(preds, Mapping):
        if not preds:
            raise MMLibError("a system needs at least one prediction set (got an empty dict).")
        return dict(preds)
    return {None: preds}


def _pairs(a: Mapping, b: Mapping) -> list[tuple[Hashable, Hashable]]:
    ka, kb = list(a), list(b)
    if len(ka) == 1:  # a fixed set: reused for every seed of the other
        return [(ka[0], k) for k in kb]
    if len(kb) == 1:
        return [(k, kb[0]) for k in ka]
    common = [k for k in ka if k in b]
    if not common:
        raise MMLibError(f"the two systems share no seed: {sorted(ka, key=str)} vs {sorted(kb, key=str)}.")
    return [(k, k) for k in common]


def _delta(a: Mapping[Hashable, tuple[float, np.ndarray]], b: Mapping[Hashable, tuple[float, np.ndarray]],
           seed: int = 0) -> dict:
    pairs = _pairs(a, b)
    delta = float(np.mean([a[i][0] - b[j][0] for i, j in pairs]))
    diffs = np.stack([a[i][1] - b[j][1] for i, j in pairs])  # [seeds, replicates]
    n_pairs, n_boot = diffs.shape
    if n_pairs > 1:  # level 1: the seeds, drawn with replacement in every replicate
        draw = np.random.default_rng([int(seed), 1]).integers(0, n_pairs, size=(n_pairs, n_boot))
        diffs = diffs[draw, np.arange(n_boot)]
    reps = diffs.mean(axis=0)
    reps = reps[np.isfinite(reps)]
    low, high = (np.percentile(reps, [2.5, 97.5]) if len(reps) else (np.nan, np.nan))
    return {"delta": delta, "low": float(low), "high": float(high), "n_seeds": len(pairs)}


def paired_delta(y: Any, preds_a: Mapping[Any, Any] | Any, preds_b: Mapping[Any, Any] | Any, task: str, metric: str,
                 n_boot: int = N_BOOT, seed: int = 0) -> dict[str, float]:
    """metric(A) − metric(B) and its 95 % paired-bootstrap interval (module docstring):
    ``{"delta", "low", "high", "n_seeds"}``. ``preds_a`` / ``preds_b``: ``{seed: test
    predictions}`` (or one array: a fixed prediction set, reused for every seed)."""
    a, b = _seed_map(preds_a), _seed_map(preds_b)
    scored = _Scorer(y, task, metric, n_boot, seed)({**{("a", k): v for k, v in a.items()},
                                                     **{("b", k): v for k, v in b.items()}})
    return _delta({k: scored[("a", k)] for k in a}, {k: scored[("b", k)] for k in b}, seed)


# ----------------------------------------------------------------- verdicts
def constant_score(col: str, y_test: Any = None) -> float | None:
    """Test score of the best input-free prediction in metric ``col`` (``metric_test_r2`` → 0,
    ROC-AUC → 0.5, accuracy → the majority-class rate of ``y_test``); None when unknown."""
    metric = col.rsplit("test_", 1)[-1]
    if metric in ("r2", "roc_auc", "roc_auc_ovr"):
        return 0.0 if metric == "r2" else 0.5
    if metric == "accuracy" and y_test is not None and len(np.asarray(y_test)):
        return float(np.bincount(np.asarray(y_test).astype(np.int64).ravel()).max() / len(np.asarray(y_test)))
    return None


def direction(d: Mapping[str, float], higher: bool = True) -> str:
    """``"better"`` / ``"worse"`` (A against B) when the interval excludes 0, else ``"not separable"``."""
    low, high, tol = d.get("low", np.nan), d.get("high", np.nan), 1e-12  # tol: rounding, not evidence
    if not (np.isfinite(low) and np.isfinite(high)):
        return "not separable"
    if (low > tol) if higher else (high < -tol):
        return "better"
    if (high < -tol) if higher else (low > tol):
        return "worse"
    return "not separable"


def fmt_delta(d: Mapping[str, float], digits: int = 3) -> str:
    """``"+0.012 [-0.003, +0.027]"`` (no interval: ``"+0.012 [no interval]"``)."""
    text = f"{d['delta']:+.{digits}f}"
    if np.isfinite(d.get("low", np.nan)) and np.isfinite(d.get("high", np.nan)):
        return text + f" [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"
    return text + " [no interval]"


def _rank(stats: pd.DataFrame, delta_of, higher: bool) -> tuple[pd.DataFrame, str | None, list[str]]:
    """Order ``stats`` (mean / std / n_seeds per system) by mean; interval of each system − the top."""
    t = stats.sort_values("mean", ascending=not higher, na_position="last").copy()
    top = t.index[0]
    rows = {name: ({"delta": 0.0, "low": np.nan, "high": np.nan} if name == top else delta_of(name, top))
            for name in t.index}
    t["vs_top"] = [rows[n]["delta"] for n in t.index]
    t["low"] = [rows[n]["low"] for n in t.index]
    t["high"] = [rows[n]["high"] for n in t.index]
    t["verdict"] = ["top" if n == top else direction(rows[n], higher) for n in t.index]
    tied = [n for n in t.index if t.loc[n, "verdict"] in ("top", "not separable", "better")]
    return t, (top if len(tied) == 1 else None), tied


def rank_systems(y: Any, systems: Mapping[str, Mapping[Any, Any] | Any], task: str, metric: str,
                 n_boot: int = N_BOOT, seed: int = 0) -> tuple[pd.DataFrame, str | None, list[str]]:
    """Rank ``systems`` (``{name: {seed: test predictions}}``) by their mean ``metric`` over seeds.

    Returns ``(table, best, tied)``: ``table`` has mean / std / n_seeds and, per system, the
    paired interval of (system − top) (``vs_top``, ``low``, ``high``, ``verdict``); ``best``
    is the top system when its interval against every other excludes 0 in the better
    direction, else None; ``tied`` is the top system and those not separable from it."""
    if not systems:
        raise MMLibError("rank_systems: no systems given.")
    maps = {name: _seed_map(p) for name, p in systems.items()}
    scored = _Scorer(y, task, metric, n_boot, seed)({(n, s): p for n, m in maps.items() for s, p in m.items()})
    per = {n: {s: scored[(n, s)] for s in m} for n, m in maps.items()}
    full = {n: [v[0] for v in per[n].values()] for n in per}
    stats = pd.DataFrame({"mean": {n: np.mean(v) for n, v in full.items()},
                          "std": {n: np.std(v, ddof=1) if len(v) > 1 else np.nan for n, v in full.items()},
                          "n_seeds": {n: len(v) for n, v in full.items()}})
    return _rank(stats, lambda a, b: _delta(per[a], per[b], seed), higher_is_better(metric))


def spread_delta(scores_a: Mapping[Any, float] | float, scores_b: Mapping[Any, float] | float,
                 z: float = 1.96) -> dict[str, float]:
    """mean(A) − mean(B) ± ``z`` standard errors over seeds (unpaired). A side with one
    score counts as fixed; when both have one, there is no interval (NaN)."""
    a = np.asarray(list(_seed_map(scores_a).values()), dtype=np.float64)
    b = np.asarray(list(_seed_map(scores_b).values()), dtype=np.float64)
    delta = float(a.mean() - b.mean())
    if len(a) < 2 and len(b) < 2:
        se = np.nan
    else:
        se = float(np.sqrt(sum(x.var(ddof=1) / len(x) for x in (a, b) if len(x) > 1)))
    return {"delta": delta, "low": delta - z * se, "high": delta + z * se, "n_seeds": int(max(len(a), len(b)))}


def rank_by_spread(scores: Mapping[str, Mapping[Any, float]], metric: str) -> tuple[pd.DataFrame, str | None, list[str]]:
    """``rank_systems`` from per-seed scores only (``spread_delta`` intervals)."""
    vals = {n: np.asarray(list(_seed_map(s).values()), dtype=np.float64) for n, s in scores.items()}
    stats = pd.DataFrame({"mean": {n: v.mean() for n, v in vals.items()},
                          "std": {n: v.std(ddof=1) if len(v) > 1 else np.nan for n, v in vals.items()},
                          "n_seeds": {n: len(v) for n, v in vals.items()}})
    return _rank(stats, lambda a, b: spread_delta(scores[a], scores[b]), higher_is_better(metric))


# ----------------------------------------------------------------- records
class Evidence:
    """Comparisons of groups of result records (one group = one system, one record per seed).

    ``predictions`` (``run_id -> test predictions``, ``mmlib.reporting.records.load_predictions``)
    and ``y_test`` give the paired bootstrap; a comparison where a record has no
    predictions falls back to the seed spread of the records' ``col`` (``method`` says which)."""

    def __init__(self, metric: str, predictions: Mapping[str, Any] | None = None, y_test: Any = None,
                 task: str | None = None, n_boot: int = N_BOOT, seed: int = 0, col: str | None = None):
        self.metric = metric
        self.task = task or TASK_OF_METRIC.get(metric)
        self.col = col or f"metric_test_{metric}"
        self.higher = higher_is_better(metric)
        self.y = None if y_test is None else np.asarray(y_test).ravel()
        self.predictions = dict(predictions or {}) if self.y is not None else {}
        self.n_boot, self.seed = int(n_boot), int(seed)

    def preds(self, frame: pd.DataFrame) -> dict[int, Any] | None:
        """``{seed: predictions}`` of ``frame``'s records, or None when one of them has none."""
        if not self.predictions or "run_id" not in frame or frame.empty:
            return None
        out: dict[int, Any] = {}
        for seed, rid in zip(frame["seed"], frame["run_id"]):
            p = self.predictions.get(rid) if isinstance(rid, str) else None
            if p is None or len(p) != len(self.y):
                return None
            out.setdefault(int(seed), p)
        return out

    def scores(self, frame: pd.DataFrame, col: str | None = None) -> dict[int, float]:
        col = col or self.col
        g = frame[frame[col].notna()] if col in frame else frame.iloc[0:0]
        return {int(s): float(v) for s, v in zip(g["seed"], g[col])}

    def method(self, *frames: pd.DataFrame) -> str:
        """``"bootstrap"`` when every frame's records have predictions, else ``"spread"``."""
        return "bootstrap" if all(self.preds(f) is not None for f in frames) else "spread"

    def note(self, method: str) -> str:
        return bootstrap_note(len(self.y), self.n_boot) if method == "bootstrap" else SPREAD_NOTE

    def compare(self, a: pd.DataFrame, b: pd.DataFrame) -> dict[str, Any]:
        """metric(a) − metric(b) with its interval, ``verdict`` (a against b) and ``method``."""
        if self.method(a, b) == "bootstrap":
            d = paired_delta(self.y, self.preds(a), self.preds(b), self.task, self.metric, self.n_boot, self.seed)
            d["method"] = "bootstrap"
        else:
            sa, sb = self.scores(a), self.scores(b)
            if not sa or not sb:
                return {"delta": np.nan, "low": np.nan, "high": np.nan, "n_seeds": 0, "method": "spread",
                        "verdict": "not separable"}
            d = {**spread_delta(sa, sb), "method": "spread"}
        d["verdict"] = direction(d, self.higher)
        return d

    def rank(self, frame: pd.DataFrame, by: str = "model") -> tuple[pd.DataFrame, str | None, list[str], str]:
        """``rank_systems`` over the groups of ``frame`` by ``by`` (bootstrap when every group
        has predictions, else ``rank_by_spread``); also returns the method."""
        groups = {str(k): g for k, g in frame.groupby(by, sort=False)}
        preds = {k: self.preds(g) for k, g in groups.items()}
        if all(p is not None for p in preds.values()):
            t, best, tied = rank_systems(self.y, preds, self.task, self.metric, self.n_boot, self.seed)
            return t, best, tied, "bootstrap"
        t, best, tied = rank_by_spread({k: self.scores(g) for k, g in groups.items() if self.scores(g)}, self.metric)
        return t, best, tied, "spread"


def stability_verdict(single: Any, fused: Any, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Q4: is the seed-to-seed spread of fused models larger than that of single-modality ones?
    ``single`` / ``fused``: one array of per-seed scores per model. A two-level bootstrap (models
    within each group, then each model's seeds) gives a 95% interval for the difference of the
    groups' mean seed-std; with 3 seeds a std is itself uncertain, and the interval says so.
    ``verdict``: "less stable" (interval above 0), "more stable" (below 0) or "not separable"
    (it includes 0, or a group has < 2 models with ≥ 2 seeds)."""
    u = [np.asarray(x, float)[np.isfinite(x)] for x in single]
    f = [np.asarray(x, float)[np.isfinite(x)] for x in fused]
    u, f = [x for x in u if len(x) > 1], [x for x in f if len(x) > 1]
    mean_std = lambda g: float(np.mean([x.std(ddof=1) for x in g]))  # noqa: E731
    out: dict[str, Any] = {"delta": mean_std(f) - mean_std(u) if u and f else np.nan,
                           "low": np.nan, "high": np.nan, "verdict": "not separable"}
    if len(u) < 2 or len(f) < 2:
        return out
    rng = np.random.default_rng(seed)

    def draw(g: list) -> float:
        return float(np.mean([g[i][rng.integers(0, len(g[i]), len(g[i]))].std(ddof=1)
                              for i in rng.integers(0, len(g), len(g))]))

    d = np.array([draw(f) - draw(u) for _ in range(n_boot)])
    out["low"], out["high"] = (float(q) for q in np.quantile(d, [0.025, 0.975]))
    out["verdict"] = "less stable" if out["low"] > 0 else "more stable" if out["high"] < 0 else "not separable"
    return out


def worst_case_text(findings: pd.DataFrame, drop: pd.DataFrame, ev: Evidence) -> str:
    """Q3's worst removal, claimed only when its interval against every other condition excludes
    0; otherwise the tied group, and in bold the one modality they all remove (or "not separable")
    — so two independent runs name the same thing."""
    worst = findings["drop_vs_clean"].idxmax()
    rows = {c: drop[drop["condition"] == c] for c in findings.index}
    tied = [worst] + [c for c in findings.index
                      if c != worst and ev.compare(rows[c], rows[worst])["verdict"] == "not separable"]
    row = findings.loc[worst]
    fall = f"{fmt_mean_std(row['mean'], row['std'], int(row['n']))}, a fall of {findings.loc[worst, 'drop_vs_clean']:.3f}"
    if len(tied) == 1:
        return f"Masked at inference, the worst case is **{worst}** ({fall}; its interval against every other excludes 0). "
    mods = sorted({str(c).split(":")[0] for c in tied})
    lead = f"removing **{mods[0]}**" if len(mods) == 1 else "**not separable**"
    return (f"Masked at inference, the worst case is {lead}: {', '.join(tied)} cannot be told apart (each one's "
            f"interval against {worst} includes 0); the lowest mean is {worst} ({fall}). ")


__all__ = ["N_BOOT", "SPREAD_NOTE", "bootstrap_note", "weighted_metric", "paired_delta", "direction", "fmt_delta",
           "constant_score", "stability_verdict", "worst_case_text", "rank_systems", "spread_delta", "rank_by_spread", "Evidence"]
