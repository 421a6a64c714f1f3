"""`python -m datamix_trainer train|run|demo-data ...`: the trainer's commands without the core CLI.

`datamix run` launches its worker processes this way, so that a local run does not depend on the
`datamix` console script being on PATH.
"""

from __future__ import annotations

import argparse
import sys

from datamix.errors import UserError
from datamix_trainer.commands import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datamix_trainer")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
