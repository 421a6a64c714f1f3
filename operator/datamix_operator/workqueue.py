"""A work queue of keys with controller-runtime's semantics (client-go `workqueue`), no kopf here.

- A key is in the queue at most once: adding a key that waits already does nothing (coalescing).
- A key being processed (between `get` and `done`) is never handed to a second worker; adding it
  meanwhile marks it dirty, and `done` puts it back, so it is processed once more afterwards.
- `add(key, urgent=True)` queues a key ahead of the others (a new object's first reconciliation,
  so that a burst of new objects is not queued behind the follow-ups of the earlier ones).
- `add_after` delays a key (the earliest of several delays wins); `add_rate_limited` delays it by
  the key's exponential backoff, which `forget` resets after a success.
- No thread of its own: the workers blocked in `get` also release the delayed keys when they are
  due. Memory is bounded by the number of distinct keys (one entry each in the queue, the dirty
  and processing sets, the delayed table and the backoff table).
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class ExponentialBackoff(Generic[K]):
    """Per-key backoff: `base` x 2^(failures - 1), at most `cap`, plus up to `jitter` of it so that
    keys that failed together (an API server outage) do not all retry at the same instant."""

    def __init__(
        self,
        base: float = 2.0,
        cap: float = 120.0,
        jitter: float = 0.1,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.random_fraction = random_fraction
        self._failures: dict[K, int] = {}
        self._lock = threading.Lock()

    def when(self, key: K) -> float:
        """Count one more failure of `key`; the delay before its retry."""
        with self._lock:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
        delay = min(self.base * 2.0 ** min(failures - 1, 62), self.cap)
        return delay * (1.0 + self.jitter * self.random_fraction())

    def failures(self, key: K) -> int:
        with self._lock:
            return self._failures.get(key, 0)

    def forget(self, key: K) -> None:
        with self._lock:
            self._failures.pop(key, None)


class WorkQueue(Generic[K]):
    def __init__(
        self, backoff: ExponentialBackoff[K] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.backoff: ExponentialBackoff[K] = backoff if backoff is not None else ExponentialBackoff()
        self.clock = clock
        self._cond = threading.Condition()
        self._queue: deque[K] = deque()  # ready, in order; each key at most once in both
        self._urgent: deque[K] = deque()  # ready, before those of _queue
        self._dirty: set[K] = set()  # to be processed (queued, or waiting for its worker's `done`)
        self._processing: set[K] = set()
        self._due: dict[K, float] = {}  # delayed key -> when it is due (the earliest asked for)
        self._heap: list[tuple[float, int, K]] = []  # (due, tie-break, key); stale entries skipped
        self._seq = itertools.count()
        self._shutting_down = False

    # -- adding

    def add(self, key: K, urgent: bool = False) -> None:
        with self._cond:
            self._add(key, urgent)

    def add_after(self, key: K, delay: float) -> None:
        with self._cond:
            if delay <= 0:
                self._add(key)
                return
            due = self.clock() + delay
            if key in self._due and self._due[key] <= due:
                return  # an earlier retry is already planned
            self._due[key] = due
            heapq.heappush(self._heap, (due, next(self._seq), key))
            if len(self._heap) > 2 * len(self._due) + 16:
                self._heap = [(d, s, k) for d, s, k in self._heap if self._due.get(k) == d]
                heapq.heapify(self._heap)
            self._cond.notify_all()  # a waiting worker may have to wake up earlier now

    def add_rate_limited(self, key: K) -> float:
        """Retry `key` after its backoff; returns the delay."""
        delay = self.backoff.when(key)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """The key succeeded: its next failure starts from the base delay again."""
        self.backoff.forget(key)

    # -- processing

    def get(self, timeout: float | None = None) -> K | None:
        """The next key to process (blocks; None once shut down, or after `timeout` seconds). The
        caller must call `done(key)` when it has finished with it."""
        with self._cond:
            deadline = None if timeout is None else self.clock() + timeout
            while True:
                if self._shutting_down:
                    return None
                self._release_due()
                if self._urgent or self._queue:
                    key = self._urgent.popleft() if self._urgent else self._queue.popleft()
                    self._processing.add(key)
                    self._dirty.discard(key)
                    return key
                now = self.clock()
                wait = self._heap[0][0] - now if self._heap else None
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def done(self, key: K) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()

    def shutdown(self) -> None:
        with self._cond:
            self._shutting_down = True
            self._cond.notify_all()

    # -- looking

    def __len__(self) -> int:
        """Keys ready to be processed."""
        with self._cond:
            return len(self._urgent) + len(self._queue)

    def busy(self) -> bool:
        """Keys ready or being processed (delayed ones aside)."""
        with self._cond:
            return bool(self._urgent or self._queue or self._processing)

    def delayed(self) -> dict[K, float]:
        """Delayed keys and the seconds until each is due."""
        with self._cond:
            now = self.clock()
            return {k: due - now for k, due in self._due.items()}

    # -- inside the lock

    def _add(self, key: K, urgent: bool = False) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # `done` queues it again
        (self._urgent if urgent else self._queue).append(key)
        self._cond.notify()

    def _release_due(self) -> None:
        now = self.clock()
        while self._heap and self._heap[0][0] <= now:
            due, _, key = heapq.heappop(self._heap)
            if self._due.get(key) == due:
                del self._due[key]
                self._add(key)
