"""Status vocabulary of the caches and LocalModelNodes, and the pure rules that combine it.

Owns KServe's status enums (values verbatim, the CRDs enforce the same lists), the mapping from
a node's per-model status to a cache's per-node status, the `copies` summary, and
metav1.Condition bookkeeping for our additive `status.conditions`. Deciding which reason and
message a condition gets is the reconcilers' job; writing status is the client's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

CONDITION_READY = "Ready"
CONDITION_MESSAGE_MAX_LENGTH = 32768

_CONDITION_TYPE = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])"
)
_CONDITION_REASON = re.compile(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")


class NodeStatus(StrEnum):
    """State of one cache on one node, as the cache's `status.nodeStatus` reports it."""

    EMPTY = ""
    NOT_READY = "NodeNotReady"
    DOWNLOAD_PENDING = "NodeDownloadPending"
    DOWNLOADING = "NodeDownloading"
    DOWNLOADED = "NodeDownloaded"
    DOWNLOAD_ERROR = "NodeDownloadError"


class ModelStatus(StrEnum):
    """State of one model on a node, as LocalModelNode `status.modelStatus` reports it."""

    EMPTY = ""
    DOWNLOAD_PENDING = "ModelDownloadPending"
    DOWNLOADING = "ModelDownloading"
    DOWNLOADED = "ModelDownloaded"
    DOWNLOAD_ERROR = "ModelDownloadError"


class ConditionStatus(StrEnum):
    """The three values metav1.Condition allows for `status`."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


_NODE_STATUS_BY_MODEL_STATUS = {
    ModelStatus.DOWNLOAD_PENDING: NodeStatus.DOWNLOAD_PENDING,
    ModelStatus.DOWNLOADING: NodeStatus.DOWNLOADING,
    ModelStatus.DOWNLOADED: NodeStatus.DOWNLOADED,
    ModelStatus.DOWNLOAD_ERROR: NodeStatus.DOWNLOAD_ERROR,
}


def node_status_from_model_status(model_status: str | None) -> NodeStatus:
    """Map a LocalModelNode's status for a model to the cache's status for that node.

    Anything without a direct counterpart (absent, empty, unknown text) is `NodeDownloadPending`:
    the node has been asked for the model and has not reported progress yet.
    """
    for known, node_status in _NODE_STATUS_BY_MODEL_STATUS.items():
        if model_status == known:
            return node_status
    return NodeStatus.DOWNLOAD_PENDING


def copies(node_status: Mapping[str, str]) -> dict[str, int]:
    """Summarise a cache's `status.nodeStatus` into `status.copies`.

    `total` counts every node listed, `available` those with the model downloaded, `failed`
    those whose download failed. All three keys are always present, so comparing a freshly
    computed status with the stored one is stable.
    """
    values = list(node_status.values())
    return {
        "available": values.count(NodeStatus.DOWNLOADED),
        "total": len(values),
        "failed": values.count(NodeStatus.DOWNLOAD_ERROR),
    }


def find_condition(
    conditions: Iterable[Mapping[str, Any]] | None, type: str
) -> dict[str, Any] | None:
    """Return the condition of the given type, or None."""
    for condition in conditions or ():
        if condition.get("type") == type:
            return dict(condition)
    return None


def set_condition(
    conditions: Iterable[Mapping[str, Any]] | None,
    *,
    type: str,
    status: str,
    reason: str,
    message: str,
    observed_generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Return a new condition list with the condition of `type` set; the input is not changed.

    `lastTransitionTime` becomes `now` only when the status changes (or the condition is new);
    reason, message and observedGeneration are always refreshed. Other conditions keep their
    place. Messages longer than the API's 32768 characters are cut. Raises ValueError for a
    type, status or reason the API server would reject, and for a naive `now`.
    """
    if _CONDITION_TYPE.fullmatch(type) is None or len(type) > 316:
        raise ValueError(f"invalid condition type {type!r}")
    if status not in set(ConditionStatus):
        raise ValueError(f"invalid condition status {status!r}, want True, False or Unknown")
    if _CONDITION_REASON.fullmatch(reason) is None or len(reason) > 1024:
        raise ValueError(f"invalid condition reason {reason!r}, want a CamelCase word")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")

    updated = {
        "type": type,
        "status": str(status),
        "reason": reason,
        "message": message[:CONDITION_MESSAGE_MAX_LENGTH],
        "lastTransitionTime": format_time(now),
    }
    if observed_generation is not None:
        updated["observedGeneration"] = observed_generation

    result: list[dict[str, Any]] = []
    replaced = False
    for condition in conditions or ():
        if condition.get("type") != type:
            result.append(dict(condition))
            continue
        if replaced:
            continue  # a list-map holds one condition per type; drop stray duplicates
        if condition.get("status") == status and condition.get("lastTransitionTime"):
            updated["lastTransitionTime"] = condition["lastTransitionTime"]
        result.append(updated)
        replaced = True
    if not replaced:
        result.append(updated)
    return result


def format_time(moment: datetime) -> str:
    """Render a timezone-aware datetime the way metav1.Time serialises: RFC 3339, UTC, seconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
