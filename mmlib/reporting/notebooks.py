"""Notebook discovery and parameters for the report runner: find ``NN_*.ipynb``,
read a notebook's ``parameters`` cell, parse ``-p KEY=VALUE`` options and check
them against what each notebook declares."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Sequence

import nbformat
from papermill.translators import papermill_translators

from mmlib.config import NOTEBOOKS_DIR
from mmlib.utils import MMLibError

# Parameters the runner passes to every notebook that declares them.
STANDARD_PARAMS: tuple[str, ...] = ("dataset", "profile", "device", "out_dir", "records_dir", "seed_offset")
_STANDARD_OPTION = {"dataset": "--datasets", "profile": "--profile", "device": "--device",
                    "out_dir": "--out-dir", "records_dir": "--out-dir", "seed_offset": "--seed-offset"}
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
KERNEL_NAME = "python3"


def find_first_tagged_cell_index(nb: nbformat.NotebookNode, tag: str) -> int:
    """Index of the first cell carrying ``tag``, -1 if none (papermill's helper
    assumes every cell has a ``tags`` list, which nbformat.read does not give)."""
    for i, cell in enumerate(nb.cells):
        if tag in cell.get("metadata", {}).get("tags", []):
            return i
    return -1


def discover_notebooks(notebooks_dir: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """``NN_*.ipynb`` in ``notebooks_dir``, in name order."""
    d = Path(notebooks_dir)
    if not d.is_dir():
        raise MMLibError(f"notebooks folder not found: {d} (pass --notebooks-dir).")
    found = sorted(p for p in d.glob(NOTEBOOK_GLOB) if p.is_file())
    if not found:
        raise MMLibError(f"no notebooks named NN_*.ipynb in {d} (pass --notebooks-dir).")
    return found


def select_notebooks(available: Sequence[Path], prefixes: Sequence[str] | None) -> list[Path]:
    """The notebooks whose names start with any of ``prefixes`` (all when empty), in order."""
    if not prefixes or not available:
        return list(available)
    chosen: set[Path] = set()
    for pre in prefixes:
        stem = Path(pre).name.removesuffix(".ipynb")
        hits = [p for p in available if p.stem.startswith(stem)]
        if not hits:
            names = ", ".join(p.stem for p in available)
            raise MMLibError(f"--notebooks {pre!r} matches no notebook in {available[0].parent}. Available: {names}.")
        chosen.update(hits)
    return [p for p in available if p in chosen]


def notebook_parameters(path: str | Path) -> dict[str, dict[str, Any]]:
    """The parameters declared in the notebook's ``parameters``-tagged cell:
    name → {name, inferred_type_name, default, help}, as ``papermill
    --help-notebook`` shows them ({} without such a cell). Parsed with
    papermill's Python translator, the same one ``papermill.inspect_notebook``
    uses, so a notebook without kernel metadata is read too."""
    path = Path(path)
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:  # nbformat raises several types for a broken file
        raise MMLibError(f"cannot read notebook {path}: {exc}") from exc
    idx = find_first_tagged_cell_index(nb, "parameters")
    if idx < 0:
        return {}
    translator = papermill_translators.find_translator(KERNEL_NAME, "python")
    return {p.name: p._asdict() for p in translator.inspect(nb.cells[idx])}


def parse_param(text: str) -> tuple[str, Any]:
    """``"epochs=5"`` → ("epochs", 5). The value is a Python literal when it
    parses as one (numbers, lists, None, True, quoted strings), else the raw string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise MMLibError(f"-p {text!r}: expected KEY=VALUE with a Python name as KEY (e.g. -p epochs=5).")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw
    if isinstance(value, tuple):  # papermill writes tuples as strings; a list keeps the values
        value = list(value)
    return key, value


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, value = parse_param(item)
        if key in STANDARD_PARAMS:
            raise MMLibError(f"-p {key}=…: {key!r} is set by the runner; use {_STANDARD_OPTION[key]} instead.")
        out[key] = value
    return out


def check_extras(name: str, declared: dict[str, Any], extras: dict[str, Any]) -> None:
    """Refuse extra parameters the notebook does not declare."""
    unknown = [k for k in extras if k not in declared]
    if unknown:
        valid = ", ".join(declared) or "(none: it has no cell tagged 'parameters')"
        raise MMLibError(f"notebook {name}: unknown parameter(s) {', '.join(unknown)}. "
                         f"Parameters it declares: {valid}.")


def notebook_inputs(declared: dict[str, Any], standard: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    """What to inject: the standard values the notebook declares, plus the extras."""
    params = {k: v for k, v in standard.items() if k in declared}
    params.update(extras)
    return params
