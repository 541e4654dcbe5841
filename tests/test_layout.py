"""The package keeps the shape a newcomer can read: modules and classes of a readable
size, one training loop (only mmlib/training steps an optimizer or calls backward),
and thin notebooks (no def/class, short code cells, no stored outputs)."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from mmlib.config import NOTEBOOKS_DIR, PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "mmlib"
MODULES = sorted(PACKAGE.rglob("*.py"))
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_CELL_LINES = 500, 250, 25


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_classes_stay_readable(path: Path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name} has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"class {node.name} in {path.name} has {size} lines"


def test_only_the_training_package_runs_an_optimizer():
    pattern = re.compile(r"\.backward\(|optimizer\.step\(|\bopt\.step\(")
    outside = [f"{p.relative_to(PACKAGE)}:{i}" for p in MODULES if p.parent.name != "training"
               for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not outside, f"training steps outside mmlib/training: {outside}"


def test_the_layout_shows_the_roles():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert {"data", "models", "training", "analysis", "reporting"} <= packages
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top <= {"__init__", "config", "utils", "reports", "bench", "fit"}, f"loose top-level modules: {top}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_stay_thin(path: Path):
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        assert not re.search(r"^\s*(def|class)\s", src, re.M), f"cell {i} defines a function or class"
        lines = [line for line in src.splitlines() if line.strip()]
        assert len(lines) <= MAX_CELL_LINES, f"cell {i} has {len(lines)} non-blank lines"
        assert not cell.get("outputs") and not cell.get("execution_count"), f"cell {i} carries outputs"
