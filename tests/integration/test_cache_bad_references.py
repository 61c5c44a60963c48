"""Input that can never work is reported, and never stops the work that can."""

from __future__ import annotations

import copy

import pytest

from controller.api import kinds
from controller.api.naming import download_pv_name
from controller.kube.client import KubeClient
from controller.kube.errors import NotFound
from controller.kube.resources import EVENTS, PERSISTENT_VOLUMES
from controller.testing.stack import Stack
from controller.testing.waiting import consistently, eventually
from tests.integration.conftest import UNREACHABLE_URI, WORKERS, MakeCache, node_group_body
from tests.integration.test_cache_lifecycle import downloaded_everywhere, entries_on


async def ready_condition(kube: KubeClient, name: str) -> dict:
    status = (await kube.get(kinds.LOCAL_MODEL_CACHES, name)).get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
    assert ready, status
    return ready[0]


async def test_cache_name_too_long_for_its_job_label_is_reported_and_creates_nothing(
    kube: KubeClient, stack: Stack, node_group: str, make_cache: MakeCache, unique_name
) -> None:
    name = (unique_name("long") + "-" + "x" * 70)[:70]
    await make_cache(name, uri=f"{UNREACHABLE_URI}?cache={name}", node_groups=[node_group])

    async def reported() -> None:
        ready = await ready_condition(kube, name)
        assert (ready["status"], ready["reason"]) == ("False", "InvalidName"), ready
        assert "longer than 63 characters" in ready["message"]

    await eventually(reported, timeout=30)

    async def nothing_created() -> None:
        with pytest.raises(NotFound):
            await kube.get(PERSISTENT_VOLUMES, download_pv_name(name, node_group))
        for node in WORKERS:
            assert await entries_on(kube, node, name) == []

    await consistently(nothing_created, duration=1.0, interval=0.25)


async def test_broken_node_group_is_reported_while_the_valid_one_is_served(
    kube: KubeClient, stack: Stack, node_group: str, make_cache: MakeCache, unique_name
) -> None:
    broken = unique_name("noaffinity")
    body = node_group_body(broken)
    del body["spec"]["persistentVolumeSpec"]["nodeAffinity"]
    await kube.create(kinds.LOCAL_MODEL_NODE_GROUPS, body)
    try:
        name = unique_name("mixed")
        uri = f"{UNREACHABLE_URI}?cache={name}"
        await make_cache(name, uri=uri, node_groups=[node_group, broken, node_group])

        async def served_and_reported() -> None:
            for node in WORKERS:
                assert len(await entries_on(kube, node, name)) == 1, node
            ready = await ready_condition(kube, name)
            assert ready["reason"] == "InvalidNodeGroup", ready
            assert f"LocalModelNodeGroup {broken}" in ready["message"], ready
            assert "selects no node" in ready["message"], ready

        await eventually(served_and_reported, timeout=30)
        with pytest.raises(NotFound):
            await kube.get(PERSISTENT_VOLUMES, download_pv_name(name, broken))
    finally:
        await kube.delete(kinds.LOCAL_MODEL_NODE_GROUPS, broken)


async def test_a_model_whose_job_is_rejected_does_not_stop_the_nodes_other_models(
    kube: KubeClient, stack: Stack, node_group: str, make_cache: MakeCache, unique_name
) -> None:
    node = WORKERS[0]
    long_name = "y" * 70  # no Job may carry it as a label value
    foreign = {"modelName": long_name, "sourceModelUri": f"{stack.model_url()}?x=1"}
    # The bad entry is there before the neighbour's cache exists.
    try:
        local_model_node = await kube.get(kinds.LOCAL_MODEL_NODES, node)
    except NotFound:
        body = {"metadata": {"name": node}, "spec": {"localModels": [foreign]}}
        await kube.create(kinds.LOCAL_MODEL_NODES, body)
    else:
        entries = copy.deepcopy((local_model_node.get("spec") or {}).get("localModels") or [])
        spec = {"localModels": [*entries, foreign]}
        await kube.patch(kinds.LOCAL_MODEL_NODES, node, {"spec": spec})
    try:
        name = unique_name("neighbour")
        uri = f"{stack.model_url()}?cache={name}"
        await make_cache(name, uri=uri, node_groups=[node_group])
        await eventually(lambda: downloaded_everywhere(kube, name), timeout=120)

        async def rejection_reported() -> None:
            status = (await kube.get(kinds.LOCAL_MODEL_NODES, node))["status"]
            assert status["modelStatus"][long_name] == "ModelDownloadError", status
            events = await kube.list(EVENTS, namespace="default")
            reasons = [
                e["reason"] for e in events["items"] if e["involvedObject"].get("name") == node
            ]
            assert "DownloadJobRejected" in reasons, reasons

        await eventually(rejection_reported, timeout=30)
    finally:
        current = await kube.get(kinds.LOCAL_MODEL_NODES, node)
        kept = [e for e in current["spec"]["localModels"] if e["modelName"] != long_name]
        await kube.patch(kinds.LOCAL_MODEL_NODES, node, {"spec": {"localModels": kept}})
