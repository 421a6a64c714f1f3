"""Live progress of running runs, read by the operator from each master pod's metrics endpoint.

Why a pull: the trainer already serves Prometheus metrics on the master pod (port `metrics`,
one endpoint per pod, values all-reduced over the job), so the operator needs no endpoint of its
own, the trainer pods need no credentials at all, and nothing in a tenant's pod can write to the
API server. The price is that the operator must reach pod IPs (a NetworkPolicy that isolates the
training namespaces must let the operator's pods in on port 9410).

Rules:
- only runs the reconciler reports Running are read (`track`/`untrack`), each at most once per
  `interval`, by a small fixed pool of threads with short timeouts: the cost is at most
  (running runs / interval) requests per second and `workers` connections at a time;
- the address is the newest Running master pod of the run's job (its labels and the job's
  owner reference), learnt from the pod watch the operator has anyway (no API call);
- a reading is accepted only if its series carry the run's own `experiment` and `run` labels:
  a pod that answers for another run (a stale IP reused, a copied trainer) is ignored;
- `on_change(namespace, name)` is called only when what the status shows changed (a new value,
  or the progress deadline passed or cleared), so an idle run causes no status writes;
- the progress deadline: no completed step (consumed samples not increasing) for
  `spec.progressDeadlineSeconds` -> `exceeded`; checked on every sweep, readable or not.
"""

from __future__ import annotations

import datetime
import http.client
import logging
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from datamix.names import JOB_NAME_LABEL
from datamix.runspec import METRICS_PORT, METRICS_PORT_NAME
from datamix_operator.status import ProgressView

log = logging.getLogger("datamix_operator")

MAX_BODY = 1 << 20  # an exposition of 128 datasets is ~40 KB; more is not a trainer
DEFAULT_INTERVAL = 30.0
DEFAULT_WORKERS = 8
DEFAULT_TIMEOUT = 2.0

Fetch = Callable[[str, float], str]


# ----------------------------------------------------------------------------------------------
# one reading


@dataclass(frozen=True)
class Reading:
    """What one scrape of a trainer's endpoint says about its run."""

    consumed_samples: int
    target_samples: int | None = None
    tokens_per_second: float | None = None
    train_loss: float | None = None
    mean_validation_loss: float | None = None
    validation_step: int | None = None


def parse_reading(text: str, experiment: str, run: str) -> Reading | None:
    """The reading for `experiment`/`run` in a Prometheus text exposition; None when it holds no
    `datamix_consumed_samples` series of that run (another run's endpoint, or not a trainer)."""
    values: dict[str, float] = {}
    validation: list[float] = []
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if labels.get("experiment") != experiment or labels.get("run") != run:
                    continue
                value = float(sample.value)
                if not math.isfinite(value):
                    continue
                if sample.name == "datamix_validation_loss":
                    validation.append(value)
                elif "dataset" not in labels:
                    values[sample.name] = value
    except (ValueError, TypeError, IndexError, KeyError):
        return None  # not an exposition
    if "datamix_consumed_samples" not in values:
        return None
    step = values.get("datamix_validation_step")
    return Reading(
        consumed_samples=int(values["datamix_consumed_samples"]),
        target_samples=int(values["datamix_target_samples"]) if "datamix_target_samples" in values else None,
        tokens_per_second=values.get("datamix_tokens_per_second"),
        train_loss=values.get("datamix_train_loss"),
        # the trainer's own definition (RunResult.mean_validation_loss): the plain mean over the
        # datasets that have a validation set
        mean_validation_loss=math.fsum(validation) / len(validation) if validation else None,
        validation_step=int(step) if step is not None and validation else None,
    )


def http_fetch(url: str, timeout: float) -> str:
    """GET `url` with http.client: no proxy from the environment, no redirects followed (a pod
    must not send the operator elsewhere), at most MAX_BODY bytes, `timeout` per socket operation."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not an http URL: {url}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/", headers={"Accept": "text/plain"})
        response = conn.getresponse()
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        body = response.read(MAX_BODY + 1)
    finally:
        conn.close()
    if len(body) > MAX_BODY:
        raise ValueError(f"answer larger than {MAX_BODY} bytes")
    return body.decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------------------------
# what the status shows


def rfc3339(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None


def _sig(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")


@dataclass
class _Run:
    namespace: str
    name: str
    run: str
    job: str
    deadline: int | None
    target_samples: int | None
    job_uid: str = ""
    # progress
    first: tuple[float, int] | None = None  # (time, consumed) of the first reading: the ETA's rate
    consumed: int | None = None
    last_progress: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    exceeded: bool = False
    # scheduling
    next_due: float = 0.0
    busy: bool = False
    told_foreign: bool = False  # logged once at INFO, then at DEBUG

    def view(self) -> ProgressView:
        return ProgressView(
            dict(self.fields), self.exceeded, self.deadline, rfc3339(self.last_progress) if self.last_progress else None
        )


@dataclass(frozen=True)
class _Pod:
    uid: str
    ip: str
    port: int
    created: str
    owner: str  # uid of the controlling owner (the PyTorchJob)


class ProgressTracker:
    """Reads the master pods of tracked runs; see the module docstring."""

    def __init__(
        self,
        *,
        interval: float = DEFAULT_INTERVAL,
        workers: int = DEFAULT_WORKERS,
        timeout: float = DEFAULT_TIMEOUT,
        on_change: Callable[[str, str], None] = lambda namespace, name: None,
        fetch: Fetch = http_fetch,
        clock: Callable[[], float] = time.time,
        metrics: Any = None,
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self.on_change = on_change
        self.fetch = fetch
        self.clock = clock
        self.metrics = metrics
        self._runs: dict[tuple[str, str], _Run] = {}
        self._pods: dict[tuple[str, str], dict[str, _Pod]] = {}  # (namespace, job) -> pod uid -> pod
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="progress")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what to read ---------------------------------------------------------------------------

    def track(
        self,
        namespace: str,
        name: str,
        run: str,
        job: str,
        *,
        deadline: int | None,
        target_samples: int | None,
        job_uid: str = "",
        recorded: Mapping[str, Any] | None = None,
        started: str | None = None,
    ) -> ProgressView:
        """The run is Running: read it from now on; returns what the status should show.
        `recorded` is the status.progress written earlier for this run (an operator restart
        keeps its last progress time, so a restart does not reset the deadline)."""
        now = self.clock()
        with self._lock:
            current = self._runs.get((namespace, name))
            if current is None or current.run != run:
                current = _Run(namespace, name, run, job, deadline, target_samples, job_uid)
                seed = parse_time((recorded or {}).get("lastProgressTime")) if recorded else None
                current.last_progress = seed or parse_time(started) or now
                if recorded and isinstance(recorded.get("consumedSamples"), int):
                    current.consumed = recorded["consumedSamples"]
                    current.fields = {k: v for k, v in recorded.items() if k not in ("targetSamples",)}
                current.next_due = now
                self._runs[(namespace, name)] = current
            else:
                current.deadline = deadline
                current.target_samples = target_samples
                current.job_uid = job_uid
            current.exceeded = self._exceeded(current, now)
            if self.metrics is not None:
                self.metrics.progress_runs.set(len(self._runs))
            return current.view()

    def untrack(self, namespace: str, name: str) -> None:
        with self._lock:
            self._runs.pop((namespace, name), None)
            if self.metrics is not None:
                self.metrics.progress_runs.set(len(self._runs))

    def observe_pod(self, pod: Mapping[str, Any], deleted: bool = False) -> None:
        """A master pod event (from the operator's pod watch): remember where it answers."""
        meta = pod.get("metadata") or {}
        job = (meta.get("labels") or {}).get(JOB_NAME_LABEL)
        namespace, uid = meta.get("namespace"), meta.get("uid")
        if not job or not namespace or not uid:
            return
        status = pod.get("status") or {}
        ip = status.get("podIP")
        with self._lock:
            pods = self._pods.setdefault((namespace, job), {})
            if deleted or status.get("phase") != "Running" or not ip or meta.get("deletionTimestamp"):
                pods.pop(uid, None)
                if not pods:
                    del self._pods[(namespace, job)]
                return
            owner = next(
                (r.get("uid", "") for r in meta.get("ownerReferences") or [] if r.get("controller")), ""
            )
            pods[uid] = _Pod(uid, str(ip), _metrics_port(pod), str(meta.get("creationTimestamp") or ""), owner)

    def address(self, namespace: str, job: str, job_uid: str = "") -> str | None:
        with self._lock:
            return self._address(namespace, job, job_uid)

    def _address(self, namespace: str, job: str, job_uid: str = "") -> str | None:
        pods = [p for p in (self._pods.get((namespace, job)) or {}).values() if not job_uid or p.owner == job_uid]
        if not pods:
            return None
        pod = max(pods, key=lambda p: p.created)  # a replaced master: the newest one answers
        host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
        return f"http://{host}:{pod.port}/metrics"

    # -- the sweep ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="progress-sweep", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        tick = max(0.2, min(1.0, self.interval / 4))
        while not self._stop.wait(tick):
            try:
                self.sweep()
            except Exception:  # the sweep must survive anything; the next one retries
                log.exception("progress sweep failed")

    def sweep(self) -> None:
        """Start the reads that are due and apply the deadline to every tracked run."""
        now = self.clock()
        due: list[tuple[_Run, str]] = []
        changed: list[tuple[str, str]] = []
        with self._lock:
            for key, run in self._runs.items():
                exceeded = self._exceeded(run, now)
                if exceeded != run.exceeded:
                    run.exceeded = exceeded
                    changed.append(key)
                if run.busy or run.next_due > now:
                    continue
                url = self._address(run.namespace, run.job, run.job_uid)
                run.next_due = now + self.interval
                if url is None:
                    continue
                run.busy = True
                due.append((run, url))
        for key in changed:
            self._announce(key)
        for run, url in due:
            self._pool.submit(self._read, run, url)

    def read_now(self, namespace: str, name: str) -> bool:
        """One read of one tracked run in this thread (tests); True when a reading was accepted."""
        with self._lock:
            run = self._runs.get((namespace, name))
            url = self._address(namespace, run.job, run.job_uid) if run is not None else None
            if run is None or url is None:
                return False
            run.busy = True
        return self._read(run, url)

    def _read(self, run: _Run, url: str) -> bool:
        started = time.monotonic()
        outcome = "error"
        try:
            try:
                text = self.fetch(url, self.timeout)
            except (OSError, ValueError, http.client.HTTPException) as err:
                log.debug("progress of %s/%s: %s: %s", run.namespace, run.name, url, err)
                return False
            reading = parse_reading(text, run.name, run.run)
            if reading is None:
                outcome = "foreign"
                log.log(logging.DEBUG if run.told_foreign else logging.INFO,
                        "progress of %s/%s: %s holds no series of run %s; ignored", run.namespace, run.name, url,
                        run.run)
                run.told_foreign = True
                return False
            outcome = "accepted"
            if self._apply(run, reading):
                self._announce((run.namespace, run.name))
            return True
        finally:
            with self._lock:
                run.busy = False
            if self.metrics is not None:
                self.metrics.progress_reads.labels(outcome).inc()
                self.metrics.progress_read_duration.observe(time.monotonic() - started)

    def _apply(self, run: _Run, reading: Reading) -> bool:
        """Fold a reading into the run; True when what the status shows changed."""
        now = self.clock()
        with self._lock:
            if self._runs.get((run.namespace, run.name)) is not run:
                return False  # untracked (or a new run) meanwhile
            stepped = run.consumed is not None and reading.consumed_samples > run.consumed
            if stepped:
                run.last_progress = now
            if run.first is None or reading.consumed_samples < run.first[1]:
                run.first = (now, reading.consumed_samples)
            fields = self._fields(run, reading, now, stepped or run.consumed is None)
            run.consumed = reading.consumed_samples
            exceeded = self._exceeded(run, now)
            comparable = {k: v for k, v in fields.items() if k not in ("readingTime", "lastProgressTime")}
            before = {k: v for k, v in run.fields.items() if k not in ("readingTime", "lastProgressTime")}
            changed = comparable != before or exceeded != run.exceeded
            if changed:
                run.fields = fields
            run.exceeded = exceeded
            return changed

    def _fields(self, run: _Run, reading: Reading, now: float, stepped: bool) -> dict[str, Any]:
        target = run.target_samples or reading.target_samples
        out: dict[str, Any] = {"consumedSamples": reading.consumed_samples}
        if target:
            out["percent"] = min(100, math.floor(100 * reading.consumed_samples / target))
        if reading.tokens_per_second is not None:
            out["tokensPerSecond"] = round(reading.tokens_per_second, 1)
        if reading.train_loss is not None:
            out["trainLoss"] = _sig(reading.train_loss)
        if reading.mean_validation_loss is not None:
            out["meanValidationLoss"] = _sig(reading.mean_validation_loss)
            if reading.validation_step is not None:
                out["validationStep"] = reading.validation_step
        if not stepped:
            if "estimatedCompletionTime" in run.fields:  # no new step: no new estimate
                out["estimatedCompletionTime"] = run.fields["estimatedCompletionTime"]
        elif target and run.first is not None:
            since, consumed0 = run.first
            rate = (reading.consumed_samples - consumed0) / (now - since) if now > since else 0.0
            if rate > 0 and reading.consumed_samples < target:
                # rounded to the minute: the estimate moves with every reading otherwise
                eta = now + (target - reading.consumed_samples) / rate
                out["estimatedCompletionTime"] = rfc3339(round(eta / 60) * 60)
        out["readingTime"] = rfc3339(now)
        out["lastProgressTime"] = rfc3339(run.last_progress)
        return out

    @staticmethod
    def _exceeded(run: _Run, now: float) -> bool:
        return run.deadline is not None and now - run.last_progress > run.deadline

    def _announce(self, key: tuple[str, str]) -> None:
        try:
            self.on_change(*key)
        except Exception:
            log.exception("progress of %s/%s: could not schedule a reconciliation", *key)


def _metrics_port(pod: Mapping[str, Any]) -> int:
    """The trainer container's port named `metrics` (the operator rendered it)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == METRICS_PORT_NAME and isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
    return METRICS_PORT

