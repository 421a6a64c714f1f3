"""`datamix launch`: torchrun, with an exit code that tells a dead rank from a program error.

Stock torchrun exits 1 whenever a worker fails, and 1 again when torchrun itself is stopped by a
signal, so that an OOM-killed rank or a preempted pod looks like a bug to the training-operator's
`ExitCode` restart policy (1-127: the program's own error, fail the job; 128+: infrastructure,
restart the pod). This launcher takes torchrun's own arguments and runs torchrun's own code
(`torch.distributed.run`), and only maps the outcome:

- a rank died of signal n (OOM kill, SIGKILL): 128 + n;
- otherwise the first failed rank's own exit code: 1 (a traceback), 2 (`error: ...`, bad input),
  `NON_FINITE_LOSS_EXIT_CODE`, 129 (a collective lost its peer: a process of another pod died,
  `distributed.PEER_LOST_EXIT_CODE`), 143 (stopped on SIGTERM, checkpoint saved);
- the launcher itself got signal n (the kubelet's SIGTERM): 128 + n, after its workers stopped.

torchrun's report also lists the ranks it stopped itself after the first failure: SIGTERM at once,
SIGKILL 30 s later if they are stuck in a collective. Those are consequences, not causes, so a
SIGTERM death counts only when nothing else failed, and a signal death only when torchrun saw it
with the first failure (within a second: its timestamps are whole seconds). A signal death there
wins over an exit code because the survivors of a dead rank fail too (a collective whose peer
vanished raises at once on gloo).

When one rank dies, torchrun's monitor (every 0.1 s) stops the others: SIGTERM, then SIGKILL
after 30 s, so they are gone within a minute. When the launcher gets SIGTERM, it forwards it and
waits `--shutdown-timeout` seconds (default here: 900, instead of torchrun's 30) so that the
workers can finish the step and save a checkpoint; the pod's grace period bounds it anyway.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from datamix.runspec import DEFAULT_TERMINATION_GRACE_SECONDS

# Long enough for a SIGTERM checkpoint of a large model; the pod's grace period (the same by
# default, spec.terminationGracePeriodSeconds) is the real bound.
SHUTDOWN_TIMEOUT_SECONDS = DEFAULT_TERMINATION_GRACE_SECONDS


@dataclass(frozen=True)
class RankFailure:
    rank: int
    exit_code: int  # negative: killed by that signal (as subprocess reports it)
    timestamp: float


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def outcome(failures: Sequence[RankFailure]) -> tuple[int, str]:
    """The launcher's exit code for the failed ranks torchrun reports (in its order), and why."""
    if not failures:
        raise ValueError("no failures")
    ordered = sorted(failures, key=lambda f: f.timestamp)  # stable: torchrun's order breaks ties
    first_seen = ordered[0].timestamp
    killed = [
        f for f in ordered if f.exit_code < 0 and -f.exit_code != signal.SIGTERM and f.timestamp <= first_seen + 1
    ]
    if killed:
        n = -killed[0].exit_code
        return 128 + n, f"rank {killed[0].rank} died of {signal_name(n)}: exit code {128 + n}"
    exited = [f for f in ordered if f.exit_code > 0]
    if exited:
        first = exited[0]
        code = first.exit_code if first.exit_code < 256 else 1
        return code, f"rank {first.rank} exited with code {first.exit_code}: exit code {code}"
    n = -ordered[0].exit_code
    return 128 + n, f"rank {ordered[0].rank} died of {signal_name(n)}: exit code {128 + n}"


def launch(argv: Sequence[str]) -> int:
    """Run torchrun with `argv` (its own options, then the command) and map the outcome."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(list(argv))
    if args.shutdown_timeout is None:
        args.shutdown_timeout = SHUTDOWN_TIMEOUT_SECONDS
    try:
        run(args)
    except ChildFailedError as err:
        code, reason = outcome([RankFailure(rank, f.exitcode, f.timestamp) for rank, f in err.failures.items()])
        print(f"datamix launch: {reason}", file=sys.stderr, flush=True)
        return code
    except SignalException as err:
        n = int(err.sigval)
        print(f"datamix launch: stopped by {signal_name(n)}: exit code {128 + n}", file=sys.stderr, flush=True)
        return 128 + n
    return 0
