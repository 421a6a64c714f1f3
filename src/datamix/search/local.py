"""`datamix sweep run`: a whole sweep on this machine.

Trials are trained through the local runner (`datamix run`, as separate processes, at most
`--parallel` at once), then the table is fitted, the mixture proposed, the final run trained
when the sweep asks for one, and a table and `sweep.png` written. Trial experiments and their
output directories are named as the operator names them, so a sweep interrupted and started
again trains only the trials without a result.

This module knows the local runner only through `LocalRunner` (built by the command line from
the trainer's functions): the core imports no trainer code.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from datamix.errors import UserError
from datamix.experiment import DEFAULT_NAMESPACE, run_id, run_output_dir
from datamix.search.epochs import merge_sizes
from datamix.search.fit import FitResult
from datamix.search.simplex import uniform
from datamix.search.sweep import Sweep, load_sweep
from datamix.search.table import TrialTable

SWEEP_EXAMPLE = Path("examples") / "sweep.yaml"


@dataclass(frozen=True)
class LocalRunner:
    """What the sweep needs of the local runner."""

    # argv that trains one DataMixtureExperiment manifest: (manifest, data dir, output dir, processes)
    train_command: Callable[[Path, Path, Path, int | None], list[str]]
    # tokens in a Megatron indexed dataset (`<prefix>.bin/.idx`), for the maxEpochs cap when a
    # trial's results.json has no epoch_tokens (a trainer older than them)
    count_tokens: Callable[[str], int]
    # the demo data directory, built on first use (the default sweep's data)
    demo_data_dir: Callable[[], Path]


@dataclass
class TrialOutcome:
    name: str
    index: int  # the trial's; -1 for a final-size run (whose failure stops the sweep)
    shares: np.ndarray
    result_path: Path
    log_path: Path
    validation_loss: list[float | None] | None = None
    tokens: list[int] | None = None
    epoch_tokens: list[int] | None = None  # per domain, tokens of one epoch (None: not reported)
    wall_seconds: float = 0.0
    failed: str | None = None


@dataclass
class SweepReport:
    sweep: Sweep
    table: TrialTable
    fit: FitResult
    trials: list[TrialOutcome]
    final: TrialOutcome | None = None
    final_observed: float | None = None
    files: list[Path] = field(default_factory=list)


def find_sweep_example() -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (base / SWEEP_EXAMPLE).is_file():
            return base / SWEEP_EXAMPLE
    raise UserError(f"SWEEP.yaml: no sweep given and {SWEEP_EXAMPLE} not found; pass a sweep manifest path")


def run_sweep(
    path: str | None,
    data_dir: str | None,
    output_dir: str,
    parallel: int | None,
    runner: LocalRunner,
    final_processes: int | None = None,
    log: Callable[[str], None] = print,
) -> SweepReport:
    sweep_path = Path(path) if path else find_sweep_example()
    sweep = load_sweep(sweep_path)
    data = Path(data_dir) if data_dir else (runner.demo_data_dir() if path is None else None)
    if data is None:
        data = Path(sweep.experiment["datasets"].get("baseDir", "/data"))
    if parallel is not None and parallel < 1:
        raise UserError("--parallel: must be at least 1")
    workers = parallel or sweep.search.parallelism
    root = Path(output_dir).resolve()
    home = root / sweep.name
    (home / "manifests").mkdir(parents=True, exist_ok=True)
    log(
        f"sweep {sweep.name}: {sweep.search.trials} trials over {len(sweep.domains)} domains, {workers} at a time, "
        f"regression {sweep.regression}\n  sweep    {sweep_path}\n  data     {data}\n  output   {home}"
    )

    trials = [
        experiment_outcome(sweep.trial_manifest(i), sweep.trial_shares(i), i, home, root)
        for i in range(sweep.search.trials)
    ]
    train_all(trials, data, root, workers, runner, 1, sweep.search.max_failed_trials, log)
    table = sweep.trials_table(
        [(t.name, t.shares, t.validation_loss) for t in trials if t.validation_loss is not None and not t.failed]
    )
    (home / "trials.csv").write_text(table.to_csv())
    domain_tokens = None
    if sweep.search.max_epochs is not None:  # the sizes the trials reported, as the operator takes them
        domain_tokens = merge_sizes(
            dict(zip(sweep.domains, t.epoch_tokens, strict=True)) for t in trials if t.epoch_tokens and not t.failed
        )
        for d in sweep.experiment["datasets"]["mixture"]:
            if d["name"] not in domain_tokens:  # results of a trainer older than epoch_tokens
                domain_tokens[d["name"]] = runner.count_tokens(str(data / d["path"]))
    result = sweep.fit(table, domain_tokens)
    (home / "proposal.yaml").write_text(result.to_yaml())
    report = SweepReport(sweep=sweep, table=table, fit=result, trials=trials)
    if sweep.final is not None:
        proposed = result.proposal.shares
        final = experiment_outcome(sweep.final_manifest(proposed), proposed, -1, home, root)
        log(f"final run {final.name} with the proposed mixture")
        train_all([final], data, root, 1, runner, final_processes, 0, log)
        report.final = final
        report.final_observed = sweep.observed_objective(final.validation_loss) if final.validation_loss else None
    report.files = [home / "trials.csv", home / "proposal.yaml", plot(report, home / "sweep.png")]
    return report


def experiment_outcome(
    manifest: dict[str, Any], shares: np.ndarray, index: int, home: Path, root: Path
) -> TrialOutcome:
    name = manifest["metadata"]["name"]
    manifest_path = home / "manifests" / f"{name}.yaml"
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    namespace = manifest["metadata"].get("namespace") or DEFAULT_NAMESPACE  # as `datamix run` maps it
    run_dir = Path(run_output_dir(str(root), namespace, name, run_id(manifest)))
    return TrialOutcome(
        name=name,
        index=index,
        shares=shares,
        result_path=run_dir / "results.json",
        log_path=home / "logs" / f"{name}.log",
    )


def train_all(
    outcomes: Sequence[TrialOutcome],
    data: Path,
    root: Path,
    workers: int,
    runner: LocalRunner,
    processes: int | None,
    max_failed: int,
    log: Callable[[str], None],
) -> None:
    """Train every outcome without a result, `workers` at a time; stop when too many fail."""
    pending = [o for o in outcomes if not _load(o)]
    done = len(outcomes) - len(pending)
    if done:
        log(f"  {done} of {len(outcomes)} already trained (results found); training the other {len(pending)}")
    running: list[tuple[TrialOutcome, subprocess.Popen[bytes], float]] = []
    failures = sum(1 for o in outcomes if o.failed)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        while pending or running:
            while pending and len(running) < workers:
                outcome = pending.pop(0)
                outcome.log_path.parent.mkdir(parents=True, exist_ok=True)
                manifest_path = outcome.log_path.parent.parent / "manifests" / f"{outcome.name}.yaml"
                command = runner.train_command(manifest_path, data, root, processes)
                with open(outcome.log_path, "wb") as stream:
                    process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env)
                running.append((outcome, process, time.time()))
            time.sleep(0.5)
            for item in list(running):
                outcome, process, started = item
                if process.poll() is None:
                    continue
                running.remove(item)
                done += 1
                if process.returncode != 0 or not _load(outcome):
                    failures += 1
                    outcome.failed = _last_error(outcome.log_path) or f"exit {process.returncode}"
                    log(f"  [{done}/{len(outcomes)}] {outcome.name} FAILED: {outcome.failed} (log {outcome.log_path})")
                    if outcome.index < 0:
                        raise UserError(f"{outcome.name}: the run failed ({outcome.failed}); see {outcome.log_path}")
                    if failures > max_failed:
                        raise UserError(
                            f"{outcome.name}: {failures} trial(s) failed, more than spec.search.maxFailedTrials "
                            f"({max_failed}); see {outcome.log_path}"
                        )
                else:
                    losses = [v for v in outcome.validation_loss or [] if v is not None]
                    mean = f"{sum(losses) / len(losses):.4f}" if losses else "n/a"
                    log(
                        f"  [{done}/{len(outcomes)}] {outcome.name}: mean validation loss {mean} "
                        f"({time.time() - started:.0f}s)"
                    )
    finally:
        for _, process, _ in running:  # an interrupted sweep leaves no trainer behind
            process.terminate()
            process.wait()


def _load(outcome: TrialOutcome) -> bool:
    try:
        doc = json.loads(outcome.result_path.read_text())
    except (OSError, ValueError):
        return False
    outcome.validation_loss = list(doc["validation_loss"])
    outcome.tokens = [int(t) for t in doc["tokens"]]
    sizes = doc.get("epoch_tokens")
    outcome.epoch_tokens = [int(t) for t in sizes] if sizes and len(sizes) == len(outcome.tokens) else None
    outcome.wall_seconds = float(doc.get("wall_seconds", 0.0))
    return True


def _last_error(log_path: Path) -> str | None:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line for line in lines if line.startswith("error: ")]
    return errors[-1][len("error: ") :] if errors else None


def summary(report: SweepReport) -> str:
    fit = report.fit
    best = int(np.argmin(fit.observed))
    rows = [("mixture", "predicted objective", "observed objective")]
    rows.append(
        (
            f"best trial ({report.table.trials[best]})",
            f"{fit.predicted_out_of_fold[best]:.4f}",
            f"{fit.observed[best]:.4f}",
        )
    )
    observed = "n/a" if report.final_observed is None else f"{report.final_observed:.4f}"
    rows.append(("proposed" + (" (final run)" if report.final else ""), f"{fit.proposal.predicted:.4f}", observed))
    rows.append(("prior", f"{fit.proposal.predicted_prior:.4f}", ""))
    rows.append(("uniform", f"{fit.proposal.predicted_uniform:.4f}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join([r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].rjust(widths[2])]) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    shares = [("domain", "proposed", "prior", "uniform")]
    for i, name in enumerate(fit.domains):
        shares.append(
            (name, f"{fit.proposal.shares[i]:.4f}", f"{report.sweep.prior[i]:.4f}", f"{1 / len(fit.domains):.4f}")
        )
    widths = [max(len(r[i]) for r in shares) for i in range(4)]
    share_lines = [
        "  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))])
        for r in shares
    ]
    share_lines.insert(1, "  ".join("-" * w for w in widths))
    quality = f"fit: {fit.regression}, {fit.trials} trials, cross-validated Spearman {fit.spearman:.3f}"
    return "\n".join([*lines, "", *share_lines, "", quality])


def plot(report: SweepReport, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fit = report.fit
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5), dpi=110)
    left.scatter(fit.observed, fit.predicted_out_of_fold, s=18, color="tab:blue", label="trials (out of fold)")
    points = [*fit.observed, *fit.predicted_out_of_fold]
    if report.final_observed is not None:
        points += [report.final_observed, fit.proposal.predicted]
    low, high = float(min(points)), float(max(points))
    left.plot([low, high], [low, high], color="0.6", lw=1, label="predicted = observed")
    if report.final_observed is not None:
        left.scatter(
            [report.final_observed],
            [fit.proposal.predicted],
            marker="*",
            s=160,
            color="tab:red",
            label="final run (proposed)",
        )
    left.set_xlabel("observed objective")
    left.set_ylabel("predicted objective")
    left.set_title(f"{fit.regression}: Spearman {fit.spearman:.3f} over {fit.trials} trials")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    x = np.arange(len(fit.domains))
    width = 0.27
    bars = (
        (f"proposed ({fit.proposal.predicted:.3f})", fit.proposal.shares, "tab:red"),
        (f"prior ({fit.proposal.predicted_prior:.3f})", report.sweep.prior, "tab:gray"),
        (f"uniform ({fit.proposal.predicted_uniform:.3f})", uniform(len(fit.domains)), "tab:olive"),
    )
    for k, (label, shares, color) in enumerate(bars):
        right.bar(x + (k - 1) * width, shares, width, label=label, color=color)
    right.set_xticks(x, fit.domains, rotation=30, ha="right", fontsize=8)
    right.set_ylabel("share")
    right.set_title("mixtures (predicted objective)")
    right.legend(fontsize=8)
    fig.suptitle(f"sweep {report.sweep.name}")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png
