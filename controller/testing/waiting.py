"""Waiting for conditions in tests without sleeping for a guessed time.

`eventually` polls a check until it passes and `consistently` asserts that a check keeps
passing. A check is a sync or async callable that either raises AssertionError or returns False
to say "not yet"; any other exception escapes at once, because it is a bug rather than a state
that may still change. This module knows nothing about Kubernetes.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


async def _run(check: Callable[[], Any]) -> Any:
    outcome = check()
    if inspect.isawaitable(outcome):
        outcome = await outcome
    return outcome


# NB: `timeout` is a polling budget, not a cancellation scope, so asyncio.timeout() does not fit.
async def eventually(
    check: Callable[[], Any],
    *,
    timeout: float = 30.0,  # noqa: ASYNC109
    interval: float = 0.1,
) -> Any:
    """Poll `check` until it neither raises AssertionError nor returns False; return its value.

    At the deadline the last AssertionError is re-raised (or one saying the check stayed
    False), so the test failure says what was still wrong. The check runs at least once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            outcome = await _run(check)
            if outcome is not False:
                return outcome
            failure = AssertionError(f"{_describe(check)} still returned False after {timeout}s")
        except AssertionError as exc:
            failure = exc
        if loop.time() >= deadline:
            raise failure
        await asyncio.sleep(interval)


async def consistently(
    check: Callable[[], Any], *, duration: float = 1.0, interval: float = 0.1
) -> Any:
    """Assert that `check` passes on every poll for `duration` seconds; return its last value.

    The first failing poll raises at once: an AssertionError from the check propagates, and a
    False result becomes an AssertionError.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    while True:
        outcome = await _run(check)
        if outcome is False:
            raise AssertionError(f"{_describe(check)} returned False")
        if loop.time() >= deadline:
            return outcome
        await asyncio.sleep(interval)


def _describe(check: Callable[[], Any]) -> str:
    return getattr(check, "__qualname__", None) or repr(check)


async def yield_to_other_tasks(turns: int = 1) -> None:
    """Let every other ready task run `turns` times; no time passes, nothing is waited for."""
    for _ in range(turns):
        await asyncio.sleep(0)
