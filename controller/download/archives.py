"""Recognise tar and zip archives and extract them safely into a directory.

Owns the archive rules: which names and contents count as archives, and which members are
refused (absolute paths, `..` parts, links that resolve outside the root, device and other special
files). Members are streamed to disk in chunks. It does not fetch anything or decide where the
root lives (downloader.py does). Everything here is blocking: run it in a worker thread.
"""

from __future__ import annotations

import enum
import gzip
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO, TypeVar

import structlog

from controller.download.errors import ArchiveError, StorageError, UnsafeArchiveError
from controller.download.marker import is_bookkeeping_name
from controller.download.progress import Progress

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

CHUNK_BYTES = 1024 * 1024
_READ_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    gzip.BadGzipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
)
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_ZIP_SUFFIXES = (".zip",)
_ARCHIVE_CONTENT_TYPES = frozenset(
    {
        "application/x-tar",
        "application/x-gtar",
        "application/gzip",
        "application/x-gzip",
        "application/x-compressed-tar",
        "application/x-bzip2",
        "application/x-xz",
        "application/zip",
        "application/x-zip-compressed",
    }
)


class ArchiveKind(enum.Enum):
    TAR = "tar"  # plain, gzip, bzip2 or xz: tarfile detects the compression itself
    ZIP = "zip"


def kind_from_name(name: str) -> ArchiveKind | None:
    """Return the archive kind a file name's suffix announces, or None."""
    lowered = name.lower()
    if lowered.endswith(_TAR_SUFFIXES):
        return ArchiveKind.TAR
    if lowered.endswith(_ZIP_SUFFIXES):
        return ArchiveKind.ZIP
    return None


def is_archive_content_type(content_type: str | None) -> bool:
    """Tell whether an HTTP Content-Type names an archive or a compressed stream."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() in _ARCHIVE_CONTENT_TYPES


def sniff_kind(path: Path) -> ArchiveKind | None:
    """Return the archive kind found in a file's leading bytes, or None.

    A compressed stream counts as a tar archive only if a tar header sits inside it, so a plain
    gzip-compressed file is not mistaken for an archive.
    """
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return ArchiveKind.ZIP if zipfile.is_zipfile(path) else None
    compressed = head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"))
    if compressed or head[257:262] == b"ustar":
        try:
            return ArchiveKind.TAR if tarfile.is_tarfile(path) else None
        except (*_READ_ERRORS, OSError):
            return None
    return None


def extract(archive: Path, root: Path, *, kind: ArchiveKind, progress: Progress) -> None:
    """Extract `archive` into the existing directory `root`, refusing unsafe members.

    Raises:
        UnsafeArchiveError: a member would land outside `root` or is a device/special file.
        ArchiveError: the archive is corrupt or truncated.
        StorageError: writing under `root` failed (disk full, permissions).
    """
    extractor = _Extractor(root)
    try:
        if kind is ArchiveKind.TAR:
            _extract_tar(archive, extractor, progress)
        else:
            _extract_zip(archive, extractor, progress)
    except _READ_ERRORS as exc:
        raise ArchiveError(f"cannot read {kind.value} archive {archive.name}: {exc}") from exc
    except (NotImplementedError, RuntimeError) as exc:
        # zipfile raises these for unknown compression methods and encrypted members.
        raise ArchiveError(f"cannot read {kind.value} archive {archive.name}: {exc}") from exc
    extractor.check_links()


def _extract_tar(archive: Path, extractor: _Extractor, progress: Progress) -> None:
    try:
        tar = tarfile.open(archive, mode="r:*")
    except OSError as exc:
        raise ArchiveError(f"cannot open tar archive {archive.name}: {exc}") from exc
    with tar:
        for member in tar:
            if member.isdir():
                extractor.directory(member.name)
            elif member.isreg():
                reader = tar.extractfile(member)
                assert reader is not None  # a regular member always has a data stream
                with reader:
                    extractor.file(
                        member.name,
                        reader=reader,
                        executable=bool(member.mode & 0o111),
                        progress=progress,
                    )
            elif member.issym():
                extractor.symlink(member.name, member.linkname)
            elif member.islnk():
                extractor.hardlink(member.name, member.linkname)
            elif member.ischr() or member.isblk():
                raise UnsafeArchiveError(f"archive member {member.name!r} is a device file")
            else:
                raise UnsafeArchiveError(
                    f"archive member {member.name!r} is a special file (type {member.type!r})"
                )


def _extract_zip(archive: Path, extractor: _Extractor, progress: Progress) -> None:
    try:
        zip_file = zipfile.ZipFile(archive)
    except OSError as exc:
        raise ArchiveError(f"cannot open zip archive {archive.name}: {exc}") from exc
    with zip_file:
        for info in zip_file.infolist():
            mode = info.external_attr >> 16
            if info.is_dir():
                extractor.directory(info.filename)
            elif stat.S_ISLNK(mode):
                target = zip_file.read(info).decode("utf-8", errors="replace")
                extractor.symlink(info.filename, target)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                raise UnsafeArchiveError(f"archive member {info.filename!r} is a device file")
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                raise UnsafeArchiveError(f"archive member {info.filename!r} is a special file")
            else:
                with zip_file.open(info) as reader:
                    extractor.file(
                        info.filename,
                        reader=reader,
                        executable=bool(mode & 0o111),
                        progress=progress,
                    )


class _Extractor:
    """Create members under one root, checking each path against the real filesystem.

    Lexical checks catch absolute paths and `..`; the realpath checks catch chains of links that
    only escape once earlier members exist on disk.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(os.path.realpath(root))
        self._links: list[tuple[str, Path]] = []

    def directory(self, name: str) -> None:
        target = self._target(name)
        if target is None:
            return
        self._inside(target, name)
        self._write(name, lambda: target.mkdir(mode=0o755, parents=True, exist_ok=True))

    def file(self, name: str, *, reader: IO[bytes], executable: bool, progress: Progress) -> None:
        target = self._target(name)
        if target is None:
            return
        self._prepare_parent(target, name)
        handle = self._write_handle(name, target)
        try:
            while chunk := reader.read(CHUNK_BYTES):
                try:
                    handle.write(chunk)
                except OSError as exc:
                    raise StorageError(f"cannot write archive member {name!r}: {exc}") from exc
                progress.advance(len(chunk))
        finally:
            # Closing flushes the last buffer, so a full disk may only show up here.
            self._write(name, handle.close)
        self._write(name, lambda: os.chmod(target, 0o755 if executable else 0o644))

    def symlink(self, name: str, link_target: str) -> None:
        target = self._target(name)
        if target is None:
            return
        if not link_target or os.path.isabs(link_target):
            raise UnsafeArchiveError(
                f"archive member {name!r} links to an absolute or empty path {link_target!r}"
            )
        self._prepare_parent(target, name)
        self._inside(target.parent / link_target, name, what=f"link target {link_target!r}")
        self._write(name, lambda: os.symlink(link_target, target))
        self._links.append((name, target))

    def hardlink(self, name: str, link_name: str) -> None:
        target = self._target(name)
        source = self._target(link_name)
        if target is None:
            return
        if source is None or not os.path.isfile(source):
            raise UnsafeArchiveError(
                f"archive member {name!r} hard-links to {link_name!r}, which is not a file "
                "extracted before it"
            )
        real_source = self._inside(source, name, what=f"link target {link_name!r}")
        self._prepare_parent(target, name)
        self._write(name, lambda: os.link(real_source, target))

    def check_links(self) -> None:
        """Re-check every link once all members exist: a later link can redirect an earlier one."""
        for name, link in self._links:
            self._inside(link, name, what="link, once all members were extracted,")

    def _target(self, name: str) -> Path | None:
        """Map a member name to a path under the root, or None for entries we skip."""
        if name.startswith("/") or PurePosixPath(name).is_absolute():
            raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
        parts = [part for part in PurePosixPath(name).parts if part not in ("", ".")]
        if ".." in parts:
            raise UnsafeArchiveError(f"archive member {name!r} has a '..' path component")
        if "\x00" in name:
            raise UnsafeArchiveError(f"archive member {name!r} has a NUL byte in its name")
        if not parts:
            return None
        if is_bookkeeping_name(parts[0]):
            log.warning("reserved archive member skipped", member=name)
            return None
        return self._root.joinpath(*parts)

    def _inside(self, path: Path, name: str, *, what: str = "path") -> Path:
        real = Path(os.path.realpath(path))
        if real != self._root and not real.is_relative_to(self._root):
            raise UnsafeArchiveError(f"archive member {name!r}: {what} resolves outside the model")
        return real

    def _prepare_parent(self, target: Path, name: str) -> None:
        self._inside(target.parent, name)
        self._write(name, lambda: target.parent.mkdir(mode=0o755, parents=True, exist_ok=True))
        self._inside(target.parent, name)
        if os.path.lexists(target):
            if os.path.isdir(target) and not os.path.islink(target):
                raise UnsafeArchiveError(f"archive member {name!r} would replace a directory")
            # Later duplicates win, as with tar itself; unlinking never follows a link.
            self._write(name, lambda: os.unlink(target))

    def _write_handle(self, name: str, target: Path) -> IO[bytes]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = self._write(name, lambda: os.open(target, flags, 0o600))
        return os.fdopen(fd, "wb")

    @staticmethod
    def _write(name: str, action: Callable[[], _T]) -> _T:
        try:
            return action()
        except OSError as exc:
            raise StorageError(f"cannot write archive member {name!r}: {exc}") from exc
