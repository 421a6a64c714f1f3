"""The `datamix` command line.

Subcommands of the core live here; the trainer and the operator register theirs from their
own packages (imported without torch or kopf, so every image can run `datamix --help`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from datamix_operator import commands as operator_commands
from datamix_operator.sweep import report as sweep_report
from datamix_trainer import commands as trainer_commands

from datamix.errors import UserError
from datamix.search import commands as search_commands
from datamix.search.local import LocalRunner


def cmd_validate(args: argparse.Namespace) -> int:
    from datamix import KIND
    from datamix.experiment import load_manifest
    from datamix.sweep_schema import SWEEP_KIND
    from datamix.validation import validate_manifest

    manifest = load_manifest(args.file, kinds=(KIND, SWEEP_KIND))
    problems: list[object] = list(validate_manifest(manifest))
    if args.policy and not problems and manifest.get("kind") == KIND:
        from datamix_operator.admission import load_policy

        from datamix.policy import violations

        # As the operator sees it: Secret references follow the policy's secretReferences.
        problems += violations(manifest, load_policy(args.policy))
    for problem in problems:
        print(f"{args.file}: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"{args.file}: valid")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from datamix_operator.render import render_children

    from datamix.experiment import load_manifest
    from datamix.validation import validate_manifest

    manifest = load_manifest(args.file)
    problems = validate_manifest(manifest)
    if problems:
        raise UserError(f"{args.file}: {problems[0]} (run `datamix validate` for all problems)")
    sys.stdout.write(dump_yaml_documents(render_children(manifest, args.namespace)))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from datamix.importer import import_experiment

    manifest, warnings = import_experiment(Path(args.config), base_dir=args.base_dir)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    text = dump_yaml_documents([manifest])
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_crd(args: argparse.Namespace) -> int:
    from datamix.crd import generated_files, render_crd, render_sweep_crd

    if args.write:
        # The CRDs' copies and the admission policy's rules: everything generated from the core.
        for path, text in generated_files().items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write("---\n".join((render_crd(), render_sweep_crd())))
    return 0


def sweep_local_runner() -> LocalRunner:
    """`datamix sweep run`'s access to the local runner: each trial trains through `datamix run`."""
    from datamix_trainer import demo_data
    from datamix_trainer.indexed import check_indexed

    def train_command(manifest: Path, data_dir: Path, output_dir: Path, nproc: int | None) -> list[str]:
        command = [sys.executable, "-m", "datamix_cli", "run", str(manifest)]
        command += ["--data-dir", str(data_dir), "--output-dir", str(output_dir)]
        return command + (["--nproc", str(nproc)] if nproc else [])

    def demo_data_dir() -> Path:
        directory: Path = demo_data.default_dir()
        if not demo_data.is_built(directory):
            print(f"building the demo datasets in {directory} (once)", flush=True)
            demo_data.build(directory)
        return directory

    return LocalRunner(train_command, lambda prefix: check_indexed(prefix).tokens, demo_data_dir)


def dump_yaml_documents(docs: Sequence[object]) -> str:
    return "".join("---\n" + yaml.safe_dump(d, sort_keys=False, default_flow_style=False) for d in docs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="datamix", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("import", help="convert an OpenSeek/FlagScale experiment config into a manifest")
    p.add_argument("config", help="experiment YAML (with `defaults: - train: NAME` beside a train/ folder)")
    p.add_argument("-o", "--output", help="write the manifest here instead of stdout")
    p.add_argument("--base-dir", help="datasets.baseDir in the pods (default: derived from dataset_base_dir)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("validate", help="check an experiment or sweep manifest offline against its CRD")
    p.add_argument("file")
    p.add_argument(
        "--policy", metavar="PATH",
        help="also check an experiment against a DataMix policy (a DataMixPolicy YAML, or the chart's policy "
        "ConfigMap), as the operator does",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="print every object the operator creates for a manifest")
    p.add_argument("file")
    p.add_argument("-n", "--namespace", help="namespace of the children (default: the manifest's, else default)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("crd", help="print the CRDs (generated from datamix.schema, datamix.sweep_schema)")
    p.add_argument(
        "--write", action="store_true", help="update crds/, the Helm chart's copies and the chart's admission policy"
    )
    p.set_defaults(func=cmd_crd)

    # Both import neither torch nor kopf at module level, so every image lists every command.
    trainer_commands.register(sub)
    operator_commands.register(sub)
    search_commands.register(sub, sweep_local_runner)
    sweep_report.register(sub)  # `datamix sweep report`: the cluster's side of `datamix sweep`
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
