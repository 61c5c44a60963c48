"""Caches whose references change under them: deleted node groups, nodes that leave a group."""

from __future__ import annotations

import aiohttp
import pytest

from controller.api import kinds
from controller.kube.client import KubeClient
from controller.kube.errors import NotFound
from controller.kube.resources import NODES
from controller.testing.stack import WORKER_LABEL, Stack
from controller.testing.waiting import eventually
from tests.integration.conftest import (
    UNREACHABLE_URI,
    WORKERS,
    MakeCache,
    cache_is_gone,
    node_group_body,
)
from tests.integration.test_cache_lifecycle import downloaded_everywhere, entries_on


async def test_cache_is_deleted_even_after_its_node_group_was_deleted_first(
    kube: KubeClient, stack: Stack, storage_class: str, make_cache: MakeCache, unique_name
) -> None:
    group = unique_name("doomed")
    await kube.create(kinds.LOCAL_MODEL_NODE_GROUPS, node_group_body(group))
    name = unique_name("orphan")
    await make_cache(name, uri=f"{UNREACHABLE_URI}?cache={name}", node_groups=[group])

    async def placed() -> None:
        for node in WORKERS:
            assert len(await entries_on(kube, node, name)) == 1, node

    await eventually(placed, timeout=30)
    await kube.delete(kinds.LOCAL_MODEL_NODE_GROUPS, group)  # no finalizer: gone at once
    with pytest.raises(NotFound):
        await kube.get(kinds.LOCAL_MODEL_NODE_GROUPS, group)

    async def reported_but_kept() -> None:
        status = (await kube.get(kinds.LOCAL_MODEL_CACHES, name))["status"]
        ready = [c for c in status["conditions"] if c["type"] == "Ready"]
        assert ready[0]["reason"] == "NodeGroupNotFound", ready
        # The nodes keep their copies while the group is gone, and the status says so.
        assert set(status["nodeStatus"]) == set(WORKERS), status
        for node in WORKERS:
            assert len(await entries_on(kube, node, name)) == 1, node

    await eventually(reported_but_kept, timeout=30)
    await kube.delete(kinds.LOCAL_MODEL_CACHES, name)

    await eventually(lambda: cache_is_gone(kube, name), timeout=30)
    for node in WORKERS:
        assert await entries_on(kube, node, name) == []


async def test_node_that_leaves_the_group_loses_the_entry_and_regains_it_on_return(
    kube: KubeClient, stack: Stack, node_group: str, make_cache: MakeCache, unique_name
) -> None:
    name = unique_name("leaver")
    await make_cache(name, uri=f"{UNREACHABLE_URI}?cache={name}", node_groups=[node_group])
    leaver, stayer = WORKERS
    label = next(iter(WORKER_LABEL))

    async def entries(expected: dict[str, int]) -> None:
        counts = {node: len(await entries_on(kube, node, name)) for node in WORKERS}
        assert counts == expected

    await eventually(lambda: entries({leaver: 1, stayer: 1}), timeout=30)
    await kube.patch(NODES, leaver, {"metadata": {"labels": {label: None}}})

    async def left() -> None:
        await entries({leaver: 0, stayer: 1})
        # Status is written after the entries in the same reconcile, so it may lag a moment.
        cache = await kube.get(kinds.LOCAL_MODEL_CACHES, name)
        assert set(cache["status"]["nodeStatus"]) == {stayer}, cache["status"]

    try:
        await eventually(left, timeout=30)
    finally:
        await kube.patch(NODES, leaver, {"metadata": {"labels": dict(WORKER_LABEL)}})
    await eventually(lambda: entries({leaver: 1, stayer: 1}), timeout=30)


async def set_heartbeats(stack: Stack, node: str, *, enabled: bool) -> None:
    url = f"{stack.nodesim_control_url}/nodes/{node}/heartbeats"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"enabled": enabled}) as answer:
            answer.raise_for_status()


async def test_node_that_stops_heartbeating_is_reported_not_ready_then_recovers(
    kube: KubeClient, stack: Stack, node_group: str, make_cache: MakeCache, unique_name
) -> None:
    name = unique_name("silent")
    await make_cache(name, uri=f"{stack.model_url()}?cache={name}", node_groups=[node_group])
    await eventually(lambda: downloaded_everywhere(kube, name), timeout=120)
    silent, _ = WORKERS

    async def reported(expected_status: str, reason: str) -> None:
        cache = await kube.get(kinds.LOCAL_MODEL_CACHES, name)
        assert cache["status"]["nodeStatus"][silent] == expected_status, cache["status"]
        ready = [c for c in cache["status"]["conditions"] if c["type"] == "Ready"]
        assert ready[0]["reason"] == reason, ready

    await set_heartbeats(stack, silent, enabled=False)
    try:
        # The node-lifecycle controller notices after its grace period (20 s in tests).
        await eventually(lambda: reported("NodeNotReady", "NodesNotReady"), timeout=90)
    finally:
        await set_heartbeats(stack, silent, enabled=True)
    await eventually(lambda: reported("NodeDownloaded", "Downloaded"), timeout=90)
