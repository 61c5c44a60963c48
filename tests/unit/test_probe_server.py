"""The probe server: /healthz and /readyz answer from named checks, /metrics serves the registry.

Also the checks a `Process` wires into it, and the process's exit codes. Servers listen on
127.0.0.1 ports picked free just before; the processes' API client points at a loopback port
where nothing listens, so their informers never sync. Requests go only to these ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from kubernetes_asyncio.client import Configuration
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from controller.kube.client import KubeClient
from controller.kube.resources import CONFIGMAPS
from controller.runtime import controller as controller_module
from controller.runtime import process as process_module
from controller.runtime.controller import Controller
from controller.runtime.process import Process
from controller.runtime.server import Check, ProbeServer
from controller.testing.controlplane import free_port
from controller.testing.waiting import eventually


@dataclass
class Probes:
    server: ProbeServer
    problems: dict[str, str | None]  # what each check reports; tests edit it
    probe_url: str
    metrics_url: str
    http: aiohttp.ClientSession

    async def fetch(self, url: str) -> tuple[int, str, str]:
        async with self.http.get(url) as response:
            return response.status, response.headers["Content-Type"], await response.text()


async def never_called(key: str) -> None:
    raise AssertionError(f"reconcile of {key} was not expected")


def reporting(problems: dict[str, str | None], name: str) -> Check:
    return lambda: problems[name]


@pytest.fixture(name="probes")
async def _probes() -> AsyncIterator[Probes]:
    problems: dict[str, str | None] = {"informers": None, "loop": None, "synced": None}
    probe_port, metrics_port = free_port(), free_port()
    server = ProbeServer(
        metrics_address=f"127.0.0.1:{metrics_port}",
        probe_address=f"127.0.0.1:{probe_port}",
        liveness={name: reporting(problems, name) for name in ("informers", "loop")},
        readiness={"synced": reporting(problems, "synced")},
    )
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Probes(
                server=server,
                problems=problems,
                probe_url=f"http://127.0.0.1:{probe_port}",
                metrics_url=f"http://127.0.0.1:{metrics_port}",
                http=http,
            )
    finally:
        await server.stop()


@pytest.mark.parametrize(
    "endpoint", [pytest.param("healthz", id="healthz"), pytest.param("readyz", id="readyz")]
)
async def test_probe_answers_ok_when_every_check_passes(probes: Probes, endpoint: str) -> None:
    status, _, text = await probes.fetch(f"{probes.probe_url}/{endpoint}")

    assert (status, text) == (200, "ok")


async def test_probe_verbose_lists_every_passing_check(probes: Probes) -> None:
    status, _, text = await probes.fetch(f"{probes.probe_url}/healthz?verbose")

    assert status == 200
    assert text.splitlines() == ["[+]informers ok", "[+]loop ok", "ok"]


async def test_probe_answers_500_naming_the_failed_check_and_its_reason(probes: Probes) -> None:
    probes.problems["loop"] = "event loop lag 7.2s"

    status, _, text = await probes.fetch(f"{probes.probe_url}/healthz")

    assert status == 500
    assert text.splitlines() == [
        "[+]informers ok",
        "[-]loop failed: event loop lag 7.2s",
        "health check failed",
    ]


async def test_probe_recovers_once_the_check_passes_again(probes: Probes) -> None:
    probes.problems["synced"] = "not synced: localmodelcaches.serving.kserve.io"
    status, _, text = await probes.fetch(f"{probes.probe_url}/readyz")
    assert status == 500
    assert "[-]synced failed: not synced: localmodelcaches.serving.kserve.io" in text

    probes.problems["synced"] = None
    status, _, text = await probes.fetch(f"{probes.probe_url}/readyz")
    assert (status, text) == (200, "ok")


async def test_probe_liveness_and_readiness_use_their_own_checks(probes: Probes) -> None:
    probes.problems["synced"] = "not synced: nodes"

    assert (await probes.fetch(f"{probes.probe_url}/healthz"))[0] == 200
    assert (await probes.fetch(f"{probes.probe_url}/readyz"))[0] == 500


async def test_probe_treats_a_raising_check_as_failed() -> None:
    def broken() -> str | None:
        raise KeyError("informer")

    port = free_port()
    server = ProbeServer(
        metrics_address="0", probe_address=f"127.0.0.1:{port}", liveness={"broken": broken},
        readiness={},
    )  # fmt: skip
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                status, text = response.status, await response.text()
            async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                ready = response.status, await response.text()
    finally:
        await server.stop()

    assert status == 500
    assert "[-]broken failed: check raised KeyError('informer')" in text
    assert ready == (200, "ok"), "no readiness checks means ready"


async def test_metrics_endpoint_serves_the_registry_in_text_format(
    probes: Probes, unique_name: Callable[..., str]
) -> None:
    name = unique_name()
    Controller(name, never_called, informers=[], workers=2)

    status, content_type, text = await probes.fetch(f"{probes.metrics_url}/metrics")

    assert status == 200
    assert content_type.startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {"controller_runtime_reconcile", "workqueue_depth", "process_cpu_seconds"} <= set(
        families
    )
    ours = {
        (sample.name, sample.labels.get("result"), sample.value)
        for sample in families["controller_runtime_reconcile"].samples
        if sample.labels.get("controller") == name
    }
    assert ours == {
        ("controller_runtime_reconcile_total", result, 0.0)
        for result in ("success", "error", "requeue", "requeue_after")
    }
    gauge = families["controller_runtime_max_concurrent_reconciles"].samples
    assert [s.value for s in gauge if s.labels["controller"] == name] == [2.0]


@pytest.mark.parametrize(
    ("port_of", "path"),
    [
        pytest.param("metrics_url", "/healthz", id="no-probes-on-metrics-port"),
        pytest.param("probe_url", "/metrics", id="no-metrics-on-probe-port"),
    ],
)
async def test_probe_and_metrics_endpoints_live_on_separate_ports(
    probes: Probes, port_of: str, path: str
) -> None:
    status, _, _ = await probes.fetch(f"{getattr(probes, port_of)}{path}")

    assert status == 404


async def test_probe_server_stop_closes_the_ports() -> None:
    port = free_port()
    server = ProbeServer(
        metrics_address="0", probe_address=f"127.0.0.1:{port}", liveness={}, readiness={}
    )
    await server.start()
    await server.stop()

    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.get(f"http://127.0.0.1:{port}/healthz")


@pytest.mark.parametrize("disabled", [pytest.param("", id="empty"), pytest.param("0", id="zero")])
async def test_probe_server_starts_with_metrics_disabled(disabled: str) -> None:
    port = free_port()
    server = ProbeServer(
        metrics_address=disabled, probe_address=f"127.0.0.1:{port}", liveness={}, readiness={}
    )
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
    finally:
        await server.stop()


# --- the checks a Process wires in ----------------------------------------------------------


@pytest.fixture(name="unreachable")
async def _unreachable() -> AsyncIterator[KubeClient]:
    """An API client whose server never answers (nothing listens on its loopback port)."""
    configuration = Configuration(host=f"http://127.0.0.1:{free_port()}")
    async with KubeClient(configuration, user_agent="process-tests") as client:
        yield client


@contextlib.asynccontextmanager
async def running(process: Process) -> AsyncIterator[asyncio.Task[int]]:
    """Run `process`; stop it afterwards with SIGTERM, as Kubernetes would, unless it ended."""
    task = asyncio.create_task(process.run())
    try:
        yield task
    finally:
        if not task.done():
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the process's own handler
        await asyncio.wait_for(task, timeout=10)


async def probe(port: int, endpoint: str) -> tuple[int, str]:
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/{endpoint}") as response:
                return response.status, await response.text()
    except aiohttp.ClientConnectorError as exc:
        raise AssertionError(f"probe server not listening yet: {exc}") from exc


async def test_process_is_live_but_not_ready_before_sync_and_exits_0_on_sigterm(
    unreachable: KubeClient,
) -> None:
    port = free_port()
    process = Process(unreachable, metrics_address="0", probe_address=f"127.0.0.1:{port}",
                      name="probe-tests")  # fmt: skip
    process.informer(CONFIGMAPS)

    async with running(process) as task:

        async def not_ready() -> None:
            assert await probe(port, "readyz") == (
                500, "[-]informers failed: not synced: configmaps\nhealth check failed\n"
            )  # fmt: skip

        await eventually(not_ready, timeout=5)
        assert await probe(port, "healthz") == (200, "ok")

        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(task, timeout=10) == 0


async def test_process_liveness_fails_when_informer_stays_silent(
    unreachable: KubeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process_module, "INFORMER_SILENCE_LIMIT", 0.2)
    port = free_port()
    process = Process(unreachable, metrics_address="0", probe_address=f"127.0.0.1:{port}",
                      name="probe-tests")  # fmt: skip
    process.informer(CONFIGMAPS)

    async with running(process):

        async def silent() -> None:
            status, text = await probe(port, "healthz")
            assert (status, text.splitlines()[0]) == (
                500,
                "[-]informers failed: silent: configmaps",
            )

        await eventually(silent, timeout=5)


async def test_process_exits_1_when_a_controller_stops(
    unreachable: KubeClient, monkeypatch: pytest.MonkeyPatch, unique_name: Callable[..., str]
) -> None:
    monkeypatch.setattr(controller_module, "CACHE_SYNC_TIMEOUT", 0.2)
    process = Process(unreachable, metrics_address="0", probe_address="0", name="probe-tests")
    informer = process.informer(CONFIGMAPS)
    controller = Controller(unique_name(), never_called, informers=[informer])
    process.add_controller(controller)

    with capture_logs() as logs:
        async with running(process) as task:
            exit_code = await asyncio.wait_for(asyncio.shield(task), timeout=10)

    assert exit_code == 1
    [stopped] = [entry for entry in logs if entry["event"] == "task stopped unexpectedly"]
    assert stopped["task"] == f"controller {controller.name}"
    assert "not synced in time" in stopped["error"]
