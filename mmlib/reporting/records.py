"""Result records: one row per (experiment, configuration, seed), written by every
notebook and read back by the postmortem, the experiment log and the index.

A record is a flat dict (``RECORD_FIELDS``)::

    notebook, experiment, dataset, model, fusion, modalities, condition, seed,
    metrics, n_params, train_time_s, epochs, device, extra

Notebooks collect records with a ``RecordWriter`` and save them to
``<out_dir>/<dataset>/<notebook>.results.json``. ``out_dir`` is always a reports
*root* (``reports/`` by hand, a staging root under the report runner); the
dataset sub-folder is added here, so a notebook never builds that path itself.

``load_records`` turns every published file into one tidy DataFrame (metrics as
``metric_<name>`` columns); ``summarize`` / ``fmt_mean_std`` give mean ± std over
seeds. The per-dataset experiment log is ``mmlib.reporting.markdown``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import numbers
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mmlib.config import PROJECT_ROOT, REPORTS_DIR
from mmlib.utils import MMLibError, _json_default, atomic_write_json

# Fields a record must carry, and the optional ones with their defaults.
REQUIRED_FIELDS: tuple[str, ...] = ("notebook", "experiment", "dataset", "model", "modalities", "seed", "metrics")
OPTIONAL_FIELDS: dict[str, Any] = {
    "fusion": "none",       # fusion module name; "none" for a unimodal model or a baseline
    "condition": "",        # what was varied, e.g. "noise=0.5" or "drop=text"; "" for the clean setting
    "n_params": None,       # trainable parameter count (None for models without one, e.g. CatBoost)
    "train_time_s": None,   # wall time of training, seconds
    "epochs": None,         # epochs actually run (after early stopping)
    "device": None,         # device the model ran on ("cpu", "cuda", ...)
    "extra": None,          # anything else, JSON-serialisable (a dict)
}
# The order fields are stored in.
RECORD_FIELDS: tuple[str, ...] = ("notebook", "experiment", "dataset", "model", "fusion", "modalities", "condition",
                                  "seed", "metrics", "n_params", "train_time_s", "epochs", "device", "extra")
RESULTS_SUFFIX = ".results.json"
# Columns of ``load_records`` besides the ``metric_*`` ones (also the columns of an empty frame).
BASE_COLUMNS: tuple[str, ...] = ("notebook", "experiment", "dataset", "model", "fusion", "modalities", "modality_set",
                                 "n_modalities", "condition", "seed", "n_params", "train_time_s", "epochs", "device",
                                 "extra", "source")


# --------------------------------------------------------------------------- records

def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _nonempty_str(name: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise MMLibError(f"record field {name!r} must be a non-empty string, got {v!r}.")
    return v


def make_record(**fields: Any) -> dict[str, Any]:
    """Validate and normalise one result record.

    Required: ``notebook, experiment, dataset, model, modalities, seed, metrics``.
    Optional: ``fusion`` ("none"), ``condition`` (""), ``n_params``, ``train_time_s``,
    ``epochs``, ``device`` (None), ``extra`` ({}). Unknown or missing fields raise
    ``MMLibError`` naming them. ``modalities`` may be a list/tuple/set of names or a
    "+"-joined string; it is stored sorted and de-duplicated. Metric values become
    floats (None → NaN).
    """
    unknown = sorted(set(fields) - set(RECORD_FIELDS))
    if unknown:
        raise MMLibError(f"unknown record field(s) {unknown}. Valid fields: {', '.join(RECORD_FIELDS)}.")
    missing = [f for f in REQUIRED_FIELDS if fields.get(f) is None]
    if missing:
        raise MMLibError(f"record is missing required field(s) {missing} "
                         f"(required: {', '.join(REQUIRED_FIELDS)}).")
    rec: dict[str, Any] = {}
    for name in ("notebook", "experiment", "dataset", "model"):
        rec[name] = _nonempty_str(name, fields[name])

    fusion = fields.get("fusion")
    rec["fusion"] = OPTIONAL_FIELDS["fusion"] if fusion is None else _nonempty_str("fusion", fusion)

    mods = fields["modalities"]
    if isinstance(mods, str):
        mods = [m for m in mods.split("+") if m]
    if not isinstance(mods, (list, tuple, set, frozenset)) or not mods:
        raise MMLibError(f"record field 'modalities' must be a non-empty list of modality names, got {fields['modalities']!r}.")
    for m in mods:
        _nonempty_str("modalities", m)
    rec["modalities"] = sorted(set(mods))

    cond = fields.get("condition")
    if cond is None:
        cond = ""
    if not isinstance(cond, str):
        raise MMLibError(f"record field 'condition' must be a string such as 'noise=0.5' (or ''), got {cond!r}.")
    rec["condition"] = cond

    seed = fields["seed"]
    if not _is_int(seed):
        raise MMLibError(f"record field 'seed' must be an integer, got {seed!r}.")
    rec["seed"] = int(seed)

    metrics = fields["metrics"]
    if not isinstance(metrics, Mapping) or not metrics:
        raise MMLibError(f"record field 'metrics' must be a non-empty dict name -> number, got {metrics!r}.")
    clean: dict[str, float] = {}
    for k, v in metrics.items():
        if not isinstance(k, str) or not k:
            raise MMLibError(f"metric names must be non-empty strings, got {k!r}.")
        if v is None:
            v = float("nan")
        if not _is_number(v) and hasattr(v, "item"):  # 0-d numpy array or torch tensor
            try:
                v = v.item()
            except (ValueError, RuntimeError):
                pass
        if not _is_number(v):
            raise MMLibError(f"metric {k!r} must be a number, got {type(v).__name__} {v!r}.")
        clean[k] = float(v)
    rec["metrics"] = clean

    n_params = fields.get("n_params")
    if n_params is not None and (not _is_int(n_params) or n_params < 0):
        raise MMLibError(f"record field 'n_params' must be a non-negative integer or None, got {n_params!r}.")
    rec["n_params"] = None if n_params is None else int(n_params)

    tt = fields.get("train_time_s")
    if tt is not None and (not _is_number(tt) or tt < 0):
        raise MMLibError(f"record field 'train_time_s' must be a non-negative number or None, got {tt!r}.")
    rec["train_time_s"] = None if tt is None else float(tt)

    ep = fields.get("epochs")
    if ep is not None and (not _is_int(ep) or ep < 0):
        raise MMLibError(f"record field 'epochs' must be a non-negative integer or None, got {ep!r}.")
    rec["epochs"] = None if ep is None else int(ep)

    dev = fields.get("device")
    rec["device"] = None if dev is None else str(dev)  # accepts a torch.device

    extra = fields.get("extra")
    if extra is None:
        extra = {}
    if not isinstance(extra, Mapping):
        raise MMLibError(f"record field 'extra' must be a dict, got {type(extra).__name__}.")
    try:
        extra = json.loads(json.dumps(_finite(dict(extra)), default=_json_default))
    except (TypeError, ValueError) as exc:
        raise MMLibError(f"record field 'extra' must be JSON-serialisable: {exc}") from exc
    rec["extra"] = extra
    return {k: rec[k] for k in RECORD_FIELDS}


def _finite(obj: Any) -> Any:
    """NaN / inf → None, so the files are strict JSON (they load back as NaN)."""
    if isinstance(obj, float) or isinstance(obj, np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- provenance

def git_commit(root: str | Path = PROJECT_ROOT) -> str | None:
    """Short hash of HEAD, with "+dirty" when tracked files outside ``reports/`` differ
    from it (a run rewrites the reports it is recording, which says nothing about the
    code); None when ``root`` is not a git checkout (or git is missing)."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=20)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                 ".", ":(exclude)reports"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    if status.returncode == 0 and status.stdout.strip():
        commit += "+dirty"
    return commit or None


def utc_now() -> str:
    """Current UTC time, ISO 8601 to the second (``2025-01-31T12:00:00Z``)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def results_path(out_dir: str | Path, dataset: str, notebook: str) -> Path:
    """``<out_dir>/<dataset>/<notebook>.results.json``."""
    return Path(out_dir) / dataset / f"{notebook}{RESULTS_SUFFIX}"


# --------------------------------------------------------------------------- writer

class RecordWriter:
    """Collects a notebook's records and saves them atomically.

    >>> writer = RecordWriter("10_unimodal_baselines", dataset, out_dir)
    >>> writer.add(experiment="unimodal", model="mlp", modalities=["tabular"], seed=0, metrics={"test_r2": 0.8})
    >>> writer.save()   # reports/<dataset>/10_unimodal_baselines.results.json

    ``notebook`` and ``dataset`` are filled in for every record (a record that
    names another one is an error). ``save`` may be called after every
    experiment: it rewrites the whole file, so a crash keeps what was saved.
    """

    def __init__(self, notebook: str, dataset: str, out_dir: str | Path = REPORTS_DIR):
        self.notebook = _nonempty_str("notebook", notebook)
        self.dataset = _nonempty_str("dataset", dataset)
        self.out_dir = Path(out_dir)
        self._records: list[dict[str, Any]] = []

    @property
    def path(self) -> Path:
        return results_path(self.out_dir, self.dataset, self.notebook)

    @property
    def records(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._records]

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Add one record, given as a dict, as keyword fields, or both (keywords win).
        Returns the validated record."""
        merged = dict(record or {})
        merged.update(fields)
        for key in ("notebook", "dataset"):
            mine = getattr(self, key)
            if merged.get(key) is None:
                merged[key] = mine
            elif merged[key] != mine:
                raise MMLibError(f"record has {key}={merged[key]!r} but this RecordWriter is for {key}={mine!r}.")
        rec = make_record(**merged)
        self._records.append(rec)
        return rec

    def extend(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Add several records (e.g. the list an experiment helper returns)."""
        for r in records:
            self.add(r)

    def save(self) -> Path:
        payload = {
            "notebook": self.notebook,
            "dataset": self.dataset,
            "created": utc_now(),
            "mmlib_version": _mmlib_version(),
            "git_commit": git_commit(),
            "n_records": len(self._records),
            "records": _finite(self._records),
        }
        atomic_write_json(self.path, payload)
        return self.path


def _mmlib_version() -> str:
    import mmlib
    return getattr(mmlib, "__version__", "unknown")


# --------------------------------------------------------------------------- loading

def read_records_file(path: str | Path) -> list[dict[str, Any]]:
    """The validated records of one ``*.results.json`` file (a dict with a
    ``records`` list, or a bare list). Errors name the file and the record."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MMLibError(f"results file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise MMLibError(f"cannot read results file {path}: {exc}. Rerun the notebook that writes it, "
                         f"or delete the file.") from exc
    rows = data.get("records") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise MMLibError(f"results file {path} has no 'records' list.")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise MMLibError(f"results file {path}: record {i} is not an object.")
        try:
            out.append(make_record(**row))
        except MMLibError as exc:
            raise MMLibError(f"results file {path}: record {i}: {exc}") from None
    return out


def _as_list(x: str | Sequence[str] | None) -> list[str] | None:
    if x is None:
        return None
    return [x] if isinstance(x, str) else list(x)


def load_records(reports_dir: str | Path = REPORTS_DIR, dataset: str | Sequence[str] | None = None,
                 notebook: str | Sequence[str] | None = None) -> pd.DataFrame:
    """All records under ``reports_dir/<dataset>/*.results.json`` as one DataFrame.

    Metrics are flattened to ``metric_<name>`` columns (NaN where a record lacks
    one); ``modalities`` stays a list and ``modality_set`` is the "+"-joined
    string (good for grouping); ``source`` is the file each row came from.
    Hidden folders (the runner's staging) are skipped. No files → an empty frame
    with the base columns.
    """
    root = Path(reports_dir)
    datasets, notebooks = _as_list(dataset), _as_list(notebook)
    if datasets is None:
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    else:
        dirs = [root / d for d in datasets]
    recs: list[dict[str, Any]] = []
    for d in dirs:
        for f in sorted(d.glob(f"*{RESULTS_SUFFIX}")):
            if f.name.startswith("."):
                continue
            if notebooks is not None and f.name[: -len(RESULTS_SUFFIX)] not in notebooks:
                continue
            recs.extend({**rec, "source": str(f)} for rec in read_records_file(f))
    return records_to_frame(recs)


def records_to_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Records (dicts, e.g. ``RecordWriter.records``) as a DataFrame with ``metric_<name>``
    columns, ``modality_set`` ("+"-joined) and ``n_modalities``."""
    rows: list[dict[str, Any]] = []
    for rec in records:
        row = {k: v for k, v in rec.items() if k != "metrics"}
        row.setdefault("source", "")
        row["modality_set"] = "+".join(rec["modalities"])
        row["n_modalities"] = len(rec["modalities"])
        for m, v in rec["metrics"].items():
            row[f"metric_{m}"] = v
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=list(BASE_COLUMNS))
    df = pd.DataFrame(rows)
    metric_cols = [c for c in df.columns if c.startswith("metric_")]
    df = df[list(BASE_COLUMNS) + metric_cols]
    for c in ("n_params", "train_time_s", "epochs", *metric_cols):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    df["seed"] = df["seed"].astype(int)
    return df.reset_index(drop=True)


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The ``metric_*`` columns of a records frame."""
    return [c for c in df.columns if c.startswith("metric_")]


def _metric_col(df: pd.DataFrame, metric: str) -> str:
    for col in (metric, f"metric_{metric}"):
        if col in df.columns:
            return col
    names = [c[len("metric_"):] for c in metric_columns(df)]
    raise MMLibError(f"no metric {metric!r} in these records. Available metrics: {', '.join(names) or '(none)'}.")


# --------------------------------------------------------------------------- summaries

def summarize(df: pd.DataFrame, by: str | Sequence[str], metric: str) -> pd.DataFrame:
    """Mean, std (ddof=1) and n (number of non-missing values, i.e. seeds) of
    ``metric`` (``"test_r2"`` or ``"metric_test_r2"``) per group of ``by``.
    Groups keep their order of first appearance."""
    by = _as_list(by) or []
    missing = [b for b in by if b not in df.columns]
    if missing:
        raise MMLibError(f"summarize: unknown column(s) {missing}. Columns: {', '.join(map(str, df.columns))}.")
    col = _metric_col(df, metric)
    if not by:
        s = df[col]
        return pd.DataFrame({"mean": [s.mean()], "std": [s.std()], "n": [int(s.count())]})
    out = (df.groupby(by, dropna=False, sort=False)[col]
             .agg(mean="mean", std="std", n="count").reset_index())
    out["n"] = out["n"].astype(int)
    return out


def fmt_mean_std(mean: float, std: float | None = None, n: int | None = None, digits: int = 3) -> str:
    """``"0.812 ± 0.004 (n=3)"``; the ± part is left out when std is undefined
    (one seed), the ``(n=…)`` part when ``n`` is None; NaN mean → ``"n/a"``."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    text = f"{mean:.{digits}f}"
    if std is not None and np.isfinite(std) and (n is None or n > 1):
        text += f" ± {std:.{digits}f}"
    if n is not None:
        text += f" (n={int(n)})"
    return text


__all__ = [
    "REQUIRED_FIELDS", "OPTIONAL_FIELDS", "RECORD_FIELDS", "make_record", "RecordWriter", "read_records_file",
    "load_records", "metric_columns", "summarize", "fmt_mean_std", "git_commit",
    "results_path", "utc_now",
]
