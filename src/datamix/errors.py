"""Errors a user can fix, and the one place that turns them into a line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class UserError(Exception):
    """Bad input: the message names the field and the fix."""


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the chosen subcommand's `func`; a UserError is one line, exit code 2."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
