#!/usr/bin/env python3
"""Scale benchmark of the operator on a private local control plane (tools/cluster), printed figures.

    .venv/bin/python -m benchmarks.operator.bench_scale [--experiments 1000] [--latency-experiments 200]

(from the repository root: it imports the shared test-support package, testsupport/)

It starts a control plane of its own (tools/cluster/cluster.py in a temporary
DATAMIX_CLUSTER_DIR) whose API server writes an audit log, adds kwok nodes (8 fake GPUs each) so
that every pod fits at once, and removes everything at the end (--keep-cluster keeps it).

1. Latency at --latency-experiments (default 200), 1 node x 1 GPU each:
   - floor: a plain Python client, as many threads as the operator has workers, creates the same
     ConfigMaps and PyTorchJobs directly, in namespace A;
   - operator: `datamix operator --namespace B`; the same number of experiments created at once.
   For both: from the create (of the experiment, or of the floor's ConfigMap) until a watch sees
   the PyTorchJob (p50, p99, max), and from the first create until every pod is Running.
2. Scale at --experiments (default 1000) in namespace C with a fresh operator: all pods Running,
   all experiments' statuses Running; the operator's peak RSS (VmHWM); then one steady-state
   resync pass (nothing changes in the cluster): every API request the operator made during it,
   counted from the API server's audit log (user agents `datamix-operator` and kopf's), by verb
   and resource.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from datamix_operator.render import render_children

from datamix import GROUP, PLURAL, VERSION
from testsupport import clusterlib
from testsupport.experiments import POOL_LABEL, apply_crd, e2e_manifest
from testsupport.operator_process import OperatorProcess
from tools.cluster.health import health as cluster_health
from tools.cluster.nodes import H100, fake_node_manifest

REPO = Path(__file__).resolve().parents[2]

OPERATOR_AGENTS = ("datamix-operator", "kopf/")
# Metadata of every request but the fake nodes' heartbeats (kwok renews one Lease per node).
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: None
    namespaces: [kube-node-lease]
  - level: None
    resources: [{group: "", resources: [nodes, nodes/status]}]
  - level: Metadata
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


# ----------------------------------------------------------------------------------------------
# the private cluster


class PrivateCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.audit_log = root / "audit.log"
        policy = root / "audit-policy.yaml"
        root.mkdir(parents=True, exist_ok=True)
        policy.write_text(AUDIT_POLICY)
        self.env = {
            **os.environ,
            "DATAMIX_CLUSTER_DIR": str(root / "cluster"),
            "DATAMIX_CLUSTER_APISERVER_ARGS": f"--audit-policy-file={policy} --audit-log-path={self.audit_log} "
            "--audit-log-format=json --audit-log-maxsize=2000 --audit-log-maxbackup=1",
        }

    def run(self, command: str) -> None:
        subprocess.run([*clusterlib.CLUSTER_CLI, command], env=self.env, check=True, stdout=subprocess.DEVNULL,
                       cwd=REPO)

    def up(self) -> clusterlib.Cluster:
        self.run("up")
        h = cluster_health(self.root / "cluster")
        return clusterlib.Cluster(kubeconfig=Path(h["kubeconfig"]), bin_dir=Path(h["bin_dir"]),
                                  state_dir=self.root / "cluster", server=h["server"], started_here=True)

    def down(self) -> None:
        self.run("down")


def audit_requests(path: Path, since: datetime.datetime, until: datetime.datetime) -> list[dict[str, Any]]:
    """The operator's completed requests received in [since, until] (UTC)."""
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            if '"ResponseComplete"' not in line or not any(a in line for a in OPERATOR_AGENTS):
                continue
            ev = json.loads(line)
            if not str(ev.get("userAgent", "")).startswith(OPERATOR_AGENTS):
                continue
            received = datetime.datetime.fromisoformat(ev["requestReceivedTimestamp"].replace("Z", "+00:00"))
            if since <= received <= until:
                out.append(ev)
    return out


def all_requests(path: Path, since: datetime.datetime) -> list[dict[str, Any]]:
    """Every completed request received since `since` (UTC), whoever made it."""
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            if '"ResponseComplete"' not in line:
                continue
            ev = json.loads(line)
            if _when(ev["requestReceivedTimestamp"]) >= since:
                out.append(ev)
    return out


def _when(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


BURST_STEPS = (
    ("experiment created -> operator's ConfigMap create received", "exp_done", "cm_received"),
    ("ConfigMap create (API server)", "cm_received", "cm_done"),
    ("ConfigMap created -> job create received", "cm_done", "job_received"),
    ("job create (API server)", "job_received", "job_done"),
)


def burst_steps(requests: list[dict[str, Any]], namespace: str) -> dict[str, list[float]]:
    """Where a burst's create-to-job time goes, per experiment, from the audit log's timestamps:
    the experiment's create completed (its watch event fires), the operator's ConfigMap and
    job creates received and completed."""
    marks: dict[str, dict[str, datetime.datetime]] = collections.defaultdict(dict)
    for ev in requests:
        ref = ev.get("objectRef") or {}
        if ev["verb"] != "create" or ref.get("namespace") != namespace or not ref.get("name") or ref.get(
                "subresource") or (ev.get("responseStatus") or {}).get("code", 0) >= 300:
            continue
        kind = {PLURAL: "exp", "configmaps": "cm", "pytorchjobs": "job"}.get(ref.get("resource", ""))
        if kind is None:
            continue
        name = ref["name"] if kind == "exp" else ref["name"].rsplit("-", 1)[0]
        marks[name][f"{kind}_received"] = _when(ev["requestReceivedTimestamp"])
        marks[name][f"{kind}_done"] = _when(ev["stageTimestamp"])
    out: dict[str, list[float]] = {label: [] for label, _, _ in BURST_STEPS}
    for m in marks.values():
        for label, start, end in BURST_STEPS:
            if start in m and end in m:
                out[label].append((m[end] - m[start]).total_seconds())
    return out


def describe(ev: dict[str, Any]) -> str:
    ref = ev.get("objectRef") or {}
    resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    verb = ev["verb"]
    if verb == "get" and ref.get("name"):
        verb = "get (one object)"
    return f"{verb:<18} {resource}"


# ----------------------------------------------------------------------------------------------
# watching the children


class Watcher:
    """Records when each PyTorchJob first appears and when each pod is first Running."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.job_seen: dict[str, float] = {}
        self.pod_running: dict[str, float] = {}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._jobs, daemon=True),
                        threading.Thread(target=self._pods, daemon=True)]

    def start(self) -> Watcher:
        for t in self.threads:
            t.start()
        return self

    def _jobs(self) -> None:
        from kubernetes import client, watch

        api = client.CustomObjectsApi(self.api)
        while not self.stop.is_set():
            w = watch.Watch()
            for ev in w.stream(api.list_namespaced_custom_object, "kubeflow.org", "v1", self.namespace,
                               "pytorchjobs", timeout_seconds=5):
                name = ev["object"]["metadata"]["name"]
                self.job_seen.setdefault(name, time.monotonic())
                if self.stop.is_set():
                    w.stop()

    def _pods(self) -> None:
        from kubernetes import client, watch

        core = client.CoreV1Api(self.api)
        while not self.stop.is_set():
            w = watch.Watch()
            for ev in w.stream(core.list_namespaced_pod, self.namespace, timeout_seconds=5):
                pod = ev["object"]
                if pod.status and pod.status.phase == "Running":
                    self.pod_running.setdefault(pod.metadata.name, time.monotonic())
                if self.stop.is_set():
                    w.stop()


def add_pool(api: Any, count: int) -> tuple[str, list[str]]:
    from kubernetes import client

    pool = uuid.uuid4().hex[:8]
    core = client.CoreV1Api(api)
    names = []
    for i in range(count):
        name = f"bench-{pool}-{i}"
        body = fake_node_manifest(name, H100, 81559, 8, labels={POOL_LABEL: pool})
        body["spec"]["taints"].append({"key": POOL_LABEL, "value": pool, "effect": "NoSchedule"})
        core.create_node(body)
        names.append(name)
    clusterlib.wait_for(lambda: all(any(c.type == "Ready" and c.status == "True"
                                        for c in core.read_node(n).status.conditions or []) for n in names),
                        300, description="benchmark nodes Ready")
    return pool, names


def wait_running(watcher: Watcher, pods: int, timeout: float) -> float:
    clusterlib.wait_for(lambda: len(watcher.pod_running) >= pods, timeout, interval=0.5,
                        description=f"{pods} pods Running")
    return max(watcher.pod_running.values())


# ----------------------------------------------------------------------------------------------
# the runs


def floor_run(api: Any, namespace: str, manifests: list[dict[str, Any]], workers: int,
              timeout: float) -> dict[str, Any]:
    from kubernetes import client

    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    watcher = Watcher(api, namespace).start()
    time.sleep(1)
    started: dict[str, float] = {}

    def create(m: dict[str, Any]) -> None:
        cm, job = render_children(m, namespace)
        started[job["metadata"]["name"]] = time.monotonic()
        core.create_namespaced_config_map(namespace, cm)
        custom.create_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", job)

    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(create, manifests))
    clusterlib.wait_for(lambda: len(watcher.job_seen) >= len(manifests), timeout, description="floor jobs")
    last_running = wait_running(watcher, len(manifests), timeout)
    watcher.stop.set()
    latencies = [watcher.job_seen[n] - t for n, t in started.items()]
    return {"latencies": latencies, "all_running": last_running - t0, "submit": max(started.values()) - t0}


def start_operator(cluster: Any, namespace: str, workers: int, resync_seconds: float) -> OperatorProcess:
    op = OperatorProcess(cluster.kubeconfig, [namespace], resync_seconds=resync_seconds,
                         extra_args=["--workers", str(workers), "--log-format", "json"])
    return op.start()


def create_experiments(api: Any, namespace: str, manifests: list[dict[str, Any]], workers: int,
                       created: dict[str, float]) -> float:
    from kubernetes import client

    custom = client.CustomObjectsApi(api)

    def create(m: dict[str, Any]) -> None:
        created[render_children(m, namespace)[1]["metadata"]["name"]] = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, m)

    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(create, manifests))
    return time.monotonic() - t0


def phases(api: Any, namespace: str) -> dict[str, int]:
    from kubernetes import client

    items = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    return dict(collections.Counter((i.get("status") or {}).get("phase", "none") for i in items))


def operator_latency_run(api: Any, cluster: Any, private: PrivateCluster, namespace: str,
                         manifests: list[dict[str, Any]], workers: int, timeout: float) -> dict[str, Any]:
    op = start_operator(cluster, namespace, workers, resync_seconds=300)
    watcher = Watcher(api, namespace).start()
    time.sleep(1)
    created: dict[str, float] = {}
    since = datetime.datetime.now(datetime.UTC)
    try:
        t0 = time.monotonic()
        submit = create_experiments(api, namespace, manifests, workers, created)
        clusterlib.wait_for(lambda: len(watcher.job_seen) >= len(manifests), timeout, description="jobs")
        last_running = wait_running(watcher, len(manifests), timeout)
        clusterlib.wait_for(lambda: phases(api, namespace).get("Running", 0) >= len(manifests), timeout,
                            description="every experiment Running")
        status_running = time.monotonic() - t0
        metrics = op.metrics()
        time.sleep(2)  # the audit log is written asynchronously
        requests = audit_requests(private.audit_log, since, datetime.datetime.now(datetime.UTC))
        steps = burst_steps(all_requests(private.audit_log, since), namespace)
    finally:
        watcher.stop.set()
        op.stop()
    return {"latencies": [watcher.job_seen[n] - t for n, t in created.items()], "all_running": last_running - t0,
            "submit": submit, "status_running": status_running, "metrics": metrics, "log": str(op.log_path),
            "requests": collections.Counter(describe(ev) for ev in requests), "steps": steps}


RESYNC_DONE = re.compile(r"resync pass: (\d+) experiments in ([0-9.]+) s")


def resync_passes(op: OperatorProcess) -> list[tuple[datetime.datetime, float, int]]:
    """(end, seconds, experiments) of every resync pass in the operator's JSON log."""
    out = []
    for line in op.log_path.read_text(errors="replace").splitlines():
        if "resync pass:" not in line or not line.startswith("{"):
            continue
        doc = json.loads(line)
        m = RESYNC_DONE.search(doc.get("message", ""))
        if m:
            end = datetime.datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00"))
            out.append((end, float(m.group(2)), int(m.group(1))))
    return out


def operator_scale_run(api: Any, cluster: Any, private: PrivateCluster, namespace: str,
                       manifests: list[dict[str, Any]], workers: int, resync_seconds: float,
                       timeout: float) -> dict[str, Any]:
    op = start_operator(cluster, namespace, workers, resync_seconds=resync_seconds)
    watcher = Watcher(api, namespace).start()
    time.sleep(1)
    created: dict[str, float] = {}
    assert op.proc is not None
    try:
        t0 = time.monotonic()
        create_experiments(api, namespace, manifests, workers, created)
        last_running = wait_running(watcher, len(manifests), timeout)
        clusterlib.wait_for(lambda: phases(api, namespace).get("Running", 0) >= len(manifests), timeout,
                            interval=2, description="every experiment Running")
        status_running = time.monotonic() - t0
        # Steady state: the next resync pass that starts after everything is Running.
        quiet = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2)

        def steady_pass() -> tuple[datetime.datetime, float, int] | None:
            done = [p for p in resync_passes(op) if p[0] - datetime.timedelta(seconds=p[1]) > quiet]
            return done[0] if done else None

        end, seconds, count = clusterlib.wait_for(steady_pass, resync_seconds * 2 + timeout / 4, interval=1,
                                                  description="a steady-state resync pass")
        time.sleep(2)  # the audit log is written asynchronously
        start = end - datetime.timedelta(seconds=seconds)
        requests = audit_requests(private.audit_log, start, end + datetime.timedelta(seconds=0.5))
        rss = _vm_hwm(op.proc.pid)
        metrics = op.metrics()
    finally:
        watcher.stop.set()
        op.stop()
    return {"all_running": last_running - t0, "status_running": status_running, "rss_peak_mib": rss / 1024,
            "pass_seconds": seconds, "pass_experiments": count,
            "pass_requests": collections.Counter(describe(ev) for ev in requests),
            "pass_writes": sum(1 for ev in requests if ev["verb"] in ("create", "update", "patch", "delete")),
            "metrics": metrics, "log": str(op.log_path)}


def _vm_hwm(pid: int) -> int:
    """Peak resident set size of a process in KiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _metric(metrics: str, name: str) -> str:
    for line in metrics.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return line
    return f"{name} (absent)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", type=int, default=1000, help="the scale run (0: skip it)")
    ap.add_argument("--latency-experiments", type=int, default=200, help="the latency runs (0: skip them)")
    ap.add_argument("--workers", type=int, default=16, help="operator workers = floor client threads")
    ap.add_argument("--resync-seconds", type=float, default=60, help="the scale run's resync period")
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--keep-cluster", action="store_true")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="dmx-bench-"))
    private = PrivateCluster(root)
    t_up = time.monotonic()
    cluster = private.up()
    print(f"private cluster up in {time.monotonic() - t_up:.0f}s ({root})", file=sys.stderr)
    api = cluster.api_client()
    results: dict[str, Any] = {}
    try:
        apply_crd(cluster)
        nodes_needed = -(-max(args.experiments, args.latency_experiments) // 8)
        pool, _nodes = add_pool(api, nodes_needed)

        def manifests(n: int) -> list[dict[str, Any]]:
            return [e2e_manifest(f"bench-{i:04d}", gpus=1, pool=pool, duration="60m", result=False) for i in range(n)]

        if args.latency_experiments:
            batch = manifests(args.latency_experiments)
            floor_ns = clusterlib.create_namespace(api, "bench-floor")
            results["floor"] = floor_run(api, floor_ns, batch, args.workers, args.timeout)
            clusterlib.delete_namespace(api, floor_ns, wait_pods=True, timeout=args.timeout)
            op_ns = clusterlib.create_namespace(api, "bench-latency")
            results["operator"] = operator_latency_run(api, cluster, private, op_ns, batch, args.workers,
                                                       args.timeout)
            clusterlib.delete_namespace(api, op_ns, wait_pods=True, timeout=args.timeout)
            print("latency runs done", file=sys.stderr)
        if args.experiments:
            scale_ns = clusterlib.create_namespace(api, "bench-scale")
            results["scale"] = operator_scale_run(api, cluster, private, scale_ns, manifests(args.experiments),
                                                  args.workers, args.resync_seconds, args.timeout)
    finally:
        api.close()
        if args.keep_cluster:
            print(f"cluster kept: DATAMIX_CLUSTER_DIR={root / 'cluster'}", file=sys.stderr)
        else:
            private.down()
            shutil.rmtree(root, ignore_errors=True)

    print(f"\n{os.cpu_count()} CPUs; {args.workers} operator workers = floor client threads; 1 node x 1 GPU "
          f"per experiment on fake 8-GPU nodes")
    if "floor" in results:
        def row(label: str, r: dict[str, Any]) -> str:
            lat = r["latencies"]
            return (f"{label:<28} {percentile(lat, 50):>8.3f} {percentile(lat, 99):>8.3f} {max(lat):>8.3f} "
                    f"{r['submit']:>9.2f} {r['all_running']:>13.2f}")

        floor, oper = results["floor"], results["operator"]
        print(f"\n{args.latency_experiments} experiments created at once")
        print(f"{'':<28} {'p50 s':>8} {'p99 s':>8} {'max s':>8} {'submit s':>9} {'all Running s':>13}")
        print("create -> PyTorchJob present")
        print(row("  floor (direct client)", floor))
        print(row("  operator", oper))
        p50 = percentile(oper["latencies"], 50) / percentile(floor["latencies"], 50)
        p99 = percentile(oper["latencies"], 99) / percentile(floor["latencies"], 99)
        print(f"  operator / floor: p50 {p50:.2f}x, p99 {p99:.2f}x")
        print(f"experiments' status all Running after {oper['status_running']:.2f}s")
        for name in ("datamix_operator_runs_created_total", "datamix_operator_reconcile_errors_total",
                     "datamix_operator_reconcile_duration_seconds_count",
                     "datamix_operator_reconcile_duration_seconds_sum", "process_cpu_seconds_total"):
            print(f"  {_metric(oper['metrics'], name)}")
        n = args.latency_experiments
        print("the operator's API requests until every status was Running (audit log), per experiment:")
        for what, count in sorted(oper["requests"].items(), key=lambda kv: -kv[1]):
            print(f"  {count / n:>6.2f}  {what}")
        print("where create -> job goes (audit log timestamps)     p50 s    p99 s")
        for label, values in oper["steps"].items():
            print(f"  {label:<58} {percentile(values, 50):>6.3f} {percentile(values, 99):>8.3f}")
    if "scale" in results:
        s = results["scale"]
        print(f"\n{args.experiments} experiments: all pods Running after {s['all_running']:.1f}s, every "
              f"experiment's status Running after {s['status_running']:.1f}s")
        print(f"operator peak RSS (VmHWM): {s['rss_peak_mib']:.1f} MiB")
        total = sum(s["pass_requests"].values())
        print(f"one steady-state resync pass ({s['pass_experiments']} experiments, {s['pass_seconds']:.2f}s): "
              f"{total} API requests of the operator, {s['pass_writes']} writes (audit log)")
        for what, n in sorted(s["pass_requests"].items(), key=lambda kv: -kv[1]):
            print(f"  {n:>6}  {what}")
        for name in ("datamix_operator_reconcile_duration_seconds_count", "datamix_operator_reconcile_errors_total"):
            print(f"  {_metric(s['metrics'], name)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
