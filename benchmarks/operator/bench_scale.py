#!/usr/bin/env python3
"""Scale benchmark of the operator on the local control plane (tools/cluster), printed figures.

    .venv/bin/python -m benchmarks.operator.bench_scale [--experiments 200] [--gpus 1]

(from the repository root: it imports the shared test-support package, testsupport/)

1. Adds its own kwok nodes (8 GPUs each, labelled and tainted with a pool id) so that every pod
   of every experiment fits at once.
2. Floor: a plain Python client (same thread count as the operator's workers) creates the same
   ConfigMaps and PyTorchJobs directly, as fast as it can, in namespace A.
3. Operator: `datamix operator --namespace B` runs; the same number of DataMixtureExperiments are
   created in B at once.
For both: latency from the create (of the experiment, or of the floor's ConfigMap) until a watch
sees the PyTorchJob (p50, p99, max), and the time from the first create until all pods are
Running. For the operator: its peak RSS (VmHWM) and its own metrics.
Everything it created (namespaces, nodes) is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
from tools.cluster.nodes import H100, fake_node_manifest


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


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
                        120, description="benchmark nodes Ready")
    return pool, names


def wait_running(watcher: Watcher, pods: int, timeout: float) -> float:
    clusterlib.wait_for(lambda: len(watcher.pod_running) >= pods, timeout, interval=0.2,
                        description=f"{pods} pods Running")
    return max(watcher.pod_running.values())


def floor_run(api: Any, namespace: str, manifests: list[dict[str, Any]], workers: int, pods: int,
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
    last_running = wait_running(watcher, pods, timeout)
    watcher.stop.set()
    latencies = [watcher.job_seen[n] - t for n, t in started.items()]
    return {"latencies": latencies, "all_running": last_running - t0, "submit": max(started.values()) - t0}


def operator_run(api: Any, cluster: Any, namespace: str, manifests: list[dict[str, Any]], workers: int,
                 pods: int, timeout: float) -> dict[str, Any]:
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    op = OperatorProcess(cluster.kubeconfig, [namespace], extra_args=["--workers", str(workers)],
                         resync_seconds=300)
    op.start()
    watcher = Watcher(api, namespace).start()
    time.sleep(1)
    created: dict[str, float] = {}
    rss_peak = 0

    def create(m: dict[str, Any]) -> None:
        created[render_children(m, namespace)[1]["metadata"]["name"]] = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, m)

    try:
        t0 = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(create, manifests))
        submit = time.monotonic() - t0
        clusterlib.wait_for(lambda: len(watcher.job_seen) >= len(manifests), timeout, description="jobs")
        last_running = wait_running(watcher, pods, timeout)
        # the experiments' statuses follow: all Running
        clusterlib.wait_for(lambda: _phases(custom, namespace).get("Running", 0) >= len(manifests), timeout,
                            description="every experiment Running")
        all_status_running = time.monotonic() - t0
        assert op.proc is not None
        rss_peak = _vm_hwm(op.proc.pid)
        metrics = op.metrics()
    finally:
        watcher.stop.set()
        op.stop()
    latencies = [watcher.job_seen[n] - t for n, t in created.items()]
    return {"latencies": latencies, "all_running": last_running - t0, "submit": submit,
            "status_running": all_status_running, "rss_peak_mib": rss_peak / 1024, "metrics": metrics,
            "log": str(op.log_path)}


def _phases(custom: Any, namespace: str) -> dict[str, int]:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    out: dict[str, int] = {}
    for i in items:
        phase = (i.get("status") or {}).get("phase", "none")
        out[phase] = out.get(phase, 0) + 1
    return out


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
    ap.add_argument("--experiments", type=int, default=200)
    ap.add_argument("--gpus", type=int, default=1, help="GPUs per experiment (1 node each)")
    ap.add_argument("--workers", type=int, default=16, help="operator workers = floor client threads")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    cluster = clusterlib.ensure_cluster()
    api = cluster.api_client()
    apply_crd(cluster)
    per_node = 8 // args.gpus
    nodes_needed = -(-args.experiments // per_node)
    pool, nodes = add_pool(api, nodes_needed)
    namespaces: list[str] = []
    try:
        manifests = [e2e_manifest(f"bench-{i:04d}", gpus=args.gpus, pool=pool, duration="30m", result=False)
                     for i in range(args.experiments)]
        floor_ns = clusterlib.create_namespace(api, "bench-floor")
        namespaces.append(floor_ns)
        t = time.monotonic()
        floor = floor_run(api, floor_ns, manifests, args.workers, args.experiments, args.timeout)
        print(f"floor done in {time.monotonic() - t:.1f}s; freeing the GPUs", file=sys.stderr)
        clusterlib.delete_namespace(api, floor_ns, wait_pods=True, timeout=args.timeout)
        op_ns = clusterlib.create_namespace(api, "bench-operator")
        namespaces.append(op_ns)
        oper = operator_run(api, cluster, op_ns, manifests, args.workers, args.experiments, args.timeout)
    finally:
        for ns in namespaces:
            clusterlib.delete_namespace(api, ns, wait_pods=True, timeout=args.timeout)
        clusterlib.delete_fake_nodes(api, nodes)

    def row(label: str, r: dict[str, Any]) -> str:
        lat = r["latencies"]
        return (f"{label:<28} {percentile(lat, 50):>8.3f} {percentile(lat, 99):>8.3f} {max(lat):>8.3f} "
                f"{r['submit']:>9.2f} {r['all_running']:>13.2f}")

    print(f"\n{args.experiments} experiments x 1 node x {args.gpus} GPU on {nodes_needed} fake 8-GPU nodes; "
          f"{args.workers} workers/threads; {os.cpu_count()} CPUs")
    print(f"{'':<28} {'p50 s':>8} {'p99 s':>8} {'max s':>8} {'submit s':>9} {'all Running s':>13}")
    print("create -> PyTorchJob present")
    print(row("  floor (direct client)", floor))
    print(row("  operator", oper))
    print(f"experiments' status all Running after {oper['status_running']:.2f}s")
    print(f"operator peak RSS (VmHWM): {oper['rss_peak_mib']:.1f} MiB")
    for name in ("datamix_operator_runs_created_total", "datamix_operator_reconcile_errors_total",
                 "datamix_operator_reconcile_duration_seconds_count",
                 "datamix_operator_reconcile_duration_seconds_sum"):
        print(f"  {_metric(oper['metrics'], name)}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "experiments": args.experiments, "gpus": args.gpus, "workers": args.workers,
            "floor": {k: v for k, v in floor.items() if k != "latencies"}
            | {"p50": percentile(floor["latencies"], 50), "p99": percentile(floor["latencies"], 99)},
            "operator": {k: v for k, v in oper.items() if k not in ("latencies", "metrics")}
            | {"p50": percentile(oper["latencies"], 50), "p99": percentile(oper["latencies"], 99)},
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
