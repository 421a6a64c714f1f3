"""`python -m datamix_trainer train|run|demo-data ...`: the trainer's commands without the core CLI
(which would also load the operator's).

`datamix run` launches its worker processes this way, so that a local run does not depend on the
`datamix` console script being on PATH.
"""

import argparse
import sys

from datamix.errors import run_command
from datamix_trainer.commands import register

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m datamix_trainer")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    sys.exit(run_command(parser))
