"""Settings shared by the manager and the agent.

KServe keeps them in the `localModel` key (JSON) of ConfigMap `inferenceservice-config` in the
KServe namespace; we read the same keys so an existing installation keeps its configuration.
Unlike KServe, a missing ConfigMap is not fatal: the defaults below apply and a line is logged.
Invalid JSON is an error with a clear message. The ConfigMap is read at start; a change needs a
restart of the process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import structlog

from controller.kube.client import KubeClient
from controller.kube.errors import NotFound
from controller.kube.resources import CONFIGMAPS

log = structlog.get_logger(__name__)

CONFIGMAP_NAME = "inferenceservice-config"
CONFIGMAP_KEY = "localModel"
DEFAULT_DOWNLOAD_IMAGE = "localmodel-controller:latest"


class ConfigError(ValueError):
    """Raised when the `localModel` configuration cannot be parsed."""


@dataclass(frozen=True)
class LocalModelConfig:
    """The `localModel` section, with KServe's key names in the comments."""

    job_namespace: str = "kserve-localmodel-jobs"  # jobNamespace
    fs_group: int | None = None  # fsGroup
    job_ttl_seconds_after_finished: int = 3600  # jobTTLSecondsAfterFinished
    reconcile_frequency_seconds: int = 60  # reconcilationFrequencyInSecs (sic)
    disable_volume_management: bool = False  # disableVolumeManagement
    # Not from the ConfigMap: KServe's storageInitializer.image cannot run our downloader, which
    # writes the completion marker the agent relies on. Set with the agent's --download-image.
    download_image: str = DEFAULT_DOWNLOAD_IMAGE

    @classmethod
    def from_json(cls, text: str) -> LocalModelConfig:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{CONFIGMAP_KEY} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{CONFIGMAP_KEY} must be a JSON object")
        config = cls()
        fields: dict[str, Any] = {}
        mapping = {
            "jobNamespace": ("job_namespace", str),
            "fsGroup": ("fs_group", int),
            "jobTTLSecondsAfterFinished": ("job_ttl_seconds_after_finished", int),
            "reconcilationFrequencyInSecs": ("reconcile_frequency_seconds", int),
            "disableVolumeManagement": ("disable_volume_management", bool),
        }
        for key, (field, kind) in mapping.items():
            if key in raw and raw[key] is not None:
                if not isinstance(raw[key], kind) or (kind is int and isinstance(raw[key], bool)):
                    raise ConfigError(f"{CONFIGMAP_KEY}.{key} must be of type {kind.__name__}")
                fields[field] = raw[key]
        return replace(config, **fields)


async def load(client: KubeClient, *, namespace: str) -> LocalModelConfig:
    """Read the configuration from the cluster; defaults when the ConfigMap does not exist."""
    try:
        configmap = await client.get(CONFIGMAPS, CONFIGMAP_NAME, namespace=namespace)
    except NotFound:
        log.info("configmap not found, using defaults", namespace=namespace, name=CONFIGMAP_NAME)
        return LocalModelConfig()
    data = configmap.get("data") or {}
    config = LocalModelConfig.from_json(data.get(CONFIGMAP_KEY) or "{}")
    log.info("configuration loaded", namespace=namespace, name=CONFIGMAP_NAME, config=config)
    return config
