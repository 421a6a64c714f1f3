#!/usr/bin/env python3
"""`python3 tools/cluster/cluster.py up|down|status|env`: the same command as
`python3 -m tools.cluster` (see tools/cluster/__init__.py), runnable from any directory."""

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a file, Python puts tools/cluster/ first on the path; the package lives at the root.
    sys.path[0] = str(Path(__file__).resolve().parents[2])
    from tools.cluster.cli import main

    sys.exit(main())
