"""The Grafana dashboard works, proven against a real Prometheus (marker `prometheus`).

A Prometheus server (Debian's package, tools/ci/install-prometheus.sh) on loopback scrapes a real
local training run (`datamix run`, a short variant of examples/quickstart.yaml) and, with the
local control plane (marker `cluster` too), a real `datamix operator`. Every PromQL expression of
dashboards/datamix.json, with the variables substituted (a run's values, and "All"), goes through
the HTTP API and returns at least one series; the DCGM panels (no GPUs here) and MFU (absent on
CPU) must parse. The variables' label_values queries list the run. `promtool check metrics`
passes on the trainer's and the operator's /metrics.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from live import Admin, experiment, with_fake_pods
from shiplib import PROMETHEUS_MISSING, REPO, prometheus_bin_dir

from datamix import GROUP, VERSION
from testsupport import clusterlib
from testsupport.experiments import apply_crd, apply_sweep_crd
from testsupport.operator_process import DATAMIX, OperatorProcess
from testsupport.ports import free_port

PROM_DIR = prometheus_bin_dir()
pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(900),
              pytest.mark.skipif(PROM_DIR is None, reason=PROMETHEUS_MISSING)]

DASHBOARD = json.loads((REPO / "dashboards" / "datamix.json").read_text())
NAMESPACE = "ml-test"  # the scrape's `namespace` label, as a PodMonitor would set it
SCRAPE_INTERVAL = "1s"
RATE_INTERVAL = "15s"  # Grafana's $__rate_interval for a 1s scrape is 4 x 1s; more samples are steadier
TRAINER_METRICS = {
    "datamix_train_loss", "datamix_validation_loss", "datamix_learning_rate", "datamix_grad_norm",
    "datamix_step_duration_seconds_bucket", "datamix_tokens_per_second", "datamix_dataset_tokens_total",
    "datamix_dataset_target_share", "datamix_consumed_samples", "datamix_target_samples",
    "datamix_last_checkpoint_timestamp_seconds",
}
# Series that may be absent here: no GPUs (DCGM exporter), no known GPU peak (MFU on CPU).
PARSE_ONLY = re.compile(r"DCGM_FI_|datamix_model_flops_utilization")


# ---------------------------------------------------------------------------------------------
# the dashboard's queries


@dataclass(frozen=True)
class Query:
    panel: str
    ref: str
    expr: str

    @property
    def operator(self) -> bool:
        return "datamix_operator_" in self.expr and not self.sweep

    @property
    def sweep(self) -> bool:
        return "datamix_operator_sweep_" in self.expr

    @property
    def parse_only(self) -> bool:
        return bool(PARSE_ONLY.search(self.expr))


def dashboard_queries() -> list[Query]:
    out = []
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            out.append(Query(panel["title"], target["refId"], target["expr"]))
    return out


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation for the dashboard's variables (single values or regexes)."""
    out = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__interval", SCRAPE_INTERVAL)
    for name, value in values.items():
        out = out.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in out, f"unsubstituted variable in {out}"
    return out


def test_every_panel_query_is_covered() -> None:
    """Sanity of the split below: each query is a trainer, operator or parse-only one."""
    queries = dashboard_queries()
    assert len(queries) >= 20
    for q in queries:
        assert q.operator or q.parse_only or "datamix_" in q.expr, q
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    assert variables == {"datasource", "namespace", "experiment", "run", "sweep"}


# ---------------------------------------------------------------------------------------------
# processes


def http_get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


class Prometheus:
    """A Prometheus server on 127.0.0.1 with static scrape targets; TSDB in a temp dir."""

    def __init__(self, workdir: Path, jobs: dict[str, tuple[str, dict[str, str]]]) -> None:
        assert PROM_DIR
        self.port = free_port()
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": [
                {"job_name": job, "scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                 "static_configs": [{"targets": [target], "labels": labels}]}
                for job, (target, labels) in jobs.items()
            ],
        }
        cfg = workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config))
        check = subprocess.run([str(PROM_DIR / "promtool"), "check", "config", str(cfg)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = workdir / "prometheus.log"
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(
            [str(PROM_DIR / "prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        wait(lambda: http_get(f"{self.url}/-/ready", 2).strip() != "", 60, "Prometheus ready", self.alive)

    def alive(self) -> None:
        assert self.proc.poll() is None, f"prometheus exited:\n{self.log.read_text()[-3000:]}"

    def api(self, path: str, **params: Any) -> dict[str, Any]:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            body = http_get(url, 30)
        except urllib.error.HTTPError as err:
            body = err.read().decode()
        doc = json.loads(body)
        assert isinstance(doc, dict)
        return doc

    def query(self, expr: str, at: float) -> dict[str, Any]:
        return self.api("query", query=expr, time=f"{at:.3f}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def wait(predicate: Any, timeout: float, what: str, alive: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if alive:
            alive()
        try:
            value = predicate()
            if value:
                return value
        except Exception as err:
            last = err
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last error {last!r}")


def promtool_check_metrics(text: str) -> None:
    assert PROM_DIR
    res = subprocess.run([str(PROM_DIR / "promtool"), "check", "metrics"], input=text, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def evaluate(prom: Prometheus, queries: list[Query], values: dict[str, str], at: float) -> list[str]:
    """Problems with the queries at time `at` (empty when all are fine)."""
    problems = []
    for q in queries:
        expr = substitute(q.expr, values)
        doc = prom.query(expr, at)
        if doc.get("status") != "success":
            problems.append(f"{q.panel} [{q.ref}] does not parse: {doc.get('error')}: {expr}")
        elif not q.parse_only and not doc["data"]["result"]:
            problems.append(f"{q.panel} [{q.ref}] returned no series: {expr}")
    return problems


# ---------------------------------------------------------------------------------------------
# the trainer


@dataclass
class TrainerRun:
    proc: subprocess.Popen[bytes]
    port: int
    experiment: str
    log: Path

    def alive(self) -> None:
        assert self.proc.poll() in (None, 0), f"datamix run failed:\n{self.log.read_text()[-4000:]}"


def quick_manifest(path: Path) -> str:
    """examples/quickstart.yaml, shortened: evaluation, checkpoints and logs early and often."""
    doc = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    doc["metadata"]["name"] = "dash-quick"
    training = doc["spec"]["training"]
    training.update(trainSteps=120, evalInterval=5, evalSamples=8, checkpointInterval=10, logInterval=1)
    training["learningRate"]["warmupSamples"] = 32
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    check = subprocess.run([DATAMIX, "validate", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    return str(doc["metadata"]["name"])


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerRun]:
    work = tmp_path_factory.mktemp("trainer")
    data = Path(os.environ.get("DATAMIX_CACHE_DIR") or Path.home() / ".cache" / "datamix") / "demo-data"
    built = subprocess.run([DATAMIX, "demo-data", str(data)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    experiment = quick_manifest(work / "quick.yaml")
    port = free_port()
    log = work / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen([DATAMIX, "run", str(work / "quick.yaml"), "--data-dir", str(data),
                                 "--output-dir", str(work / "out"), "--metrics-port", str(port), "--nproc", "1"],
                                stdout=out, stderr=subprocess.STDOUT)
    run = TrainerRun(proc, port, experiment, log)
    try:
        yield run
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_trainer_panels_return_data(trainer_run: TrainerRun, tmp_path: Path) -> None:
    prom = Prometheus(tmp_path, {"trainer": (f"127.0.0.1:{trainer_run.port}",
                                             {"namespace": NAMESPACE, "pod": f"{trainer_run.experiment}-master-0"})})
    try:
        # Every trainer metric scraped, with enough samples for rate() and deriv().
        def ready() -> bool:
            doc = prom.api("query", query='count by (__name__) ({job="trainer", __name__=~"datamix_.+"})')
            names = {r["metric"]["__name__"] for r in doc["data"]["result"]}
            if not names >= TRAINER_METRICS:
                return False
            doc = prom.api("query",
                           query=f'count_over_time(datamix_consumed_samples{{job="trainer"}}[{RATE_INTERVAL}])')
            samples = doc["data"]["result"]
            return bool(samples) and float(samples[0]["value"][1]) >= 8
        wait(ready, 600, "all trainer metrics in Prometheus", trainer_run.alive)

        # The variables, as Grafana's label_values() asks for them.
        def label_values(label: str, match: str) -> list[str]:
            return list(prom.api(f"label/{label}/values", **{"match[]": match})["data"])
        assert NAMESPACE in label_values("namespace", "datamix_target_samples")
        experiments = label_values("experiment", f'datamix_target_samples{{namespace=~"{NAMESPACE}"}}')
        assert trainer_run.experiment in experiments
        runs = label_values("run", f'datamix_target_samples{{namespace=~"{NAMESPACE}", '
                                   f'experiment=~"{trainer_run.experiment}"}}')
        assert len(runs) == 1

        at = time.time()
        queries = [q for q in dashboard_queries() if not q.operator and not q.sweep]
        chosen = {"namespace": NAMESPACE, "experiment": trainer_run.experiment, "run": runs[0],
                  "datasource": "prometheus"}
        everything = {"namespace": ".*", "experiment": ".*", "run": ".*", "datasource": "prometheus"}
        problems = evaluate(prom, queries, chosen, at) + evaluate(prom, queries, everything, at)
        assert not problems, "\n".join(problems)

        # A wrong run matches nothing: the panels really filter by the variables.
        wrong = evaluate(prom, [q for q in queries if not q.parse_only],
                         {**chosen, "run": "no-such-run"}, at)
        assert len(wrong) == len([q for q in queries if not q.parse_only])

        # The realised mixture follows the target (the blend draws by weight).
        share = prom.query(substitute(
            'max by (dataset) (datamix_dataset_tokens_total{run=~"$run"}) / scalar(sum(max by (dataset) '
            '(datamix_dataset_tokens_total{run=~"$run"})))', chosen), at)["data"]["result"]
        target = prom.query(substitute('max by (dataset) (datamix_dataset_target_share{run=~"$run"})', chosen),
                            at)["data"]["result"]
        realised = {r["metric"]["dataset"]: float(r["value"][1]) for r in share}
        wanted = {r["metric"]["dataset"]: float(r["value"][1]) for r in target}
        assert realised.keys() == wanted.keys()
        assert len(wanted) == 6, wanted
        assert all(abs(realised[d] - wanted[d]) < 0.1 for d in wanted), (realised, wanted)

        promtool_check_metrics(http_get(f"http://127.0.0.1:{trainer_run.port}/metrics"))
    finally:
        prom.stop()


# ---------------------------------------------------------------------------------------------
# the operator (needs the local control plane)


@pytest.mark.cluster
def test_operator_panels_return_data(cluster: Any, k8s_client: Any, tmp_path: Path) -> None:
    apply_crd(cluster)
    ns = clusterlib.create_namespace(k8s_client, "dash-operator")
    operator = OperatorProcess(cluster.kubeconfig, [ns], log_path=tmp_path / "operator.log", resync_seconds=5,
                               trainer_image=None)
    prom = None
    try:
        operator.start()
        prom = Prometheus(tmp_path, {"operator": (f"127.0.0.1:{operator.metrics_port}",
                                                  {"namespace": "datamix-system"})})
        # One experiment through to Succeeded: runs created/succeeded, phases, reconciles.
        admin = Admin(k8s_client)
        admin.apply(ns, with_fake_pods(experiment("dash-op"), "2s"))
        wait(lambda: admin.status(ns, "dash-op").get("phase") == "Succeeded", 180, "experiment Succeeded",
             operator.assert_running)

        def ready() -> bool:
            doc = prom.api("query", query='count_over_time(datamix_operator_runs_succeeded_total[10s]) >= 5')
            return bool(doc["data"]["result"])
        wait(ready, 120, "operator metrics in Prometheus", prom.alive)

        at = time.time()
        queries = [q for q in dashboard_queries() if q.operator]
        assert len(queries) >= 6
        problems = evaluate(prom, queries, {}, at)
        assert not problems, "\n".join(problems)
        phases = prom.query("sum by (phase) (datamix_operator_experiments)", at)["data"]["result"]
        assert {r["metric"]["phase"]: float(r["value"][1]) for r in phases}.get("Succeeded") == 1.0
        promtool_check_metrics(operator.metrics())
    finally:
        if prom is not None:
            prom.stop()
        operator.stop()
        clusterlib.delete_namespace(k8s_client, ns)


# ---------------------------------------------------------------------------------------------
# the operator's sweep row (needs the local control plane and the search engine)


@pytest.mark.cluster
def test_sweep_panels_return_data(cluster: Any, k8s_client: Any, tmp_path: Path) -> None:
    pytest.importorskip("datamix.search.proposer", reason="the search engine (datamix.search) is not here")
    from tests.sweep.fake_trainer import FakeTrainer, hold_pods

    apply_crd(cluster)
    apply_sweep_crd(cluster)
    ns = clusterlib.create_namespace(k8s_client, "dash-sweep")
    operator = OperatorProcess(cluster.kubeconfig, [ns], log_path=tmp_path / "operator.log", resync_seconds=5,
                               trainer_image=None)
    prom = None
    try:
        operator.start()
        prom = Prometheus(tmp_path, {"operator": (f"127.0.0.1:{operator.metrics_port}",
                                                  {"namespace": "datamix-system"})})
        spec = experiment("unused")["spec"]
        spec["datasets"]["mixture"] = [
            {"name": n, "path": f"{n}/part_0_text_document", "weight": 1, "validationPath": f"{n}/valid_text_document"}
            for n in ("web", "code", "math")]
        hold_pods(spec)
        sweep = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DataMixtureSweep", "metadata": {"name": "dash"},
                 "spec": {"experiment": spec, "search": {"trials": 6, "parallelism": 3, "seed": 1}}}
        from kubernetes import client

        client.CustomObjectsApi(k8s_client).create_namespaced_custom_object(GROUP, VERSION, ns, "datamixturesweeps",
                                                                           sweep)

        def sweep_phase() -> str:
            obj = client.CustomObjectsApi(k8s_client).get_namespaced_custom_object(
                GROUP, VERSION, ns, "datamixturesweeps", "dash")
            return str((obj.get("status") or {}).get("phase"))

        with FakeTrainer(k8s_client, ns) as trainer:
            wait(lambda: sweep_phase() in ("Succeeded", "Failed"), 300, "the sweep finished", operator.assert_running)
            assert not trainer.errors, trainer.errors
        assert sweep_phase() == "Succeeded", operator.log_tail()

        def ready() -> bool:
            doc = prom.api("query", query='count_over_time(datamix_operator_sweep_predicted_objective[10s]) >= 5')
            return bool(doc["data"]["result"])
        wait(ready, 120, "sweep metrics in Prometheus", prom.alive)

        at = time.time()
        queries = [q for q in dashboard_queries() if q.sweep]
        assert len(queries) >= 4
        assert not evaluate(prom, queries, {"sweep": "dash"}, at)
        assert not evaluate(prom, queries, {"sweep": ".*"}, at)
        assert len(evaluate(prom, queries, {"sweep": "no-such-sweep"}, at)) == len(queries), "filtered by $sweep"
        assert prom.api("label/sweep/values", **{"match[]": "datamix_operator_sweep_trials"})["data"] == ["dash"]
        trials = prom.query('sum by (state) (datamix_operator_sweep_trials{sweep="dash"})', at)["data"]["result"]
        assert {r["metric"]["state"]: float(r["value"][1]) for r in trials}["succeeded"] == 6
        objectives = prom.query('datamix_operator_sweep_trial_objective{sweep="dash"}', at)["data"]["result"]
        assert len(objectives) == 6
        promtool_check_metrics(operator.metrics())
    finally:
        if prom is not None:
            prom.stop()
        operator.stop()
        clusterlib.delete_namespace(k8s_client, ns)
