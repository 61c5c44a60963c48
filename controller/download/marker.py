"""The completion marker: the only signal that a model directory is complete.

A model directory holds the model's files plus our bookkeeping entries, all named with the
`.localmodel-` prefix: the marker `.localmodel-complete` (JSON: uri, files, bytes, completed_at),
staging directories and the marker's temporary file. This module writes and reads the marker and
knows those names; it does not download or clean anything (downloader.py does).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

BOOKKEEPING_PREFIX = ".localmodel-"
MARKER_NAME = ".localmodel-complete"
STAGING_PREFIX = ".localmodel-staging-"


@dataclass(frozen=True)
class Marker:
    """What the marker records about a completed download."""

    uri: str
    files: int
    bytes: int
    completed_at: str


def is_bookkeeping_name(name: str) -> bool:
    """Tell whether a top-level entry of a model directory is ours rather than the model's."""
    return name.startswith(BOOKKEEPING_PREFIX)


def read_marker(dest: Path) -> Marker | None:
    """Return the marker in `dest`, or None when it is absent, unreadable or malformed."""
    try:
        raw = json.loads((dest / MARKER_NAME).read_text(encoding="utf-8"))
        return Marker(
            uri=str(raw["uri"]),
            files=int(raw["files"]),
            bytes=int(raw["bytes"]),
            completed_at=str(raw["completed_at"]),
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None


def is_complete(dest: Path, uri: str | None = None) -> bool:
    """Tell whether `dest` holds a complete model (of `uri`, when given).

    Only the marker counts: files without a marker are a download in progress or a leftover.
    """
    marker = read_marker(Path(dest))
    return marker is not None and (uri is None or marker.uri == uri)


def measure(dest: Path) -> tuple[int, int]:
    """Count the model's regular files and their bytes in `dest`, as the marker records them.

    Our bookkeeping entries and symbolic links are not counted.
    """
    files = total = 0
    for directory, directories, names in os.walk(dest):
        if Path(directory) == Path(dest):
            directories[:] = [name for name in directories if not is_bookkeeping_name(name)]
            names = [name for name in names if not is_bookkeeping_name(name)]
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                total += os.stat(path).st_size
                files += 1
    return files, total


def is_intact(dest: Path, uri: str) -> bool:
    """Tell whether `dest` holds the complete model of `uri` and still has all of it.

    Like `is_complete`, and also checks that the files and bytes the marker records are there,
    so a model that lost files after its download no longer counts as present.
    """
    marker = read_marker(Path(dest))
    if marker is None or marker.uri != uri:
        return False
    try:
        return measure(Path(dest)) == (marker.files, marker.bytes)
    except OSError:
        return False


def write_marker(dest: Path, *, uri: str, files: int, total_bytes: int) -> Marker:
    """Write the marker atomically (temporary file, fsync, rename, fsync of the directory)."""
    marker = Marker(
        uri=uri,
        files=files,
        bytes=total_bytes,
        completed_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    payload = json.dumps(marker.__dict__, indent=2, sort_keys=True) + "\n"
    temporary = dest / f"{BOOKKEEPING_PREFIX}marker-{secrets.token_hex(4)}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, dest / MARKER_NAME)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(dest)
    return marker


def fsync_directory(path: Path) -> None:
    """Flush a directory's entries (renames, new files) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
