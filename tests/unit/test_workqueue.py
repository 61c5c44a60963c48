"""The work queue: dedup, one worker per key, delays, backoff, shutdown, and the metrics it moves.

Every queue gets a unique name, so its metric series start empty. Waits are bounded by
`eventually`/`consistently` or by the queue's own wake-ups, never by sleeping a guessed time.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable

import pytest

from controller.metrics import REGISTRY
from controller.runtime.ratelimit import ExponentialBackoff
from controller.runtime.workqueue import WorkQueue
from controller.testing.waiting import consistently, eventually, yield_to_other_tasks

GET_TIMEOUT = 5.0


def sample(metric: str, queue: WorkQueue) -> float:
    value = REGISTRY.get_sample_value(metric, {"name": queue.name, "controller": queue.name})
    return value or 0.0


@pytest.fixture(name="queue")
def _queue(unique_name: Callable[..., str]) -> WorkQueue:
    return WorkQueue(unique_name())


async def get_now(queue: WorkQueue) -> str | None:
    return await asyncio.wait_for(queue.get(), timeout=GET_TIMEOUT)


async def test_workqueue_runs_key_once_when_added_many_times_before_get(queue: WorkQueue) -> None:
    for _ in range(100):
        queue.add("ns/a")

    assert len(queue) == 1
    assert sample("workqueue_adds_total", queue) == 1
    assert sample("workqueue_depth", queue) == 1

    assert await get_now(queue) == "ns/a"
    queue.done("ns/a")

    assert len(queue) == 0
    assert sample("workqueue_depth", queue) == 0


async def test_workqueue_keeps_fifo_order_of_distinct_keys(queue: WorkQueue) -> None:
    for key in ("c", "a", "b", "a"):
        queue.add(key)

    assert [await get_now(queue) for _ in range(3)] == ["c", "a", "b"]


async def test_workqueue_add_during_processing_runs_once_more_after_done(queue: WorkQueue) -> None:
    queue.add("ns/a")
    assert await get_now(queue) == "ns/a"

    for _ in range(3):
        queue.add("ns/a")
    assert len(queue) == 0, "a key being processed must not be handed out again"

    queue.done("ns/a")
    assert len(queue) == 1
    assert await get_now(queue) == "ns/a"
    queue.done("ns/a")
    assert len(queue) == 0
    assert sample("workqueue_adds_total", queue) == 2


async def test_workqueue_never_hands_one_key_to_two_workers(queue: WorkQueue) -> None:
    keys = ["ns/a", "ns/b", "ns/c"]
    sequence = itertools.count()
    in_flight: set[str] = set()
    violations: list[str] = []
    runs: Counter[str] = Counter()
    last_added: dict[str, int] = {}
    last_started: dict[str, int] = {}

    async def worker() -> None:
        while (key := await queue.get()) is not None:
            if key in in_flight:
                violations.append(key)
            in_flight.add(key)
            runs[key] += 1
            last_started[key] = next(sequence)
            await yield_to_other_tasks(3)  # hold the key while the other workers run
            in_flight.discard(key)
            queue.done(key)

    workers = [asyncio.create_task(worker()) for _ in range(8)]
    try:
        for _ in range(50):
            for key in keys:
                queue.add(key)
                last_added[key] = next(sequence)
            await yield_to_other_tasks()

        await eventually(lambda: len(queue) == 0 and not in_flight, timeout=GET_TIMEOUT)
        await queue.shut_down_with_drain()
    finally:
        await asyncio.wait_for(asyncio.gather(*workers), timeout=GET_TIMEOUT)

    assert violations == []
    assert set(runs) == set(keys)
    assert all(1 <= runs[key] <= 50 for key in keys)
    # Every add is followed by a run that started after it: no add is lost.
    assert all(last_started[key] > last_added[key] for key in keys)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(0.05, 60.0, id="later-delay-ignored"),
        pytest.param(60.0, 0.05, id="earlier-delay-wins"),
    ],
)
async def test_workqueue_add_after_keeps_earliest_ready_time(
    queue: WorkQueue, first: float, second: float
) -> None:
    started = time.monotonic()
    queue.add_after("ns/a", first)
    queue.add_after("ns/a", second)

    assert len(queue) == 0
    assert sample("localmodel_workqueue_delayed", queue) == 1

    assert await get_now(queue) == "ns/a"
    assert time.monotonic() - started >= 0.05
    queue.done("ns/a")
    assert len(queue) == 0
    assert sample("localmodel_workqueue_delayed", queue) == 0


@pytest.mark.parametrize("delay", [pytest.param(0.0, id="zero"), pytest.param(-1.0, id="negative")])
async def test_workqueue_add_after_without_positive_delay_is_immediate(
    queue: WorkQueue, delay: float
) -> None:
    queue.add_after("ns/a", delay)

    assert len(queue) == 1
    assert sample("localmodel_workqueue_delayed", queue) == 0
    assert sample("workqueue_retries_total", queue) == 1


async def test_workqueue_delayed_key_is_not_ready_before_its_time(queue: WorkQueue) -> None:
    queue.add_after("ns/a", 60.0)
    getter = asyncio.create_task(queue.get())

    await consistently(lambda: not getter.done(), duration=0.3, interval=0.05)
    assert sample("workqueue_depth", queue) == 0
    assert sample("localmodel_workqueue_delayed", queue) == 1

    queue.shut_down()
    assert await asyncio.wait_for(getter, timeout=GET_TIMEOUT) is None
    assert sample("localmodel_workqueue_delayed", queue) == 0


async def test_workqueue_delayed_key_wakes_a_getter_already_waiting(queue: WorkQueue) -> None:
    getter = asyncio.create_task(queue.get())
    await consistently(lambda: not getter.done(), duration=0.1, interval=0.02)

    queue.add_after("ns/a", 0.05)

    assert await asyncio.wait_for(getter, timeout=GET_TIMEOUT) == "ns/a"


async def test_workqueue_rate_limited_delays_grow_and_forget_resets(
    unique_name: Callable[..., str],
) -> None:
    queue = WorkQueue(unique_name(), backoff=ExponentialBackoff(base=0.05, maximum=10.0))

    for attempt, minimum_delay in enumerate([0.05, 0.1, 0.2], start=1):
        started = time.monotonic()
        queue.add_rate_limited("ns/a")
        assert await get_now(queue) == "ns/a"
        # A key can never become ready before its backoff; the backoff doubles each time.
        assert time.monotonic() - started >= minimum_delay
        assert queue.num_requeues("ns/a") == attempt
        queue.done("ns/a")

    assert sample("workqueue_retries_total", queue) == 3

    queue.forget("ns/a")
    assert queue.num_requeues("ns/a") == 0
    started = time.monotonic()
    queue.add_rate_limited("ns/a")
    assert await get_now(queue) == "ns/a"
    assert time.monotonic() - started >= 0.05
    assert queue.num_requeues("ns/a") == 1


async def test_workqueue_rate_limited_readd_does_not_extend_wait(
    unique_name: Callable[..., str],
) -> None:
    queue = WorkQueue(unique_name(), backoff=ExponentialBackoff(base=0.05, maximum=600.0))

    for _ in range(10):  # later calls ask for up to 25 s; the first, earliest time must win
        queue.add_rate_limited("ns/a")

    assert await get_now(queue) == "ns/a"
    assert queue.num_requeues("ns/a") == 10


async def test_workqueue_shut_down_wakes_every_getter(queue: WorkQueue) -> None:
    getters = [asyncio.create_task(queue.get()) for _ in range(3)]
    await consistently(lambda: not any(g.done() for g in getters), duration=0.1, interval=0.02)

    queue.shut_down()

    results = await asyncio.wait_for(asyncio.gather(*getters), timeout=GET_TIMEOUT)
    assert results == [None, None, None]
    assert queue.shutting_down


async def test_workqueue_ignores_adds_after_shut_down(queue: WorkQueue) -> None:
    queue.add("ns/a")
    queue.shut_down()

    queue.add("ns/b")
    queue.add_after("ns/c", 0.01)
    queue.add_rate_limited("ns/d")

    assert len(queue) == 0
    assert sample("workqueue_adds_total", queue) == 1
    assert sample("workqueue_depth", queue) == 0
    assert await get_now(queue) is None


async def test_workqueue_shut_down_with_drain_waits_for_keys_in_processing(
    queue: WorkQueue,
) -> None:
    queue.add("ns/a")
    queue.add("ns/b")
    assert await get_now(queue) == "ns/a"

    drain = asyncio.create_task(queue.shut_down_with_drain())
    await consistently(lambda: not drain.done(), duration=0.2, interval=0.02)
    assert await get_now(queue) is None, "no new key may start once shutting down"

    queue.add("ns/a")  # a re-add while draining must not bring the key back
    queue.done("ns/a")

    await asyncio.wait_for(drain, timeout=GET_TIMEOUT)
    assert len(queue) == 0


async def test_workqueue_shut_down_with_drain_returns_at_once_when_idle(queue: WorkQueue) -> None:
    queue.add("ns/a")

    await asyncio.wait_for(queue.shut_down_with_drain(), timeout=GET_TIMEOUT)

    assert await get_now(queue) is None


async def test_workqueue_done_of_unknown_key_is_harmless(queue: WorkQueue) -> None:
    queue.done("never-added")

    assert len(queue) == 0
    assert sample("workqueue_work_duration_seconds_count", queue) == 0


async def test_workqueue_metrics_follow_a_key_through_the_queue(queue: WorkQueue) -> None:
    queue.add("ns/a")
    queue.add("ns/b")
    assert sample("workqueue_depth", queue) == 2
    assert sample("workqueue_adds_total", queue) == 2

    assert await get_now(queue) == "ns/a"
    assert sample("workqueue_depth", queue) == 1
    assert sample("workqueue_queue_duration_seconds_count", queue) == 1

    await eventually(lambda: min(queue.processing_ages()) >= 0.02, timeout=GET_TIMEOUT)
    queue.publish_processing_metrics()
    longest = sample("workqueue_longest_running_processor_seconds", queue)
    assert longest >= 0.02
    assert sample("workqueue_unfinished_work_seconds", queue) >= longest

    queue.done("ns/a")
    assert sample("workqueue_work_duration_seconds_count", queue) == 1
    assert sample("workqueue_work_duration_seconds_sum", queue) >= 0.02
    queue.publish_processing_metrics()
    assert sample("workqueue_longest_running_processor_seconds", queue) == 0
    assert sample("workqueue_unfinished_work_seconds", queue) == 0


async def test_workqueue_depth_excludes_delayed_keys_until_they_are_due(queue: WorkQueue) -> None:
    queue.add_after("ns/a", 0.05)
    queue.add_after("ns/b", 60.0)

    assert sample("workqueue_depth", queue) == 0
    assert sample("localmodel_workqueue_delayed", queue) == 2
    assert sample("workqueue_retries_total", queue) == 2

    assert await get_now(queue) == "ns/a"
    assert sample("localmodel_workqueue_delayed", queue) == 1
    assert sample("workqueue_adds_total", queue) == 1


def test_workqueue_uses_the_backoff_it_is_given(unique_name: Callable[..., str]) -> None:
    backoff = ExponentialBackoff(base=2.0, maximum=8.0)

    queue = WorkQueue(unique_name(), backoff=backoff)

    assert queue.backoff is backoff
