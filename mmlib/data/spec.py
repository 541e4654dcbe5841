"""Dataset spec files: one TOML file names your dataset and says how to load it.

.. code-block:: toml

    name = "pets"                 # the reports go to reports/<name>/
    loader = "folder"             # any registered loader: folder, embeddings, spacecraft, clothing
    csv_path = "data/pets.csv"    # relative to this file
    target = "adoption_speed"
    text_column = "description"
    image_column = "photo"
    text_encoder = "minilm"       # or "tokens", "mpnet", "tfidf", "minilm+tfidf", "mpnet+tfidf"

Every other key is a parameter of the loader (``mmlib.data.folder.load_folder``,
``mmlib.data.embeddings.load_embeddings``, ...); ``other_targets`` (a list) names
targets notebook 20 studies besides ``target``. Paths (``csv_path``, ``path``,
``image_root``, ``cache_dir``) are relative to the spec file. Unknown keys, a
missing file, an unknown loader or a missing required parameter are errors that
say what is valid. A bare ``.npz`` path is read as the spec
``{name = <file stem>, loader = "embeddings", path = <file>}``.

``python -m mmlib.reports --data spec.toml`` runs every notebook on it, and
``papermill notebooks/00_eda.ipynb out.ipynb -p dataset spec.toml`` runs one.
"""
from __future__ import annotations

import inspect
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmlib.utils import MMLibError

SPEC_SUFFIXES = (".toml", ".npz")
SPEC_KEYS = ("name", "loader", "other_targets")  # keys of the spec itself; the rest go to the loader
PATH_KEYS = ("csv_path", "path", "image_root", "cache_dir")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset defined by a spec file: its name (the reports folder), a registered loader
    and that loader's parameters (paths already made absolute)."""

    name: str
    loader: str
    params: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    other_targets: tuple[str, ...] = ()


def is_spec_path(value: Any) -> bool:
    """True for a string or path naming a spec file (``.toml``) or an embeddings file (``.npz``)."""
    return isinstance(value, (str, Path)) and str(value).lower().endswith(SPEC_SUFFIXES)


def read_spec(path: str | Path) -> DatasetSpec:
    """Read and check a spec file (``.toml``; ``.npz``: an embeddings file as its own spec)."""
    from mmlib.data import _REGISTRY, get_loader

    path = Path(path).expanduser()
    if not path.is_file():
        raise MMLibError(f"dataset spec {path} does not exist (resolved from the current folder {Path.cwd()}).")
    path = path.resolve()
    if path.suffix.lower() == ".npz":
        return DatasetSpec(_check_name(path.stem, path), "embeddings", {"path": str(path)}, path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MMLibError(f"dataset spec {path} is not valid TOML: {exc}.") from exc
    where = f"dataset spec {path}"
    for key in ("name", "loader"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise MMLibError(f"{where}: the key {key!r} is missing (or not a string); e.g. name = \"pets\", "
                             f"loader = \"folder\".")
    name, loader = _check_name(raw["name"], path), raw["loader"]
    if loader not in _REGISTRY:
        raise MMLibError(f"{where}: unknown loader {loader!r}. Registered loaders: {', '.join(sorted(_REGISTRY))}.")
    accepted = inspect.signature(get_loader(loader)).parameters
    unknown = [k for k in raw if k not in SPEC_KEYS and k not in accepted]
    if unknown:
        raise MMLibError(f"{where}: unknown key(s) {unknown}. Valid keys for loader {loader!r}: "
                         f"{', '.join([*SPEC_KEYS, *accepted])}.")
    params = {k: v for k, v in raw.items() if k not in SPEC_KEYS}
    for key in PATH_KEYS:
        if key in params:
            if not isinstance(params[key], str):
                raise MMLibError(f"{where}: {key} must be a string (a path relative to the spec file).")
            full = (path.parent / Path(params[key]).expanduser()).resolve()
            if key != "cache_dir" and not full.exists():
                raise MMLibError(f"{where}: {key} = {params[key]!r} -> {full} does not exist (paths are relative to "
                                 "the spec file's folder).")
            params[key] = str(full)
    required = [p.name for p in accepted.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    missing = [k for k in required if k not in params]
    if missing:
        raise MMLibError(f"{where}: loader {loader!r} needs the key(s) {missing}.")
    others = raw.get("other_targets", [])
    if not isinstance(others, list) or not all(isinstance(t, str) for t in others):
        raise MMLibError(f"{where}: other_targets must be a list of column names, e.g. other_targets = [\"label\"].")
    return DatasetSpec(name, loader, params, path, tuple(others))


def _check_name(name: str, path: Path) -> str:
    from mmlib.data import _REGISTRY

    if not _NAME_RE.match(name):
        raise MMLibError(f"dataset spec {path}: name {name!r} must be letters, digits, '_', '-' or '.' (it names the "
                         "reports folder).")
    if name in _REGISTRY:
        raise MMLibError(f"dataset spec {path}: name {name!r} is a built-in dataset; choose another name "
                         f"(built-in: {', '.join(sorted(_REGISTRY))}).")
    return name


def write_spec(path: str | Path, name: str, loader: str, **params: Any) -> Path:
    """Write a spec file (strings, numbers, booleans and lists of strings); returns its path."""
    from mmlib.utils import atomic_write_text

    def lit(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(lit(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"name = {lit(name)}", f"loader = {lit(loader)}"]
    lines += [f"{k} = {lit(v)}" for k, v in params.items() if v is not None]
    path = Path(path)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
