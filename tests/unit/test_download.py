"""The downloader end to end: a real model server on 127.0.0.1, real files, real processes.

`download()` is driven in-process where a test needs fast retries or captured logs; `main()` runs
in a child process where the exit code and the last stderr line are what matters.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import sys
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from controller.download import (
    MARKER_NAME,
    RetryPolicy,
    download,
    is_complete,
    read_marker,
)
from controller.download.errors import (
    ArchiveError,
    FetchError,
    InvalidInputError,
    SourceError,
    UnsafeArchiveError,
)
from controller.download.marker import STAGING_PREFIX, write_marker
from controller.testing.modelserver import (
    ModelServer,
    build_tar_gz,
    build_zip,
    minilm_model_dir,
    tree_digest,
)

FAST_RETRY = RetryPolicy(attempts=3, first_delay=0.01)
RUN_MAIN = "import sys; from controller.download import main; sys.exit(main(sys.argv[1:]))"
# Limits a child's file size to simulate a full disk: writes past it fail with EFBIG.
RUN_MAIN_WITH_FILE_LIMIT = (
    "import resource, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, 1024 * 1024))\n"
    "from controller.download import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every request on 127.0.0.1, even if the environment names a proxy."""
    for variable in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(variable.upper(), raising=False)


@pytest.fixture(name="server")
async def _server() -> AsyncIterator[ModelServer]:
    async with ModelServer() as server:
        yield server


@pytest.fixture(name="model_dir")
def _model_dir(tmp_path: Path) -> Path:
    """A small model tree: nested directories, a few MiB of incompressible bytes, an exec bit."""
    root = tmp_path / "source-model"
    (root / "1_Pooling").mkdir(parents=True)
    (root / "config.json").write_text('{"hidden_size": 8}\n')
    (root / "1_Pooling" / "config.json").write_text('{"pooling": "mean"}\n')
    (root / "weights.bin").write_bytes(random.Random(7).randbytes(3 * 1024 * 1024 + 17))
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    return root


@pytest.fixture(name="dest")
def _dest(tmp_path: Path) -> Path:
    """The model directory as the Job sees it: it exists and is empty when the container starts."""
    path = tmp_path / "models" / "0123456789abcdef"
    path.mkdir(parents=True)
    return path


def model_entries(dest: Path) -> list[str]:
    """Everything in `dest` (recursively), bookkeeping included: nothing may hide."""
    return sorted(path.relative_to(dest).as_posix() for path in dest.rglob("*"))


def tree_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


async def run_downloader(*args: str, script: str = RUN_MAIN) -> tuple[int, list[str]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode().splitlines()


async def test_download_saves_single_file_under_its_basename(
    server: ModelServer, model_dir: Path, dest: Path
) -> None:
    server.add_file("models/weights.bin", model_dir / "weights.bin")

    result = await download(server.url("models/weights.bin"), dest)

    assert tree_digest(dest) == {"weights.bin": tree_digest(model_dir)["weights.bin"]}
    assert result.files == 1
    assert result.bytes == (model_dir / "weights.bin").stat().st_size
    assert not result.skipped
    assert model_entries(dest) == [MARKER_NAME, "weights.bin"]


@pytest.mark.parametrize(
    "suffix", [pytest.param(".tar.gz", id="tar-gz"), pytest.param(".zip", id="zip")]
)
async def test_download_extracts_archive_into_dest(
    server: ModelServer, model_dir: Path, dest: Path, suffix: str
) -> None:
    server.add_directory("model", model_dir)

    result = await download(server.url("model" + suffix), dest)

    assert tree_digest(dest) == tree_digest(model_dir)
    assert result.files == 4
    assert (dest / "run.sh").stat().st_mode & 0o111, "the exec bit survives extraction"
    assert is_complete(dest, server.url("model" + suffix))


@pytest.mark.parametrize(
    "builder",
    [pytest.param(build_tar_gz, id="tar-gz"), pytest.param(build_zip, id="zip")],
)
async def test_download_recognises_archive_without_suffix_by_its_bytes(
    server: ModelServer, model_dir: Path, dest: Path, tmp_path: Path, builder: object
) -> None:
    archive = tmp_path / "archive-body"
    builder(model_dir, archive)  # type: ignore[operator]
    server.add_file("export", archive, content_type="application/octet-stream")

    await download(server.url("export"), dest)

    assert tree_digest(dest) == tree_digest(model_dir)


async def test_download_keeps_gzip_file_that_holds_no_tar(
    server: ModelServer, dest: Path, tmp_path: Path
) -> None:
    import gzip

    body = tmp_path / "embeddings"
    body.write_bytes(gzip.compress(b"not a tar archive\n" * 100))
    server.add_file("embeddings", body, content_type="application/gzip")

    await download(server.url("embeddings"), dest)

    assert model_entries(dest) == [MARKER_NAME, "embeddings"]
    assert (dest / "embeddings").read_bytes() == body.read_bytes()


async def test_download_of_a_url_without_file_name_extracts_an_archive_body(
    server: ModelServer, model_dir: Path, dest: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "body"
    build_tar_gz(model_dir, archive)
    server.add_file("", archive)  # served at "/": the URL path names no file

    await download(server.url(""), dest)

    assert tree_digest(dest) == tree_digest(model_dir)


async def test_download_of_a_url_without_file_name_refuses_a_plain_body(
    server: ModelServer, model_dir: Path, dest: Path
) -> None:
    server.add_file("", model_dir / "config.json")

    with pytest.raises(InvalidInputError, match="the URL path has no file name"):
        await download(server.url(""), dest)

    assert model_entries(dest) == []


async def test_download_copies_directory_from_file_uri(model_dir: Path, dest: Path) -> None:
    result = await download(model_dir.as_uri(), dest)

    assert tree_digest(dest) == tree_digest(model_dir)
    assert result.files == 4


async def test_download_copies_file_and_extracts_archive_from_plain_paths(
    model_dir: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "model.tar.gz"
    build_tar_gz(model_dir, archive)
    file_dest = tmp_path / "file-dest"
    archive_dest = tmp_path / "archive-dest"

    await download(str(model_dir / "config.json"), file_dest)
    await download(str(archive), archive_dest)

    assert tree_digest(file_dest) == {"config.json": tree_digest(model_dir)["config.json"]}
    assert tree_digest(archive_dest) == tree_digest(model_dir)


async def test_download_writes_marker_and_skips_a_rerun(
    server: ModelServer, model_dir: Path, dest: Path
) -> None:
    server.add_directory("model", model_dir)
    uri = server.url("model.tar.gz")
    first = await download(uri, dest)
    marker_text = (dest / MARKER_NAME).read_text()

    second = await download(uri, dest)

    marker = json.loads(marker_text)
    assert marker["uri"] == uri
    assert marker["files"] == 4
    assert marker["bytes"] == first.bytes == tree_bytes(model_dir)
    assert marker["completed_at"].endswith("+00:00")
    assert second.skipped
    assert server.request_count("model.tar.gz") == 1
    assert (dest / MARKER_NAME).read_text() == marker_text


async def test_download_replaces_model_of_another_uri(
    server: ModelServer, model_dir: Path, dest: Path
) -> None:
    (dest / "old-weights.bin").write_bytes(b"old")
    write_marker(dest, uri="http://127.0.0.1:1/old.tar.gz", files=1, total_bytes=3)
    server.add_directory("model", model_dir)

    await download(server.url("model.tar.gz"), dest)

    assert tree_digest(dest) == tree_digest(model_dir)
    assert read_marker(dest) is not None
    assert read_marker(dest).uri == server.url("model.tar.gz")  # type: ignore[union-attr]


async def test_download_removes_leftovers_of_an_interrupted_run(
    model_dir: Path, dest: Path
) -> None:
    stale = dest / f"{STAGING_PREFIX}dead"
    (stale / "tree").mkdir(parents=True)
    (stale / "tree" / "half.bin").write_bytes(b"partial")
    (dest / "config.json").write_text("moved before the crash")

    await download(model_dir.as_uri(), dest)

    assert tree_digest(dest) == tree_digest(model_dir)
    assert model_entries(dest) == sorted([MARKER_NAME, *model_entries(model_dir)])


async def test_download_waits_for_a_concurrent_run_into_the_same_dest(
    server: ModelServer, model_dir: Path, dest: Path
) -> None:
    server.add_directory("model", model_dir)
    uri = server.url("model.tar.gz")

    results = await asyncio.gather(download(uri, dest), download(uri, dest))

    assert sorted(result.skipped for result in results) == [False, True]
    assert server.request_count("model.tar.gz") == 1
    assert tree_digest(dest) == tree_digest(model_dir)


async def test_download_retries_server_errors_then_succeeds(
    server: ModelServer, model_dir: Path, dest: Path
) -> None:
    server.add_directory("model", model_dir)
    server.add_fault("model.tar.gz", status=503, times=2)

    await download(server.url("model.tar.gz"), dest, retry=FAST_RETRY)

    assert server.request_count("model.tar.gz") == 3
    assert tree_digest(dest) == tree_digest(model_dir)


async def test_download_resumes_nothing_but_retries_a_body_cut_short(
    server: ModelServer, model_dir: Path, dest: Path
) -> None:
    server.add_file("weights.bin", model_dir / "weights.bin")
    server.add_fault("weights.bin", cut_after_bytes=1024 * 1024, times=1)

    await download(server.url("weights.bin"), dest, retry=FAST_RETRY)

    assert server.request_count("weights.bin") == 2
    assert (dest / "weights.bin").read_bytes() == (model_dir / "weights.bin").read_bytes()


@pytest.mark.parametrize(
    ("fault", "message", "requests"),
    [
        pytest.param({"status": 500, "times": None}, "HTTP 500 Internal Server Error", 3, id="500"),
        pytest.param(
            {"cut_after_bytes": 100_000, "times": None}, "after 100000 of", 3, id="cut-mid-body"
        ),
        pytest.param({"status": 403, "times": None}, "HTTP 403 Forbidden", 1, id="403-no-retry"),
    ],
)
async def test_download_failure_leaves_no_marker_and_no_files(
    server: ModelServer,
    model_dir: Path,
    dest: Path,
    fault: dict[str, int | None],
    message: str,
    requests: int,
) -> None:
    server.add_file("weights.bin", model_dir / "weights.bin")
    server.add_fault("weights.bin", **fault)  # type: ignore[arg-type]

    with pytest.raises(FetchError, match=message):
        await download(server.url("weights.bin"), dest, retry=FAST_RETRY)

    assert server.request_count("weights.bin") == requests
    assert model_entries(dest) == []
    assert not is_complete(dest)


async def test_download_rejects_archive_with_traversal_member(
    server: ModelServer, dest: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"owned\n"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    server.add_file("evil.tar.gz", archive)

    with pytest.raises(UnsafeArchiveError, match=r"'\.\.' path component"):
        await download(server.url("evil.tar.gz"), dest)

    assert model_entries(dest) == []
    assert not [entry for entry in model_entries(tmp_path) if entry.endswith("escaped.txt")]


async def test_download_rejects_truncated_archive(
    server: ModelServer, model_dir: Path, dest: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "model.tar.gz"
    build_tar_gz(model_dir, archive)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    server.add_file("truncated.tar.gz", truncated)

    with pytest.raises(ArchiveError, match="cannot read tar archive"):
        await download(server.url("truncated.tar.gz"), dest)

    assert model_entries(dest) == []


async def test_download_refuses_an_empty_model(dest: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-source"
    empty.mkdir()

    with pytest.raises(SourceError, match="holds no files"):
        await download(empty.as_uri(), dest)

    assert model_entries(dest) == []


async def test_download_refuses_a_source_that_contains_dest(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="contains the destination"):
        await download(tmp_path.as_uri(), tmp_path / "models" / "abc")


async def test_download_logs_progress_and_a_summary(
    server: ModelServer, model_dir: Path, dest: Path
) -> None:
    server.add_file("weights.bin", model_dir / "weights.bin")

    with structlog.testing.capture_logs() as logs:
        await download(server.url("weights.bin"), dest, progress_interval=0)

    progress = [entry for entry in logs if entry["event"] == "download progress"]
    assert progress, logs
    assert progress[-1]["bytes_done"] == progress[-1]["bytes_total"] == 3 * 1024 * 1024 + 17
    assert progress[-1]["phase"] == "fetch"
    (summary,) = [entry for entry in logs if entry["event"] == "model downloaded"]
    assert summary["files"] == 1
    assert summary["bytes"] == 3 * 1024 * 1024 + 17
    assert summary["duration_seconds"] >= 0


async def test_download_of_minilm_through_tar_gz_matches_the_source(
    server: ModelServer, dest: Path
) -> None:
    source = minilm_model_dir()
    server.add_directory("all-MiniLM-L6-v2", source)

    result = await download(server.url("all-MiniLM-L6-v2.tar.gz"), dest)

    expected = tree_digest(source)
    assert tree_digest(dest) == expected
    assert "model.safetensors" in expected
    assert result.files == len(expected)


async def test_main_exits_0_and_writes_the_marker(
    server: ModelServer, model_dir: Path, dest: Path
) -> None:
    server.add_directory("model", model_dir)

    code, stderr = await run_downloader(server.url("model.tar.gz"), str(dest))

    assert code == 0, stderr
    assert json.loads(stderr[-1])["event"] == "model downloaded"
    assert tree_digest(dest) == tree_digest(model_dir)
    assert is_complete(dest, server.url("model.tar.gz"))


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        pytest.param(None, "HTTP 404 Not Found from {url}", id="404"),
        pytest.param({"status": 500, "times": None}, "HTTP 500 Internal Server Error", id="500"),
        pytest.param(
            {"cut_after_bytes": 1000, "times": None},
            "connection to {url} failed after 1000 of 3145745 bytes",
            id="cut-mid-body",
        ),
    ],
)
async def test_main_exits_1_with_one_clear_line_when_the_fetch_fails(
    server: ModelServer,
    model_dir: Path,
    dest: Path,
    fault: dict[str, int | None] | None,
    expected: str,
) -> None:
    if fault is not None:
        server.add_file("weights.bin", model_dir / "weights.bin")
        server.add_fault("weights.bin", **fault)  # type: ignore[arg-type]
    url = server.url("weights.bin")

    code, stderr = await run_downloader(url, str(dest))

    assert code == 1, stderr
    assert stderr[-1].startswith("download failed: " + expected.format(url=url)), stderr[-1]
    assert model_entries(dest) == []


async def test_main_exits_1_when_the_disk_is_full(
    server: ModelServer, model_dir: Path, dest: Path
) -> None:
    server.add_file("weights.bin", model_dir / "weights.bin")

    code, stderr = await run_downloader(
        server.url("weights.bin"), str(dest), script=RUN_MAIN_WITH_FILE_LIMIT
    )

    assert code == 1, stderr
    assert stderr[-1].startswith("download failed: cannot write "), stderr[-1]
    assert "File too large" in stderr[-1]
    assert model_entries(dest) == []


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        pytest.param("s3://bucket/model", "unsupported URI scheme: s3", id="s3"),
        pytest.param("gs://bucket/model", "unsupported URI scheme: gs", id="gs"),
        pytest.param("hf://org/model", "unsupported URI scheme: hf", id="hf"),
        pytest.param("models/relative", "has no scheme and is not an absolute path", id="relative"),
        pytest.param("file://otherhost/m", "only local paths are supported", id="remote-file"),
    ],
)
async def test_main_exits_2_for_a_uri_it_cannot_fetch(dest: Path, uri: str, message: str) -> None:
    code, stderr = await run_downloader(uri, str(dest))

    assert code == 2, stderr
    assert stderr[-1].startswith("download failed: ") and message in stderr[-1], stderr[-1]
    assert model_entries(dest) == []


async def test_main_exits_2_for_wrong_arguments() -> None:
    code, stderr = await run_downloader("only-one-argument")

    assert code == 2
    assert "expected 2 arguments" in stderr[-1]
