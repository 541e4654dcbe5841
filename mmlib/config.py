"""Project paths, derived from one root (never from the current directory)."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Where downloaded files, decoded image caches and embedding caches live.
DATA_CACHE = Path(os.environ.get("MMLIB_CACHE", PROJECT_ROOT / ".cache")).resolve()
REPORTS_DIR = PROJECT_ROOT / "reports"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
