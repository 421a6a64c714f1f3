"""The mixture search on the demo corpus, end to end on this machine (CPU).

    python benchmarks/sweep/demo_sweep.py [--output-dir DIR] [--seeds 2] [--parallel 2]

1. The proxy trials of examples/sweep.yaml (`datamix sweep run`'s code path, without the final
   run), their fit and the proposal.
2. Final-size runs (the quickstart's model and length, `spec.final`) with three mixtures: the
   proposed one, the uniform one and the quickstart's own (the prior), each with `--seeds`
   training seeds.
3. Prints each mixture's objective (mean validation loss over the six domains) per seed, the
   fit's cross-validated Spearman, and the proxies' compute as a fraction of one final run
   (model FLOPs, 6 x parameters x tokens; and wall-clock seconds of training).

Everything lands in --output-dir (default ./out/bench-sweep); runs with results are not trained
again, so an interrupted benchmark continues where it stopped. Figures only, no asserts.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from datamix.experiment import build_run_spec
from datamix.runspec import RunSpec
from datamix.search.local import TrialOutcome, experiment_outcome, run_sweep, summary, train_all
from datamix.search.simplex import uniform
from datamix.search.sweep import Sweep
from datamix_cli.main import sweep_local_runner

REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / "examples" / "sweep.yaml"


def model_flops_per_token(spec: RunSpec) -> float:
    """6 x parameters (attention 4h^2, SwiGLU MLP 3 h ffn per layer; tied embedding used as the
    output projection), per trained token."""
    s = spec.model.settings
    layers, hidden, ffn = int(s["numLayers"]), int(s["hiddenSize"]), int(s["ffnHiddenSize"])
    params = layers * (4 * hidden * hidden + 3 * hidden * ffn) + spec.training.vocab_size * hidden
    return 6.0 * params


def run_flops(manifest: dict[str, Any]) -> float:
    spec = build_run_spec(manifest)
    return model_flops_per_token(spec) * spec.training.train_samples * spec.training.seq_length


def final_variant(sweep: Sweep, label: str, shares: np.ndarray, seed: int) -> dict[str, Any]:
    manifest = copy.deepcopy(sweep.final_manifest(shares))
    manifest["metadata"]["name"] = f"{sweep.name}-{label}-s{seed}"
    manifest["spec"]["training"]["seed"] = seed
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="./out/bench-sweep")
    parser.add_argument("--data-dir", help="the demo data (default: built on first use in the cache)")
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per final mixture")
    parser.add_argument("--parallel", type=int, default=2, help="runs trained at once")
    args = parser.parse_args()
    started = time.time()
    runner = sweep_local_runner()
    data = Path(args.data_dir) if args.data_dir else runner.demo_data_dir()
    out = Path(args.output_dir).resolve()

    # 1. Proxies and fit: examples/sweep.yaml without its final run (trained below, per seed).
    doc = yaml.safe_load(SWEEP.read_text())
    doc["spec"].pop("final")
    proxies_only = out / "sweep-proxies.yaml"
    proxies_only.parent.mkdir(parents=True, exist_ok=True)
    proxies_only.write_text(yaml.safe_dump(doc, sort_keys=False))
    report = run_sweep(str(proxies_only), str(data), str(out), args.parallel, runner)
    proxy_seconds = time.time() - started
    print()
    print(summary(report))

    # 2. Final-size runs: proposed, uniform and the quickstart's mixture, each with every seed.
    from datamix.search.sweep import load_sweep

    sweep = load_sweep(SWEEP)
    mixtures = {
        "proposed": report.fit.proposal.shares,
        "uniform": uniform(len(sweep.domains)),
        "quickstart": sweep.prior,
    }
    home = out / sweep.name
    finals: dict[tuple[str, int], TrialOutcome] = {}
    for seed in range(1, args.seeds + 1):
        for label, shares in mixtures.items():
            finals[(label, seed)] = experiment_outcome(final_variant(sweep, label, shares, seed), shares, -1, home, out)
    print(f"\nfinal-size runs: {len(finals)} ({', '.join(mixtures)} x {args.seeds} seeds)")
    train_all(list(finals.values()), data, out, args.parallel, runner, 1, 0, print)

    # 3. Figures.
    print("\nobjective (mean validation loss over the six domains) of the final-size runs")
    header = ["mixture", *(f"seed {s}" for s in range(1, args.seeds + 1)), "mean", "spread (max-min)"]
    rows = [header]
    means = {}
    for label in mixtures:
        values = [
            sweep.observed_objective(finals[(label, s)].validation_loss or [None] * len(sweep.domains))
            for s in range(1, args.seeds + 1)
        ]
        finite = [v for v in values if v is not None]
        means[label] = float(np.mean(finite)) if finite else float("nan")
        spread = max(finite) - min(finite) if finite else float("nan")
        cells = ["n/a" if v is None else f"{v:.4f}" for v in values]
        rows.append([label, *cells, f"{means[label]:.4f}", f"{spread:.4f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))

    proxy_flops = sum(run_flops(sweep.trial_manifest(i)) for i in range(sweep.search.trials))
    final_flops = run_flops(sweep.final_manifest(sweep.prior))
    proxy_wall = sum(t.wall_seconds for t in report.trials)
    final_walls = [o.wall_seconds for o in finals.values() if o.validation_loss is not None]
    fit = report.fit
    print(f"\nfit: {fit.regression}, cross-validated Spearman {fit.spearman:.3f} over {fit.trials} trials")
    print(
        f"proxy compute: {sweep.search.trials} trials = {proxy_flops:.3g} model FLOPs = "
        f"{proxy_flops / final_flops:.1%} of one final run ({final_flops:.3g})"
    )
    if final_walls:
        print(
            f"proxy training time: {proxy_wall:.0f} s = {proxy_wall / np.mean(final_walls):.1%} of one final run's "
            f"{np.mean(final_walls):.0f} s (process start-up excluded; trials ran {args.parallel} at a time)"
        )
    print(
        f"proposed vs uniform: {means['proposed'] - means['uniform']:+.4f}; "
        f"proposed vs quickstart: {means['proposed'] - means['quickstart']:+.4f}"
    )
    print(f"wall clock: proxies and fit {proxy_seconds:.0f} s, everything {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
