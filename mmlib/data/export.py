"""Export a built-in dataset to the folder layout: a CSV, a PNG folder and a spec file.

    python -m mmlib.data.export spacecraft OUT [--n-rows 2000] [--seed 0] [--name spacecraft_folder]

writes ``OUT/candidates_data.csv``, ``OUT/spacecraft_images/*.png`` and ``OUT/<name>.toml``;
``python -m mmlib.reports --data OUT/<name>.toml`` then runs the study on the export
through the ``folder`` loader, as on anyone's own data.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from mmlib.utils import MMLibError

EXPORTERS = ("spacecraft",)


def export_spacecraft(out_dir: str | Path, n_rows: int = 12000, seed: int = 0, image_size: int = 32,
                      name: str = "spacecraft_folder", shares: dict[str, float] | None = None) -> Path:
    """Generate ``n_rows`` spacecraft (as ``load_dataset("spacecraft", n=n_rows, seed=seed)`` does)
    and write them in the seed-000 layout with a spec file; returns the spec's path. The spec
    lists the tabular columns (so the ``registry_number`` column, unique per row, is kept as
    the built-in dataset keeps it), reads the captions as word tokens and splits with ``seed``."""
    from mmlib.data.spacecraft import CAT_COLUMNS, generate, write_folder
    from mmlib.data.spec import write_spec

    if int(n_rows) < 10:
        raise MMLibError(f"export: n_rows={n_rows}; at least 10 rows are needed.")
    out = Path(out_dir)
    sample = generate(n=int(n_rows), seed=seed, image_size=image_size, shares=shares)
    csv_path = write_folder(sample, out)
    cat = [c for c in sample.frame.columns if c in CAT_COLUMNS]
    num = [c for c in sample.frame.columns if c not in CAT_COLUMNS]
    return write_spec(out / f"{name}.toml", name, "folder", csv_path=csv_path.name, target="target",
                      text_column="description", image_column="image_path", num_columns=num, cat_columns=cat,
                      text_encoder="tokens", image_size=image_size, seed=seed, task="regression")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmlib.data.export", description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=EXPORTERS)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--n-rows", type=int, default=12000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--name", default="spacecraft_folder", help="the spec's name: reports/<name>/")
    args = ap.parse_args(argv)
    try:
        spec = export_spacecraft(args.out_dir, n_rows=args.n_rows, seed=args.seed, image_size=args.image_size,
                                 name=args.name)
    except MMLibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {spec}; run: python -m mmlib.reports --data {spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
