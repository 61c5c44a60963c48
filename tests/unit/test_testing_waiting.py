"""eventually / consistently: polling semantics, returned values, failures at the deadline."""

from __future__ import annotations

import pytest

from controller.testing.waiting import consistently, eventually


async def test_eventually_returns_value_once_check_passes() -> None:
    calls = []

    def check() -> str:
        calls.append(1)
        assert len(calls) >= 3, "not yet"
        return "done"

    assert await eventually(check, timeout=5, interval=0.001) == "done"
    assert len(calls) == 3


async def test_eventually_accepts_async_checks_returning_false_until_ready() -> None:
    calls = []

    async def check() -> bool:
        calls.append(1)
        return len(calls) >= 2

    assert await eventually(check, timeout=5, interval=0.001) is True


async def test_eventually_reraises_last_assertion_at_deadline() -> None:
    attempts = []

    def check() -> None:
        attempts.append(1)
        raise AssertionError(f"attempt {len(attempts)}")

    with pytest.raises(AssertionError) as failure:
        await eventually(check, timeout=0.05, interval=0.001)

    assert str(failure.value) == f"attempt {len(attempts)}"
    assert len(attempts) > 1


async def test_eventually_reports_a_check_that_stayed_false() -> None:
    def never() -> bool:
        return False

    with pytest.raises(AssertionError, match="never"):
        await eventually(never, timeout=0.01, interval=0.001)


async def test_eventually_lets_other_errors_escape_at_once() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await eventually(broken, timeout=5, interval=0.001)
    assert len(calls) == 1


async def test_eventually_treats_none_as_passing() -> None:
    assert await eventually(lambda: None, timeout=0.01) is None


async def test_consistently_passes_when_check_holds() -> None:
    calls = []

    def check() -> bool:
        calls.append(1)
        return True

    assert await consistently(check, duration=0.02, interval=0.001) is True
    assert len(calls) > 1


async def test_consistently_fails_on_first_false() -> None:
    calls = []

    def check() -> bool:
        calls.append(1)
        return len(calls) < 3

    with pytest.raises(AssertionError):
        await consistently(check, duration=5, interval=0.001)
    assert len(calls) == 3
