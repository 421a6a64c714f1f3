"""The cost of live progress tracking at N running experiments (docs/operator.md, "Live progress").

N trainer endpoints are served by a separate process (asyncio, one listening port each on
127.0.0.1; each answers with the exposition of the trainer's own metrics code for its run, 6
datasets). The operator's `ProgressTracker` tracks N runs against them for a few intervals, as
the operator does with the master pods, and the benchmark prints:

- reads per interval (requests = connections: one per read), and how long a sweep of all runs
  took (the pool's throughput bounds how often each run can be read);
- CPU seconds the tracking used in this process, per interval and per read;
- status writes it asked for (`on_change` calls): in the "progressing" mode every endpoint's
  consumed samples advance between reads, in the "idle" mode nothing changes (0 writes expected).

No API server is involved: each `on_change` is one status patch in the operator (at most one per
run per interval), whose cost is the operator benchmark's (bench_scale.py).

    .venv/bin/python -m benchmarks.operator.bench_progress --runs 1000 --interval 10 --intervals 3

(from the repository root: it imports tests.trainer.runs and the shared test-support package)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import resource
import statistics
import time
from pathlib import Path
from typing import Any


def exposition(run: str, consumed: int) -> bytes:
    from datamix_trainer.metrics import TrainerMetrics
    from prometheus_client import generate_latest

    from tests.trainer.runs import quickstart_spec

    spec = dataclasses.replace(quickstart_spec(Path("/data"), Path("/output")), experiment=f"exp-{run}", run=run)
    metrics = TrainerMetrics(spec, peak_flops_per_device=None)
    metrics.start(0, spec.training.train_samples, [0] * len(spec.datasets))
    metrics.step(3.2, 1e-3, 0.5, 0.12, 2048, consumed, [128] * len(spec.datasets), 1.5e7, 1)
    metrics.evaluation([3.0] * len(spec.datasets), 10)
    return generate_latest(metrics.registry)


def serve(ports: list[int], progressing: bool, ready: Any) -> None:
    """One process, one listening socket per endpoint; the body's consumed samples advance per
    request in the progressing mode."""
    template = exposition("RUNID", 1_000_000_000).decode()
    counts = dict.fromkeys(ports, 0)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("sockname")[1]
        await reader.readuntil(b"\r\n\r\n")
        counts[port] += 1
        consumed = 16 * counts[port] if progressing else 16
        body = template.replace("RUNID", f"r{port}").replace("1e+09", str(consumed)).encode()
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    async def main() -> None:
        servers = [await asyncio.start_server(handler, "127.0.0.1", p, backlog=256) for p in ports]
        ready.set()
        await asyncio.gather(*(s.serve_forever() for s in servers))

    asyncio.run(main())


def pod(port: int) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "bench", "uid": f"pod-{port}", "creationTimestamp": "2026-01-01T00:00:00Z",
                     "labels": {"training.kubeflow.org/job-name": f"job-{port}"}, "ownerReferences": []},
        "spec": {"containers": [{"ports": [{"name": "metrics", "containerPort": port}]}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1"},
    }


def measure(runs: int, interval: float, intervals: int, workers: int, progressing: bool) -> dict[str, float]:
    from datamix_operator.metrics import Metrics
    from datamix_operator.progress import ProgressTracker
    from prometheus_client import CollectorRegistry

    from testsupport.ports import free_ports

    ports = free_ports(runs)
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(ports, progressing, ready), daemon=True)
    server.start()
    ready.wait(60)
    writes = 0

    def on_change(namespace: str, name: str) -> None:
        nonlocal writes
        writes += 1

    metrics = Metrics(CollectorRegistry())
    tracker = ProgressTracker(interval=interval, workers=workers, on_change=on_change, metrics=metrics)
    for port in ports:
        tracker.observe_pod(pod(port))
        tracker.track("bench", f"exp-r{port}", f"r{port}", f"job-{port}", deadline=None, target_samples=10**9)
    def reads() -> float:
        return sum(metrics.progress_reads.labels(o)._value.get() for o in ("accepted", "foreign", "error"))

    try:
        tracker.start()
        time.sleep(interval)  # the first read of every run (a change: nothing -> values) is not counted
        reads0, bad0, writes0 = reads(), metrics.progress_reads.labels("error")._value.get(), writes
        seconds0 = metrics.progress_read_duration._sum.get()
        cpu0, t0 = time.process_time(), time.monotonic()
        time.sleep(interval * intervals)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        total = reads() - reads0
        bad = metrics.progress_reads.labels("error")._value.get() - bad0
        duration_sum = metrics.progress_read_duration._sum.get() - seconds0
        written = writes - writes0
    finally:
        tracker.stop()
        server.terminate()
        server.join(10)
    return {
        "runs": runs,
        "reads_per_interval": total * interval / wall,
        "errors": bad,
        "cpu_per_interval": cpu * interval / wall,
        "cpu_ms_per_read": 1000 * cpu / total if total else float("nan"),
        "read_ms_mean": 1000 * duration_sum / total if total else float("nan"),
        "writes_per_interval": written * interval / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--intervals", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * max(args.runs) + 256)), hard))

    print(f"progress tracking: interval {args.interval:g}s, {args.workers} workers, {args.intervals} intervals, "
          f"one endpoint per run (6 datasets) on 127.0.0.1")
    header = f"{'mode':<12}{'runs':>6}{'reads/intvl':>13}{'errors':>8}{'CPU s/intvl':>13}{'CPU ms/read':>13}" \
             f"{'read ms':>9}{'writes/intvl':>14}"
    print(header)
    rows = []
    for progressing in (True, False):
        for runs in args.runs:
            r = measure(runs, args.interval, args.intervals, args.workers, progressing)
            rows.append(r)
            mode = "progressing" if progressing else "idle"
            print(f"{mode:<12}{runs:>6}{r['reads_per_interval']:>13.0f}{r['errors']:>8.0f}"
                  f"{r['cpu_per_interval']:>13.2f}{r['cpu_ms_per_read']:>13.2f}{r['read_ms_mean']:>9.1f}"
                  f"{r['writes_per_interval']:>14.0f}")
    print(f"median CPU per read: {statistics.median(r['cpu_ms_per_read'] for r in rows):.2f} ms")


if __name__ == "__main__":
    main()
