"""Fixtures every test may use: the local control plane, an API client, unique names, namespaces.

The control plane (real etcd, kube-apiserver, kube-controller-manager, kube-scheduler) starts
once per session, only when a test asks for it, and stops at the end even after failures.
Tests under tests/integration get the `integration` marker automatically. The helpers these
fixtures use live in controller/testing so that `make dev` can use them too.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from controller.kube.client import KubeClient
from controller.kube.errors import NotFound
from controller.kube.resources import NAMESPACES
from controller.testing.controlplane import ControlPlane, MissingBinariesError
from controller.testing.names import unique_name as make_unique_name
from controller.testing.waiting import eventually

INTEGRATION_DIR = Path(__file__).parent / "integration"
# Labels every namespace this session creates, so a crashed run's leftovers can be found.
TEST_RUN_ID = secrets.token_hex(4)
NAMESPACE_DELETION_TIMEOUT = 120.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", name="control_plane")
def _control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"))
    try:
        plane.start()
    except MissingBinariesError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(name="kube")
async def _kube(control_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    client = await KubeClient.from_kubeconfig(control_plane.kubeconfig)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(name="unique_name")
def _unique_name(request: pytest.FixtureRequest) -> Callable[..., str]:
    """`unique_name(prefix=None)`: a fresh DNS-1123 name; the prefix defaults to the test's name."""
    test_name = request.node.name.removeprefix("test_")

    def unique_name(prefix: str | None = None) -> str:
        return make_unique_name(test_name if prefix is None else prefix)

    return unique_name


async def create_namespace(kube: KubeClient, name: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"test-run": TEST_RUN_ID}},
    }
    await kube.create(NAMESPACES, body)


async def delete_namespace(kube: KubeClient, name: str) -> None:
    """Delete a namespace and wait until the namespace controller has really removed it."""
    try:
        await kube.delete(NAMESPACES, name)
    except NotFound:
        pass

    async def namespace_is_gone() -> None:
        try:
            namespace = await kube.get(NAMESPACES, name)
        except NotFound:
            return
        status = namespace.get("status") or {}
        raise AssertionError(
            f"namespace {name} still exists: phase={status.get('phase')} "
            f"conditions={status.get('conditions')}"
        )

    await eventually(namespace_is_gone, timeout=NAMESPACE_DELETION_TIMEOUT, interval=0.5)


@pytest.fixture(name="namespace")
async def _namespace(kube: KubeClient, unique_name: Callable[..., str]) -> AsyncIterator[str]:
    """A fresh namespace; deleted afterwards, and the test waits until it is really gone."""
    name = unique_name()
    await create_namespace(kube, name)
    try:
        yield name
    finally:
        await delete_namespace(kube, name)


@pytest_asyncio.fixture(name="module_namespace", scope="module", loop_scope="module")
async def _module_namespace(
    control_plane: ControlPlane, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    """One namespace shared by a module's tests, for modules whose objects have unique names:
    deleting a namespace takes seconds, so a namespace per test would dominate their runtime."""
    name = make_unique_name(request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"))
    async with await KubeClient.from_kubeconfig(control_plane.kubeconfig) as kube:
        await create_namespace(kube, name)
        try:
            yield name
        finally:
            await delete_namespace(kube, name)
