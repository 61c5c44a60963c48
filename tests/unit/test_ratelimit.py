"""Per-key exponential backoff: delays double from the base, stop at the maximum, reset on forget.

Only the computed delays are checked here; how the work queue waits them out is in
test_workqueue.py.
"""

from __future__ import annotations

import pytest

from controller.runtime.ratelimit import ExponentialBackoff


def test_backoff_defaults_double_from_5ms_and_cap_at_1000s() -> None:
    backoff = ExponentialBackoff()

    delays = [backoff.when("ns/a") for _ in range(20)]

    assert delays[:4] == pytest.approx([0.005, 0.01, 0.02, 0.04])
    assert delays[17] == pytest.approx(0.005 * 2**17)  # 655 s, the last uncapped step
    assert delays[18:] == [1000.0, 1000.0]


@pytest.mark.parametrize(
    ("base", "maximum", "expected"),
    [
        pytest.param(1.0, 5.0, [1.0, 2.0, 4.0, 5.0, 5.0], id="capped-between-steps"),
        pytest.param(0.5, 4.0, [0.5, 1.0, 2.0, 4.0, 4.0], id="capped-on-a-step"),
        pytest.param(3.0, 3.0, [3.0, 3.0, 3.0, 3.0, 3.0], id="base-equals-maximum"),
    ],
)
def test_backoff_delays_grow_until_maximum(
    base: float, maximum: float, expected: list[float]
) -> None:
    backoff = ExponentialBackoff(base=base, maximum=maximum)

    assert [backoff.when("k") for _ in expected] == pytest.approx(expected)


def test_backoff_forget_restarts_from_base() -> None:
    backoff = ExponentialBackoff(base=0.1, maximum=100.0)
    for _ in range(5):
        backoff.when("k")

    backoff.forget("k")

    assert backoff.failures("k") == 0
    assert backoff.when("k") == pytest.approx(0.1)


def test_backoff_counts_failures_per_key_independently() -> None:
    backoff = ExponentialBackoff(base=0.1, maximum=100.0)
    for _ in range(3):
        backoff.when("a")
    backoff.when("b")

    assert (backoff.failures("a"), backoff.failures("b"), backoff.failures("c")) == (3, 1, 0)
    assert backoff.when("b") == pytest.approx(0.2)


def test_backoff_forget_drops_the_key_so_history_does_not_grow_with_churn() -> None:
    backoff = ExponentialBackoff()
    for index in range(100):
        backoff.when(f"ns/object-{index}")
    for index in range(100):
        backoff.forget(f"ns/object-{index}")

    assert len(backoff) == 0


def test_backoff_forget_of_unknown_key_is_harmless() -> None:
    backoff = ExponentialBackoff()

    backoff.forget("never-seen")

    assert backoff.failures("never-seen") == 0


def test_backoff_stays_at_maximum_after_very_many_failures() -> None:
    backoff = ExponentialBackoff(base=0.005, maximum=1000.0)

    delays = [backoff.when("k") for _ in range(2000)]

    assert max(delays) == 1000.0
    assert delays[-1] == 1000.0
    assert backoff.failures("k") == 2000
