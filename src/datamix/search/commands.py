"""`datamix sweep fit` and `datamix sweep run`: parsers and the functions they call.

The command line registers these with `register`, handing in how to reach the local runner
(the trainer's, which this core package does not import).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from datamix.errors import UserError
from datamix.search.fit import FLAGS, fit_and_propose, parse_assignments
from datamix.search.local import LocalRunner, run_sweep, summary
from datamix.search.regression import DEFAULT_REGRESSION, REGRESSIONS
from datamix.search.table import read_csv


def cmd_sweep_fit(args: argparse.Namespace) -> int:
    """Fit and propose from a trials table; prints the proposal as YAML."""
    table = read_csv(args.trials)
    max_epochs, sizes, final_tokens = repetition_flags(args, table.domains)
    result = fit_and_propose(
        table,
        objective=parse_assignments(args.objective, "--objective"),
        regression=args.regression,
        min_share=parse_assignments(args.min_share, "--min-share"),
        max_share=parse_assignments(args.max_share, "--max-share"),
        max_epochs=max_epochs,
        domain_tokens=sizes,
        final_tokens=final_tokens,
        seed=args.seed,
        fields=FLAGS,
    )
    print(result.to_yaml(), end="")
    return 0


def repetition_flags(
    args: argparse.Namespace, domains: tuple[str, ...]
) -> tuple[float | None, dict[str, int] | None, int | None]:
    """--max-epochs, --epoch-tokens and --final-tokens, checked; all three or none."""
    sizes_given = parse_assignments(args.epoch_tokens, "--epoch-tokens")
    if args.max_epochs is None:
        if sizes_given or args.final_tokens is not None:
            raise UserError("--epoch-tokens and --final-tokens cap repetition: give --max-epochs too")
        return None, None, None
    max_epochs = _number(args.max_epochs, "--max-epochs")
    if not sizes_given or args.final_tokens is None:
        raise UserError("--max-epochs needs each domain's size (--epoch-tokens NAME=N) and --final-tokens N")
    sizes: dict[str, int] = {}
    for name, value in sizes_given.items():
        if name not in domains:
            raise UserError(f"--epoch-tokens: {name!r} is not a domain of the table ({', '.join(domains)})")
        sizes[name] = _whole(value, f"--epoch-tokens {name}")
    return max_epochs, sizes, _whole(_number(args.final_tokens, "--final-tokens"), "--final-tokens")


def _number(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{flag}: {text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{flag}: {text!r}; give a number above 0")
    return value


def _whole(value: float, flag: str) -> int:
    if value != int(value) or value < 1:
        raise UserError(f"{flag}: {value:g}; give a whole number of tokens, at least 1")
    return int(value)


def cmd_sweep_run(args: argparse.Namespace, runner: LocalRunner) -> int:
    report = run_sweep(args.sweep, args.data_dir, args.output_dir, args.parallel, runner)
    print()
    print(summary(report))
    for path in report.files:
        print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction, local_runner: Callable[[], LocalRunner]) -> None:  # type: ignore[type-arg]
    sweep = subparsers.add_parser(
        "sweep",
        help="mixture search: proxy trials, a fit of mixture to loss, the proposed mixture",
        description="Search the mixture: train proxy trials on mixtures sampled around the prior, fit mixture -> "
        "per-domain validation loss, and propose the mixture of least predicted objective.",
    )
    sub = sweep.add_subparsers(dest="sweep_command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser(
        "fit",
        help="fit and propose from a trials table (TRIALS.csv)",
        description="Fit and propose from a table, so results gathered elsewhere can be used. TRIALS.csv has a "
        "header `trial`, then `share:<domain>` for every domain, then `loss:<domain>` for every evaluated domain; "
        "one row per trial. Prints YAML: mixture, predictedObjective, fit.",
    )
    p.add_argument("trials", metavar="TRIALS.csv")
    p.add_argument(
        "--objective",
        action="append",
        metavar="NAME=W",
        help="weight of a domain's validation loss (repeatable; default: the mean of every loss column)",
    )
    p.add_argument("--regression", choices=REGRESSIONS, default=DEFAULT_REGRESSION)
    p.add_argument("--min-share", action="append", metavar="NAME=X", help="lowest share of a domain (repeatable)")
    p.add_argument("--max-share", action="append", metavar="NAME=X", help="highest share of a domain (repeatable)")
    p.add_argument(
        "--max-epochs",
        metavar="X",
        help="repeat no domain more than X times in the final run (needs --epoch-tokens and --final-tokens)",
    )
    p.add_argument(
        "--epoch-tokens",
        action="append",
        metavar="NAME=N",
        help="tokens in one epoch of a domain's training data: a trial's status.result.datasets[].epochTokens "
        "or results.json epoch_tokens (repeatable; a domain without one is not capped)",
    )
    p.add_argument("--final-tokens", metavar="N", help="tokens the final run trains on")
    p.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds and ranked samples")
    p.set_defaults(func=cmd_sweep_fit)

    p = sub.add_parser(
        "run",
        help="run a DataMixtureSweep on this machine: trials, fit, proposal, final run; a table and sweep.png",
        description="The whole sweep on this machine: trials through the local runner, then fit, propose, and the "
        "final run if the sweep asks for one. Without a manifest: examples/sweep.yaml on the demo data.",
    )
    p.add_argument(
        "sweep", nargs="?", metavar="SWEEP.yaml", help="DataMixtureSweep YAML (default: examples/sweep.yaml)"
    )
    p.add_argument("--data-dir", help="local directory standing in for the experiment's datasets.baseDir")
    p.add_argument("--output-dir", default="./out", help="where trials, the table and sweep.png go (default ./out)")
    p.add_argument("--parallel", type=int, help="trials trained at once (default: spec.search.parallelism)")
    p.set_defaults(func=lambda args: cmd_sweep_run(args, local_runner()))
