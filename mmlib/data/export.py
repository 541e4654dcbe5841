"""Export a built-in dataset to the folder layout: a CSV, a PNG folder and a spec file.

    python -m mmlib.data.export spacecraft OUT [--n-rows 2000] [--seed 0] [--name spacecraft_folder] [--classes K]

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
                      name: str = "spacecraft_folder", shares: dict[str, float] | None = None,
                      classes: int | None = None) -> Path:
    """Generate ``n_rows`` spacecraft (as ``load_dataset("spacecraft", n=n_rows, seed=seed)`` does)
    and write them in the seed-000 layout with a spec file; returns the spec's path. The spec
    lists the tabular columns (so the ``registry_number`` column, unique per row, is kept as
    the built-in dataset keeps it), reads the captions as word tokens and splits with ``seed``.

    ``classes=K`` makes it a classification dataset: the spec's target becomes ``target_class``,
    the quantile bin (0 … K−1, equal shares) of the regression target, which stays in the CSV
    but is neither a feature nor a target."""
    from mmlib.data.spacecraft import CAT_COLUMNS, generate, quantile_classes, write_folder
    from mmlib.data.spec import write_spec

    if int(n_rows) < 10:
        raise MMLibError(f"export: n_rows={n_rows}; at least 10 rows are needed.")
    if classes is not None and not 2 <= int(classes) <= 20:
        raise MMLibError(f"export: classes={classes}; give 2 to 20 classes (or none for the regression target).")
    out = Path(out_dir)
    sample = generate(n=int(n_rows), seed=seed, image_size=image_size, shares=shares)
    cat = [c for c in sample.frame.columns if c in CAT_COLUMNS]
    num = [c for c in sample.frame.columns if c not in CAT_COLUMNS]
    target, task = "target", "regression"
    if classes:  # the built-in dataset's task="multiclass" bins, as a column of the CSV
        sample.frame = sample.frame.assign(target_class=quantile_classes(sample.y, int(classes)))
        target, task = "target_class", ("binary" if int(classes) == 2 else "multiclass")
    csv_path = write_folder(sample, out)
    return write_spec(out / f"{name}.toml", name, "folder", csv_path=csv_path.name, target=target,
                      text_column="description", image_column="image_path", num_columns=num, cat_columns=cat,
                      text_encoder="tokens", image_size=image_size, seed=seed, task=task)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmlib.data.export", description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=EXPORTERS)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--n-rows", type=int, default=12000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--name", default="spacecraft_folder", help="the spec's name: reports/<name>/")
    ap.add_argument("--classes", type=int, default=None,
                    help="a classification target instead: the regression target's K quantile bins")
    args = ap.parse_args(argv)
    try:
        spec = export_spacecraft(args.out_dir, n_rows=args.n_rows, seed=args.seed, image_size=args.image_size,
                                 name=args.name, classes=args.classes)
    except MMLibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {spec}; run: python -m mmlib.reports --data {spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
