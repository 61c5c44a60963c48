"""Archive recognition and safe extraction: hostile members are refused, honest ones kept."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from controller.download.archives import (
    ArchiveKind,
    extract,
    is_archive_content_type,
    kind_from_name,
    sniff_kind,
)
from controller.download.errors import ArchiveError, UnsafeArchiveError
from controller.download.progress import Progress


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    """Write a tar.gz whose members are given as (name, data) files or ready TarInfo objects."""
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def link(name: str, target: str, *, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


def run_extract(archive: Path, root: Path, *, kind: ArchiveKind = ArchiveKind.TAR) -> None:
    root.mkdir(exist_ok=True)
    extract(archive, root, kind=kind, progress=Progress(phase="extract", total_bytes=None))


def everything_under(path: Path) -> list[str]:
    return sorted(entry.relative_to(path).as_posix() for entry in path.rglob("*"))


@pytest.mark.parametrize(
    ("members", "message"),
    [
        pytest.param([("../escaped.txt", b"x")], "'..' path component", id="dotdot"),
        pytest.param([("a/../../escaped.txt", b"x")], "'..' path component", id="inner-dotdot"),
        pytest.param([("/tmp/escaped.txt", b"x")], "absolute path", id="absolute"),
        pytest.param([link("evil", "/etc/passwd")], "absolute or empty path", id="abs-symlink"),
        pytest.param([link("evil", "../../escaped.txt")], "resolves outside", id="rel-symlink"),
        pytest.param(
            # Each link looks harmless alone; the second only escapes through the first.
            [link("d/up", ".."), link("d/up/out", "..")],
            "resolves outside",
            id="symlink-chain",
        ),
        pytest.param(
            [link("d/up", ".."), ("d/up/../escaped.txt", b"x")],
            "'..' path component",
            id="write-through-chain",
        ),
        pytest.param(
            [("model.bin", b"x"), link("copy", "../model.bin", hard=True)],
            "'..' path component",
            id="hardlink-outside",
        ),
        pytest.param([special("dev/sda", tarfile.BLKTYPE)], "device file", id="block-device"),
        pytest.param([special("dev/tty", tarfile.CHRTYPE)], "device file", id="char-device"),
        pytest.param([special("pipe", tarfile.FIFOTYPE)], "special file", id="fifo"),
    ],
)
def test_extract_refuses_unsafe_tar_members(
    tmp_path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], message: str
) -> None:
    archive = make_tar(tmp_path / "evil.tar.gz", members)
    root = tmp_path / "sandbox" / "root"
    root.parent.mkdir()

    with pytest.raises(UnsafeArchiveError, match=message):
        run_extract(archive, root)

    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "sandbox" / "escaped.txt").exists()


def test_extract_refuses_a_link_redirected_outside_by_a_later_member(tmp_path: Path) -> None:
    # `a` points into `b/..`, harmless while `b` is missing; `b -> .` then makes `a` the parent.
    archive = make_tar(tmp_path / "evil.tar.gz", [link("a", "b/.."), link("b", ".")])

    with pytest.raises(UnsafeArchiveError, match="once all members were extracted"):
        run_extract(archive, tmp_path / "root")


def test_extract_keeps_links_that_stay_inside(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "ok.tar.gz",
        [
            ("./v1/model.bin", b"weights"),
            link("latest", "v1"),
            link("v1/alias.bin", "model.bin"),
            link("v1/hard.bin", "v1/model.bin", hard=True),
        ],
    )
    root = tmp_path / "root"

    run_extract(archive, root)

    assert (root / "latest" / "model.bin").read_bytes() == b"weights"
    assert (root / "v1" / "alias.bin").read_bytes() == b"weights"
    assert (root / "v1" / "hard.bin").read_bytes() == b"weights"
    assert os.readlink(root / "latest") == "v1"


def test_extract_skips_reserved_names_and_drops_setuid_bits(tmp_path: Path) -> None:
    tool = tarfile.TarInfo("bin/tool")
    tool.size = 3
    tool.mode = 0o4755
    archive = tmp_path / "model.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(tool, io.BytesIO(b"run"))
        marker = tarfile.TarInfo(".localmodel-complete")
        tar.addfile(marker, io.BytesIO(b""))
    root = tmp_path / "root"

    run_extract(archive, root)

    assert everything_under(root) == ["bin", "bin/tool"]
    assert stat.S_IMODE((root / "bin" / "tool").stat().st_mode) == 0o755


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param("../escaped.txt", "'..' path component", id="dotdot"),
        pytest.param("/escaped.txt", "absolute path", id="absolute"),
    ],
)
def test_extract_refuses_unsafe_zip_members(tmp_path: Path, name: str, message: str) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(zipfile.ZipInfo(name), b"x")

    with pytest.raises(UnsafeArchiveError, match=message):
        run_extract(archive, tmp_path / "root", kind=ArchiveKind.ZIP)

    assert not (tmp_path / "escaped.txt").exists()


def test_extract_refuses_zip_symlink_pointing_outside(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    info = zipfile.ZipInfo("evil")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")

    with pytest.raises(UnsafeArchiveError, match="absolute or empty path"):
        run_extract(archive, tmp_path / "root", kind=ArchiveKind.ZIP)


def test_extract_reports_a_corrupt_zip(tmp_path: Path) -> None:
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04 this is not really a zip")

    with pytest.raises(ArchiveError, match="zip archive broken.zip"):
        run_extract(archive, tmp_path / "root", kind=ArchiveKind.ZIP)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        pytest.param("m.tar", ArchiveKind.TAR, id="tar"),
        pytest.param("m.tar.gz", ArchiveKind.TAR, id="tar-gz"),
        pytest.param("M.TGZ", ArchiveKind.TAR, id="tgz-upper"),
        pytest.param("m.tar.bz2", ArchiveKind.TAR, id="tar-bz2"),
        pytest.param("m.tar.xz", ArchiveKind.TAR, id="tar-xz"),
        pytest.param("m.zip", ArchiveKind.ZIP, id="zip"),
        pytest.param("model.safetensors", None, id="safetensors"),
        pytest.param("weights.gz", None, id="plain-gz"),
    ],
)
def test_kind_from_name_follows_the_suffix(name: str, kind: ArchiveKind | None) -> None:
    assert kind_from_name(name) is kind


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "w"])
def test_sniff_kind_finds_tar_in_every_compression(tmp_path: Path, mode: str) -> None:
    archive = tmp_path / "blob"
    with tarfile.open(archive, mode) as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))

    assert sniff_kind(archive) is ArchiveKind.TAR


def test_sniff_kind_ignores_files_that_are_not_archives(tmp_path: Path) -> None:
    import gzip

    plain = tmp_path / "plain"
    plain.write_bytes(b"PK but not a zip")
    compressed = tmp_path / "compressed"
    compressed.write_bytes(gzip.compress(b"no tar header here" * 50))

    assert sniff_kind(plain) is None
    assert sniff_kind(compressed) is None


def test_is_archive_content_type_ignores_parameters() -> None:
    assert is_archive_content_type("application/gzip; charset=binary")
    assert not is_archive_content_type("application/octet-stream")
    assert not is_archive_content_type(None)
