"""Bad input is refused by the API server, or reported on the cache, and loses nothing."""

from __future__ import annotations

import pytest

from controller.api import kinds
from controller.api.naming import download_pv_name, download_pvc_name
from controller.kube.client import KubeClient
from controller.kube.errors import Invalid, NotFound
from controller.kube.resources import EVENTS, PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES
from controller.testing.stack import Stack
from controller.testing.waiting import consistently, eventually
from tests.integration.conftest import WORKERS, MakeCache, cache_body, manager_metric


async def test_cache_without_source_uri_is_rejected_by_the_api_server(
    kube: KubeClient, unique_name
) -> None:
    body = cache_body(unique_name("nouri"), uri="x", node_groups=["workers"])
    del body["spec"]["sourceModelUri"]
    with pytest.raises(Invalid) as rejected:
        await kube.create(kinds.LOCAL_MODEL_CACHES, body)
    assert "sourceModelUri" in rejected.value.message


async def test_cache_source_uri_change_is_rejected_as_immutable(
    kube: KubeClient, stack: Stack, make_cache: MakeCache, unique_name
) -> None:
    name = unique_name("immutable")
    await make_cache(name, uri="http://127.0.0.1:1/a.tar.gz", node_groups=["unused"])
    with pytest.raises(Invalid) as rejected:
        await kube.patch(
            kinds.LOCAL_MODEL_CACHES, name, {"spec": {"sourceModelUri": "http://127.0.0.1:1/b"}}
        )
    assert "StorageUri is immutable" in rejected.value.message


async def test_cache_with_unknown_node_group_reports_it_and_creates_nothing(
    kube: KubeClient, stack: Stack, make_cache: MakeCache, unique_name
) -> None:
    name = unique_name("nogroup")
    group = unique_name("missing")
    await make_cache(name, uri=f"{stack.model_url()}?cache={name}", node_groups=[group])

    async def reported() -> None:
        cache = await kube.get(kinds.LOCAL_MODEL_CACHES, name)
        conditions = (cache.get("status") or {}).get("conditions") or []
        ready = [c for c in conditions if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "False", conditions
        assert ready[0]["reason"] == "NodeGroupNotFound"
        assert group in ready[0]["message"]

    await eventually(reported, timeout=30)

    async def event_recorded() -> None:
        events = await kube.list(EVENTS, namespace="default")
        mine = [e for e in events["items"] if e["involvedObject"].get("name") == name]
        assert [e["reason"] for e in mine] == ["NodeGroupNotFound"], mine

    await eventually(event_recorded, timeout=30)

    async def nothing_created() -> None:
        for resource, object_name, namespace in (
            (PERSISTENT_VOLUMES, download_pv_name(name, group), None),
            (PERSISTENT_VOLUME_CLAIMS, download_pvc_name(name, group), stack.job_namespace),
        ):
            with pytest.raises(NotFound):
                await kube.get(resource, object_name, namespace=namespace)
        for node in WORKERS:
            try:
                local_model_node = await kube.get(kinds.LOCAL_MODEL_NODES, node)
            except NotFound:
                continue
            entries = (local_model_node.get("spec") or {}).get("localModels") or []
            assert name not in [entry.get("modelName") for entry in entries]

    await consistently(nothing_created, duration=2.0, interval=0.5)
    assert stack.exited() == []
    reconciled = 'controller_runtime_reconcile_total{controller="localmodelcache",result="success"}'
    assert (await manager_metric(stack, reconciled) or 0) > 0


async def test_cache_with_unsupported_scheme_fails_fast_with_a_clear_reason(
    kube: KubeClient, stack: Stack, node_group: str, make_cache: MakeCache, unique_name
) -> None:
    name = unique_name("s3")
    await make_cache(name, uri=f"s3://bucket/{name}", node_groups=[node_group])

    async def failed_everywhere() -> None:
        cache = await kube.get(kinds.LOCAL_MODEL_CACHES, name)
        status = cache.get("status") or {}
        assert status.get("nodeStatus") == {node: "NodeDownloadError" for node in WORKERS}
        assert status.get("copies") == {"available": 0, "total": 2, "failed": 2}
        ready = [c for c in status["conditions"] if c["type"] == "Ready"]
        assert ready[0]["reason"] == "DownloadFailed", ready

    # One failed pod fails the Job (exit code 2 means retrying cannot help): no six retries.
    await eventually(failed_everywhere, timeout=60)

    async def explained_on_each_node() -> None:
        events = await kube.list(EVENTS, namespace="default")
        reasons = {
            e["involvedObject"]["name"]: e["message"]
            for e in events["items"]
            if e["reason"] == "DownloadFailed" and name in e["message"]
        }
        assert set(reasons) == set(WORKERS), reasons
        for message in reasons.values():
            assert "exit code 2" in message, message
            assert "unsupported URI scheme: s3" in message, message

    await eventually(explained_on_each_node, timeout=30)
