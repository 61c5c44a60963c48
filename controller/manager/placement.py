"""Where a cache's model belongs: which nodes, through which node group, and their entries.

Pure functions over informer data. A node matching several of a cache's node groups is placed
through the first of them in `spec.nodeGroups` order, so the choice (and thus the Job's PVC) is
stable between reconciles.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from controller.api.nodes import is_node_ready, node_in_group


@dataclass(frozen=True)
class Placement:
    node: str
    group: str
    ready: bool


def place(
    nodes: Iterable[dict[str, Any]], groups: list[tuple[str, dict[str, Any]]]
) -> dict[str, Placement]:
    """Map node name to its placement for every node matching one of `groups` (in order)."""
    placements: dict[str, Placement] = {}
    nodes = list(nodes)
    for group_name, group in groups:
        for node in nodes:
            name = node["metadata"]["name"]
            if name not in placements and node_in_group(node, group):
                placements[name] = Placement(name, group_name, is_node_ready(node))
    return placements


def desired_entry(cache: dict[str, Any], group: str) -> dict[str, Any]:
    """The LocalModelNode `spec.localModels` entry of a cluster cache placed through `group`."""
    spec = cache.get("spec") or {}
    entry: dict[str, Any] = {
        "modelName": cache["metadata"]["name"],
        "sourceModelUri": spec.get("sourceModelUri", ""),
        "nodeGroup": group,
    }
    if spec.get("serviceAccountName"):
        entry["serviceAccountName"] = spec["serviceAccountName"]
    if spec.get("storage"):
        entry["storage"] = spec["storage"]
    return entry


def is_entry_of(entry: dict[str, Any], model_name: str, namespace: str | None) -> bool:
    return entry.get("modelName") == model_name and (entry.get("namespace") or None) == namespace


def entries_with(
    entries: list[dict[str, Any]], entry: dict[str, Any], namespace: str | None = None
) -> list[dict[str, Any]] | None:
    """`entries` with `entry` replacing the same model's entry or appended; None if unchanged."""
    result, found = [], False
    for existing in entries:
        if is_entry_of(existing, entry["modelName"], namespace):
            if found:
                continue  # drop duplicates of the same model
            found = True
            if existing == entry:
                result.append(existing)
                continue
            result.append(entry)
        else:
            result.append(existing)
    if not found:
        result.append(entry)
    return None if result == entries else result


def entries_without(
    entries: list[dict[str, Any]], model_name: str, namespace: str | None = None
) -> list[dict[str, Any]] | None:
    """`entries` without the model's entry; None if it was not there."""
    result = [e for e in entries if not is_entry_of(e, model_name, namespace)]
    return None if len(result) == len(entries) else result
