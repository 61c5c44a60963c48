"""The product end to end: a real model cached onto simulated nodes, then cleaned up.

Each test gives its cache a URI of its own (a query string the model server ignores), so its
storage key and folders never collide with another test's.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any

from controller.api import kinds
from controller.api.naming import download_pv_name, download_pvc_name, storage_key
from controller.kube.client import KubeClient
from controller.kube.errors import AlreadyExists, NotFound
from controller.kube.resources import JOBS, PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES
from controller.testing.modelserver import minilm_model_dir, tree_digest
from controller.testing.stack import Stack
from controller.testing.waiting import eventually
from tests.integration.conftest import (
    OUTSIDER,
    WORKERS,
    MakeCache,
    cache_is_gone,
    manager_metric,
)

DOWNLOAD_TIMEOUT = 180.0
CLEANUP_TIMEOUT = 90.0
FINALIZER_METRIC = "localmodel_finalizer_duration_seconds_count"


async def finalizer_observations(stack: Stack) -> float:
    return await manager_metric(stack, FINALIZER_METRIC) or 0.0


async def downloaded_everywhere(kube: KubeClient, name: str) -> dict[str, Any]:
    cache = await kube.get(kinds.LOCAL_MODEL_CACHES, name)
    status = cache.get("status") or {}
    expected = {node: "NodeDownloaded" for node in WORKERS}
    assert status.get("nodeStatus") == expected, status
    assert status.get("copies") == {"available": 2, "total": 2, "failed": 0}, status
    return cache


async def entries_on(kube: KubeClient, node: str, name: str) -> list[dict[str, Any]]:
    try:
        local_model_node = await kube.get(kinds.LOCAL_MODEL_NODES, node)
    except NotFound:
        return []
    entries = (local_model_node.get("spec") or {}).get("localModels") or []
    return [entry for entry in entries if entry.get("modelName") == name]


async def assert_no_trace(
    kube: KubeClient, stack: Stack, *, name: str, group: str, uri: str
) -> None:
    """Nothing of cache `name` is left: entries, Jobs, folders, PV, PVC."""
    for node in (*WORKERS, OUTSIDER):
        assert await entries_on(kube, node, name) == [], node
        assert not stack.model_dir(node, storage_key(uri)).exists(), node
    jobs = await kube.list(JOBS, namespace=stack.job_namespace, label_selector=f"model={name}")
    assert [job["metadata"]["name"] for job in jobs["items"]] == []
    for resource, object_name, namespace in (
        (PERSISTENT_VOLUMES, download_pv_name(name, group), None),
        (PERSISTENT_VOLUME_CLAIMS, download_pvc_name(name, group), stack.job_namespace),
    ):
        try:
            leftover = await kube.get(resource, object_name, namespace=namespace)
        except NotFound:
            continue
        raise AssertionError(f"{resource.kind} {object_name} still exists: {leftover['status']}")


async def test_cache_of_real_model_is_downloaded_to_both_nodes_and_fully_cleaned_up(
    kube: KubeClient, stack: Stack, node_group: str, make_cache: MakeCache, unique_name
) -> None:
    name = unique_name("minilm")
    uri = f"{stack.model_url()}?cache={name}"
    await make_cache(name, uri=uri, node_groups=[node_group])

    cache = await eventually(lambda: downloaded_everywhere(kube, name), timeout=DOWNLOAD_TIMEOUT)
    ready = [c for c in cache["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True", ready
    source = tree_digest(minilm_model_dir())
    assert "model.safetensors" in source
    for node in WORKERS:
        assert tree_digest(stack.model_dir(node, storage_key(uri))) == source, node
        assert await entries_on(kube, node, name) == [
            {"modelName": name, "sourceModelUri": uri, "nodeGroup": node_group}
        ]
    assert await entries_on(kube, OUTSIDER, name) == []
    assert not stack.model_dir(OUTSIDER, storage_key(uri)).exists()

    async def nodes_report_ready() -> None:
        for node in WORKERS:
            status = (await kube.get(kinds.LOCAL_MODEL_NODES, node))["status"]
            assert status["modelStatus"][name] == "ModelDownloaded", status
            ready = [c for c in status["conditions"] if c["type"] == "Ready"]
            assert ready[0]["status"] == "True", ready

    await eventually(nodes_report_ready, timeout=30)

    observed_before = await finalizer_observations(stack)
    await kube.delete(kinds.LOCAL_MODEL_CACHES, name)
    await eventually(lambda: cache_is_gone(kube, name), timeout=CLEANUP_TIMEOUT)
    await eventually(
        lambda: assert_no_trace(kube, stack, name=name, group=node_group, uri=uri),
        timeout=CLEANUP_TIMEOUT,
    )
    assert await finalizer_observations(stack) == observed_before + 1


async def test_cache_deleted_and_recreated_quickly_three_times_ends_healthy(
    kube: KubeClient, stack: Stack, node_group: str, make_cache: MakeCache, unique_name
) -> None:
    name = unique_name("again")
    uri = f"{stack.model_url()}?cache={name}"
    log_start = stack.manager_log.stat().st_size

    async def create() -> None:
        # The old cache may still be finishing its finalizer: the API answers 409 until it is.
        try:
            await make_cache(name, uri=uri, node_groups=[node_group])
        except AlreadyExists as exc:
            raise AssertionError(f"previous cache still present: {exc}") from exc

    await create()
    for _ in range(3):
        await kube.delete(kinds.LOCAL_MODEL_CACHES, name)
        await eventually(create, timeout=30, interval=0.05)

    cache = await eventually(lambda: downloaded_everywhere(kube, name), timeout=DOWNLOAD_TIMEOUT)
    uid = cache["metadata"]["uid"]
    pv = await kube.get(PERSISTENT_VOLUMES, download_pv_name(name, node_group))
    pvc = await kube.get(
        PERSISTENT_VOLUME_CLAIMS, download_pvc_name(name, node_group), namespace=stack.job_namespace
    )
    for child in (pv, pvc):
        owners = child["metadata"]["ownerReferences"]
        assert [owner["uid"] for owner in owners] == [uid], child["metadata"]
        assert not child["metadata"].get("deletionTimestamp")
    for node in WORKERS:
        assert len(await entries_on(kube, node, name)) == 1

    # No error loop: the races above are expected conditions, never warnings or errors.
    with stack.manager_log.open() as log_file:
        log_file.seek(log_start)
        lines = [json.loads(line) for line in log_file if line.startswith("{")]
    trouble = [
        line for line in lines if line.get("key") == name and line["level"] in ("warning", "error")
    ]
    assert trouble == []

    await kube.delete(kinds.LOCAL_MODEL_CACHES, name)
    await eventually(lambda: cache_is_gone(kube, name), timeout=CLEANUP_TIMEOUT)
    await eventually(
        lambda: assert_no_trace(kube, stack, name=name, group=node_group, uri=uri),
        timeout=CLEANUP_TIMEOUT,
    )


async def test_model_lost_or_damaged_on_a_node_is_downloaded_again_every_time(
    kube: KubeClient, stack: Stack, node_group: str, make_cache: MakeCache, unique_name
) -> None:
    name = unique_name("heal")
    uri = f"{stack.model_url()}?cache={name}"
    await make_cache(name, uri=uri, node_groups=[node_group])
    await eventually(lambda: downloaded_everywhere(kube, name), timeout=DOWNLOAD_TIMEOUT)
    node = WORKERS[0]
    directory = stack.model_dir(node, storage_key(uri))
    source = tree_digest(minilm_model_dir())

    async def healed() -> None:
        try:
            digest = tree_digest(directory)
        except OSError as exc:  # gone, or files moving out of staging right now
            raise AssertionError(f"{directory} is being replaced: {exc}") from exc
        assert digest == source
        await downloaded_everywhere(kube, name)

    # Lost twice (more than KServe's guard of two Jobs allows), then damaged: healed each time.
    for damage in ("lose", "lose", "damage"):
        if damage == "lose":
            await asyncio.to_thread(shutil.rmtree, directory)
        else:
            await asyncio.to_thread((directory / "model.safetensors").unlink)
        await eventually(healed, timeout=DOWNLOAD_TIMEOUT)
