"""``python -m mmlib.bench``: in-memory pipeline vs a naive per-item loader (see ``mmlib.training.bench``)."""
import sys

from mmlib.training.bench import main

if __name__ == "__main__":
    sys.exit(main())
