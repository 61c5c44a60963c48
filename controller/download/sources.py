"""Parse a source model URI into something the downloader can fetch.

Owns the scheme rules (http, https, file and plain absolute paths) and how a URI is shown in
logs and messages (without credentials or query strings). It does no I/O; fetching.py and
copying.py do the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from controller.download.errors import InvalidInputError, UnsupportedSchemeError

SUPPORTED_SCHEMES = ("http", "https", "file")


@dataclass(frozen=True)
class HttpSource:
    """An http(s) URL; `file_name` is the last path segment, or None when the path has none."""

    url: str
    file_name: str | None


@dataclass(frozen=True)
class LocalSource:
    """A file or directory on a filesystem the downloader can read."""

    path: Path


Source = HttpSource | LocalSource


def parse_source(uri: str) -> Source:
    """Parse `uri`, raising InvalidInputError (exit code 2) for anything we cannot fetch."""
    if not uri.strip():
        raise InvalidInputError("source URI is empty")
    if uri.startswith("/"):
        return LocalSource(path=Path(uri))
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - parsing the port is what validates it
    except ValueError as exc:
        raise InvalidInputError(f"malformed source URI {redact(uri)!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if not scheme:
        raise InvalidInputError(
            f"source URI {redact(uri)!r} has no scheme and is not an absolute path"
        )
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise InvalidInputError(f"source URI {redact(uri)!r} has no host")
        name = unquote(PurePosixPath(parts.path).name) if not parts.path.endswith("/") else ""
        return HttpSource(url=uri, file_name=name or None)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidInputError(
                f"file URI {uri!r} names host {parts.netloc!r}; only local paths are supported"
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise InvalidInputError(f"file URI {uri!r} has no absolute path")
        return LocalSource(path=Path(path))
    # TODO(#2): s3, gs, hf, azure blob, pvc and oci sources, with credentials from the Job's env.
    raise UnsupportedSchemeError(scheme)


def redact(uri: str) -> str:
    """Return `uri` fit for logs: no user info, and the query string replaced by `?...`.

    Signed URLs carry their secret in the query, and user info may hold a password.
    """
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<malformed URI>"
    if not parts.scheme or uri.startswith("/"):
        return uri
    query = "?..." if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{query}"
