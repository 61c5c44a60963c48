"""Fetch one http(s) URL into a local file, streaming, with bounded retries.

Owns the HTTP side: status handling, which failures are worth another attempt (connection
trouble, 5xx, 408, 429) and the backoff between attempts. The body goes to disk in chunks, never
whole into memory. It does not decide what the file is (archive or model file) or where the model
ends up; downloader.py does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp
import structlog

from controller.download.errors import FetchError, StorageError
from controller.download.progress import DEFAULT_INTERVAL_SECONDS, Progress
from controller.download.sources import HttpSource, redact

log = structlog.get_logger(__name__)

WRITE_CHUNK_BYTES = 1024 * 1024
# No total limit: a large model may take hours. A silent connection fails after sock_read.
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
_RETRYABLE_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class RetryPolicy:
    """How often to try and how long to wait between tries (first_delay, then times factor)."""

    attempts: int = 3
    first_delay: float = 1.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first_delay < 0 or self.factor < 1:
            raise ValueError(f"invalid retry policy {self!r}")

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return self.first_delay * self.factor ** (attempt - 1)


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class FetchedFile:
    """A completely fetched body on disk, with what the server said about it."""

    path: Path
    bytes: int
    content_type: str | None
    suggested_name: str | None  # from Content-Disposition, when the server sent one


async def fetch_to_file(
    source: HttpSource,
    target: Path,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    progress_interval: float = DEFAULT_INTERVAL_SECONDS,
) -> FetchedFile:
    """Fetch `source` into `target` (overwritten on each attempt).

    Raises:
        FetchError: a non-retryable failure, or the last retryable one once attempts run out.
        StorageError: writing `target` failed; not retried.
    """
    shown = redact(source.url)
    # TODO(#2): resume an interrupted body with a Range request instead of starting over.
    # trust_env: honour HTTP(S)_PROXY / NO_PROXY as set on the Job, like other cluster tools.
    # auto_decompress off: store the bytes exactly as served (a .tar.gz must stay gzipped).
    async with aiohttp.ClientSession(
        timeout=_TIMEOUT, trust_env=True, auto_decompress=False
    ) as session:
        for attempt in range(1, retry.attempts + 1):
            try:
                return await _fetch_once(
                    session, source, target=target, shown=shown, progress_interval=progress_interval
                )
            except FetchError as exc:
                if not exc.retryable or attempt >= retry.attempts:
                    raise
                delay = retry.delay_after(attempt)
                log.warning(
                    "fetch attempt failed",
                    url=shown,
                    attempt=attempt,
                    attempts=retry.attempts,
                    error=str(exc),
                    retry_in_seconds=delay,
                )
                await asyncio.sleep(delay)
    raise AssertionError("unreachable: the retry loop returns or raises")


async def _fetch_once(
    session: aiohttp.ClientSession,
    source: HttpSource,
    *,
    target: Path,
    shown: str,
    progress_interval: float,
) -> FetchedFile:
    written = 0
    expected: int | None = None
    progress: Progress | None = None
    try:
        async with session.get(source.url, headers={"Accept-Encoding": "identity"}) as response:
            if not 200 <= response.status < 300:
                raise FetchError(
                    f"HTTP {response.status} {response.reason or ''}".rstrip() + f" from {shown}",
                    retryable=response.status >= 500 or response.status in _RETRYABLE_STATUSES,
                )
            expected = response.content_length
            log.info("fetch started", url=shown, bytes_total=expected)
            progress = Progress(phase="fetch", total_bytes=expected, interval=progress_interval)
            handle = await _open_for_writing(target)
            try:
                written = await _stream_body(response, handle, target=target, progress=progress)
            finally:
                await _close(handle, target)
            content_type = response.headers.get(aiohttp.hdrs.CONTENT_TYPE)
            disposition = response.content_disposition
            suggested = disposition.filename if disposition is not None else None
    except FetchError:
        raise
    except aiohttp.ClientSSLError as exc:
        raise FetchError(f"TLS error talking to {shown}: {exc}", retryable=False) from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
        received = progress.done_bytes if progress is not None else 0
        done = f" after {received} of {expected} bytes" if expected is not None else ""
        reason = str(exc) or type(exc).__name__
        raise FetchError(f"connection to {shown} failed{done}: {reason}", retryable=True) from exc
    except aiohttp.ClientError as exc:
        reason = str(exc) or type(exc).__name__
        raise FetchError(f"request to {shown} failed: {reason}", retryable=False) from exc

    if expected is not None and written != expected:
        raise FetchError(
            f"body from {shown} ended after {written} of {expected} bytes", retryable=True
        )
    return FetchedFile(
        path=target, bytes=written, content_type=content_type, suggested_name=suggested
    )


async def _stream_body(
    response: aiohttp.ClientResponse, handle: BinaryIO, *, target: Path, progress: Progress
) -> int:
    """Copy the body to `handle` in chunks of about WRITE_CHUNK_BYTES; return the byte count."""
    written = 0
    pending = bytearray()
    async for piece in response.content.iter_chunked(WRITE_CHUNK_BYTES):
        pending += piece
        progress.advance(len(piece))
        if len(pending) >= WRITE_CHUNK_BYTES:
            await _write(handle, bytes(pending), target=target)
            written += len(pending)
            pending.clear()
    if pending:
        await _write(handle, bytes(pending), target=target)
        written += len(pending)
    return written


async def _open_for_writing(target: Path) -> BinaryIO:
    try:
        return await asyncio.to_thread(open, target, "wb")
    except OSError as exc:
        raise StorageError(f"cannot create {target}: {exc}") from exc


async def _write(handle: BinaryIO, data: bytes, *, target: Path) -> None:
    try:
        await asyncio.to_thread(handle.write, data)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc}") from exc


async def _close(handle: BinaryIO, target: Path) -> None:
    try:
        await asyncio.to_thread(handle.close)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc}") from exc
