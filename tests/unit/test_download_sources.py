"""Source URI parsing, redaction for logs, and the completion marker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.download import MARKER_NAME, is_complete, read_marker
from controller.download.errors import EXIT_INVALID, InvalidInputError, UnsupportedSchemeError
from controller.download.marker import is_bookkeeping_name, write_marker
from controller.download.sources import HttpSource, LocalSource, parse_source, redact


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        pytest.param(
            "https://example.invalid/models/bert.tar.gz?sig=1",
            HttpSource(
                url="https://example.invalid/models/bert.tar.gz?sig=1", file_name="bert.tar.gz"
            ),
            id="https-with-query",
        ),
        pytest.param(
            "http://127.0.0.1:8080/a%20b.bin",
            HttpSource(url="http://127.0.0.1:8080/a%20b.bin", file_name="a b.bin"),
            id="quoted-name",
        ),
        pytest.param(
            "http://127.0.0.1:8080/models/",
            HttpSource(url="http://127.0.0.1:8080/models/", file_name=None),
            id="trailing-slash",
        ),
        pytest.param("file:///srv/models/m", LocalSource(Path("/srv/models/m")), id="file"),
        pytest.param(
            "file://localhost/srv/a%20b", LocalSource(Path("/srv/a b")), id="file-localhost"
        ),
        pytest.param("/srv/models/m.zip", LocalSource(Path("/srv/models/m.zip")), id="plain-path"),
    ],
)
def test_parse_source_accepts_supported_uris(uri: str, expected: object) -> None:
    assert parse_source(uri) == expected


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("http:///no-host", "has no host", id="no-host"),
        pytest.param("http://127.0.0.1:99999/x", "malformed", id="bad-port"),
        pytest.param("relative/path", "no scheme", id="relative"),
        pytest.param("file://server/share/m", "only local paths", id="remote-file"),
    ],
)
def test_parse_source_rejects_malformed_uris(uri: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as failure:
        parse_source(uri)

    assert failure.value.exit_code == EXIT_INVALID


@pytest.mark.parametrize("scheme", ["s3", "gs", "hf", "pvc", "oci", "hdfs"])
def test_parse_source_names_the_unsupported_scheme(scheme: str) -> None:
    with pytest.raises(UnsupportedSchemeError) as failure:
        parse_source(f"{scheme.upper()}://bucket/model")

    assert str(failure.value) == f"unsupported URI scheme: {scheme}"
    assert failure.value.exit_code == EXIT_INVALID


def test_redact_hides_credentials_and_query() -> None:
    shown = redact("https://user:secret@example.invalid:8443/m.tar.gz?X-Amz-Signature=abc")

    assert shown == "https://example.invalid:8443/m.tar.gz?..."
    assert redact("/srv/models/m") == "/srv/models/m"


def test_is_complete_trusts_only_a_marker_naming_the_uri(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"weights")
    assert not is_complete(tmp_path)

    write_marker(tmp_path, uri="http://127.0.0.1/m.bin", files=1, total_bytes=7)

    assert is_complete(tmp_path)
    assert is_complete(tmp_path, "http://127.0.0.1/m.bin")
    assert not is_complete(tmp_path, "http://127.0.0.1/m.bin/")
    assert not is_complete(tmp_path / "missing", "http://127.0.0.1/m.bin")
    assert [entry.name for entry in tmp_path.iterdir() if entry.name.endswith(".tmp")] == []


def test_read_marker_returns_its_fields_and_none_when_malformed(tmp_path: Path) -> None:
    write_marker(tmp_path, uri="file:///srv/m", files=3, total_bytes=42)

    marker = read_marker(tmp_path)
    assert marker is not None
    assert (marker.uri, marker.files, marker.bytes) == ("file:///srv/m", 3, 42)
    assert json.loads((tmp_path / MARKER_NAME).read_text())["completed_at"] == marker.completed_at

    (tmp_path / MARKER_NAME).write_text('{"uri": "file:///srv/m"')
    assert read_marker(tmp_path) is None
    assert not is_complete(tmp_path)


def test_bookkeeping_names_share_one_prefix() -> None:
    assert is_bookkeeping_name(MARKER_NAME)
    assert is_bookkeeping_name(".localmodel-staging-abc")
    assert not is_bookkeeping_name(".gitattributes")
