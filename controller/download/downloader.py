"""The downloader: fetch a model URI into a node-local directory, atomically.

Owns the life of one destination directory: a lock against a concurrent run, the early exit
when the marker already names the URI, removal of leftovers, the staging directory, publishing
the staged tree, the completion marker, and `main` (argv in, exit code out). Fetching, copying,
archive handling and the marker format live in their own modules next to this one.

Layout while running: `dest/.localmodel-staging-<hex>/incoming/` receives raw downloads,
`dest/.localmodel-staging-<hex>/tree/` the model as it will look; only when the tree is complete
are its entries renamed into `dest`, and the marker written last.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import structlog

from controller import logs
from controller.download import archives, copying
from controller.download.errors import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    DownloadError,
    InvalidInputError,
    SourceError,
    StorageError,
)
from controller.download.fetching import DEFAULT_RETRY, RetryPolicy, fetch_to_file
from controller.download.marker import (
    MARKER_NAME,
    STAGING_PREFIX,
    fsync_directory,
    is_bookkeeping_name,
    is_intact,
    read_marker,
    write_marker,
)
from controller.download.progress import DEFAULT_INTERVAL_SECONDS, Progress
from controller.download.sources import HttpSource, LocalSource, parse_source, redact

log = structlog.get_logger(__name__)

USAGE = "usage: python -m controller download <source-model-uri> <destination-directory>"
_LOCK_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class DownloadResult:
    """What a finished run did; `skipped` means the marker already named this URI."""

    uri: str
    dest: Path
    files: int
    bytes: int
    duration_seconds: float
    skipped: bool


def main(argv: list[str]) -> int:
    """Run the downloader for argv `[uri, dest]` and return the process exit code.

    0: the model is complete in dest (downloaded now or before). 1: the download failed; a later
    attempt may succeed. 2: the arguments or the URI are invalid; retrying cannot help. The last
    stderr line is always a one-line reason, because it becomes the pod's termination message.
    Must be called outside a running event loop.
    """
    _configure_logging_unless_configured()
    if len(argv) != 2:
        _report_failure(f"expected 2 arguments, got {len(argv)}; {USAGE}")
        return EXIT_INVALID
    uri, dest = argv
    try:
        asyncio.run(download(uri, Path(dest)))
    except DownloadError as exc:
        log.error(
            "download failed",
            uri=redact(uri),
            dest=dest,
            error=str(exc),
            error_type=type(exc).__name__,
        )
        _report_failure(str(exc))
        return exc.exit_code
    except Exception as exc:
        # A bug, not bad input: keep the traceback in the log, still end with one clear line.
        log.exception("download crashed", uri=redact(uri), dest=dest)
        _report_failure(f"unexpected {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    return EXIT_OK


async def download(
    uri: str,
    dest: Path,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    progress_interval: float = DEFAULT_INTERVAL_SECONDS,
) -> DownloadResult:
    """Make `dest` hold the model at `uri`, marked complete; skip the work if it already does.

    Raises DownloadError (see errors.py); on failure `dest` holds no marker and no model files.
    """
    source = parse_source(uri)
    dest = Path(dest)
    shown = redact(uri)
    started = time.monotonic()
    _prepare_destination(dest)

    async with _exclusive(dest):
        # An earlier run (or a concurrent one we waited for) may have finished the job.
        marker = read_marker(dest)
        if marker is not None and await asyncio.to_thread(is_intact, dest, uri):
            await asyncio.to_thread(_remove_leftovers, dest, keep_model=True)
            log.info("model already complete", uri=shown, dest=str(dest), files=marker.files)
            return DownloadResult(
                uri=uri,
                dest=dest,
                files=marker.files,
                bytes=marker.bytes,
                duration_seconds=round(time.monotonic() - started, 3),
                skipped=True,
            )
        if isinstance(source, LocalSource):
            _check_local_source(source.path, dest)

        # No marker for this URI: whatever is here is a leftover of a failed or different run.
        if marker is not None:
            log.info("replacing model of another uri", dest=str(dest), old_uri=redact(marker.uri))
        await asyncio.to_thread(_remove_leftovers, dest, keep_model=False)

        staging = dest / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
        tree = staging / "tree"
        try:
            await asyncio.to_thread(_make_staging, staging)
            if isinstance(source, HttpSource):
                await _stage_http(source, staging, retry=retry, progress_interval=progress_interval)
            else:
                await asyncio.to_thread(
                    _stage_local, source.path, tree, progress_interval=progress_interval
                )
            files, total_bytes = await asyncio.to_thread(_publish, tree, dest, uri=uri)
        except BaseException:
            # Leave nothing that could pass for a model; the next run starts clean anyway.
            _remove_leftovers_quietly(dest)
            raise

    duration = round(time.monotonic() - started, 3)
    log.info(
        "model downloaded",
        uri=shown,
        dest=str(dest),
        files=files,
        bytes=total_bytes,
        duration_seconds=duration,
    )
    return DownloadResult(
        uri=uri,
        dest=dest,
        files=files,
        bytes=total_bytes,
        duration_seconds=duration,
        skipped=False,
    )


async def _stage_http(
    source: HttpSource, staging: Path, *, retry: RetryPolicy, progress_interval: float
) -> None:
    """Fetch into `incoming/`, then extract into `tree/` or move the single file there."""
    # TODO(#2): stream tar archives straight into the extractor, so that a large archive does not
    # need twice its size on the node's disk while it is unpacked.
    tree = staging / "tree"
    fetched = await fetch_to_file(
        source,
        staging / "incoming" / "body",
        retry=retry,
        progress_interval=progress_interval,
    )
    name = source.file_name or fetched.suggested_name
    kind = archives.kind_from_name(name) if name else None
    if kind is None and (
        not name
        or not PurePosixPath(name).suffix
        or archives.is_archive_content_type(fetched.content_type)
    ):
        # Without a telling suffix, the leading bytes decide; a non-archive stays a file.
        kind = await asyncio.to_thread(archives.sniff_kind, fetched.path)
    if kind is not None:
        progress = Progress(phase="extract", total_bytes=None, interval=progress_interval)
        await asyncio.to_thread(archives.extract, fetched.path, tree, kind=kind, progress=progress)
        return
    if not name:
        raise InvalidInputError(
            f"cannot name the file from {redact(source.url)}: the URL path has no file name, "
            "the server sent none, and the body is not an archive"
        )
    file_name = _safe_file_name(name)
    try:
        await asyncio.to_thread(os.replace, fetched.path, tree / file_name)
    except OSError as exc:
        raise StorageError(f"cannot move the download into place: {exc}") from exc


def _stage_local(source: Path, tree: Path, *, progress_interval: float) -> None:
    """Copy a file or directory, or extract an archive file, into `tree`."""
    try:
        is_directory = source.is_dir()
        is_file = source.is_file()
        exists = source.exists()
        total_bytes = copying.measure(source) if is_directory or is_file else 0
    except OSError as exc:
        raise SourceError(f"cannot read source {source}: {exc}") from exc
    if not exists:
        raise SourceError(f"source {source} does not exist")
    progress = Progress(phase="copy", total_bytes=total_bytes, interval=progress_interval)
    if is_directory:
        copying.copy_directory(source, tree, progress=progress)
        return
    if not is_file:
        raise SourceError(f"source {source} is neither a regular file nor a directory")
    kind = archives.kind_from_name(source.name)
    if kind is None and not source.suffix:
        try:
            kind = archives.sniff_kind(source)
        except OSError as exc:
            raise SourceError(f"cannot read source {source}: {exc}") from exc
    if kind is not None:
        progress.phase = "extract"
        archives.extract(source, tree, kind=kind, progress=progress)
    else:
        copying.copy_file(source, tree / _safe_file_name(source.name), progress=progress)


def _publish(tree: Path, dest: Path, *, uri: str) -> tuple[int, int]:
    """Flush the staged tree, rename its entries into `dest`, then write the marker.

    Returns (files, bytes). Runs in a worker thread.
    """
    files, total_bytes = _flush_tree(tree)
    if files == 0:
        raise SourceError("the source holds no files; refusing to mark an empty model complete")
    try:
        for entry in sorted(tree.iterdir()):
            os.replace(entry, dest / entry.name)
        fsync_directory(dest)
        shutil.rmtree(tree.parent)
        write_marker(dest, uri=uri, files=files, total_bytes=total_bytes)
    except OSError as exc:
        raise StorageError(f"cannot publish the model into {dest}: {exc}") from exc
    return files, total_bytes


def _flush_tree(tree: Path) -> tuple[int, int]:
    """fsync every file and directory under `tree` and count (files, bytes).

    The marker must never reach the disk before the data it vouches for.
    """
    files = 0
    total_bytes = 0
    try:
        for directory, _, file_names in os.walk(tree):
            for name in file_names:
                path = os.path.join(directory, name)
                if os.path.islink(path):
                    continue
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                    total_bytes += os.fstat(fd).st_size
                finally:
                    os.close(fd)
                files += 1
            fsync_directory(Path(directory))
    except OSError as exc:
        raise StorageError(f"cannot flush the staged model to disk: {exc}") from exc
    return files, total_bytes


def _prepare_destination(dest: Path) -> None:
    """Check `dest` is a directory we may fill, creating it when missing."""
    if not dest.is_absolute():
        raise InvalidInputError(f"destination {dest} must be an absolute path")
    if Path(os.path.realpath(dest)) == Path("/"):
        raise InvalidInputError("refusing to use the filesystem root as the destination")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise InvalidInputError(f"destination {dest} exists and is not a directory") from exc
    except OSError as exc:
        raise StorageError(f"cannot create destination {dest}: {exc}") from exc


def _check_local_source(source: Path, dest: Path) -> None:
    """Refuse sources that overlap the destination: clearing or copying would eat them."""
    real_source = Path(os.path.realpath(source))
    real_dest = Path(os.path.realpath(dest))
    if real_source.is_relative_to(real_dest):
        raise InvalidInputError(f"source {source} lies inside the destination {dest}")
    if real_dest.is_relative_to(real_source):
        raise InvalidInputError(f"source {source} contains the destination {dest}")


def _safe_file_name(name: str) -> str:
    """Reduce a server- or URL-given name to a plain file name, refusing reserved ones."""
    base = PurePosixPath(name.replace("\\", "/")).name
    if base in ("", ".", "..") or "\x00" in base:
        raise InvalidInputError(f"cannot use {name!r} as a file name")
    if is_bookkeeping_name(base):
        raise InvalidInputError(f"file name {base!r} is reserved for the downloader")
    return base


def _make_staging(staging: Path) -> None:
    try:
        (staging / "incoming").mkdir(parents=True)
        (staging / "tree").mkdir()
    except OSError as exc:
        raise StorageError(f"cannot create staging directory {staging}: {exc}") from exc


def _remove_leftovers(dest: Path, *, keep_model: bool) -> None:
    """Remove staging directories, temporary files and, unless keep_model, the model and marker.

    The marker goes first, so an interrupted cleanup never leaves a marker over partial files.
    """
    try:
        entries = sorted(dest.iterdir(), key=lambda entry: not is_bookkeeping_name(entry.name))
        for entry in entries:
            if keep_model and (not is_bookkeeping_name(entry.name) or entry.name == MARKER_NAME):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    except OSError as exc:
        raise StorageError(f"cannot clear leftovers in {dest}: {exc}") from exc


def _remove_leftovers_quietly(dest: Path) -> None:
    try:
        _remove_leftovers(dest, keep_model=False)
    except StorageError as exc:
        log.warning("cleanup after failure incomplete", dest=str(dest), error=str(exc))


@contextlib.asynccontextmanager
async def _exclusive(dest: Path) -> AsyncIterator[None]:
    """Hold an exclusive flock on the `dest` directory, waiting for any other holder.

    Two Jobs for one model on one node (a retry racing a slow pod) must not clear each other's
    staging. Filesystems without flock on directories run unlocked, with a warning.
    """
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise StorageError(f"cannot open destination {dest}: {exc}") from exc
    try:
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    log.info("waiting for another download into dest", dest=str(dest))
                    announced = True
                await asyncio.sleep(_LOCK_POLL_SECONDS)
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EBADF, errno.EINVAL, errno.ENOTSUP):
                    raise StorageError(f"cannot lock destination {dest}: {exc}") from exc
                log.warning("destination lock unsupported", dest=str(dest), error=str(exc))
                break
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _report_failure(message: str) -> None:
    print(f"download failed: {message}", file=sys.stderr, flush=True)


def _configure_logging_unless_configured() -> None:
    """Log JSON lines to stderr, unless the process (the CLI, a test) configured structlog."""
    if not structlog.is_configured():
        logs.configure()
