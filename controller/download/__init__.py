"""The downloader: the entrypoint of the per-node download Job, and the completion check.

`main(argv)` is what `python -m controller download URI DEST` runs; `download` is the same as a
coroutine; `is_complete` tells the agent whether a model directory is finished (only the marker
counts). The agent decides when to run a Job; this package only fills one directory.
"""

from __future__ import annotations

from controller.download.downloader import DownloadResult, download, main
from controller.download.errors import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    DownloadError,
    InvalidInputError,
    UnsupportedSchemeError,
)
from controller.download.fetching import RetryPolicy
from controller.download.marker import MARKER_NAME, Marker, is_complete, is_intact, read_marker

__all__ = [
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_OK",
    "MARKER_NAME",
    "DownloadError",
    "DownloadResult",
    "InvalidInputError",
    "Marker",
    "RetryPolicy",
    "UnsupportedSchemeError",
    "download",
    "is_complete",
    "is_intact",
    "main",
    "read_marker",
]
