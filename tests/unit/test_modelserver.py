"""The test model server: what it serves, its archives, its faults, its CLI; and the fixtures."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from controller.testing.modelserver import (
    ModelServer,
    build_tar_gz,
    build_zip,
    minilm_model_dir,
    tree_digest,
)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(variable.upper(), raising=False)


@pytest.fixture(name="model_dir")
def _model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}\n')
    (root / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 4096)
    (tmp_path / "secret.txt").write_text("top secret\n")
    return root


@pytest.fixture(name="server")
async def _server(model_dir: Path) -> AsyncIterator[ModelServer]:
    async with ModelServer() as server:
        server.add_directory("model", model_dir)
        server.add_file("weights.bin", model_dir / "sub" / "weights.bin")
        yield server


@pytest.fixture(name="client")
async def _client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def test_modelserver_serves_files_with_length_and_type(
    server: ModelServer, client: aiohttp.ClientSession, model_dir: Path
) -> None:
    async with client.get(server.url("model/sub/weights.bin")) as response:
        body = await response.read()
        assert response.status == 200
        assert response.content_length == len(body) == 256 * 4096
        assert response.content_type == "application/octet-stream"
    async with client.get(server.url("model/config.json")) as response:
        assert response.content_type == "application/json"
        assert await response.read() == (model_dir / "config.json").read_bytes()
    assert server.request_count("model/sub/weights.bin") == 1


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/nothing.bin", id="unregistered"),
        pytest.param("/model/%2E%2E/secret.txt", id="escaping-dir"),
        pytest.param("/model/", id="directory-itself"),
    ],
)
async def test_modelserver_answers_404_for_anything_not_registered(
    server: ModelServer, client: aiohttp.ClientSession, path: str
) -> None:
    async with client.get(URL(server.base_url + path, encoded=True)) as response:
        assert response.status == 404
        assert b"top secret" not in await response.read()


@pytest.mark.parametrize(
    ("suffix", "content_type"),
    [
        pytest.param(".tar.gz", "application/gzip", id="tar-gz"),
        pytest.param(".zip", "application/zip", id="zip"),
    ],
)
async def test_modelserver_serves_deterministic_archives_of_a_directory(
    server: ModelServer,
    client: aiohttp.ClientSession,
    model_dir: Path,
    tmp_path: Path,
    suffix: str,
    content_type: str,
) -> None:
    async with client.get(server.url("model" + suffix)) as response:
        served = await response.read()
        assert response.content_type == content_type
        assert response.content_length == len(served)
    rebuilt = tmp_path / ("again" + suffix)
    (build_tar_gz if suffix == ".tar.gz" else build_zip)(model_dir, rebuilt)

    assert hashlib.sha256(served).digest() == hashlib.sha256(rebuilt.read_bytes()).digest()


def test_build_tar_gz_holds_the_tree_at_the_archive_root(model_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    build_tar_gz(model_dir, archive)

    with tarfile.open(archive) as tar:
        members = {member.name: member for member in tar.getmembers()}
        tar.extractall(tmp_path / "out", filter="data")

    assert sorted(members) == ["config.json", "sub", "sub/weights.bin"]
    assert {member.mtime for member in members.values()} == {0}
    assert tree_digest(tmp_path / "out") == tree_digest(model_dir)


async def test_modelserver_fails_with_status_the_given_number_of_times(
    server: ModelServer, client: aiohttp.ClientSession
) -> None:
    server.add_fault("weights.bin", status=503, times=2)

    statuses = []
    for _ in range(3):
        async with client.get(server.url("weights.bin")) as response:
            statuses.append(response.status)

    assert statuses == [503, 503, 200]
    assert server.request_count("weights.bin") == 3


async def test_modelserver_cuts_the_connection_mid_body(
    server: ModelServer, client: aiohttp.ClientSession
) -> None:
    server.add_fault("weights.bin", cut_after_bytes=1000)

    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(server.url("weights.bin")) as response:
            assert response.content_length == 256 * 4096
            await response.read()
    async with client.get(server.url("weights.bin")) as response:
        assert len(await response.read()) == 256 * 4096


def test_add_fault_wants_exactly_one_kind() -> None:
    server = ModelServer()
    with pytest.raises(ValueError, match="exactly one"):
        server.add_fault("x", status=500, cut_after_bytes=10)
    with pytest.raises(ValueError, match="exactly one"):
        server.add_fault("x")


async def test_modelserver_cli_serves_until_sigterm(model_dir: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller.testing.modelserver",
        "--port",
        "0",
        "--directory",
        f"model={model_dir}",
        "--file",
        f"weights.bin={model_dir / 'sub' / 'weights.bin'}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        # The first stdout line is printed once the socket accepts connections.
        first_line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        assert first_line.startswith("serving http://127.0.0.1:"), first_line
        base_url = first_line.split()[1]
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{base_url}/weights.bin") as response:
                assert response.status == 200
                assert len(await response.read()) == 256 * 4096
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_minilm_model_dir_holds_the_model_files() -> None:
    model_dir = minilm_model_dir()

    assert (model_dir / "config.json").is_file()
    assert (model_dir / "model.safetensors").stat().st_size > 80 * 1024 * 1024


def test_tree_digest_skips_only_downloader_bookkeeping(model_dir: Path) -> None:
    before = tree_digest(model_dir)
    (model_dir / ".localmodel-complete").write_text("{}")
    (model_dir / ".localmodel-staging-abc").mkdir()
    (model_dir / ".localmodel-staging-abc" / "half.bin").write_bytes(b"x")
    (model_dir / ".hidden").write_text("part of the model")

    after = tree_digest(model_dir)

    assert set(before) == {"config.json", "sub/weights.bin"}
    assert after == {**before, ".hidden": hashlib.sha256(b"part of the model").hexdigest()}
