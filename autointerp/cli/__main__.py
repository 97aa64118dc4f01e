"""``python -m autointerp.cli``: the command line (as ``torchrun -m autointerp.cli`` needs)."""

import sys

from autointerp.cli import main

sys.exit(main())
