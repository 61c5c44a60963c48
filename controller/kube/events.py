"""Kubernetes Events about our objects, so `kubectl describe` shows what went wrong and why.

Recording is best effort: a failure to write an Event is logged and never fails a reconcile.
Events about cluster-scoped objects go to the `default` namespace, as kubectl expects.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any

import structlog

from controller.kube.client import KubeClient
from controller.kube.errors import KubeError
from controller.kube.resources import EVENTS

log = structlog.get_logger(__name__)

NORMAL, WARNING = "Normal", "Warning"


class EventRecorder:
    """Writes core/v1 Events on behalf of one component (e.g. "localmodel-manager")."""

    def __init__(self, client: KubeClient, *, component: str) -> None:
        self.client = client
        self.component = component
        self.instance = socket.gethostname()

    async def record(self, obj: dict[str, Any], *, type: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.client.create(EVENTS, event, namespace=namespace)
        except KubeError as exc:
            log.warning("event not recorded", reason=reason, name=meta.get("name"), error=str(exc))
