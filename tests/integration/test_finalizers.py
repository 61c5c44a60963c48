"""Finalizer edits against a real kube-apiserver: guarded JSON patches never clobber others' edits.

Every edit in controller.kube.patches tests `metadata.resourceVersion` first, so a stale read
makes the patch fail (bare 422, sorted as a conflict by the runtime) instead of dropping or
re-adding a finalizer another controller changed meanwhile (failure scenarios 18 and 21).
ConfigMaps stand in for our kinds, with a LocalModelNamespaceCache case to show custom resources
behave the same. Leftover finalizers are stripped after each test so the namespace can go.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from controller.api import kinds
from controller.kube import errors
from controller.kube.client import KubeClient
from controller.kube.patches import (
    add_finalizer,
    has_finalizer,
    is_being_deleted,
    remove_finalizer,
    resource_version_guard,
)
from controller.kube.resources import CONFIGMAPS, Resource
from controller.runtime.controller import _is_conflict

OURS = "localmodel.kserve.io/finalizer"
FOREIGN = "example.com/other"
LATE = "example.com/late"

RESOURCES = [
    pytest.param(CONFIGMAPS, id="configmap"),
    pytest.param(kinds.LOCAL_MODEL_NAMESPACE_CACHES, id="namespace-cache"),
]


def body_for(resource: Resource, name: str, finalizers: list[str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if finalizers:
        metadata["finalizers"] = finalizers
    if resource == CONFIGMAPS:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}
    return {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": metadata,
        "spec": {
            "sourceModelUri": "http://127.0.0.1:1/model.tar.gz",
            "modelSize": "1Gi",
            "nodeGroups": ["workers"],
        },
    }


@pytest.fixture(name="namespace")
def _namespace(module_namespace: str) -> str:
    return module_namespace  # objects have unique names; one namespace serves the module


Make = Callable[..., Any]


@pytest.fixture(name="make")
async def _make(
    kube: KubeClient, namespace: str, unique_name: Callable[..., str]
) -> AsyncIterator[Make]:
    """`await make(resource, finalizers)`: a fresh object, stripped of finalizers afterwards."""
    made: list[tuple[Resource, str]] = []

    async def make(resource: Resource, finalizers: list[str]) -> dict[str, Any]:
        name = unique_name()
        made.append((resource, name))
        return await kube.create(
            resource, body_for(resource, name, finalizers), namespace=namespace
        )

    yield make
    for resource, name in made:
        try:
            await kube.patch(
                resource, name, {"metadata": {"finalizers": None}}, namespace=namespace
            )
        except errors.NotFound:
            pass


async def fetch(kube: KubeClient, resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return await kube.get(resource, meta["name"], namespace=meta["namespace"])


async def edit_finalizers(
    kube: KubeClient, resource: Resource, obj: dict[str, Any], finalizers: list[str]
) -> dict[str, Any]:
    """Another controller's write: replace the list, guarded only by its own fresh read."""
    current = await fetch(kube, resource, obj)
    return await kube.patch(
        resource,
        obj["metadata"]["name"],
        [
            resource_version_guard(current),
            {"op": "replace" if current["metadata"].get("finalizers") else "add",
             "path": "/metadata/finalizers", "value": finalizers},
        ],
        namespace=obj["metadata"]["namespace"],
        patch_type="json",
    )  # fmt: skip


# --- pure predicates ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "deleting", "ours"),
    [
        pytest.param({}, False, False, id="bare"),
        pytest.param({"finalizers": None, "deletionTimestamp": None}, False, False, id="nulls"),
        pytest.param({"finalizers": [FOREIGN, OURS]}, False, True, id="ours-among-others"),
        pytest.param({"finalizers": [FOREIGN]}, False, False, id="only-foreign"),
        pytest.param(
            {"finalizers": [OURS], "deletionTimestamp": "2026-01-02T03:04:05Z"},
            True,
            True,
            id="deleting",
        ),
    ],
)
def test_finalizer_predicates_read_metadata(
    metadata: dict[str, Any], deleting: bool, ours: bool
) -> None:
    obj = {"metadata": metadata}

    assert is_being_deleted(obj) is deleting
    assert has_finalizer(obj, OURS) is ours


def test_finalizer_predicates_accept_object_without_metadata() -> None:
    assert not is_being_deleted({})
    assert not has_finalizer({}, OURS)


# --- adding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("resource", RESOURCES)
@pytest.mark.parametrize(
    "existing",
    [pytest.param([], id="first-finalizer"), pytest.param([FOREIGN], id="after-foreign")],
)
async def test_add_finalizer_appends_ours(
    kube: KubeClient, make: Make, resource: Resource, existing: list[str]
) -> None:
    obj = await make(resource, existing)

    patched = await add_finalizer(kube, resource, obj, OURS)

    assert patched["metadata"]["finalizers"] == [*existing, OURS]
    assert (await fetch(kube, resource, obj))["metadata"]["finalizers"] == [*existing, OURS]


@pytest.mark.parametrize("resource", RESOURCES)
async def test_add_finalizer_on_stale_read_fails_instead_of_dropping_foreign_finalizer(
    kube: KubeClient, make: Make, resource: Resource
) -> None:
    stale = await make(resource, [])
    await edit_finalizers(kube, resource, stale, [FOREIGN])  # another controller, meanwhile

    with pytest.raises(errors.Invalid) as caught:
        await add_finalizer(kube, resource, stale, OURS)

    assert _is_conflict(caught.value), "the runtime must retry this quietly on fresh data"
    assert (await fetch(kube, resource, stale))["metadata"]["finalizers"] == [FOREIGN]

    fresh = await fetch(kube, resource, stale)
    await add_finalizer(kube, resource, fresh, OURS)
    assert (await fetch(kube, resource, stale))["metadata"]["finalizers"] == [FOREIGN, OURS]


async def test_add_finalizer_refuses_object_being_deleted_without_a_request(
    kube: KubeClient, make: Make
) -> None:
    obj = await make(CONFIGMAPS, [FOREIGN])
    await kube.delete(CONFIGMAPS, obj["metadata"]["name"], namespace=obj["metadata"]["namespace"])
    deleting = await fetch(kube, CONFIGMAPS, obj)

    with pytest.raises(ValueError, match="being deleted"):
        await add_finalizer(kube, CONFIGMAPS, deleting, OURS)

    unchanged = await fetch(kube, CONFIGMAPS, obj)
    assert unchanged["metadata"]["resourceVersion"] == deleting["metadata"]["resourceVersion"]


async def test_add_finalizer_on_stale_read_of_now_deleting_object_fails(
    kube: KubeClient, make: Make
) -> None:
    stale = await make(CONFIGMAPS, [FOREIGN])
    meta = stale["metadata"]
    await kube.delete(CONFIGMAPS, meta["name"], namespace=meta["namespace"])

    # Our copy predates the deletion, so the local check passes; the server must still refuse.
    with pytest.raises(errors.Invalid) as caught:
        await add_finalizer(kube, CONFIGMAPS, stale, OURS)

    assert _is_conflict(caught.value)
    assert (await fetch(kube, CONFIGMAPS, stale))["metadata"]["finalizers"] == [FOREIGN]


async def test_api_server_refuses_new_finalizer_on_deleting_object(
    kube: KubeClient, make: Make
) -> None:
    obj = await make(CONFIGMAPS, [FOREIGN])
    await kube.delete(CONFIGMAPS, obj["metadata"]["name"], namespace=obj["metadata"]["namespace"])

    with pytest.raises(errors.Invalid) as caught:
        await edit_finalizers(kube, CONFIGMAPS, obj, [FOREIGN, LATE])

    assert "no new finalizers can be added if the object is being deleted" in caught.value.message
    assert caught.value.causes, "this 422 names its cause, so it is not mistaken for a conflict"
    assert not _is_conflict(caught.value)


async def test_add_finalizer_on_gone_object_raises_not_found(kube: KubeClient, make: Make) -> None:
    obj = await make(CONFIGMAPS, [])
    await kube.delete(CONFIGMAPS, obj["metadata"]["name"], namespace=obj["metadata"]["namespace"])

    with pytest.raises(errors.NotFound):
        await add_finalizer(kube, CONFIGMAPS, obj, OURS)


# --- removing -------------------------------------------------------------------------------


@pytest.mark.parametrize("resource", RESOURCES)
@pytest.mark.parametrize(
    ("finalizers", "left"),
    [
        pytest.param([OURS], [], id="only-ours"),
        pytest.param([FOREIGN, OURS], [FOREIGN], id="ours-last"),
        pytest.param([OURS, FOREIGN], [FOREIGN], id="ours-first"),
    ],
)
async def test_remove_finalizer_removes_only_ours(
    kube: KubeClient, make: Make, resource: Resource, finalizers: list[str], left: list[str]
) -> None:
    obj = await make(resource, finalizers)

    patched = await remove_finalizer(kube, resource, obj, OURS)

    assert patched is not None
    assert patched["metadata"].get("finalizers", []) == left


async def test_remove_finalizer_without_ours_sends_nothing(kube: KubeClient, make: Make) -> None:
    obj = await make(CONFIGMAPS, [FOREIGN])
    await kube.patch(
        CONFIGMAPS, obj["metadata"]["name"], {"data": {"x": "1"}},
        namespace=obj["metadata"]["namespace"],
    )  # fmt: skip

    # A stale copy would fail any guarded patch; none is sent, so none fails.
    assert await remove_finalizer(kube, CONFIGMAPS, obj, OURS) is obj


@pytest.mark.parametrize("resource", RESOURCES)
async def test_remove_finalizer_on_stale_read_fails_instead_of_dropping_foreign_finalizer(
    kube: KubeClient, make: Make, resource: Resource
) -> None:
    stale = await make(resource, [OURS])
    await edit_finalizers(kube, resource, stale, [OURS, LATE])  # another controller, meanwhile

    with pytest.raises(errors.Invalid) as caught:
        await remove_finalizer(kube, resource, stale, OURS)

    assert _is_conflict(caught.value)
    assert (await fetch(kube, resource, stale))["metadata"]["finalizers"] == [OURS, LATE]

    fresh = await fetch(kube, resource, stale)
    await remove_finalizer(kube, resource, fresh, OURS)
    assert (await fetch(kube, resource, stale))["metadata"]["finalizers"] == [LATE]


async def test_remove_finalizer_from_stale_copy_respects_foreign_removal_during_deletion(
    kube: KubeClient, make: Make
) -> None:
    """Scenario 18: the other controller removed its entry after deletion started; our stale
    copy still lists it, and a whole-list write would try to re-add it."""
    obj = await make(CONFIGMAPS, [FOREIGN, OURS])
    meta = obj["metadata"]
    await kube.delete(CONFIGMAPS, meta["name"], namespace=meta["namespace"])
    stale = await fetch(kube, CONFIGMAPS, obj)
    await edit_finalizers(kube, CONFIGMAPS, stale, [OURS])

    with pytest.raises(errors.Invalid) as caught:
        await remove_finalizer(kube, CONFIGMAPS, stale, OURS)
    assert _is_conflict(caught.value)

    fresh = await fetch(kube, CONFIGMAPS, obj)
    assert await remove_finalizer(kube, CONFIGMAPS, fresh, OURS) is not None
    with pytest.raises(errors.NotFound):
        await fetch(kube, CONFIGMAPS, obj)


async def test_remove_finalizer_on_gone_object_returns_none(kube: KubeClient, make: Make) -> None:
    obj = await make(CONFIGMAPS, [OURS])
    meta = obj["metadata"]
    await kube.patch(
        CONFIGMAPS, meta["name"], {"metadata": {"finalizers": None}}, namespace=meta["namespace"]
    )
    await kube.delete(CONFIGMAPS, meta["name"], namespace=meta["namespace"])

    assert await remove_finalizer(kube, CONFIGMAPS, obj, OURS) is None


async def test_deletion_waits_for_every_finalizer_then_completes(
    kube: KubeClient, make: Make
) -> None:
    obj = await make(CONFIGMAPS, [OURS, FOREIGN])
    meta = obj["metadata"]

    answer = await kube.delete(CONFIGMAPS, meta["name"], namespace=meta["namespace"])
    assert answer is not None and answer["metadata"]["deletionTimestamp"]
    deleting = await fetch(kube, CONFIGMAPS, obj)
    assert is_being_deleted(deleting)

    after_ours = await remove_finalizer(kube, CONFIGMAPS, deleting, OURS)
    assert after_ours is not None
    assert after_ours["metadata"]["finalizers"] == [FOREIGN], "object stays for the other one"

    await edit_finalizers(kube, CONFIGMAPS, after_ours, [])
    with pytest.raises(errors.NotFound):
        await fetch(kube, CONFIGMAPS, obj)


async def test_deletion_of_custom_resource_bumps_generation(kube: KubeClient, make: Make) -> None:
    caches = kinds.LOCAL_MODEL_NAMESPACE_CACHES
    obj = await make(caches, [OURS])
    meta = obj["metadata"]

    await kube.delete(caches, meta["name"], namespace=meta["namespace"])

    deleting = await fetch(kube, caches, obj)
    # Deletion start passes a generation-changed filter, so controllers that use one see it.
    assert deleting["metadata"]["generation"] == meta["generation"] + 1
    assert is_being_deleted(deleting) and has_finalizer(deleting, OURS)
