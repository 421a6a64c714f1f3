#!/usr/bin/env python3
"""Generates the DataMix Grafana dashboard (dashboards/datamix.json) and the Helm chart's copy.

    python3 dashboards/generate.py          # write both files
    python3 dashboards/generate.py --check  # exit 1 when either file differs from the generator

Plain Python (standard library only): panels are small dicts, the PromQL is written out here in
one place, and tests/ship/ evaluates every expression against a real Prometheus. Grafana's own
dashboard model is the target (schemaVersion 39; works with Grafana 10 and 11).

Label conventions the queries rely on:
- trainer metrics carry `experiment`, `run` (and `dataset`); the scrape adds `namespace` and
  `pod` (prometheus-operator PodMonitors do; the test's static config sets them too). Each pod's
  local rank 0 serves metrics, so a run of N pods has N series per metric; every trainer metric
  describes the whole job (losses and token counts are all-reduced), so the N copies are equal and
  are folded with `max by`, never added up.
- DCGM exporter metrics carry `namespace`/`pod` of the GPU's pod; they are joined with a trainer
  series on those two labels to get the run's `experiment` and `run`.
- operator metrics carry only `phase` (plus the scrape's labels): the operator row is not
  filtered by the variables.
- sweep metrics (the operator's) carry `sweep_namespace` and `sweep` (the scrape's `namespace` is
  the operator's own); the sweep row is filtered by the `sweep` variable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUTS = (HERE / "datamix.json", HERE.parent / "helm" / "datamix" / "dashboards" / "datamix.json")

DS = {"type": "prometheus", "uid": "${datasource}"}
# The run selector of every trainer query; Grafana interpolates the variables as regexes.
RUN = 'namespace=~"$namespace", experiment=~"$experiment", run=~"$run"'
BY_RUN = "experiment, run"
RI = "$__rate_interval"


def trainer(metric: str, extra: str = "") -> str:
    return f"{metric}{{{RUN}{extra}}}"


def target(expr: str, legend: str, ref: str = "A", **extra: Any) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True, **extra}


class Layout:
    """Places panels left to right on Grafana's 24-column grid; rows start a new line."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0
        self.row_height = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "id": self._id(), "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def add(self, panel: dict[str, Any], w: int, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel = {"id": self._id(), "datasource": DS, **panel,
                 "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y}}
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def _newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def timeseries(title: str, description: str, targets: list[dict[str, Any]], unit: str = "short",
               **options: Any) -> dict[str, Any]:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "showPoints": "never",
              "spanNulls": True, **options.pop("custom", {})}
    defaults: dict[str, Any] = {"unit": unit, "custom": custom, **options.pop("defaults", {})}
    return {"type": "timeseries", "title": title, "description": description, "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": options.pop("overrides", [])},
            "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def stat(title: str, description: str, targets: list[dict[str, Any]], unit: str,
         kind: str = "stat", **defaults: Any) -> dict[str, Any]:
    for t in targets:
        t["instant"], t["range"] = True, False
    panel: dict[str, Any] = {
        "type": kind, "title": title, "description": description, "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, **defaults}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    }
    if kind == "bargauge":
        panel["options"].update({"displayMode": "gradient", "orientation": "horizontal"})
    return panel


def variables() -> list[dict[str, Any]]:
    def query(name: str, label: str, expr: str, multi: bool) -> dict[str, Any]:
        return {
            "type": "query", "name": name, "label": label, "datasource": DS,
            "query": {"query": expr, "refId": f"{name}-values"}, "definition": expr,
            "refresh": 2, "sort": 1, "multi": multi, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [],
        }

    return [
        {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "options": []},
        query("namespace", "Namespace", "label_values(datamix_target_samples, namespace)", True),
        query("experiment", "Experiment",
              'label_values(datamix_target_samples{namespace=~"$namespace"}, experiment)', True),
        query("run", "Run",
              'label_values(datamix_target_samples{namespace=~"$namespace", experiment=~"$experiment"}, run)',
              True),
        query("sweep", "Sweep", "label_values(datamix_operator_sweep_trials, sweep)", True),
    ]


def training_row(g: Layout) -> None:
    g.row("Training")
    g.add(timeseries(
        "Training loss", "Latest training loss of each run (cross-entropy per token).",
        [target(f"max by ({BY_RUN}) ({trainer('datamix_train_loss')})", "{{experiment}} / {{run}}")]), 12)
    g.add(timeseries(
        "Validation loss per dataset", "Loss on each dataset's held-out split at the last evaluation.",
        [target(f"max by ({BY_RUN}, dataset) ({trainer('datamix_validation_loss')})",
                "{{experiment}} / {{run}} / {{dataset}}")]), 12)
    g.add(timeseries(
        "Learning rate", "Scheduled learning rate.",
        [target(f"max by ({BY_RUN}) ({trainer('datamix_learning_rate')})", "{{experiment}} / {{run}}")],
        unit="sci"), 12)
    g.add(timeseries(
        "Gradient norm", "Global gradient norm before clipping.",
        [target(f"max by ({BY_RUN}) ({trainer('datamix_grad_norm')})", "{{experiment}} / {{run}}")]), 12)


def mixture_row(g: Layout) -> None:
    g.row("Mixture: realised against target")
    rate = f"max by ({BY_RUN}, dataset) (rate({trainer('datamix_dataset_tokens_total')}[{RI}]))"
    total = f"sum by ({BY_RUN}) ({rate})"
    g.add(timeseries(
        "Realised share (rate) vs target share",
        "Solid: each dataset's share of the training tokens consumed in the last interval (its token "
        "rate over the run's token rate). Dashed: the target share from the normalised mixture.",
        [target(f"{rate} / on ({BY_RUN}) group_left {total}", "realised {{run}} / {{dataset}}"),
         target(f"max by ({BY_RUN}, dataset) ({trainer('datamix_dataset_target_share')})",
                "target {{run}} / {{dataset}}", ref="B")],
        unit="percentunit", defaults={"min": 0, "max": 1},
        overrides=[{"matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}]),
        16)
    cumulative = f"max by ({BY_RUN}, dataset) ({trainer('datamix_dataset_tokens_total')})"
    cumulative_total = f"sum by ({BY_RUN}) ({cumulative})"
    g.add(stat(
        "Realised share since the start, minus target",
        "Share of all tokens consumed so far minus the target share, per dataset; 0 is on target.",
        [target(f"{cumulative} / on ({BY_RUN}) group_left {cumulative_total} - on ({BY_RUN}, dataset) "
                f"max by ({BY_RUN}, dataset) ({trainer('datamix_dataset_target_share')})",
                "{{run}} / {{dataset}}")],
        "percentunit", kind="bargauge", min=-0.1, max=0.1, decimals=2), 8)
    g.add(timeseries(
        "Tokens per second by dataset", "Training tokens consumed per second, per dataset (whole job).",
        [target(rate, "{{run}} / {{dataset}}")], unit="short",
        custom={"fillOpacity": 30, "stacking": {"mode": "normal", "group": "A"}}), 24)


def throughput_row(g: Layout) -> None:
    g.row("Throughput and progress")
    g.add(timeseries(
        "Tokens per second", "Training throughput of each run (whole job, last step).",
        [target(f"max by ({BY_RUN}) ({trainer('datamix_tokens_per_second')})", "{{experiment}} / {{run}}")]),
        8)
    # Every pod times the same steps: the pods' histograms are added up, which keeps quantiles.
    bucket = f"sum by ({BY_RUN}, le) (rate({trainer('datamix_step_duration_seconds_bucket')}[{RI}]))"
    g.add(timeseries(
        "Step time", "Duration of an optimizer step: quantiles from the histogram, and the mean.",
        [target(f"histogram_quantile(0.5, {bucket})", "p50 {{run}}"),
         target(f"histogram_quantile(0.9, {bucket})", "p90 {{run}}", ref="B"),
         target(f"histogram_quantile(0.99, {bucket})", "p99 {{run}}", ref="C"),
         target(f"sum by ({BY_RUN}) (rate({trainer('datamix_step_duration_seconds_sum')}[{RI}])) / "
                f"sum by ({BY_RUN}) (rate({trainer('datamix_step_duration_seconds_count')}[{RI}]))",
                "mean {{run}}", ref="D")],
        unit="s"), 8)
    g.add(timeseries(
        "Model FLOPs utilisation",
        "Achieved model FLOPs over the accelerators' peak. Only reported when the GPU's peak is known "
        "(empty on CPU).",
        [target(f"max by ({BY_RUN}) ({trainer('datamix_model_flops_utilization')})", "{{experiment}} / {{run}}")],
        unit="percentunit", defaults={"min": 0, "max": 1}), 8)
    consumed = f"max by ({BY_RUN}) ({trainer('datamix_consumed_samples')})"
    target_samples = f"max by ({BY_RUN}) ({trainer('datamix_target_samples')})"
    g.add(stat("Progress", "Samples consumed over the run's target samples.",
               [target(f"{consumed} / {target_samples}", "{{experiment}} / {{run}}")],
               "percentunit", kind="gauge", min=0, max=1), 6)
    g.add(stat("Samples", "Samples consumed so far.", [target(consumed, "{{experiment}} / {{run}}")],
               "short"), 6)
    g.add(stat(
        "ETA", "Remaining samples over the current sample rate (derivative of consumed samples).",
        [target(f"({target_samples} - {consumed}) / max by ({BY_RUN}) "
                f"(deriv({trainer('datamix_consumed_samples')}[{RI}]))", "{{experiment}} / {{run}}")],
        "s", decimals=0), 6)
    g.add(stat(
        "Since last checkpoint", "Time since the last checkpoint was written.",
        [target(f"time() - max by ({BY_RUN}) ({trainer('datamix_last_checkpoint_timestamp_seconds')})",
                "{{experiment}} / {{run}}")],
        "s", decimals=0), 6)


def gpu_row(g: Layout) -> None:
    g.row("GPUs (DCGM exporter)")
    # One series per trainer pod carrying its run's labels: the join key for DCGM metrics.
    pods = f"group by (namespace, pod, {BY_RUN}) ({trainer('datamix_target_samples')})"

    def per_pod(metric: str, how: str = "avg") -> str:
        return f"{how} by ({BY_RUN}, pod) ({metric} * on (namespace, pod) group_left ({BY_RUN}) {pods})"

    g.add(timeseries("GPU utilisation", "DCGM_FI_DEV_GPU_UTIL averaged over each pod's GPUs.",
                     [target(per_pod("DCGM_FI_DEV_GPU_UTIL"), "{{run}} / {{pod}}")],
                     unit="percent", defaults={"min": 0, "max": 100}), 8)
    g.add(timeseries("Tensor core activity", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE averaged over each pod's GPUs.",
                     [target(per_pod("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"), "{{run}} / {{pod}}")],
                     unit="percentunit", defaults={"min": 0, "max": 1}), 8)
    g.add(timeseries("GPU memory used", "DCGM_FI_DEV_FB_USED (MiB) added up over each pod's GPUs.",
                     [target(per_pod("DCGM_FI_DEV_FB_USED", "sum"), "{{run}} / {{pod}}")],
                     unit="mbytes"), 8)


def operator_row(g: Layout) -> None:
    g.row("Operator")
    g.add(timeseries("Experiments by phase", "DataMixtureExperiments the operator sees, by phase.",
                     [target("sum by (phase) (datamix_operator_experiments)", "{{phase}}")],
                     custom={"fillOpacity": 30, "stacking": {"mode": "normal", "group": "A"}}), 8)
    g.add(timeseries(
        "Runs and reconcile errors", "Runs created, succeeded and failed, and reconcile errors, per second.",
        [target(f"sum(rate(datamix_operator_runs_created_total[{RI}]))", "created"),
         target(f"sum(rate(datamix_operator_runs_succeeded_total[{RI}]))", "succeeded", ref="B"),
         target(f"sum(rate(datamix_operator_runs_failed_total[{RI}]))", "failed", ref="C"),
         target(f"sum(rate(datamix_operator_reconcile_errors_total[{RI}]))", "reconcile errors", ref="D")],
        unit="ops"), 8)
    bucket = f"sum by (le) (rate(datamix_operator_reconcile_duration_seconds_bucket[{RI}]))"
    g.add(timeseries("Reconcile duration", "Time per reconcile: quantiles from the histogram.",
                     [target(f"histogram_quantile(0.5, {bucket})", "p50"),
                      target(f"histogram_quantile(0.99, {bucket})", "p99", ref="B")],
                     unit="s"), 8)


SWEEP = 'sweep=~"$sweep"'


def sweep_row(g: Layout) -> None:
    g.row("Mixture search (DataMixtureSweep)")
    g.add(timeseries(
        "Sweep trials by state", "Trials of each sweep: pending (not created yet), active, succeeded, failed.",
        [target(f"sum by (sweep, state) (datamix_operator_sweep_trials{{{SWEEP}}})", "{{sweep}} {{state}}")],
        custom={"fillOpacity": 30, "stacking": {"mode": "normal", "group": "A"}}), 8)
    g.add(stat(
        "Objective per trial", "Observed objective (weighted validation loss) of each finished trial; lower is "
        "better.",
        [target(f"max by (sweep, trial) (datamix_operator_sweep_trial_objective{{{SWEEP}}})", "{{trial}}")],
        "short", kind="bargauge", decimals=4), 8)
    g.add(timeseries(
        "Best observed and predicted objective",
        "Best trial so far, and the regression's predicted objective of the proposal, the prior and the uniform "
        "mixture once the sweep has fitted.",
        [target(f"min by (sweep) (datamix_operator_sweep_best_objective{{{SWEEP}}})", "{{sweep}} best trial"),
         target(f"max by (sweep, mixture) (datamix_operator_sweep_predicted_objective{{{SWEEP}}})",
                "{{sweep}} predicted {{mixture}}", ref="B")]), 8)


def dashboard() -> dict[str, Any]:
    g = Layout()
    training_row(g)
    mixture_row(g)
    throughput_row(g)
    gpu_row(g)
    operator_row(g)
    sweep_row(g)
    return {
        "uid": "datamix-experiments",
        "title": "DataMix experiments",
        "description": "Training, data mixture, throughput and GPUs of DataMix runs, and the operator.",
        "tags": ["datamix", "training"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "",
        "templating": {"list": variables()},
        "annotations": {"list": []},
        "links": [],
        "panels": g.panels,
        "version": 1,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=1, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a written file is stale")
    args = parser.parse_args(argv)
    text = render()
    stale = [p for p in OUTPUTS if not p.exists() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"{p} is stale: run python3 dashboards/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for p in OUTPUTS:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        print(f"wrote {p} ({len(text.encode())} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
