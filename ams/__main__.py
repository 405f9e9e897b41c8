"""``python -m ams``: the ``ams-store`` command line (see :mod:`ams.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
