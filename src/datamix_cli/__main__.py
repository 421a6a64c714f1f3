"""`python -m datamix_cli ...` is `datamix ...` without the console script on PATH (local runs
launch their worker processes this way)."""

import sys

from datamix_cli.main import main

sys.exit(main())
