"""``python -m hpcbridge.cli``: the ``hpcbridge`` command without its console script."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
