"""Per-key exponential backoff for the work queue.

A key's delay doubles with each consecutive failure, from `base` up to `maximum`; `forget`
resets it after a success. There is deliberately no global token bucket: combined with per-key
backoff it makes delays compound into hours under load.
"""

from __future__ import annotations


class ExponentialBackoff:
    """Delays `base * 2**failures`, capped at `maximum` (defaults: 5 ms to 1000 s)."""

    def __init__(self, *, base: float = 0.005, maximum: float = 1000.0) -> None:
        self.base = base
        self.maximum = maximum
        self._failures: dict[str, int] = {}

    def when(self, key: str) -> float:
        """Record one more failure of `key` and return how long to wait before retrying it."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        if failures > 60:  # 2**60 * base is past any sane maximum; avoid float overflow
            return self.maximum
        return min(self.base * 2**failures, self.maximum)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    def __len__(self) -> int:
        return len(self._failures)
