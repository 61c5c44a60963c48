"""Reconcile workers: take keys from a work queue, call the reconciler, sort the outcome.

Outcomes, as controller-runtime defines them:
- `Result()` or None: success; the key's backoff is forgotten.
- `Result(requeue_after=s)`: forget the backoff, reconcile again in `s` seconds.
- `TerminalError`: logged and counted, not retried (a later event will bring the key back).
- a write conflict (409, or 422 from a failed JSON-patch test): retried with backoff, counted as
  result "requeue" and in `localmodel_reconcile_conflicts_total`, logged at debug; the store was
  just behind.
- any other error: retried with per-key exponential backoff and logged as a warning.
Workers start only after every informer the controller reads has synced.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from controller import metrics
from controller.kube.errors import Conflict, Forbidden, Invalid, KubeError
from controller.runtime.informer import Informer
from controller.runtime.workqueue import WorkQueue

log = structlog.get_logger(__name__)

RESULTS = ("success", "error", "requeue", "requeue_after")
CACHE_SYNC_TIMEOUT = 120.0
SHUTDOWN_TIMEOUT = 30.0
STALE_PATCH_MESSAGE = "the server rejected our request due to an error in our request"


@dataclass(frozen=True)
class Result:
    """What a reconcile asks for next; the default means "done until something changes"."""

    requeue_after: float | None = None


class TerminalError(Exception):
    """Raised by a reconciler when retrying cannot help (the input itself is wrong)."""


Reconcile = Callable[[str], Awaitable[Result | None]]


class Controller:
    """Runs `workers` tasks that reconcile keys from one queue."""

    def __init__(
        self,
        name: str,
        reconcile: Reconcile,
        *,
        informers: Sequence[Informer],
        workers: int = 1,
    ) -> None:
        self.name = name
        self.reconcile = reconcile
        self.informers = list(informers)
        self.workers = workers
        self.queue = WorkQueue(name)
        for result in RESULTS:
            metrics.RECONCILE_TOTAL.labels(name, result)
        for family in (
            metrics.RECONCILE_ERRORS,
            metrics.TERMINAL_RECONCILE_ERRORS,
            metrics.RECONCILE_PANICS,
            metrics.RECONCILE_CONFLICTS,
        ):
            family.labels(name)
        metrics.MAX_CONCURRENT_RECONCILES.labels(name).set(workers)
        metrics.ACTIVE_WORKERS.labels(name).set(0)

    def enqueue(self, key: str) -> None:
        self.queue.add(key)

    async def run(self) -> None:
        """Wait for the informers, then reconcile until cancelled; drains in-flight work."""
        try:
            async with asyncio.timeout(CACHE_SYNC_TIMEOUT):
                await asyncio.gather(*(informer.wait_synced() for informer in self.informers))
        except TimeoutError:
            pending = [i.name for i in self.informers if not i.synced]
            raise RuntimeError(f"{self.name}: informers not synced in time: {pending}") from None
        log.info("controller started", controller=self.name, workers=self.workers)
        tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]
        tasks.append(asyncio.create_task(self._publish_queue_metrics()))
        try:
            # NB: asyncio.wait, unlike gather, leaves the workers running when run() is cancelled,
            # so that _shut_down can let the reconciles in flight finish.
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            await self._shut_down(tasks)

    async def _shut_down(self, tasks: list[asyncio.Task[None]]) -> None:
        # Let reconciles already running finish (bounded), then stop the workers.
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                await self.queue.shut_down_with_drain()
        except TimeoutError:
            log.warning("controller shutdown timed out", controller=self.name)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.info("controller stopped", controller=self.name)

    async def _publish_queue_metrics(self) -> None:
        while True:
            self.queue.publish_processing_metrics()
            await asyncio.sleep(0.5)

    async def _work(self) -> None:
        while (key := await self.queue.get()) is not None:
            try:
                await self._reconcile_one(key)
            finally:
                self.queue.done(key)

    async def _reconcile_one(self, key: str) -> None:
        started = time.monotonic()
        active = metrics.ACTIVE_WORKERS.labels(self.name)
        active.inc()
        outcome = "success"
        with structlog.contextvars.bound_contextvars(
            controller=self.name, key=key, reconcile_id=uuid.uuid4().hex
        ):
            try:
                result = await self.reconcile(key) or Result()
                if result.requeue_after:
                    outcome = "requeue_after"
                    self.queue.forget(key)
                    self.queue.add_after(key, result.requeue_after)
                else:
                    self.queue.forget(key)
            except asyncio.CancelledError:
                # Cut short (shutdown timed out): the work may be half done, so not a success.
                outcome = "error"
                metrics.RECONCILE_ERRORS.labels(self.name).inc()
                raise
            except TerminalError as exc:
                outcome = "error"
                metrics.RECONCILE_ERRORS.labels(self.name).inc()
                metrics.TERMINAL_RECONCILE_ERRORS.labels(self.name).inc()
                self.queue.forget(key)
                log.error("reconcile failed terminally", error=str(exc))
            except KubeError as exc:
                # A conflict is an expected, retried condition: counted apart from errors, so
                # that alerts on result="error" mean something is really wrong.
                outcome = "requeue" if _is_conflict(exc) else "error"
                self._retry(key, exc)
            except Exception as exc:
                outcome = "error"
                metrics.RECONCILE_PANICS.labels(self.name).inc()
                log.exception("reconcile raised unexpectedly", error=type(exc).__name__)
                self._retry(key, exc, logged=True)
            finally:
                active.dec()
                duration = time.monotonic() - started
                metrics.RECONCILE_TIME.labels(self.name).observe(duration)
                metrics.RECONCILE_TOTAL.labels(self.name, outcome).inc()
                log.debug(
                    "reconcile finished", result=outcome, duration_ms=round(duration * 1000, 1)
                )

    def _retry(self, key: str, exc: Exception, *, logged: bool = False) -> None:
        self.queue.add_rate_limited(key)
        if _is_conflict(exc):
            # The store lagged behind a write, or another writer won the race: retry quietly.
            metrics.RECONCILE_CONFLICTS.labels(self.name).inc()
            log.debug("reconcile conflict", error=str(exc), attempt=self.queue.num_requeues(key))
            return
        metrics.RECONCILE_ERRORS.labels(self.name).inc()
        if not logged:
            log.warning(
                "reconcile failed",
                error=str(exc),
                error_type=type(exc).__name__,
                attempt=self.queue.num_requeues(key),
            )


def _is_conflict(exc: Exception) -> bool:
    """True for errors that mean "your view was stale", which a retry resolves by itself."""
    if isinstance(exc, Conflict):  # includes AlreadyExists: a create raced our own cache
        return True
    if isinstance(exc, Invalid):
        # A JSON patch whose `test` of resourceVersion failed: the API server answers a bare 422
        # without causes, unlike schema or CEL validation errors, which always name their causes.
        return not exc.causes and exc.message == STALE_PATCH_MESSAGE
    return isinstance(exc, Forbidden) and exc.namespace_terminating
