from __future__ import annotations

import pytest

from controller import config
from controller.kube.client import KubeClient
from controller.kube.resources import CONFIGMAPS


async def test_load_reads_inferenceservice_config_from_the_namespace(
    kube: KubeClient, namespace: str
) -> None:
    body = {
        "metadata": {"name": config.CONFIGMAP_NAME},
        "data": {config.CONFIGMAP_KEY: '{"jobNamespace": "elsewhere", "fsGroup": 2000}'},
    }
    await kube.create(CONFIGMAPS, body, namespace=namespace)
    loaded = await config.load(kube, namespace=namespace)
    assert (loaded.job_namespace, loaded.fs_group) == ("elsewhere", 2000)


async def test_load_without_the_configmap_gives_defaults(kube: KubeClient, namespace: str) -> None:
    assert await config.load(kube, namespace=namespace) == config.LocalModelConfig()


async def test_load_with_broken_json_raises_a_config_error(
    kube: KubeClient, namespace: str
) -> None:
    body = {"metadata": {"name": config.CONFIGMAP_NAME}, "data": {config.CONFIGMAP_KEY: "{"}}
    await kube.create(CONFIGMAPS, body, namespace=namespace)
    with pytest.raises(config.ConfigError, match="not valid JSON"):
        await config.load(kube, namespace=namespace)
