"""`python3 -m tools.cluster up|down|status|env` (see tools/cluster/__init__.py)."""

import sys

from .cli import main

sys.exit(main())
