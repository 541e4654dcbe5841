"""Result records: one row per (experiment, configuration, seed), written by every
notebook and read back by the postmortem, the experiment log and the index.

A record is a flat dict (``RECORD_FIELDS``)::

    notebook, experiment, dataset, model, fusion, modalities, condition, seed,
    metrics, n_params, train_time_s, epochs, device, extra,
    run_id, profile, seed_offset, dataset_fingerprint, git_commit

The last five are provenance, filled in by the ``RecordWriter``: a ``run_id``
unique within the file, the profile name and seed offset it ran with, a hash of
the dataset's tensors, splits and target, and the commit (``+dirty`` when code
differed from it). Notebooks collect records with a ``RecordWriter`` and save them to
``<out_dir>/<dataset>/<notebook>.results.json``, and the records' test-split
predictions (when given) to ``<notebook>.predictions.npz`` beside it (float32,
one array per ``run_id``, plus ``__y_test__``: see ``load_predictions``).
``out_dir`` is always a reports *root* (``reports/`` by hand, a staging root under the
runner); the dataset sub-folder is added here, so a notebook never builds that path.

``load_records`` turns every published file into one tidy DataFrame (metrics as
``metric_<name>`` columns); ``summarize`` / ``fmt_mean_std`` (from
``mmlib.reporting.markdown``, with the per-dataset experiment log) give mean ± std over seeds.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import numbers
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mmlib.config import REPORTS_DIR
from mmlib.reporting.lock import git_commit, git_state, utc_now  # noqa: F401  (re-exported: provenance)
from mmlib.reporting.markdown import fmt_mean_std, metric_columns, summarize  # noqa: F401  (re-exported)
from mmlib.utils import MMLibError, _json_default, atomic_write_bytes, atomic_write_json

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
    # provenance (set by RecordWriter; None / 0 in records written before they existed)
    "run_id": None,         # unique within its results file; the key of its predictions
    "profile": None,        # run profile name ("smoke", "standard", "full")
    "seed_offset": 0,       # added to every seed of the profile (an independent rerun)
    "dataset_fingerprint": None,  # hash of the dataset's tensors, splits and target
    "git_commit": None,     # short commit, "+dirty" when tracked code outside reports/ differed
}
PROVENANCE_FIELDS: tuple[str, ...] = ("run_id", "profile", "seed_offset", "dataset_fingerprint", "git_commit")
# The order fields are stored in.
RECORD_FIELDS: tuple[str, ...] = ("notebook", "experiment", "dataset", "model", "fusion", "modalities", "condition",
                                  "seed", "metrics", "n_params", "train_time_s", "epochs", "device", "extra",
                                  *PROVENANCE_FIELDS)
RESULTS_SUFFIX = ".results.json"
PREDICTIONS_SUFFIX = ".predictions.npz"
Y_TEST_KEY = "__y_test__"   # the test-split targets in a predictions file; "__y_test__.<run_id>" for a record's own
# Columns of ``load_records`` besides the ``metric_*`` ones (also the columns of an empty frame).
BASE_COLUMNS: tuple[str, ...] = ("notebook", "experiment", "dataset", "model", "fusion", "modalities", "modality_set",
                                 "n_modalities", "condition", "seed", "n_params", "train_time_s", "epochs", "device",
                                 "extra", *PROVENANCE_FIELDS, "source")


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
    ``epochs``, ``device`` (None), ``extra`` ({}), and the provenance ``run_id``,
    ``profile``, ``dataset_fingerprint``, ``git_commit`` (None) and ``seed_offset``
    (0). Unknown or missing fields raise ``MMLibError`` naming them. ``modalities``
    may be a list/tuple/set of names or a "+"-joined string; it is stored sorted and
    de-duplicated. Metric values become floats (None → NaN).
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
    for name in ("fusion", "run_id", "profile", "dataset_fingerprint", "git_commit"):
        v = fields.get(name)
        rec[name] = OPTIONAL_FIELDS[name] if v is None else _nonempty_str(name, v)

    mods = fields["modalities"]
    if isinstance(mods, str):
        mods = [m for m in mods.split("+") if m]
    if not isinstance(mods, (list, tuple, set, frozenset)) or not mods:
        raise MMLibError(f"record field 'modalities' must be a non-empty list of modality names, got {fields['modalities']!r}.")
    rec["modalities"] = sorted({_nonempty_str("modalities", m) for m in mods})

    cond = fields.get("condition")
    if cond is not None and not isinstance(cond, str):
        raise MMLibError(f"record field 'condition' must be a string such as 'noise=0.5' (or ''), got {cond!r}.")
    rec["condition"] = cond or ""

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

    for name, kind in (("n_params", int), ("train_time_s", float), ("epochs", int), ("seed_offset", int)):
        v = fields.get(name)
        if v is not None and (not (_is_int(v) if kind is int else _is_number(v)) or v < 0):
            what = "a non-negative integer" if kind is int else "a non-negative number"
            raise MMLibError(f"record field {name!r} must be {what} or None, got {v!r}.")
        rec[name] = OPTIONAL_FIELDS[name] if v is None else kind(v)

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


def results_path(out_dir: str | Path, dataset: str, notebook: str) -> Path:
    """``<out_dir>/<dataset>/<notebook>.results.json``."""
    return Path(out_dir) / dataset / f"{notebook}{RESULTS_SUFFIX}"


def run_id_of(rec: Mapping[str, Any]) -> str:
    """A stable 12-hex id of a record's configuration (notebook, experiment, model,
    fusion, modalities, condition, seed); ``RecordWriter`` appends ``-2``, ``-3``, …
    to repeats within a file."""
    key = [rec["notebook"], rec["experiment"], rec["model"], rec.get("fusion"), sorted(rec["modalities"]),
           rec.get("condition") or "", int(rec["seed"])]
    return hashlib.sha1(json.dumps(key).encode()).hexdigest()[:12]


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _targets(y: Any) -> np.ndarray:
    a = _numpy(y)
    if a.ndim != 1 or not len(a) or a.dtype.kind not in "biuf":
        raise MMLibError(f"test targets must be a non-empty 1-d numeric array, got shape {a.shape} {a.dtype}.")
    return a.astype(np.float32) if a.dtype.kind == "f" else a.astype(np.int64)


# --------------------------------------------------------------------------- writer

class RecordWriter:
    """Collects a notebook's records and saves them atomically.

    >>> writer = RecordWriter("10_unimodal_baselines", dataset, out_dir, profile=P, data=ds)
    >>> writer.add(experiment="unimodal", model="mlp", modalities=["tabular"], seed=0, metrics={"test_r2": 0.8},
    ...            predictions=trainer.predict("test"))
    >>> writer.save()   # reports/<dataset>/10_unimodal_baselines.results.json (+ .predictions.npz)

    ``notebook`` and ``dataset`` are filled in for every record (a record that
    names another one is an error), and so is the provenance: ``profile`` (a
    name, or a ``get_profile`` dict, which also gives ``seed_offset``), the
    ``dataset_fingerprint`` and test targets of ``data`` (a ``MultimodalDataset``;
    or ``fingerprint=`` / ``set_targets``), the git commit, and a ``run_id``.
    ``save`` may be called after every experiment: it rewrites the whole file,
    so a crash keeps what was saved.
    """

    def __init__(self, notebook: str, dataset: str, out_dir: str | Path = REPORTS_DIR,
                 profile: str | Mapping[str, Any] | None = None, *, seed_offset: int | None = None,
                 data: Any = None, fingerprint: str | None = None):
        self.notebook = _nonempty_str("notebook", notebook)
        self.dataset = _nonempty_str("dataset", dataset)
        self.out_dir = Path(out_dir)
        if isinstance(profile, Mapping):
            seed_offset = profile.get("seed_offset", 0) if seed_offset is None else seed_offset
            profile = profile.get("name")
        self.profile = None if profile is None else _nonempty_str("profile", profile)
        self.seed_offset = seed_offset  # validated with every record
        self.fingerprint = None if fingerprint is None else _nonempty_str("fingerprint", fingerprint)
        self._records: list[dict[str, Any]] = []
        self._ids: dict[str, int] = {}
        self._predictions: dict[str, np.ndarray] = {}
        self._own_targets: dict[str, np.ndarray] = {}
        self._y_test: np.ndarray | None = None
        if data is not None:
            self.set_dataset(data)

    @property
    def path(self) -> Path:
        return results_path(self.out_dir, self.dataset, self.notebook)

    @property
    def predictions_path(self) -> Path:
        return self.path.with_name(f"{self.notebook}{PREDICTIONS_SUFFIX}")

    @property
    def records(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._records]

    @functools.cached_property
    def git_commit(self) -> str | None:
        """The commit recorded with every record (looked up once per writer)."""
        return git_commit()

    def __len__(self) -> int:
        return len(self._records)

    def set_dataset(self, ds: Any) -> "RecordWriter":
        """Record ``ds``'s fingerprint and keep its test-split targets (see ``set_targets``)."""
        from mmlib.training.runcache import dataset_fingerprint  # torch: imported only when used
        self.fingerprint = dataset_fingerprint(ds)
        self.set_targets(_numpy(ds.target)[np.asarray(ds.splits["test"])])
        return self

    def set_targets(self, y_test: Any) -> "RecordWriter":
        """The test-split targets (in the order of the predictions), saved as ``__y_test__``."""
        y = _targets(y_test)
        bad = [k for k, p in self._predictions.items() if k not in self._own_targets and len(p) != len(y)]
        if bad:
            raise MMLibError(f"set_targets: {len(y)} test targets, but record(s) {bad[:3]} have predictions "
                             f"of another length.")
        self._y_test = y
        return self

    def add(self, record: Mapping[str, Any] | None = None, *, predictions: Any = None, y_test: Any = None,
            **fields: Any) -> dict[str, Any]:
        """Add one record, given as a dict, as keyword fields, or both (keywords win).
        ``predictions``: the model's test-split predictions, in the order of the test
        rows: [n] (regression values, binary P(1)) or [n, C] (class probabilities);
        ``y_test``: their targets (stored for this record only if they are not the writer's).
        Returns the validated record."""
        merged = dict(record or {})
        merged.update(fields)
        predictions = merged.pop("predictions", None) if predictions is None else predictions
        y_test = merged.pop("y_test", None) if y_test is None else y_test
        for key in ("notebook", "dataset"):
            mine = getattr(self, key)
            if merged.get(key) is None:
                merged[key] = mine
            elif merged[key] != mine:
                raise MMLibError(f"record has {key}={merged[key]!r} but this RecordWriter is for {key}={mine!r}.")
        for key, mine in (("profile", self.profile), ("seed_offset", self.seed_offset),
                          ("dataset_fingerprint", self.fingerprint), ("git_commit", self.git_commit)):
            if mine is not None:
                merged[key] = mine
        merged["run_id"] = None
        rec = make_record(**merged)
        own = None if y_test is None else _targets(y_test)
        if own is not None and self._y_test is not None and np.array_equal(own, self._y_test):
            own = None  # the writer's own targets, stored once
        pred = None if predictions is None else _predictions(predictions, own if own is not None else self._y_test)
        base = run_id_of(rec)
        n = self._ids[base] = self._ids.get(base, 0) + 1
        rec["run_id"] = base if n == 1 else f"{base}-{n}"
        if pred is not None:
            self._predictions[rec["run_id"]] = pred
            if own is not None:
                self._own_targets[rec["run_id"]] = own
        self._records.append(rec)
        return dict(rec)

    def extend(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Add several records (e.g. the list an experiment helper returns)."""
        for r in records:
            self.add(r)

    def save(self) -> Path:
        """Write the records; then, when a record has predictions, ``<notebook>.predictions.npz``
        (written first, both atomically; a stale one from an earlier save is removed)."""
        if self._predictions:
            arrays = dict(self._predictions)
            arrays.update({f"{Y_TEST_KEY}.{k}": y for k, y in self._own_targets.items()})
            if self._y_test is not None:
                arrays[Y_TEST_KEY] = self._y_test
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            atomic_write_bytes(self.predictions_path, buf.getvalue())
        elif self.predictions_path.exists():
            self.predictions_path.unlink()
        payload = {
            "notebook": self.notebook,
            "dataset": self.dataset,
            "created": utc_now(),
            "mmlib_version": _mmlib_version(),
            "git_commit": self.git_commit,
            "profile": self.profile,
            "seed_offset": self.seed_offset or 0,
            "dataset_fingerprint": self.fingerprint,
            "n_records": len(self._records),
            "n_predictions": len(self._predictions),
            "records": _finite(self._records),
        }
        atomic_write_json(self.path, payload)
        return self.path


def _predictions(p: Any, y: np.ndarray | None) -> np.ndarray:
    a = _numpy(p)
    if a.ndim not in (1, 2) or not len(a) or a.dtype.kind not in "biuf":
        raise MMLibError(f"predictions must be a non-empty numeric array [n] or [n, classes], "
                         f"got shape {a.shape} {a.dtype}.")
    if y is not None and len(a) != len(y):
        raise MMLibError(f"predictions have {len(a)} rows but the test split has {len(y)} targets.")
    return a.astype(np.float32)


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
    commit = data.get("git_commit") if isinstance(data, dict) else None  # records older than per-record provenance
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise MMLibError(f"results file {path}: record {i} is not an object.")
        try:
            out.append(make_record(**{"git_commit": commit, **row}))
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


def _prediction_files(reports_dir: str | Path, dataset: str, notebooks: str | Sequence[str] | None) -> list[Path]:
    names = _as_list(notebooks)
    found = (Path(reports_dir) / dataset).glob(f"*{PREDICTIONS_SUFFIX}")
    files = sorted(p for p in found if not p.name.startswith("."))
    stem = lambda p: p.name[: -len(PREDICTIONS_SUFFIX)]  # noqa: E731
    return [p for p in files if names is None or any(stem(p) == n or stem(p).startswith(f"{n}_") for n in names)]


def load_predictions(reports_dir: str | Path, dataset: str,
                     notebooks: str | Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """run_id → the record's test-split predictions (float32, [n] or [n, classes], in the
    dataset's test-row order), from ``<reports_dir>/<dataset>/*.predictions.npz``
    (``notebooks``: names or ``NN`` prefixes; None = all). Only run_ids of the records
    published beside each file are returned (a leftover file is never mixed in)."""
    out: dict[str, np.ndarray] = {}
    for f in _prediction_files(reports_dir, dataset, notebooks):
        results = f.with_name(f.name[: -len(PREDICTIONS_SUFFIX)] + RESULTS_SUFFIX)
        ids = {r["run_id"] for r in read_records_file(results)} if results.is_file() else set()
        with np.load(f) as z:
            out.update({k: z[k] for k in z.files if k in ids})
    return out


def load_test_targets(reports_dir: str | Path, dataset: str, run_id: str | None = None) -> np.ndarray | None:
    """The test-split targets saved with the predictions (``__y_test__`` of the first file
    that has it); with ``run_id``, those of that record (its own when it was given other
    targets). None when no file has them."""
    for f in _prediction_files(reports_dir, dataset, None):
        with np.load(f) as z:
            own = f"{Y_TEST_KEY}.{run_id}"
            if run_id is not None and own in z.files:
                return z[own]
            if Y_TEST_KEY in z.files and (run_id is None or run_id in z.files):
                return z[Y_TEST_KEY]
    return None


def records_to_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Records (dicts, e.g. ``RecordWriter.records``) as a DataFrame with ``metric_<name>``
    columns, ``modality_set`` ("+"-joined) and ``n_modalities``."""
    rows: list[dict[str, Any]] = []
    for rec in records:
        row = {**OPTIONAL_FIELDS, "source": "", **{k: v for k, v in rec.items() if k != "metrics"}}
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
    df["seed_offset"] = df["seed_offset"].fillna(0).astype(int)
    return df.reset_index(drop=True)


__all__ = [
    "REQUIRED_FIELDS", "OPTIONAL_FIELDS", "RECORD_FIELDS", "PROVENANCE_FIELDS", "make_record", "RecordWriter",
    "read_records_file", "load_records", "load_predictions", "load_test_targets", "metric_columns", "summarize",
    "fmt_mean_std", "git_commit", "git_state", "results_path", "run_id_of", "utc_now",
]
