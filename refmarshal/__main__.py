"""``python -m refmarshal`` runs the ``refmarshal`` command."""

import sys

from .cli import main

sys.exit(main())
