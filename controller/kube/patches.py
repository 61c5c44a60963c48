"""Concurrency-safe edits: finalizers, which other controllers share, and whole spec or status.

Every edit is a JSON patch whose first operation tests `metadata.resourceVersion`, so it applies
only to the version we read. A stale read fails with 409/422 and the reconcile retries on fresh
data, instead of clobbering a finalizer another controller added or removed meanwhile.
"""

from __future__ import annotations

from typing import Any

from controller.kube.client import KubeClient
from controller.kube.errors import NotFound
from controller.kube.resources import Resource


def is_being_deleted(obj: dict[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def has_finalizer(obj: dict[str, Any], finalizer: str) -> bool:
    return finalizer in ((obj.get("metadata") or {}).get("finalizers") or [])


async def add_finalizer(
    client: KubeClient, resource: Resource, obj: dict[str, Any], finalizer: str
) -> dict[str, Any]:
    """Append `finalizer` to the version of `obj` we hold. Never call it on a deleting object."""
    meta = obj["metadata"]
    if meta.get("deletionTimestamp"):
        raise ValueError("refusing to add a finalizer to an object that is being deleted")
    operations: list[dict[str, Any]] = [resource_version_guard(obj)]
    if meta.get("finalizers"):
        operations.append({"op": "add", "path": "/metadata/finalizers/-", "value": finalizer})
    else:
        operations.append({"op": "add", "path": "/metadata/finalizers", "value": [finalizer]})
    return await client.patch(
        resource, meta["name"], operations, namespace=meta.get("namespace"), patch_type="json"
    )


async def remove_finalizer(
    client: KubeClient, resource: Resource, obj: dict[str, Any], finalizer: str
) -> dict[str, Any] | None:
    """Remove `finalizer` from the version of `obj` we hold; None if the object is gone."""
    meta = obj["metadata"]
    finalizers = meta.get("finalizers") or []
    if finalizer not in finalizers:
        return obj
    index = finalizers.index(finalizer)
    operations = [
        resource_version_guard(obj),
        {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
        {"op": "remove", "path": f"/metadata/finalizers/{index}"},
    ]
    try:
        return await client.patch(
            resource, meta["name"], operations, namespace=meta.get("namespace"), patch_type="json"
        )
    except NotFound:
        return None


async def replace_spec(
    client: KubeClient, resource: Resource, obj: dict[str, Any], spec: dict[str, Any]
) -> dict[str, Any]:
    """Set the whole spec of the version of `obj` we read; a stale read fails with 422."""
    meta = obj["metadata"]
    operations = [resource_version_guard(obj), {"op": "add", "path": "/spec", "value": spec}]
    return await client.patch(
        resource, meta["name"], operations, namespace=meta.get("namespace"), patch_type="json"
    )


async def replace_status(
    client: KubeClient, resource: Resource, obj: dict[str, Any], status: dict[str, Any]
) -> dict[str, Any]:
    """Set the whole status of the version of `obj` we read; a stale read fails with 422."""
    meta = obj["metadata"]
    operations = [resource_version_guard(obj), {"op": "add", "path": "/status", "value": status}]
    return await client.patch(
        resource,
        meta["name"],
        operations,
        namespace=meta.get("namespace"),
        patch_type="json",
        subresource="status",
    )


def resource_version_guard(obj: dict[str, Any]) -> dict[str, Any]:
    """A JSON-patch operation that makes the patch apply only to the version of `obj` we read."""
    value = obj["metadata"]["resourceVersion"]
    return {"op": "test", "path": "/metadata/resourceVersion", "value": value}
