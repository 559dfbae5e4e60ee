"""``python -m training`` is the same as ``seqserve-train``."""

import sys

from training.cli import main

sys.exit(main())
