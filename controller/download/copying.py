"""Copy a local file or directory tree into the staging tree, in chunks.

Owns the rules for local sources: links are followed (a Hugging Face snapshot is a tree of links
into a blob store), directory loops are cut, special files (FIFOs, devices, sockets) are refused,
and our own bookkeeping entries at the top of a source are skipped. It does not extract archives
(archives.py) or choose the destination (downloader.py). Blocking: run it in a worker thread.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import structlog

from controller.download.errors import SourceError, StorageError
from controller.download.marker import is_bookkeeping_name
from controller.download.progress import Progress

log = structlog.get_logger(__name__)

CHUNK_BYTES = 1024 * 1024


def measure(source: Path) -> int:
    """Return the bytes a copy of `source` will write (for progress; not a promise)."""
    if not source.is_dir():
        return source.stat().st_size
    total = 0
    for relative, file_names in _walk(source):
        for name in file_names:
            try:
                total += (source / relative / name).stat().st_size
            except OSError:
                pass  # copy_directory reports unreadable files with a clear error
    return total


def copy_directory(source: Path, root: Path, *, progress: Progress) -> None:
    """Copy the contents of directory `source` into the existing directory `root`."""
    for relative, file_names in _walk(source):
        _make_directory(root / relative)
        for name in file_names:
            copy_file(source / relative / name, root / relative / name, progress=progress)


def copy_file(source: Path, target: Path, *, progress: Progress) -> None:
    """Copy one regular file (following links) to the new path `target`, keeping the exec bit."""
    try:
        mode = source.stat().st_mode
        if not stat.S_ISREG(mode):
            raise SourceError(f"source {source} is not a regular file")
        reader = open(source, "rb")
    except FileNotFoundError as exc:
        raise SourceError(f"source {source} is missing or a broken link") from exc
    except OSError as exc:
        raise SourceError(f"cannot read source {source}: {exc}") from exc
    with reader:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            writer = os.fdopen(fd, "wb")
        except OSError as exc:
            raise StorageError(f"cannot create {target}: {exc}") from exc
        try:
            while True:
                try:
                    chunk = reader.read(CHUNK_BYTES)
                except OSError as exc:
                    raise SourceError(f"cannot read source {source}: {exc}") from exc
                if not chunk:
                    break
                try:
                    writer.write(chunk)
                except OSError as exc:
                    raise StorageError(f"cannot write {target}: {exc}") from exc
                progress.advance(len(chunk))
        finally:
            # Closing flushes the last buffer, so a full disk may only show up here.
            try:
                writer.close()
            except OSError as exc:
                raise StorageError(f"cannot write {target}: {exc}") from exc
    try:
        os.chmod(target, 0o755 if mode & 0o111 else 0o644)
    except OSError as exc:
        raise StorageError(f"cannot set the mode of {target}: {exc}") from exc


def _walk(source: Path) -> list[tuple[Path, list[str]]]:
    """List (relative directory, file names) for every directory under `source`, in order.

    Links are followed; a directory already visited (a link loop) is not entered again.
    """
    seen: set[tuple[int, int]] = set()
    listing: list[tuple[Path, list[str]]] = []

    def on_error(exc: OSError) -> None:
        raise SourceError(f"cannot list source directory {exc.filename}: {exc.strerror}") from exc

    for directory, dir_names, file_names in os.walk(source, followlinks=True, onerror=on_error):
        info = os.stat(directory)
        identity = (info.st_dev, info.st_ino)
        relative = Path(directory).relative_to(source)
        if identity in seen:
            log.warning("directory loop skipped", directory=directory)
            dir_names.clear()
            continue
        seen.add(identity)
        if relative == Path("."):
            skipped = [name for name in dir_names + file_names if is_bookkeeping_name(name)]
            for name in skipped:
                log.warning("reserved source entry skipped", entry=name)
            dir_names[:] = [name for name in dir_names if not is_bookkeeping_name(name)]
            file_names = [name for name in file_names if not is_bookkeeping_name(name)]
        dir_names.sort()
        listing.append((relative, sorted(file_names)))
    return listing


def _make_directory(path: Path) -> None:
    try:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create directory {path}: {exc}") from exc
