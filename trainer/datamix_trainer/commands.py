"""The trainer's subcommands of `datamix`: `train`, `launch`, `run` and `demo-data`.

Imported by the core CLI in every image, so this module imports neither torch nor megatron: each
command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datamix.runspec import RUN_SPEC_ENV


def cmd_train(args: argparse.Namespace) -> int:
    from datamix_trainer.config import load_run_spec
    from datamix_trainer.indexed import check_run_data

    spec = load_run_spec(args.run_spec)
    check_run_data(spec)  # before torch is even imported: a missing file fails in a second
    from datamix_trainer.loop import NonFiniteLoss, Stopped, train

    try:
        train(spec)
    except Stopped as stop:
        print(stop, file=sys.stderr)
        return Stopped.exit_code
    except NonFiniteLoss:  # the trainer has printed `error: ...` with the step
        return NonFiniteLoss.exit_code
    except Exception as err:  # the traceback is in this rank's stderr.log already
        from datamix_trainer.distributed import PEER_LOST_EXIT_CODE, peer_lost

        if not peer_lost(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(
            f"error: another process of the job is gone ({first[:300]}); exit code {PEER_LOST_EXIT_CODE}",
            file=sys.stderr,
        )
        return PEER_LOST_EXIT_CODE
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from datamix_trainer.launch import launch

    return launch(args.torchrun_args)


def cmd_run(args: argparse.Namespace) -> int:
    from datamix_trainer.local_run import run_local

    return run_local(
        manifest=args.manifest,
        data_dir=args.data_dir,
        output_dir=args.output_dir,
        nproc=args.nproc,
        metrics_port=args.metrics_port,
    )


def cmd_demo_data(args: argparse.Namespace) -> int:
    from datamix_trainer import demo_data

    directory = Path(args.dir) if args.dir else demo_data.default_dir()
    print(f"building demo datasets in {directory}")
    demo_data.build(directory, force=args.force)
    print(f"demo data ready: {directory} (use it as datasets.baseDir, or `datamix run --data-dir {directory}`)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "train",
        help="train one run (one process; `datamix launch` starts one per GPU in every pod)",
        description="Train the run described by a run spec. Under torchrun, each process trains one "
        "data-parallel shard; without torchrun it trains alone.",
    )
    p.add_argument("--run-spec", help=f"the run spec JSON (default: ${RUN_SPEC_ENV})")
    p.set_defaults(func=cmd_train)

    # prefix_chars="+": every argument, options included, goes to torchrun's own parser.
    p = subparsers.add_parser(
        "launch",
        help="torchrun with honest exit codes (what every PyTorchJob pod runs)",
        description="Takes torchrun's arguments (`datamix launch -h` shows them). Exit code: 128+n when a "
        "rank died of signal n or the launcher was stopped by it, else the first failed rank's own code.",
        add_help=False,
        prefix_chars="+",
    )
    p.add_argument("torchrun_args", nargs=argparse.REMAINDER, metavar="TORCHRUN_ARGS")
    p.set_defaults(func=cmd_launch)

    p = subparsers.add_parser(
        "run",
        help="run a manifest on this machine (CPU or local GPUs), with progress, metrics and a report",
        description="Run the same DataMixtureExperiment that would go to the cluster, on this machine. "
        "Without a manifest: examples/quickstart.yaml on the demo data (built on first use).",
    )
    p.add_argument("manifest", nargs="?", help="DataMixtureExperiment YAML (default: examples/quickstart.yaml)")
    p.add_argument("--data-dir", help="local directory standing in for spec.datasets.baseDir")
    p.add_argument(
        "--output-dir", default="./out", help="local directory standing in for spec.output.path (default ./out)"
    )
    p.add_argument("--nproc", type=int, help="processes (data-parallel ranks); default: local GPUs, else 1")
    p.add_argument(
        "--metrics-port", type=int, default=0, help="Prometheus endpoint port (default 0: a free port, printed)"
    )
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser(
        "demo-data",
        help="build small Megatron indexed datasets from text every Python install has",
        description="Six domains (Python code, docstrings, comments, language reference, HTML docs, licenses), "
        "each with a validation part; byte-level tokens, vocabulary 257, end-of-document 256.",
    )
    p.add_argument("dir", nargs="?", help="target directory (default: ~/.cache/datamix/demo-data)")
    p.add_argument("--force", action="store_true", help="rebuild even if already built")
    p.set_defaults(func=cmd_demo_data)
