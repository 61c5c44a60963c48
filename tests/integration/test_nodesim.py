"""The node simulator against the real control plane: nodes, Jobs through PVs, failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from controller.kube.client import KubeClient
from controller.kube.errors import NotFound
from controller.kube.resources import (
    JOBS,
    LEASES,
    NODES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    PODS,
    Resource,
)
from controller.testing.controlplane import ControlPlane, free_port
from controller.testing.nodesim import (
    NodeSimulator,
    SimulatedNode,
    control_app,
    local_volume,
    node_ready_status,
)
from controller.testing.waiting import eventually

Simulate = Callable[..., Awaitable[NodeSimulator]]


@pytest.fixture(name="simulate")
async def _simulate(kube: KubeClient, tmp_path: Path) -> AsyncIterator[Simulate]:
    """`await simulate([SimulatedNode(...)])`: a running NodeSimulator, stopped afterwards.

    Request it before `namespace` (and `delete_later` after it): fixtures are torn down in
    reverse order, and pods still terminating need their kubelet to go away.
    """
    running: list[tuple[NodeSimulator, asyncio.Task[None]]] = []

    async def simulate(nodes: list[SimulatedNode], **options: Any) -> NodeSimulator:
        simulator = NodeSimulator(kube, root=tmp_path / "nodes", nodes=nodes, **options)
        task = asyncio.create_task(simulator.run())
        running.append((simulator, task))
        started = asyncio.create_task(simulator.started.wait())
        await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            started.cancel()
            task.result()  # raises what stopped the simulator
        return simulator

    yield simulate
    for simulator, task in running:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await simulator.delete_nodes()


@pytest.fixture(name="delete_later")
async def _delete_later(kube: KubeClient) -> AsyncIterator[Callable[..., None]]:
    """`delete_later(resource, name, namespace=None)`: delete after the test, wait until gone.

    Deletion is in the foreground, so a Job is gone only once its pods are.
    """
    objects: list[tuple[Resource, str, str | None]] = []

    def delete_later(resource: Resource, name: str, namespace: str | None = None) -> None:
        objects.append((resource, name, namespace))

    yield delete_later
    for resource, name, namespace in reversed(objects):
        with contextlib.suppress(NotFound):
            await kube.delete(resource, name, namespace=namespace, propagation_policy="Foreground")
    for resource, name, namespace in objects:
        await eventually(_absent(kube, resource, name, namespace), timeout=60, interval=0.25)


def _absent(
    kube: KubeClient, resource: Resource, name: str, namespace: str | None = None
) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        try:
            await kube.get(resource, name, namespace=namespace)
        except NotFound:
            return
        raise AssertionError(f"{resource.kind} {namespace or ''}/{name} still exists")

    return check


def _pod(name: str, *, node: str, command: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "containers": [{"name": "main", "image": "python:3.11", "command": command}],
        },
    }


async def _pod_phase(kube: KubeClient, name: str, namespace: str) -> dict[str, Any]:
    return (await kube.get(PODS, name, namespace=namespace)).get("status") or {}


async def test_node_registers_ready_with_lease(
    kube: KubeClient, simulate: Simulate, unique_name: Callable[..., str]
) -> None:
    name = unique_name("node")
    # A label of its own: the worker label would draw the session's manager to this node.
    await simulate([SimulatedNode(name, {"nodesim.test/role": "plain"})])

    async def node_is_ready() -> dict[str, Any]:
        node = await kube.get(NODES, name)
        assert node_ready_status(node) == "True", node.get("status", {}).get("conditions")
        return node

    node = await eventually(node_is_ready, timeout=30)
    labels = node["metadata"]["labels"]
    assert labels["nodesim.test/role"] == "plain"
    assert labels["kubernetes.io/hostname"] == name
    assert node["status"]["allocatable"]["ephemeral-storage"] == "100Gi"
    assert {"type": "InternalIP", "address": "127.0.0.1"} in node["status"]["addresses"]
    lease = await kube.get(LEASES, name, namespace="kube-node-lease")
    assert lease["spec"]["holderIdentity"] == name
    assert lease["spec"]["leaseDurationSeconds"] == 40


async def test_job_writes_through_prebound_local_pv(
    kube: KubeClient,
    simulate: Simulate,
    namespace: str,
    delete_later: Callable[..., None],
    unique_name: Callable[..., str],
) -> None:
    node = unique_name("node")
    simulator = await simulate([SimulatedNode(node)])
    volume, claim, job = unique_name("pv"), unique_name("pvc"), unique_name("job")
    await kube.create(
        PERSISTENT_VOLUMES,
        local_volume(volume, node=node, path=f"/models/{volume}", claim=(namespace, claim)),
    )
    delete_later(PERSISTENT_VOLUMES, volume)
    await kube.create(
        PERSISTENT_VOLUME_CLAIMS,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        namespace=namespace,
    )
    delete_later(PERSISTENT_VOLUME_CLAIMS, claim, namespace)
    delete_later(JOBS, job, namespace)
    script = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])"
    await kube.create(
        JOBS,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": job},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "write",
                                "image": "python:3.11",
                                "command": ["python", "-c", script],
                                "args": ["/mnt/models/out.txt", "hello from the job"],
                                "volumeMounts": [
                                    {"name": "models", "mountPath": "/mnt/models", "subPath": "m1"}
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "models", "persistentVolumeClaim": {"claimName": claim}}
                        ],
                    }
                },
            },
        },
        namespace=namespace,
    )

    async def job_is_complete() -> None:
        status = (await kube.get(JOBS, job, namespace=namespace)).get("status") or {}
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
        assert conditions.get("Complete") == "True", status

    await eventually(job_is_complete, timeout=90, interval=0.25)
    written = simulator.host_path(node, f"/models/{volume}/m1/out.txt")
    assert written.read_text() == "hello from the job"
    assert written.is_relative_to(simulator.node_dir(node))


async def test_pod_with_unsupported_command_fails_with_reason(
    kube: KubeClient, simulate: Simulate, namespace: str, unique_name: Callable[..., str]
) -> None:
    node = unique_name("node")
    await simulate([SimulatedNode(node)])
    pod = unique_name("pod")
    await kube.create(PODS, _pod(pod, node=node, command=["sleep", "1"]), namespace=namespace)

    async def pod_failed() -> dict[str, Any]:
        status = await _pod_phase(kube, pod, namespace)
        assert status.get("phase") == "Failed", status
        return status

    status = await eventually(pod_failed, timeout=30)
    assert status["reason"] == "UnsupportedCommand"
    assert "python" in status["message"]


async def test_failing_container_reports_exit_code_and_stderr(
    kube: KubeClient, simulate: Simulate, namespace: str, unique_name: Callable[..., str]
) -> None:
    node = unique_name("node")
    await simulate([SimulatedNode(node)])
    pod = unique_name("pod")
    script = "import sys; print('to stdout'); sys.stderr.write('model missing\\n'); sys.exit(3)"
    body = _pod(pod, node=node, command=["python3", "-c", script])
    await kube.create(PODS, body, namespace=namespace)

    async def pod_failed() -> dict[str, Any]:
        status = await _pod_phase(kube, pod, namespace)
        assert status.get("phase") == "Failed", status
        return status

    status = await eventually(pod_failed, timeout=30)
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    assert terminated["message"] == "model missing"


async def test_deleted_pod_is_killed_and_removed(
    kube: KubeClient, simulate: Simulate, namespace: str, unique_name: Callable[..., str]
) -> None:
    node = unique_name("node")
    simulator = await simulate([SimulatedNode(node)])
    pod = unique_name("pod")
    marker = simulator.node_dir(node) / f"{pod}.pid"
    # The container records its pid, then blocks until a signal ends it.
    script = (
        f"import os, signal; open({str(marker)!r}, 'w').write(str(os.getpid())); signal.pause()"
    )
    body = _pod(pod, node=node, command=["python", "-c", script])
    await kube.create(PODS, body, namespace=namespace)

    async def pod_running() -> None:
        status = await _pod_phase(kube, pod, namespace)
        assert status.get("phase") == "Running", status
        assert marker.exists() and marker.read_text()

    await eventually(pod_running, timeout=30)
    pid = int(marker.read_text())
    await kube.delete(PODS, pod, namespace=namespace)

    await eventually(_absent(kube, PODS, pod, namespace), timeout=30, interval=0.25)
    assert not _process_exists(pid), "the container process outlived its pod"


def _process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def test_stopping_heartbeats_makes_node_not_ready(
    kube: KubeClient,
    control_plane: ControlPlane,
    simulate: Simulate,
    unique_name: Callable[..., str],
) -> None:
    node = unique_name("node")
    simulator = await simulate([SimulatedNode(node)])

    async def ready_is(expected: set[str]) -> None:
        status = node_ready_status(await kube.get(NODES, node))
        assert status in expected, f"Ready={status}, waiting for {expected}"

    await eventually(lambda: ready_is({"True"}), timeout=30)
    simulator.stop_heartbeats(node)

    # Grace period, plus a lease renewal that may just have happened, plus the monitor period.
    timeout = control_plane.node_monitor_grace_period + simulator.heartbeat_interval + 20
    await eventually(lambda: ready_is({"Unknown", "False"}), timeout=timeout, interval=0.5)

    simulator.resume_heartbeats(node)
    await eventually(lambda: ready_is({"True"}), timeout=30, interval=0.25)


async def test_control_endpoint_toggles_heartbeats(
    kube: KubeClient, tmp_path: Path, unique_name: Callable[..., str]
) -> None:
    node = unique_name("node")
    simulator = NodeSimulator(kube, root=tmp_path, nodes=[SimulatedNode(node)])
    runner = web.AppRunner(control_app(simulator))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{base}/nodes/{node}/heartbeats"
            async with session.post(url, json={"enabled": False}) as answer:
                assert answer.status == 200
                assert not simulator.heartbeats_enabled(node)
            async with session.post(url, json={"enabled": True}) as answer:
                assert answer.status == 200
                assert simulator.heartbeats_enabled(node)
            async with session.post(url, data=json.dumps({"enabled": "no"})) as answer:
                assert answer.status == 400
            async with session.post(f"{base}/nodes/other/heartbeats", json={"enabled": True}) as a:
                assert a.status == 404
    finally:
        await runner.cleanup()
