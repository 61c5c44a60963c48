"""Progress reporting for long transfers: counts bytes and logs a line every few seconds.

One `Progress` per phase (fetching a URL, copying a directory, extracting an archive). It only
counts and logs; it never touches files. The clock is injectable so tests can step it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

DEFAULT_INTERVAL_SECONDS = 5.0


class Progress:
    """Count bytes of one phase and log "download progress" at most once per interval.

    Safe to use from one thread at a time (the phase's worker thread or the event loop).
    """

    def __init__(
        self,
        *,
        phase: str,
        total_bytes: int | None,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.phase = phase
        self.total_bytes = total_bytes
        self.done_bytes = 0
        self._interval = interval
        self._clock = clock
        self._last_report = clock()

    def advance(self, count: int) -> None:
        """Add `count` bytes and log if the interval has passed since the last line."""
        self.done_bytes += count
        now = self._clock()
        if now - self._last_report >= self._interval:
            self._last_report = now
            self.report()

    def report(self) -> None:
        """Log the current state now."""
        percent = None
        if self.total_bytes:
            percent = round(100.0 * self.done_bytes / self.total_bytes, 1)
        log.info(
            "download progress",
            phase=self.phase,
            bytes_done=self.done_bytes,
            bytes_total=self.total_bytes,
            percent=percent,
        )
