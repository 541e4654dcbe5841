"""``python -m mmlib.fit``: train one configuration; under ``torchrun``, with DDP (see ``mmlib.training.fit``)."""
import sys

from mmlib.training.fit import main

if __name__ == "__main__":
    sys.exit(main())
