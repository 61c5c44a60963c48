"""How a Controller sorts reconcile outcomes into metrics, logs and requeues, and how it stops.

The reconcile functions here are scripted (no Kubernetes): each call answers with the next
outcome of its script. API errors are built with `error_for` from Status bodies the API server
really sends, so the classification is tested on realistic input. Informer sync is covered
against a real API server in tests/integration/test_informer.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from controller.kube.errors import TransportError, error_for
from controller.metrics import REGISTRY
from controller.runtime import controller as controller_module
from controller.runtime.controller import Controller, Result, TerminalError
from controller.testing.waiting import consistently, eventually

STALE_PATCH_STATUS = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "the server rejected our request due to an error in our request",
    "reason": "Invalid",
    "details": {},
    "code": 422,
}
SCHEMA_INVALID_STATUS = {
    "kind": "Status",
    "status": "Failure",
    "message": 'LocalModelNamespaceCache.serving.kserve.io "c1" is invalid: spec.nodeGroups: '
    "Required value",
    "reason": "Invalid",
    "details": {
        "name": "c1",
        "causes": [
            {
                "reason": "FieldValueRequired",
                "message": "Required value",
                "field": "spec.nodeGroups",
            }
        ],
    },
    "code": 422,
}
CONFLICT_STATUS = {
    "kind": "Status",
    "message": 'Operation cannot be fulfilled on configmaps "a": the object has been modified; '
    "please apply your changes to the latest version and try again",
    "reason": "Conflict",
    "code": 409,
}
BEING_DELETED_STATUS = {
    "kind": "Status",
    "message": 'object is being deleted: configmaps "a" already exists',
    "reason": "AlreadyExists",
    "code": 409,
}
NAMESPACE_TERMINATING_STATUS = {
    "kind": "Status",
    "message": 'jobs "j" is forbidden: unable to create new content in namespace jobs because it '
    "is being terminated",
    "reason": "Forbidden",
    "details": {"causes": [{"reason": "NamespaceTerminating", "type": "NamespaceTerminating"}]},
    "code": 403,
}


class ScriptedReconcile:
    """Answers call n with outcome n (an exception is raised, anything else returned)."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, float]] = []

    async def __call__(self, key: str) -> Result | None:
        self.calls.append((key, time.monotonic()))
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    @property
    def count(self) -> int:
        return len(self.calls)


def value(metric: str, controller: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, {"controller": controller, **labels})


def counts(name: str) -> dict[str, float]:
    """Every reconcile counter of one controller, for before/after comparisons."""
    found = {
        f"result={result}": value("controller_runtime_reconcile_total", name, result=result)
        for result in controller_module.RESULTS
    }
    for short, metric in (
        ("errors", "controller_runtime_reconcile_errors_total"),
        ("terminal", "controller_runtime_terminal_reconcile_errors_total"),
        ("panics", "controller_runtime_reconcile_panics_total"),
        ("conflicts", "localmodel_reconcile_conflicts_total"),
    ):
        found[short] = value(metric, name)
    return {key: number or 0.0 for key, number in found.items()}


@pytest.fixture(name="start")
async def _start() -> AsyncIterator[Callable[[Controller], asyncio.Task[None]]]:
    """`start(controller)` runs it in a task that is cancelled (and awaited) after the test."""
    tasks: list[asyncio.Task[None]] = []

    def start(controller: Controller) -> asyncio.Task[None]:
        task = asyncio.create_task(controller.run())
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)


def test_controller_zero_fills_every_series_at_construction(
    unique_name: Callable[..., str],
) -> None:
    name = unique_name()

    Controller(name, ScriptedReconcile(), informers=[], workers=3)

    for result in ("success", "error", "requeue", "requeue_after"):
        assert value("controller_runtime_reconcile_total", name, result=result) == 0
    for metric in (
        "controller_runtime_reconcile_errors_total",
        "controller_runtime_terminal_reconcile_errors_total",
        "controller_runtime_reconcile_panics_total",
        "localmodel_reconcile_conflicts_total",
        "controller_runtime_active_workers",
    ):
        assert value(metric, name) == 0, metric
    assert value("controller_runtime_max_concurrent_reconciles", name) == 3


async def test_controller_success_counts_and_runs_once(
    start: Callable[[Controller], asyncio.Task[None]], unique_name: Callable[..., str]
) -> None:
    reconcile = ScriptedReconcile(Result())
    controller = Controller(unique_name(), reconcile, informers=[])
    start(controller)

    controller.enqueue("ns/a")

    await eventually(lambda: counts(controller.name)["result=success"] == 1, timeout=5)
    await consistently(lambda: reconcile.count == 1, duration=0.3)
    assert counts(controller.name)["errors"] == 0
    assert value("controller_runtime_reconcile_time_seconds_count", controller.name) == 1


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(
            error_for(500, {"message": "etcd timeout"}, None),
            {"errors": 1},
            id="server-error",
        ),
        pytest.param(TransportError("connection refused"), {"errors": 1}, id="transport-error"),
        pytest.param(
            error_for(404, {"reason": "NotFound"}, None), {"errors": 1}, id="not-found-is-an-error"
        ),
        pytest.param(error_for(409, CONFLICT_STATUS, None), {"conflicts": 1}, id="conflict"),
        pytest.param(
            error_for(409, BEING_DELETED_STATUS, None), {"conflicts": 1}, id="already-exists"
        ),
        pytest.param(
            error_for(422, STALE_PATCH_STATUS, None), {"conflicts": 1}, id="bare-422-stale-patch"
        ),
        pytest.param(
            error_for(422, SCHEMA_INVALID_STATUS, None), {"errors": 1}, id="422-with-causes"
        ),
        pytest.param(
            error_for(422, {**STALE_PATCH_STATUS, "message": "something else"}, None),
            {"errors": 1},
            id="422-without-causes-other-message",
        ),
        pytest.param(
            error_for(403, NAMESPACE_TERMINATING_STATUS, None),
            {"conflicts": 1},
            id="namespace-terminating",
        ),
        pytest.param(
            error_for(403, {"reason": "Forbidden", "message": "rbac says no"}, None),
            {"errors": 1},
            id="forbidden",
        ),
        pytest.param(ValueError("bug"), {"errors": 1, "panics": 1}, id="unexpected-exception"),
    ],
)
async def test_controller_retries_error_with_backoff_and_counts_it(
    start: Callable[[Controller], asyncio.Task[None]],
    unique_name: Callable[..., str],
    error: Exception,
    expected: dict[str, float],
) -> None:
    reconcile = ScriptedReconcile(error, Result())
    controller = Controller(unique_name(), reconcile, informers=[])
    start(controller)

    controller.enqueue("ns/a")

    await eventually(lambda: counts(controller.name)["result=success"] == 1, timeout=5)
    assert reconcile.count == 2, "the failed key must be retried once, then succeed"
    want = {"errors": 0, "terminal": 0, "panics": 0, "conflicts": 0, **expected}
    got = counts(controller.name)
    assert {key: got[key] for key in want} == want
    outcome = "result=requeue" if "conflicts" in expected else "result=error"
    assert (got["result=error"] + got["result=requeue"], got[outcome]) == (1, 1)
    assert controller.queue.num_requeues("ns/a") == 0, "success must forget the backoff"
    assert value("workqueue_retries_total", controller.name, name=controller.name) == 1


async def test_controller_terminal_error_is_counted_and_not_retried(
    start: Callable[[Controller], asyncio.Task[None]], unique_name: Callable[..., str]
) -> None:
    reconcile = ScriptedReconcile(TerminalError("spec.nodeGroups names no group"), Result())
    controller = Controller(unique_name(), reconcile, informers=[])
    start(controller)

    with capture_logs() as logs:
        controller.enqueue("ns/a")
        await eventually(lambda: counts(controller.name)["terminal"] == 1, timeout=5)
        await consistently(lambda: reconcile.count == 1, duration=0.3)

    got = counts(controller.name)
    assert (got["result=error"], got["errors"], got["panics"], got["conflicts"]) == (1, 1, 0, 0)
    assert controller.queue.num_requeues("ns/a") == 0
    assert [entry["log_level"] for entry in logs if entry["event"] == "reconcile failed terminally"]
    assert not value("workqueue_retries_total", controller.name, name=controller.name)

    controller.enqueue("ns/a")  # a later event brings the key back
    await eventually(lambda: reconcile.count == 2, timeout=5)


async def test_controller_requeue_after_forgets_backoff_and_runs_again_later(
    start: Callable[[Controller], asyncio.Task[None]], unique_name: Callable[..., str]
) -> None:
    error = error_for(500, {"message": "boom"}, None)
    reconcile = ScriptedReconcile(error, error, Result(requeue_after=0.3), Result())
    controller = Controller(unique_name(), reconcile, informers=[])
    start(controller)

    controller.enqueue("ns/a")

    await eventually(lambda: reconcile.count == 4, timeout=5)
    got = counts(controller.name)
    assert (got["result=error"], got["result=requeue_after"], got["result=success"]) == (2, 1, 1)
    requeued_at, rerun_at = reconcile.calls[2][1], reconcile.calls[3][1]
    assert rerun_at - requeued_at >= 0.3
    assert controller.queue.num_requeues("ns/a") == 0


async def test_controller_requeue_after_leaves_key_waiting_without_backoff_history(
    start: Callable[[Controller], asyncio.Task[None]], unique_name: Callable[..., str]
) -> None:
    error = error_for(503, {"message": "unavailable"}, None)
    reconcile = ScriptedReconcile(error, error, Result(requeue_after=60))
    controller = Controller(unique_name(), reconcile, informers=[])
    start(controller)

    controller.enqueue("ns/a")

    await eventually(lambda: counts(controller.name)["result=requeue_after"] == 1, timeout=5)
    assert controller.queue.num_requeues("ns/a") == 0
    delayed = value("localmodel_workqueue_delayed", controller.name, name=controller.name)
    assert delayed == 1


async def test_controller_logs_conflicts_quietly_and_errors_as_warnings(
    start: Callable[[Controller], asyncio.Task[None]], unique_name: Callable[..., str]
) -> None:
    conflict = error_for(409, CONFLICT_STATUS, None)
    failure = error_for(500, {"message": "etcd timeout"}, None)
    reconcile = ScriptedReconcile(conflict, failure, Result())
    controller = Controller(unique_name(), reconcile, informers=[])
    start(controller)

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        controller.enqueue("ns/a")
        await eventually(lambda: counts(controller.name)["result=success"] == 1, timeout=5)

    by_event = {(entry["event"], entry["log_level"]) for entry in logs}
    assert ("reconcile conflict", "debug") in by_event
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["error_type"] for entry in warnings] == ["ServerError"]
    finished = [entry for entry in logs if entry["event"] == "reconcile finished"]
    assert [entry["result"] for entry in finished] == ["requeue", "error", "success"]
    assert {entry["controller"] for entry in finished} == {controller.name}
    assert {entry["key"] for entry in finished} == {"ns/a"}
    assert len({entry["reconcile_id"] for entry in finished}) == 3


async def test_controller_never_runs_more_workers_than_configured(
    start: Callable[[Controller], asyncio.Task[None]], unique_name: Callable[..., str]
) -> None:
    release = asyncio.Event()
    running: set[str] = set()
    peak = 0
    finished: list[str] = []

    async def reconcile(key: str) -> None:
        nonlocal peak
        running.add(key)
        peak = max(peak, len(running))
        await release.wait()
        running.discard(key)
        finished.append(key)

    controller = Controller(unique_name(), reconcile, informers=[], workers=4)
    start(controller)
    for index in range(10):
        controller.enqueue(f"ns/object-{index}")

    await eventually(lambda: len(running) == 4, timeout=5)
    assert value("controller_runtime_active_workers", controller.name) == 4
    await consistently(lambda: len(running) == 4, duration=0.2)

    release.set()
    await eventually(lambda: len(finished) == 10, timeout=5)
    assert peak == 4
    assert value("controller_runtime_active_workers", controller.name) == 0


async def test_controller_cancel_lets_reconcile_in_flight_finish_and_starts_no_new_one(
    unique_name: Callable[..., str],
) -> None:
    release = asyncio.Event()
    started: list[str] = []
    outcomes: list[str] = []

    async def reconcile(key: str) -> None:
        started.append(key)
        try:
            await release.wait()
        except asyncio.CancelledError:
            outcomes.append(f"{key} cancelled")
            raise
        outcomes.append(f"{key} finished")

    controller = Controller(unique_name(), reconcile, informers=[])
    task = asyncio.create_task(controller.run())
    controller.enqueue("ns/a")
    await eventually(lambda: started == ["ns/a"], timeout=5)
    controller.enqueue("ns/b")

    task.cancel()
    await consistently(lambda: not task.done(), duration=0.2)
    release.set()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    assert outcomes == ["ns/a finished"]
    assert started == ["ns/a"]
    assert counts(controller.name)["result=success"] == 1


async def test_controller_cancels_reconcile_after_shutdown_timeout_and_counts_no_success(
    monkeypatch: pytest.MonkeyPatch, unique_name: Callable[..., str]
) -> None:
    monkeypatch.setattr(controller_module, "SHUTDOWN_TIMEOUT", 0.2)
    cancelled = asyncio.Event()

    async def reconcile(key: str) -> None:
        try:
            await asyncio.Event().wait()  # never finishes on its own
        except asyncio.CancelledError:
            cancelled.set()
            raise

    controller = Controller(unique_name(), reconcile, informers=[])
    task = asyncio.create_task(controller.run())
    controller.enqueue("ns/a")
    await eventually(
        lambda: value("controller_runtime_active_workers", controller.name) == 1, timeout=5
    )

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    assert cancelled.is_set()
    got = counts(controller.name)
    assert (got["result=success"], got["result=error"], got["errors"]) == (0, 1, 1)
    assert value("controller_runtime_active_workers", controller.name) == 0


async def test_controller_run_fails_when_a_worker_dies(
    monkeypatch: pytest.MonkeyPatch,
    unique_name: Callable[..., str],
) -> None:
    # The dead worker never marks its key done, so the drain can only end by its timeout.
    monkeypatch.setattr(controller_module, "SHUTDOWN_TIMEOUT", 0.1)
    controller = Controller(unique_name(), ScriptedReconcile(), informers=[])

    def broken_done(key: str) -> None:
        raise RuntimeError("queue bookkeeping broke")

    controller.queue.done = broken_done  # type: ignore[method-assign]
    task = asyncio.create_task(controller.run())
    controller.enqueue("ns/a")

    with pytest.raises(RuntimeError, match="bookkeeping"):
        await asyncio.wait_for(task, timeout=5)


async def test_controller_publishes_age_of_reconcile_in_flight(
    start: Callable[[Controller], asyncio.Task[None]], unique_name: Callable[..., str]
) -> None:
    release = asyncio.Event()

    async def reconcile(key: str) -> None:
        await release.wait()

    controller = Controller(unique_name(), reconcile, informers=[])
    start(controller)
    controller.enqueue("ns/slow")

    def longest() -> float:
        labels = {"name": controller.name}
        return value("workqueue_longest_running_processor_seconds", controller.name, **labels) or 0

    # The controller refreshes these gauges every 0.5 s while the key is held.
    await eventually(lambda: longest() >= 0.3, timeout=5)
    unfinished = value("workqueue_unfinished_work_seconds", controller.name, name=controller.name)
    assert unfinished is not None and unfinished >= 0.3

    release.set()
    await eventually(lambda: longest() == 0, timeout=5)
