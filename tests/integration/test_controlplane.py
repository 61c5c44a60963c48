"""Smoke tests of the local control plane: version, CRDs, controllers, start failures."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.kube.client import KubeClient
from controller.kube.errors import Forbidden, NotFound
from controller.kube.resources import NODES, Resource
from controller.testing import controlplane
from controller.testing.controlplane import (
    DEFAULT_CRD_DIR,
    ControlPlane,
    ControlPlaneError,
    StartError,
    load_crds,
)
from controller.testing.waiting import eventually


def _crd_resource(plural: str) -> Resource:
    for crd in load_crds([DEFAULT_CRD_DIR]):
        spec = crd["spec"]
        if spec["names"]["plural"] == plural:
            version = next(v["name"] for v in spec["versions"] if v.get("storage"))
            return Resource(
                spec["group"], version, plural, spec["names"]["kind"], spec["scope"] == "Namespaced"
            )
    raise AssertionError(f"no CRD with plural {plural} in {DEFAULT_CRD_DIR}")


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def test_apiserver_reports_built_version(control_plane: ControlPlane) -> None:
    version = control_plane.get_json("/version")

    assert version["gitVersion"] == f"v{controlplane.KUBE_VERSION}"


def test_controlplane_serves_on_loopback_only(control_plane: ControlPlane) -> None:
    assert control_plane.server.startswith("https://127.0.0.1:")


async def test_crd_from_manifests_round_trips_custom_object(
    kube: KubeClient, unique_name: Callable[..., str]
) -> None:
    caches = _crd_resource("localmodelcaches")
    name = unique_name()
    body = {
        "apiVersion": caches.api_version,
        "kind": caches.kind,
        "metadata": {"name": name},
        "spec": {
            "sourceModelUri": "http://127.0.0.1:1/model.tar.gz",
            "modelSize": "1Gi",
            "nodeGroups": ["workers"],
        },
    }

    created = await kube.create(caches, body)
    try:
        fetched = await kube.get(caches, name)
        assert fetched["metadata"]["uid"] == created["metadata"]["uid"]
        assert fetched["spec"] == body["spec"]
    finally:
        await kube.delete(caches, name)

    async def cache_is_gone() -> None:
        try:
            await kube.get(caches, name)
        except NotFound:
            return
        raise AssertionError(f"{name} still exists")

    await eventually(cache_is_gone, timeout=30)


async def test_kubeconfig_for_other_user_is_subject_to_rbac(
    control_plane: ControlPlane, tmp_path: Path, unique_name: Callable[..., str]
) -> None:
    path = control_plane.write_kubeconfig(
        tmp_path / "kubeconfig", user=unique_name("user"), groups=["nobody"]
    )
    client = await KubeClient.from_kubeconfig(path)
    try:
        with pytest.raises(Forbidden):
            await client.list(NODES)
    finally:
        await client.close()


def test_start_retries_when_a_port_was_taken(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_free_port = controlplane.free_port
        handed_out = []

        def free_port_taken_once() -> int:
            port = taken if not handed_out else real_free_port()
            handed_out.append(port)
            return port

        monkeypatch.setattr(controlplane, "free_port", free_port_taken_once)
        plane = ControlPlane(
            tmp_path, crd_dirs=[], with_controller_manager=False, with_scheduler=False
        )
        with plane:
            assert plane.get_json("/version")["gitVersion"].startswith("v")

    assert handed_out[0] == taken
    assert _processes_mentioning(str(tmp_path)) == []


def test_start_failure_reports_log_tail_and_leaves_nothing_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        monkeypatch.setattr(controlplane, "free_port", lambda: taken)
        plane = ControlPlane(
            tmp_path, crd_dirs=[], with_controller_manager=False, with_scheduler=False
        )

        with pytest.raises(StartError) as failure:
            plane.start()

    assert "address already in use" in str(failure.value)
    assert "last log lines" in str(failure.value)
    assert _processes_mentioning(str(tmp_path)) == []
    with pytest.raises(ControlPlaneError):
        _ = plane.server
