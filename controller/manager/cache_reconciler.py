"""Reconciles cluster-scoped LocalModelCaches.

For a live cache: add our finalizer; per node group, create the download PV and PVC (owned by
the cache); write the cache's entry into the LocalModelNode of every Ready node of its groups
and remove it from nodes that left them; aggregate per-node download status into `nodeStatus`,
`copies` and a Ready condition. A child that is terminating or owned by another UID (say, the
previous cache of the same name) is not ours: we wait for it to go and never adopt it.

For a deleting cache: remove its entries from every LocalModelNode, then our finalizer. Missing
node groups or nodes never block deletion; PVs and PVCs go by garbage collection.
"""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime
from typing import Any

import structlog

from controller import metrics
from controller.api import kinds
from controller.api.naming import (
    LABEL_VALUE_MAX_LENGTH,
    download_pv_name,
    download_pvc_name,
    is_valid_label_value,
    is_valid_object_name,
)
from controller.api.nodes import group_node_selector, node_selector_problems
from controller.api.status import (
    CONDITION_READY,
    NodeStatus,
    copies,
    find_condition,
    node_status_from_model_status,
    set_condition,
)
from controller.config import LocalModelConfig
from controller.kube.client import KubeClient
from controller.kube.errors import AlreadyExists, Invalid, NotFound
from controller.kube.events import WARNING, EventRecorder
from controller.kube.patches import (
    add_finalizer,
    has_finalizer,
    is_being_deleted,
    remove_finalizer,
    replace_spec,
    replace_status,
)
from controller.kube.resources import PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, Resource
from controller.manager.placement import (
    Placement,
    desired_entry,
    entries_with,
    entries_without,
    place,
)
from controller.runtime.controller import Result
from controller.runtime.informer import Informer

log = structlog.get_logger(__name__)

CONTROLLER_NAME = "localmodelcache"
# While a child of an earlier cache with the same name is still going away, look again this
# often; the child's DELETE event usually brings the cache back sooner.
WAIT_FOR_CHILD_SECONDS = 30.0


class CacheReconciler:
    """Level-based: reads informer stores, writes only the differences."""

    def __init__(
        self,
        client: KubeClient,
        *,
        config: LocalModelConfig,
        caches: Informer,
        node_groups: Informer,
        nodes: Informer,
        local_model_nodes: Informer,
        volumes: Informer,
        claims: Informer,
        recorder: EventRecorder,
    ) -> None:
        self.client = client
        self.config = config
        self.caches = caches
        self.node_groups = node_groups
        self.nodes = nodes
        self.local_model_nodes = local_model_nodes
        self.volumes = volumes
        self.claims = claims
        self.recorder = recorder

    async def reconcile(self, name: str) -> Result | None:
        cache = self.caches.get(name)
        if cache is None:
            return None
        if is_being_deleted(cache):
            await self._finalize(cache)
            return None
        if not has_finalizer(cache, kinds.CACHE_FINALIZER):
            try:
                cache = await add_finalizer(
                    self.client, kinds.LOCAL_MODEL_CACHES, cache, kinds.CACHE_FINALIZER
                )
            except NotFound:
                # Deleted before we ever added the finalizer: nothing of ours to clean up.
                log.debug("cache gone before its finalizer was added")
                return None
            metrics.FINALIZER_ADDITIONS.labels(CONTROLLER_NAME, kinds.CACHE_FINALIZER).inc()

        group_names = list((cache.get("spec") or {}).get("nodeGroups") or [])
        missing = [group for group in group_names if self.node_groups.get(group) is None]
        if missing or not group_names:
            # Nothing is created or removed while a group is unknown (a new group brings the
            # cache back), so nodes keep their copies and the status keeps reporting them.
            names = ", ".join(missing) or "(none)"
            kept = dict((cache.get("status") or {}).get("nodeStatus") or {})
            await self._write_status(
                cache, kept, reason="NodeGroupNotFound",
                message=f"LocalModelNodeGroup not found: {names}", ready=False, warn=True,
            )  # fmt: skip
            return None
        group_names = list(dict.fromkeys(group_names))  # a name listed twice counts once
        problems = _name_problems(cache["metadata"]["name"], group_names)
        if problems:
            # Children with such names would be rejected at every retry: create nothing.
            await self._write_status(
                cache, {}, reason="InvalidName", message="; ".join(problems), ready=False,
                warn=True,
            )  # fmt: skip
            return None
        groups = []
        for group_name in group_names:
            group = self.node_groups.get(group_name) or {}
            issues = node_selector_problems(group_node_selector(group))
            if issues:
                problems.append(f"LocalModelNodeGroup {group_name}: {'; '.join(issues)}")
            else:
                groups.append((group_name, group))

        # Usable groups are served even when others are broken; the condition names the rest.
        waiting: list[str] = []
        for group_name, group in groups:
            group_waiting, group_problems = await self._ensure_download_volumes(
                cache, group_name, group
            )
            waiting += group_waiting
            problems += group_problems
        placements = place(self.nodes.list(), groups)
        await self._write_entries(cache, placements)
        await self._remove_entries(cache, keep=placements)

        node_status = self._node_status(cache, placements)
        if problems:
            await self._write_status(
                cache, node_status, reason="InvalidNodeGroup", message="; ".join(problems),
                ready=False, warn=True,
            )  # fmt: skip
            return None
        if waiting:
            await self._write_status(
                cache, node_status, reason="WaitingForVolumes", ready=False,
                message=f"waiting to create {', '.join(waiting)}",
            )  # fmt: skip
            return Result(requeue_after=WAIT_FOR_CHILD_SECONDS)
        await self._write_status(cache, node_status, **_readiness(node_status, group_names))
        return None

    # --- children -----------------------------------------------------------------------------

    async def _ensure_download_volumes(
        self, cache: dict[str, Any], group_name: str, group: dict[str, Any]
    ) -> tuple[list[str], list[str]]:
        """Create the group's download PV and PVC if absent.

        Returns what we must wait for, and what the API server rejected (with its reason).
        """
        cache_name = cache["metadata"]["name"]
        group_spec = group.get("spec") or {}
        pv_name = download_pv_name(cache_name, group_name)
        pvc_name = download_pvc_name(cache_name, group_name)
        namespace = self.config.job_namespace
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "ownerReferences": [_owner_reference(cache)]},
            "spec": copy.deepcopy(group_spec.get("persistentVolumeSpec") or {}),
        }
        pvc = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": pvc_name,
                "namespace": namespace,
                "ownerReferences": [_owner_reference(cache)],
            },
            "spec": {
                **copy.deepcopy(group_spec.get("persistentVolumeClaimSpec") or {}),
                "volumeName": pv_name,
            },
        }
        waiting, problems = [], []
        for label, (wait, rejected) in (
            (
                f"PersistentVolume {pv_name}",
                await self._ensure_child(cache, PERSISTENT_VOLUMES, self.volumes, pv),
            ),
            (
                f"PersistentVolumeClaim {namespace}/{pvc_name}",
                await self._ensure_child(cache, PERSISTENT_VOLUME_CLAIMS, self.claims, pvc),
            ),
        ):
            if wait is not None:
                waiting.append(f"{label} ({wait})")
            if rejected is not None:
                problems.append(f"LocalModelNodeGroup {group_name}: {label} rejected: {rejected}")
        return waiting, problems

    async def _ensure_child(
        self, cache: dict[str, Any], resource: Resource, store: Informer, desired: dict[str, Any]
    ) -> tuple[str | None, str | None]:
        """Create the child when absent. Returns (why we wait, why it was rejected), both None
        when the child exists and is ours.

        A child that is terminating or controlled by another object is never adopted. A child
        the API server rejects comes from a wrong node group template: retrying cannot help.
        """
        meta = desired["metadata"]
        existing = store.get(meta["name"], meta.get("namespace"))
        if existing is not None:
            owner = _controller_uid(existing)
            if is_being_deleted(existing):
                reason = "being deleted"
            elif owner != cache["metadata"]["uid"]:
                reason = f"controlled by another object (uid {owner})" if owner else "not ours"
            else:
                return None, None
            log.info("child not usable yet", kind=resource.kind, name=meta["name"], reason=reason)
            return reason, None
        try:
            await self.client.create(resource, desired, namespace=meta.get("namespace"))
        except Invalid as exc:
            return None, exc.message
        except AlreadyExists as exc:
            # Our store has not seen it yet, or the old one is still being deleted: its events
            # bring this cache back, so wait rather than fail.
            log.info(
                "child exists already", kind=resource.kind, name=meta["name"],
                being_deleted=exc.being_deleted,
            )  # fmt: skip
            return ("being deleted" if exc.being_deleted else "not yet seen"), None
        log.info("child created", kind=resource.kind, name=meta["name"])
        return None, None

    # --- LocalModelNode entries ---------------------------------------------------------------

    async def _write_entries(self, cache: dict[str, Any], placements: dict[str, Placement]) -> None:
        for placement in placements.values():
            if not placement.ready:
                continue  # a NotReady node keeps what it has; nothing new is sent to it
            entry = desired_entry(cache, placement.group)
            node = self.local_model_nodes.get(placement.node)
            if node is None:
                body = {
                    "apiVersion": kinds.LOCAL_MODEL_NODES.api_version,
                    "kind": kinds.LOCAL_MODEL_NODES.kind,
                    "metadata": {"name": placement.node},
                    "spec": {"localModels": [entry]},
                }
                await self.client.create(kinds.LOCAL_MODEL_NODES, body)
                log.info("local model node created", node=placement.node)
                continue
            if is_being_deleted(node):
                continue
            entries = list((node.get("spec") or {}).get("localModels") or [])
            updated = entries_with(entries, entry)
            if updated is not None:
                await self._replace_entries(node, updated)
                log.info("local model node entry written", node=placement.node)

    async def _remove_entries(
        self, cache: dict[str, Any], *, keep: dict[str, Placement] | None = None
    ) -> None:
        """Remove the cache's entry from every LocalModelNode except the nodes in `keep`."""
        name = cache["metadata"]["name"]
        for node in self.local_model_nodes.list():
            node_name = node["metadata"]["name"]
            if keep is not None and node_name in keep:
                continue
            entries = list((node.get("spec") or {}).get("localModels") or [])
            updated = entries_without(entries, name)
            if updated is None:
                continue
            try:
                await self._replace_entries(node, updated)
            except NotFound:
                continue
            log.info("local model node entry removed", node=node_name)

    async def _replace_entries(self, node: dict[str, Any], entries: list[dict[str, Any]]) -> None:
        # Guarded by resourceVersion: two caches editing one node never lose each other's entry.
        spec = {**(node.get("spec") or {}), "localModels": entries}
        await replace_spec(self.client, kinds.LOCAL_MODEL_NODES, node, spec)

    # --- deletion -----------------------------------------------------------------------------

    async def _finalize(self, cache: dict[str, Any]) -> None:
        if not has_finalizer(cache, kinds.CACHE_FINALIZER):
            return
        await self._remove_entries(cache)
        removed = await remove_finalizer(
            self.client, kinds.LOCAL_MODEL_CACHES, cache, kinds.CACHE_FINALIZER
        )
        if removed is None:
            # Our store lagged: an earlier reconcile removed the finalizer and the cache is gone.
            log.debug("cache already gone")
            return
        seconds = _seconds_since(cache["metadata"]["deletionTimestamp"])
        metrics.FINALIZER_REMOVALS.labels(CONTROLLER_NAME, kinds.CACHE_FINALIZER).inc()
        metrics.FINALIZER_DURATION.labels(CONTROLLER_NAME, kinds.CACHE_FINALIZER).observe(seconds)
        log.info("finalizer removed", seconds=round(seconds, 3))

    # --- status -------------------------------------------------------------------------------

    def _node_status(
        self, cache: dict[str, Any], placements: dict[str, Placement]
    ) -> dict[str, str]:
        name = cache["metadata"]["name"]
        result = {}
        for node_name, placement in sorted(placements.items()):
            if not placement.ready:
                result[node_name] = NodeStatus.NOT_READY.value
                continue
            node = self.local_model_nodes.get(node_name) or {}
            model_status = ((node.get("status") or {}).get("modelStatus") or {}).get(name)
            result[node_name] = node_status_from_model_status(model_status).value
        return result

    async def _write_status(
        self,
        cache: dict[str, Any],
        node_status: dict[str, str],
        *,
        reason: str,
        message: str,
        ready: bool,
        warn: bool = False,
    ) -> None:
        old = cache.get("status") or {}
        generation = cache["metadata"].get("generation")
        conditions = set_condition(
            old.get("conditions"),
            type=CONDITION_READY,
            status="True" if ready else "False",
            reason=reason,
            message=message,
            observed_generation=generation,
            now=datetime.now(UTC),
        )
        status = {
            **old,
            "nodeStatus": node_status,
            "copies": copies(node_status),
            "conditions": conditions,
            "observedGeneration": generation,
        }
        if status == old:
            return
        try:
            await replace_status(self.client, kinds.LOCAL_MODEL_CACHES, cache, status)
        except NotFound:
            log.debug("cache gone before its status was written")
            return
        previous = find_condition(old.get("conditions"), CONDITION_READY) or {}
        if previous.get("reason") != reason:
            log.info("cache condition changed", ready=ready, reason=reason, message=message)
            if warn:
                await self.recorder.record(cache, type=WARNING, reason=reason, message=message)


def _readiness(node_status: dict[str, str], group_names: list[str]) -> dict[str, Any]:
    counts = copies(node_status)
    available, total, failed = counts["available"], counts["total"], counts["failed"]
    if total == 0:
        message = f"no node matches node groups {', '.join(group_names)}"
        return {"reason": "NoMatchingNodes", "message": message, "ready": False}
    summary = f"downloaded on {available} of {total} nodes"
    if failed:
        broken = sorted(n for n, s in node_status.items() if s == NodeStatus.DOWNLOAD_ERROR.value)
        message = f"{summary}; download failed on {', '.join(broken)}"
        return {"reason": "DownloadFailed", "message": message, "ready": False, "warn": True}
    if available == total:
        return {"reason": "Downloaded", "message": summary, "ready": True}
    not_ready = sorted(n for n, s in node_status.items() if s == NodeStatus.NOT_READY.value)
    if not_ready:
        message = f"{summary}; nodes not ready: {', '.join(not_ready)}"
        return {"reason": "NodesNotReady", "message": message, "ready": False}
    return {"reason": "Downloading", "message": summary, "ready": False}


def _name_problems(cache_name: str, group_names: list[str]) -> list[str]:
    """Why names derived from the cache's name could never be created, if they could not."""
    problems = []
    if not is_valid_label_value(cache_name):
        problems.append(
            f"the name is longer than {LABEL_VALUE_MAX_LENGTH} characters, the limit of the "
            "label that marks its download Jobs"
        )
    for group_name in group_names:
        for name in (
            download_pv_name(cache_name, group_name),
            download_pvc_name(cache_name, group_name),
        ):
            if not is_valid_object_name(name):
                problems.append(f"{name} (for node group {group_name}) is not a valid object name")
    return problems


def _owner_reference(cache: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": kinds.LOCAL_MODEL_CACHES.api_version,
        "kind": kinds.LOCAL_MODEL_CACHES.kind,
        "name": cache["metadata"]["name"],
        "uid": cache["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _controller_uid(obj: dict[str, Any]) -> str | None:
    for reference in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if reference.get("controller"):
            return reference.get("uid")
    return None


def _seconds_since(timestamp: str) -> float:
    started = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return max(0.0, time.time() - started.timestamp())
