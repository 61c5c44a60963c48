"""A deduplicating, delaying, rate-limited work queue for reconcile keys (asyncio).

Semantics follow client-go's workqueue: a key added several times before a worker takes it is
processed once; a key is never handed to two workers at once; a key added while being processed
is processed again once after `done`. `add_after` keeps the earliest ready time of a key, and
`add_rate_limited` delays a key by its own exponential backoff until `forget` clears it.
Only keys ready now count towards `workqueue_depth`; waiting ones are in
`localmodel_workqueue_delayed`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque

from controller import metrics
from controller.runtime.ratelimit import ExponentialBackoff


class WorkQueue:
    """Keys waiting for a worker. All methods must be called from the event loop's thread."""

    def __init__(self, name: str, *, backoff: ExponentialBackoff | None = None) -> None:
        self.name = name
        # NB: not `backoff or ...`: a backoff with no history has len 0, so it is falsy.
        self.backoff = backoff if backoff is not None else ExponentialBackoff()
        self._ready: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: dict[str, float] = {}  # key -> monotonic time its processing started
        self._added_at: dict[str, float] = {}
        self._waiting: dict[str, float] = {}  # key -> monotonic ready time
        self._heap: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._shutting_down = False
        self._labels = (name, name)

    # --- adding -------------------------------------------------------------------------------

    def add(self, key: str) -> None:
        """Make `key` ready now, unless it already is or the queue is shutting down."""
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        self._added_at[key] = time.monotonic()
        metrics.QUEUE_ADDS.labels(*self._labels).inc()
        if key not in self._processing:
            self._ready.append(key)
            self._publish_depth()
            self._wakeup.set()

    def add_after(self, key: str, delay: float) -> None:
        """Add `key` after `delay` seconds; an earlier pending ready time of `key` wins."""
        if self._shutting_down:
            return
        metrics.QUEUE_RETRIES.labels(*self._labels).inc()
        if delay <= 0:
            self.add(key)
            return
        ready_at = time.monotonic() + delay
        current = self._waiting.get(key)
        if current is not None and current <= ready_at:
            return
        self._waiting[key] = ready_at
        heapq.heappush(self._heap, (ready_at, next(self._sequence), key))
        self._publish_depth()
        self._wakeup.set()

    def add_rate_limited(self, key: str) -> None:
        """Add `key` after its own backoff, which grows with every call until `forget`."""
        self.add_after(key, self.backoff.when(key))

    def forget(self, key: str) -> None:
        """Clear the backoff history of `key` (after it was processed successfully)."""
        self.backoff.forget(key)

    def num_requeues(self, key: str) -> int:
        return self.backoff.failures(key)

    # --- taking -------------------------------------------------------------------------------

    async def get(self) -> str | None:
        """Wait for a ready key and mark it as processing; None once shut down and empty."""
        while True:
            self._promote_due_keys()
            if self._ready:
                key = self._ready.popleft()
                self._dirty.discard(key)
                now = time.monotonic()
                self._processing[key] = now
                metrics.QUEUE_LATENCY.labels(*self._labels).observe(
                    now - self._added_at.pop(key, now)
                )
                self._publish_depth()
                return key
            if self._shutting_down:
                return None
            self._wakeup.clear()
            try:
                async with asyncio.timeout(self._seconds_until_next_delayed()):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    def done(self, key: str) -> None:
        """Mark `key` as processed; if it was added meanwhile it becomes ready again."""
        started = self._processing.pop(key, None)
        if started is not None:
            metrics.QUEUE_WORK_DURATION.labels(*self._labels).observe(time.monotonic() - started)
        if key in self._dirty and not self._shutting_down:
            self._ready.append(key)
            self._publish_depth()
            self._wakeup.set()
        if self._shutting_down and not self._processing:
            self._drained.set()

    # --- shutting down ------------------------------------------------------------------------

    def shut_down(self) -> None:
        """Stop accepting keys and wake every waiting getter; pending delays are dropped."""
        self._shutting_down = True
        self._ready.clear()
        self._dirty.clear()
        self._waiting.clear()
        self._heap.clear()
        self._publish_depth()
        self._wakeup.set()
        if not self._processing:
            self._drained.set()

    async def shut_down_with_drain(self) -> None:
        """Shut down, then wait until every key being processed is `done`."""
        self.shut_down()
        await self._drained.wait()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def __len__(self) -> int:
        return len(self._ready)

    def processing_ages(self) -> list[float]:
        now = time.monotonic()
        return [now - started for started in self._processing.values()]

    def publish_processing_metrics(self) -> None:
        ages = self.processing_ages()
        metrics.QUEUE_UNFINISHED_WORK.labels(*self._labels).set(sum(ages))
        metrics.QUEUE_LONGEST_RUNNING.labels(*self._labels).set(max(ages, default=0.0))

    # --- internals ----------------------------------------------------------------------------

    def _promote_due_keys(self) -> None:
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now:
            ready_at, _, key = heapq.heappop(self._heap)
            if self._waiting.get(key) == ready_at:
                del self._waiting[key]
                self.add(key)
        self._publish_depth()

    def _seconds_until_next_delayed(self) -> float | None:
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - time.monotonic())

    def _publish_depth(self) -> None:
        metrics.QUEUE_DEPTH.labels(*self._labels).set(len(self._ready))
        metrics.QUEUE_DELAYED.labels(*self._labels).set(len(self._waiting))
