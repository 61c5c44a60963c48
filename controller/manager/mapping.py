"""Which caches to reconcile when something they depend on changes.

Each function turns one informer event into cache names and hands them to `enqueue`. They
run inline in the informer, so they only read stores and never block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controller.api import kinds
from controller.api.nodes import is_node_ready, node_in_group
from controller.runtime.informer import UPDATED, Event, Informer

Enqueue = Callable[[str], None]
CACHES_BY_GROUP = "nodeGroup"


def index_caches_by_group(cache: dict[str, Any]) -> list[str]:
    return list((cache.get("spec") or {}).get("nodeGroups") or [])


def on_cache(enqueue: Enqueue) -> Callable[[Event], None]:
    def handler(event: Event) -> None:
        enqueue(event.obj["metadata"]["name"])

    return handler


def on_node_group(caches: Informer, enqueue: Enqueue) -> Callable[[Event], None]:
    def handler(event: Event) -> None:
        for cache in caches.by_index(CACHES_BY_GROUP, event.obj["metadata"]["name"]):
            enqueue(cache["metadata"]["name"])

    return handler


def on_node(caches: Informer, node_groups: Informer, enqueue: Enqueue) -> Callable[[Event], None]:
    """A node joining, leaving, changing labels or readiness concerns the caches of its groups.

    Heartbeat-only updates are ignored, so a busy cluster does not reconcile every cache every
    few seconds.
    """

    def handler(event: Event) -> None:
        if event.type == UPDATED and event.old is not None:
            old, new = event.old, event.obj
            same_labels = old["metadata"].get("labels") == new["metadata"].get("labels")
            if same_labels and is_node_ready(old) == is_node_ready(new):
                return
        versions = [event.obj] + ([event.old] if event.old is not None else [])
        name = event.obj["metadata"]["name"]
        groups = {
            group["metadata"]["name"]
            for group in node_groups.list()
            if any(node_in_group(node, group) for node in versions)
        }
        for cache in caches.list():
            spec_groups = set(index_caches_by_group(cache))
            node_status = (cache.get("status") or {}).get("nodeStatus") or {}
            if spec_groups & groups or name in node_status:
                enqueue(cache["metadata"]["name"])

    return handler


def on_local_model_node(enqueue: Enqueue) -> Callable[[Event], None]:
    """Caches whose entry or downloaded status changed on this node need their status redone.

    Only the caches that changed are enqueued: an agent writes status once per model state
    change, so enqueueing every cache on the node would make the work grow with its square.
    """

    def handler(event: Event) -> None:
        new = _cluster_cache_view(event.obj)
        old = _cluster_cache_view(event.old) if event.type == UPDATED and event.old else {}
        if event.type != UPDATED:
            old = {}  # an added or deleted node concerns every cache on it
        for name in set(new) | set(old):
            if new.get(name) != old.get(name):
                enqueue(name)

    return handler


def _cluster_cache_view(node: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Cluster cache name -> (its entry, its model status) on one LocalModelNode."""
    view: dict[str, tuple[Any, Any]] = {}
    for entry in (node.get("spec") or {}).get("localModels") or []:
        if not entry.get("namespace") and entry.get("modelName"):
            view[entry["modelName"]] = (entry, None)
    for key, value in ((node.get("status") or {}).get("modelStatus") or {}).items():
        if "/" not in key:
            view[key] = (view.get(key, (None, None))[0], value)
    return view


def on_owned(enqueue: Enqueue) -> Callable[[Event], None]:
    """A PV or PVC whose controller is a LocalModelCache concerns the cache of that name.

    Mapping by name (not UID) matters: when the child of a deleted cache finally goes away, the
    new cache of the same name is the one waiting to create its own.
    """

    def handler(event: Event) -> None:
        for reference in event.obj["metadata"].get("ownerReferences") or []:
            if (
                reference.get("controller")
                and reference.get("kind") == kinds.LOCAL_MODEL_CACHES.kind
            ):
                enqueue(reference["name"])

    return handler
