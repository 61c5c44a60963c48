"""Fixtures for tests that run the product: the stack, node groups and caches.

The stack (model server, node simulator, manager, one agent per node) starts once per session
on the session's control plane. Nodes `sim-a` and `sim-b` carry the worker label; `sim-c` does
not, so no cache may ever reach it. Every cache a test creates through `make_cache` is deleted
afterwards, and the test waits until it is really gone.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.api import kinds
from controller.kube.client import KubeClient
from controller.kube.errors import AlreadyExists, NotFound
from controller.kube.resources import STORAGE_CLASSES
from controller.testing.controlplane import ControlPlane
from controller.testing.stack import WORKER_LABEL, Stack, StackNode
from controller.testing.waiting import eventually

WORKERS = ("sim-a", "sim-b")
OUTSIDER = "sim-c"
STORAGE_CLASS = "local-storage"
CACHE_DELETION_TIMEOUT = 60.0
# Nothing listens on the discard port: for caches whose download must never succeed.
UNREACHABLE_URI = "http://127.0.0.1:9/never.tar.gz"


@pytest.fixture(scope="session", name="stack")
def _stack(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    nodes = [StackNode(name, dict(WORKER_LABEL)) for name in WORKERS] + [StackNode(OUTSIDER)]
    stack = Stack(
        tmp_path_factory.mktemp("stack"),
        kubeconfig=Path(control_plane.kubeconfig),
        nodes=nodes,
        log_level="debug",
    )
    with stack:
        yield stack


def node_group_body(name: str, *, path: str = "/models") -> dict[str, Any]:
    """A node group of the worker nodes whose PV template points at `path` on each node."""
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelNodeGroup",
        "metadata": {"name": name},
        "spec": {
            "storageLimit": "10Gi",
            "persistentVolumeSpec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": STORAGE_CLASS,
                "local": {"path": path},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": key,
                                        "operator": "In",
                                        "values": [value],
                                    }
                                    for key, value in WORKER_LABEL.items()
                                ]
                            }
                        ]
                    }
                },
            },
            "persistentVolumeClaimSpec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": STORAGE_CLASS,
                "resources": {"requests": {"storage": "10Gi"}},
            },
        },
    }


def cache_body(name: str, *, uri: str, node_groups: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelCache",
        "metadata": {"name": name},
        "spec": {"sourceModelUri": uri, "modelSize": "100Mi", "nodeGroups": node_groups},
    }


@pytest.fixture(name="storage_class")
async def _storage_class(kube: KubeClient, stack: Stack) -> str:
    body = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "Immediate",
    }
    try:
        await kube.create(STORAGE_CLASSES, body)
    except AlreadyExists:
        pass
    return STORAGE_CLASS


@pytest.fixture(name="node_group")
async def _node_group(
    kube: KubeClient, storage_class: str, unique_name: Callable[..., str]
) -> AsyncIterator[str]:
    """A fresh node group of the worker nodes, deleted after the test."""
    name = unique_name("group")
    await kube.create(kinds.LOCAL_MODEL_NODE_GROUPS, node_group_body(name))
    yield name
    try:
        await kube.delete(kinds.LOCAL_MODEL_NODE_GROUPS, name)
    except NotFound:
        pass


MakeCache = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture(name="make_cache")
async def _make_cache(kube: KubeClient) -> AsyncIterator[MakeCache]:
    """`await make_cache(name, uri=..., node_groups=[...])`: a cache deleted (and awaited) after."""
    created: list[str] = []

    async def make_cache(name: str, *, uri: str, node_groups: list[str]) -> dict[str, Any]:
        if name not in created:
            created.append(name)
        return await kube.create(
            kinds.LOCAL_MODEL_CACHES,
            copy.deepcopy(cache_body(name, uri=uri, node_groups=node_groups)),
        )

    yield make_cache
    for name in created:
        try:
            await kube.delete(kinds.LOCAL_MODEL_CACHES, name)
        except NotFound:
            continue
    for name in created:
        await eventually(
            lambda name=name: cache_is_gone(kube, name), timeout=CACHE_DELETION_TIMEOUT
        )


async def cache_is_gone(kube: KubeClient, name: str) -> None:
    try:
        cache = await kube.get(kinds.LOCAL_MODEL_CACHES, name)
    except NotFound:
        return
    raise AssertionError(
        f"cache {name} still exists; finalizers={cache['metadata'].get('finalizers')} "
        f"deletionTimestamp={cache['metadata'].get('deletionTimestamp')}"
    )


async def manager_metric(stack: Stack, name: str) -> float | None:
    """The value of one manager metric sample (`name` includes labels), None when absent."""
    async with aiohttp.ClientSession() as session:
        async with session.get(stack.manager_metrics_url) as answer:
            answer.raise_for_status()
            text = await answer.text()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None
