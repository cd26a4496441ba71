"""``python -m refmarshal.profiler``: the same as ``refmarshal profile``."""

import sys

from .cli import main

sys.exit(main())
