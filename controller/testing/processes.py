"""Child processes for the local cluster: free loopback ports, start, health wait, stop.

Each process runs in its own process group with its output in a log file, dies with its parent
(the kernel kills it if the Python process dies without stopping it), and is stopped with
SIGTERM to the whole group, then SIGKILL after a timeout. `controlplane` and `stack` use it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import structlog

log = structlog.get_logger(__name__)

POLL_INTERVAL = 0.1
LOG_TAIL_LINES = 40


class StartError(RuntimeError):
    """Raised when a process exits or does not become healthy; the message has its log tail."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(f"{message}\n--- last log lines ---\n{log_tail}" if log_tail else message)
        self.port_race = "address already in use" in log_tail.lower()


_handed_out_ports: set[int] = set()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago and was not handed out before."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port


_PR_SET_PDEATHSIG = 1
# Resolved before any fork: the child between fork and exec should only make the call.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def set_parent_death_signal() -> None:
    """Use as `preexec_fn`: the child dies with the process that started it (Linux only)."""
    # Runs in the child between fork and exec: if the Python process dies without stopping us
    # (SIGKILL, crash), the kernel kills the child so no etcd or apiserver is left behind.
    # SIGKILL, not SIGTERM: an apiserver whose etcd is terminating as well never finishes its
    # graceful shutdown.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ManagedProcess:
    """One child process in its own process group, logging into a file."""

    def __init__(self, *, name: str, args: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self, *, die_with_parent: bool) -> None:
        self._log_file = self.log_path.open("wb")
        self._popen = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=set_parent_death_signal if die_with_parent else None,
        )
        log.debug("process started", component=self.name, pid=self._popen.pid)

    @property
    def exit_code(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, *, timeout: float) -> None:
        """SIGTERM the process group, wait up to `timeout`, then SIGKILL it."""
        popen = self._popen
        if popen is not None and popen.poll() is None:
            self._signal_group(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("process ignored sigterm", component=self.name, timeout_s=timeout)
                self._signal_group(popen.pid, signal.SIGKILL)
                popen.wait()
            log.debug("process stopped", component=self.name, exit_code=popen.returncode)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            pass


def wait_healthy(
    process: ManagedProcess, url: str, *, context: ssl.SSLContext | None, deadline: float
) -> None:
    last_answer = "no answer yet"
    while True:
        if process.exit_code is not None:
            raise StartError(
                f"{process.name} exited with code {process.exit_code} (log: {process.log_path})",
                log_tail=process.log_tail(),
            )
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as answer:
                if answer.status == 200:
                    log.debug("process healthy", component=process.name, url=url)
                    return
                last_answer = f"HTTP {answer.status}"
        except urllib.error.HTTPError as exc:
            last_answer = f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}"
        except (urllib.error.URLError, OSError) as exc:
            last_answer = str(exc)
        if time.monotonic() > deadline:
            raise StartError(
                f"{process.name} not healthy at {url} in time: {last_answer} "
                f"(log: {process.log_path})",
                log_tail=process.log_tail(),
            )
        time.sleep(POLL_INTERVAL)
