"""Errors raised by the downloader, and the exit code each one maps to.

The tree:

    DownloadError                exit 1: the download failed, a retry may help
      FetchError                 HTTP status or connection trouble (`retryable` says which)
      ArchiveError               the archive cannot be read
        UnsafeArchiveError       a member would escape the destination or is a device
      StorageError               the destination cannot be written (disk full, permissions)
      SourceError                a local source is missing or unreadable
      InvalidInputError          exit 2: the URI or destination is wrong; retrying cannot help
        UnsupportedSchemeError   a scheme we do not fetch (s3, gs, hf, ...)

Every message is one line: the last stderr line becomes the pod's termination message.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2


class DownloadError(Exception):
    """Raised when a model could not be downloaded; the base of every downloader error."""

    exit_code = EXIT_FAILED


class FetchError(DownloadError):
    """Raised when an HTTP request fails: a non-2xx status, a lost connection, a short body."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class ArchiveError(DownloadError):
    """Raised when an archive is corrupt, truncated or of a kind we cannot read."""


class UnsafeArchiveError(ArchiveError):
    """Raised when an archive member has an absolute path, a `..` part, an escaping link or is a
    device file."""


class StorageError(DownloadError):
    """Raised when writing into the destination fails (disk full, read-only, permissions)."""


class SourceError(DownloadError):
    """Raised when a local source path is missing, unreadable or not a regular file."""


class InvalidInputError(DownloadError):
    """Raised when the URI or the destination is unusable as given; retrying cannot fix it."""

    exit_code = EXIT_INVALID


class UnsupportedSchemeError(InvalidInputError):
    """Raised when the URI scheme is one the downloader does not fetch."""

    def __init__(self, scheme: str) -> None:
        super().__init__(f"unsupported URI scheme: {scheme}")
        self.scheme = scheme
