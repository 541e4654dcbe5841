"""``python -m mmlib.reports``: run the notebooks into HTML reports (see ``mmlib.reporting.runner``)."""
import sys

from mmlib.reporting.runner import main

if __name__ == "__main__":
    sys.exit(main())
