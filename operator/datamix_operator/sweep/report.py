"""`datamix sweep report NAME`: a sweep on the cluster as the same table and plot `datamix sweep
run` writes locally (trials.csv, sweep.png) and the same summary on stdout.

The trials' shares and per-dataset validation losses come from the trial experiments (their
weights and `status.result`); the fit is recomputed from them with the sweep's settings (the same
deterministic code as the operator's, so the same proposal), which also gives each trial's
out-of-fold prediction for the plot. The final run's observed objective comes from the sweep's
status.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from datamix.errors import UserError
from datamix.names import LABEL_SWEEP, LABEL_TRIAL
from datamix_operator.sweep.kube import SweepApi
from datamix_operator.sweep.plan import (
    SweepPlan,
    experiment_shares,
    validation_losses,
)

TABLE_NAME = "trials.csv"
PLOT_NAME = "sweep.png"


def trials_table(plan: SweepPlan, experiments: list[dict[str, Any]]) -> Any:
    """The sweep's finished trials (every objective dataset's loss known) as a TrialTable."""
    import numpy as np

    from datamix.search.table import MIN_TRIALS, TrialTable

    loss_domains = list(plan.objective)
    rows = []
    for exp in sorted(experiments, key=lambda e: e["metadata"]["name"]):
        labels = exp["metadata"].get("labels") or {}
        if not (labels.get(LABEL_TRIAL) or "").isdigit() or (exp.get("status") or {}).get("phase") != "Succeeded":
            continue
        losses = validation_losses(exp)
        if all(d in losses for d in loss_domains):
            shares = experiment_shares(exp, plan.domains)
            rows.append((exp["metadata"]["name"], shares, [losses[d] for d in loss_domains]))
    if len(rows) < MIN_TRIALS:
        raise UserError(f"sweep {plan.name}: {len(rows)} trials finished with every objective loss; "
                        f"a report needs at least {MIN_TRIALS} (wait for more trials)")
    return TrialTable(
        trials=tuple(r[0] for r in rows),
        domains=plan.domains,
        shares=np.array([r[1] for r in rows], dtype=float),
        loss_domains=tuple(loss_domains),
        losses=np.array([r[2] for r in rows], dtype=float),
    )


def write_report(sweep: dict[str, Any], experiments: list[dict[str, Any]], output_dir: Path) -> tuple[str, list[Path]]:
    """The summary text and the files written (trials.csv, sweep.png) for a sweep and its experiments."""
    import numpy as np

    from datamix.search.fit import fit_and_propose
    from datamix.search.local import SweepReport, plot, summary

    plan = SweepPlan.read(sweep)
    table = trials_table(plan, experiments)
    search = plan.sweep.search
    fit = fit_and_propose(table, objective=plan.objective, regression=plan.regression, min_share=search.min_share,
                          max_share=search.max_share, prior=np.asarray(plan.prior), seed=search.seed)
    observed = ((sweep.get("status") or {}).get("final") or {}).get("observedObjective")
    report = SweepReport(sweep=plan.sweep, table=table, fit=fit, trials=[], final=None,
                         final_observed=observed)
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path = output_dir / TABLE_NAME
    csv_path.write_text(table.to_csv())
    png = plot(report, output_dir / PLOT_NAME)
    return summary(report), [csv_path, png]


def cmd_report(args: argparse.Namespace) -> int:
    from datamix_operator.kube import ClientKube, KubeError
    from datamix_operator.sweep.kube import SweepClient

    namespace = args.namespace or os.environ.get("DATAMIX_NAMESPACE") or _current_namespace()
    try:
        api: SweepApi = SweepClient(ClientKube())
        sweep = api.get_sweep(namespace, args.name)
        if sweep is None:
            raise UserError(f"sweep {args.name} not found in namespace {namespace}; check the name or --namespace")
        experiments = api.list_experiments_labelled(namespace, f"{LABEL_SWEEP}={args.name}")
    except KubeError as err:
        raise UserError(f"cannot read sweep {namespace}/{args.name}: {err}") from err
    uid = sweep["metadata"]["uid"]
    ours = [e for e in experiments
            if any(r.get("uid") == uid for r in e["metadata"].get("ownerReferences") or [])]
    text, files = write_report(sweep, ours, Path(args.output_dir))
    print(text)
    for path in files:
        print(f"wrote {path}")
    return 0


def _current_namespace() -> str:
    try:
        from kubernetes import config

        _, context = config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
        return str((context or {}).get("context", {}).get("namespace") or "default")
    except Exception:  # no kubeconfig (in a pod): the default namespace
        return "default"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `report` under the `sweep` command (registered by datamix.search.commands first)."""
    sweep = subparsers.choices["sweep"]
    sweep_subparsers = next(a for a in sweep._actions if isinstance(a, argparse._SubParsersAction))
    p = sweep_subparsers.add_parser(
        "report",
        help="a sweep on the cluster as trials.csv and sweep.png (as `datamix sweep run` writes them)",
        description="Read a DataMixtureSweep and its trial experiments from the cluster ($KUBECONFIG) and write "
        "the trials table (trials.csv: trial, share:<domain>..., loss:<domain>...) and sweep.png (predicted "
        "against observed objective; proposed, prior and uniform mixtures), with the summary on stdout.",
    )
    p.add_argument("name", metavar="NAME", help="the DataMixtureSweep")
    p.add_argument("-n", "--namespace", help="its namespace (default: the kubeconfig context's, else default)")
    p.add_argument("--output-dir", default=".", help="where trials.csv and sweep.png go (default: .)")
    p.set_defaults(func=cmd_report)
