"""Leader election with a `coordination.k8s.io/v1` Lease (the client-go leaderelection protocol).

Several operator processes may watch the same namespaces (the chart runs two replicas; an upgrade
overlaps old and new pods; someone runs `datamix operator` by hand). Exactly one acts: the holder
of the Lease. The others keep their watches warm and take over when the holder stops renewing.

The timing is client-go's (`--leader-elect-lease-duration 15s`, `--leader-elect-renew-deadline 10s`,
`--leader-elect-retry-period 2s`):

- every candidate tries to acquire or renew the Lease every retry period (standbys with jitter);
- a standby may take the Lease over once it has seen the same record, unchanged, for a whole
  lease duration, measured on its own monotonic clock (no clock agreement between machines);
- the holder counts itself leader only until `renew deadline` after the *start* of its last
  successful renew request. The renew deadline is shorter than the lease duration, so the old
  holder stops before any standby may start, even if its renewals silently stop arriving.

`Leadership.remaining()` is the fence: `ClientKube` asks it before every write and sends none when
it is not positive, and caps the write's timeout at it. So a process that lost the Lease (a
partition, a stalled process, a renewal answered with another holder) writes nothing more, from
whatever thread, without having to be told in time.
"""

from __future__ import annotations

import datetime
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("datamix_operator")

MICROTIME = "%Y-%m-%dT%H:%M:%S.%fZ"
JITTER = 1.2  # client-go's JitterFactor: a standby waits retry_period * [1, 1.2)


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    """Namespace of the Lease (the operator's own)."""
    name: str = "datamix-operator"
    """Name of the Lease; operators sharing it share one leader."""
    identity: str = ""
    """This process's holder identity (unique per process)."""
    lease_duration: float = 15.0
    """A standby takes over after seeing the record unchanged this long."""
    renew_deadline: float = 10.0
    """The holder stops acting this long after the start of its last successful renewal."""
    retry_period: float = 2.0
    """Seconds between attempts to acquire or renew."""

    def check(self) -> None:
        if not self.lease_duration > self.renew_deadline:
            raise ValueError("--leader-elect-lease-duration must be longer than --leader-elect-renew-deadline")
        if not self.renew_deadline > JITTER * self.retry_period:
            raise ValueError(
                f"--leader-elect-renew-deadline must be longer than {JITTER} x --leader-elect-retry-period"
            )
        if self.retry_period <= 0:
            raise ValueError("--leader-elect-retry-period must be positive")


class LeaseApi(Protocol):
    """The Lease calls (`ClientKube` implements them; a fake in the unit tests)."""

    def get_lease(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None: ...
    def create_lease(self, namespace: str, body: dict[str, Any], timeout: float) -> dict[str, Any]: ...
    def replace_lease(self, namespace: str, name: str, body: dict[str, Any], timeout: float) -> dict[str, Any]: ...


class Leadership:
    """Whether this process may act now. Always yes without leader election."""

    def remaining(self) -> float:
        """Seconds this process may still write (<= 0: not at all)."""
        return float("inf")

    def is_leader(self) -> bool:
        return self.remaining() > 0


def microtime(now: datetime.datetime | None = None) -> str:
    return (now or datetime.datetime.now(datetime.UTC)).strftime(MICROTIME)


class LeaderElector(Leadership):
    """Campaigns for the Lease in a thread of its own, so that a busy event loop or a full pool of
    reconciliations cannot delay a renewal."""

    def __init__(
        self,
        api: LeaseApi,
        settings: LeaseSettings,
        *,
        on_started_leading: Callable[[], None] = lambda: None,
        on_stopped_leading: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        settings.check()
        self.api = api
        self.settings = settings
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.clock = clock
        self._valid_until = float("-inf")  # monotonic; the fence
        self._leading = False  # whether on_started_leading ran without on_stopped_leading since
        self._observed: tuple[Any, ...] | None = None  # the record last seen (holder, renewTime, ...)
        self._observed_at = float("-inf")
        self._stop = threading.Event()
        self._held_at_stop = False
        self._thread: threading.Thread | None = None
        self.failed: BaseException | None = None  # set when the campaign thread died

    # -- the fence

    def remaining(self) -> float:
        return self._valid_until - self.clock()

    # -- running

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop campaigning and acting (the fence closes at once). Idempotent."""
        if not self._stop.is_set():
            self._held_at_stop = self.is_leader()
            self._stop.set()
        self._lose("shutting down")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.settings.retry_period + 5)

    def release(self) -> None:
        """After `stop`: hand the Lease back if this process held it, so that a standby takes over
        at once instead of after a lease duration."""
        self.stop()
        if self._held_at_stop:
            self._held_at_stop = False
            self._release()

    def _run(self) -> None:
        s = self.settings
        try:
            while not self._stop.is_set():
                self.step()
                delay = s.retry_period if self._leading else s.retry_period * random.uniform(1.0, JITTER)
                self._stop.wait(delay)
        except BaseException as err:
            self.failed = err
            self._lose(f"the leader-election thread died: {err!r}")
            log.exception("leader election stopped")

    def step(self) -> bool:
        """One attempt to acquire or renew; returns whether this process holds the Lease now."""
        started = self.clock()
        try:
            held = self._try_acquire_or_renew()
        except Exception as err:
            log.debug("lease %s/%s: attempt failed: %s", self.settings.namespace, self.settings.name, err)
            held = None
        if held is True:
            self._valid_until = started + self.settings.renew_deadline
            if not self._leading:
                self._leading = True
                log.info("lease %s/%s acquired by %s: acting", self.settings.namespace, self.settings.name,
                         self.settings.identity)
                self.on_started_leading()
            return True
        if held is False:  # someone else holds it
            self._lose("another process holds the lease")
        elif self.remaining() <= 0:  # could not renew in time
            self._lose("could not renew the lease before the renew deadline")
        return self.is_leader()

    def _lose(self, why: str) -> None:
        self._valid_until = float("-inf")
        if self._leading:
            self._leading = False
            log.warning("lease %s/%s lost by %s (%s): stopped acting", self.settings.namespace,
                        self.settings.name, self.settings.identity, why)
            self.on_stopped_leading()

    # -- the protocol

    def _timeout(self) -> float:
        # A renewal that takes longer than the time left is no use; a standby's attempt is bounded
        # by the retry period.
        left = self.remaining()
        return max(0.5, min(self.settings.retry_period, left) if left > 0 else self.settings.retry_period)

    def _try_acquire_or_renew(self) -> bool | None:
        """True: this process holds the Lease; False: another one does (and it is not expired);
        None: undecided (the API failed, or a concurrent update won)."""
        s = self.settings
        lease = self.api.get_lease(s.namespace, s.name, self._timeout())
        seen = self.clock()  # a standby's view of the record starts when the answer arrives
        stamp = microtime()
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": s.name, "namespace": s.namespace},
                "spec": self._spec(stamp, stamp, transitions=0),
            }
            self.api.create_lease(s.namespace, body, self._timeout())
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("acquireTime"), spec.get("leaseDurationSeconds"),
                  (lease.get("metadata") or {}).get("resourceVersion"))
        if record != self._observed:
            self._observed, self._observed_at = record, seen
        duration = float(spec.get("leaseDurationSeconds") or s.lease_duration)
        mine = holder == s.identity
        if holder and not mine and self._observed_at + duration > seen:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        acquire = spec.get("acquireTime") if mine else stamp
        if not mine:
            transitions += 1
        lease["spec"] = self._spec(acquire or stamp, stamp, transitions)
        # The update carries the resourceVersion read: a concurrent writer makes it fail (409).
        updated = self.api.replace_lease(s.namespace, s.name, lease, self._timeout())
        self._observed = None  # our own record: a standby's view starts over when it changes
        return bool(updated)

    def _spec(self, acquire: str, renew: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.settings.identity,
            "leaseDurationSeconds": max(1, round(self.settings.lease_duration)),
            "acquireTime": acquire,
            "renewTime": renew,
            "leaseTransitions": transitions,
        }

    def _release(self) -> None:
        s = self.settings
        try:
            lease = self.api.get_lease(s.namespace, s.name, s.retry_period)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != s.identity:
                return
            stamp = microtime()
            lease["spec"] = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1,
                             "acquireTime": stamp, "renewTime": stamp}
            self.api.replace_lease(s.namespace, s.name, lease, s.retry_period)
            log.info("lease %s/%s released", s.namespace, s.name)
        except Exception as err:
            log.warning("could not release lease %s/%s: %s", s.namespace, s.name, err)
