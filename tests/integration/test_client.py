"""The API client against a real kube-apiserver: verbs, paging, watch, Events and error mapping.

The error tests pin down what the API server really answers (409 Conflict vs AlreadyExists with
"being deleted", 422 with causes vs the bare 422 of a failed JSON-patch test), because the
reconcile runtime sorts outcomes by exactly these shapes. Objects that carry test finalizers are
stripped of them afterwards so that their namespace can go away.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes_asyncio.client import Configuration
from structlog.testing import capture_logs

from controller.api import kinds
from controller.kube import client as client_module
from controller.kube import errors
from controller.kube.client import KubeClient
from controller.kube.events import WARNING, EventRecorder
from controller.kube.resources import CONFIGMAPS, EVENTS, NAMESPACES, Resource
from controller.metrics import REGISTRY
from controller.runtime.controller import STALE_PATCH_MESSAGE, _is_conflict
from controller.testing.controlplane import free_port

FOREIGN_FINALIZER = "example.com/keep"
BOGUS = Resource("", "v1", "no-such-things", "NoSuchThing", namespaced=True)

Cleanup = Callable[[Resource, str, str | None], None]


def configmap(name: str, **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, **metadata}}


def namespace_cache(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": kinds.LOCAL_MODEL_NAMESPACE_CACHES.api_version,
        "kind": kinds.LOCAL_MODEL_NAMESPACE_CACHES.kind,
        "metadata": {"name": name},
        "spec": {
            "sourceModelUri": "http://127.0.0.1:1/model.tar.gz",
            "modelSize": "1Gi",
            "nodeGroups": ["workers"],
            **spec,
        },
    }


@pytest.fixture(name="namespace")
def _namespace(module_namespace: str) -> str:
    return module_namespace  # objects have unique names; one namespace serves the module


async def namespace_is_gone(kube: KubeClient, name: str) -> bool:
    try:
        await kube.get(NAMESPACES, name)
    except errors.NotFound:
        return True
    return False


@pytest.fixture(name="name")
def _name(unique_name: Callable[..., str]) -> str:
    """A fresh object name for this test."""
    return unique_name()


@pytest.fixture(name="strip_finalizers")
async def _strip_finalizers(kube: KubeClient) -> AsyncIterator[Cleanup]:
    """`strip_finalizers(resource, name, namespace)`: drop every finalizer after the test."""
    registered: list[tuple[Resource, str, str | None]] = []
    yield lambda resource, name, namespace: registered.append((resource, name, namespace))
    for resource, name, namespace in registered:
        try:
            await kube.patch(
                resource, name, {"metadata": {"finalizers": None}}, namespace=namespace
            )
        except errors.NotFound:
            pass


def request_count(kube: KubeClient, verb: str) -> float:
    labels = {"verb": verb, "host": urlsplit(kube.host).netloc}
    return REGISTRY.get_sample_value("rest_client_request_duration_seconds_count", labels) or 0.0


# --- pure parts: paths and error mapping ----------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "arguments", "expected"),
    [
        pytest.param(CONFIGMAPS, {}, "/api/v1/configmaps", id="core-all-namespaces"),
        pytest.param(
            CONFIGMAPS, {"namespace": "ns"}, "/api/v1/namespaces/ns/configmaps", id="core-ns"
        ),
        pytest.param(
            CONFIGMAPS,
            {"namespace": "ns", "name": "a"},
            "/api/v1/namespaces/ns/configmaps/a",
            id="core-object",
        ),
        pytest.param(NAMESPACES, {"name": "ns"}, "/api/v1/namespaces/ns", id="cluster-scoped"),
        pytest.param(
            NAMESPACES,
            {"namespace": "ignored", "name": "ns"},
            "/api/v1/namespaces/ns",
            id="cluster-scoped-ignores-namespace",
        ),
        pytest.param(
            kinds.LOCAL_MODEL_NAMESPACE_CACHES,
            {"namespace": "ns", "name": "c1", "subresource": "status"},
            "/apis/serving.kserve.io/v1alpha1/namespaces/ns/localmodelnamespacecaches/c1/status",
            id="group-subresource",
        ),
        pytest.param(
            kinds.LOCAL_MODEL_CACHES,
            {"subresource": "status"},
            "/apis/serving.kserve.io/v1alpha1/localmodelcaches",
            id="subresource-needs-a-name",
        ),
    ],
)
def test_resource_path_builds_rest_paths(
    resource: Resource, arguments: dict[str, str], expected: str
) -> None:
    assert resource.path(**arguments) == expected


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(404, {"reason": "NotFound"}, errors.NotFound, id="404"),
        pytest.param(403, {"reason": "Forbidden"}, errors.Forbidden, id="403"),
        pytest.param(409, {"reason": "Conflict"}, errors.Conflict, id="409-conflict"),
        pytest.param(409, {"reason": "AlreadyExists"}, errors.AlreadyExists, id="409-exists"),
        pytest.param(410, {"reason": "Expired"}, errors.Gone, id="410"),
        pytest.param(422, {"reason": "Invalid"}, errors.Invalid, id="422"),
        pytest.param(429, {"reason": "TooManyRequests"}, errors.TooManyRequests, id="429"),
        pytest.param(500, {}, errors.ServerError, id="500"),
        pytest.param(504, {"reason": "Timeout"}, errors.ServerError, id="504"),
        pytest.param(400, {"reason": "BadRequest"}, errors.ApiError, id="400-generic"),
        pytest.param(401, None, errors.ApiError, id="401-no-body"),
    ],
)
def test_error_for_maps_status_to_most_specific_class(
    status: int, body: dict[str, Any] | None, expected: type[errors.ApiError]
) -> None:
    error = errors.error_for(status, body, 2.0)

    assert type(error) is expected
    assert (error.status, error.retry_after) == (status, 2.0)
    assert isinstance(error, errors.KubeError)


# --- verbs ----------------------------------------------------------------------------------


async def test_client_create_get_list_delete_round_trip(
    kube: KubeClient, namespace: str, name: str
) -> None:
    created = await kube.create(
        CONFIGMAPS,
        {**configmap(name, labels={"app": name}), "data": {"k": "v"}},
        namespace=namespace,
    )

    fetched = await kube.get(CONFIGMAPS, name, namespace=namespace)
    listing = await kube.list(CONFIGMAPS, namespace=namespace, label_selector=f"app={name}")
    assert fetched["metadata"]["uid"] == created["metadata"]["uid"]
    assert fetched["data"] == {"k": "v"}
    assert [item["metadata"]["name"] for item in listing["items"]] == [name]
    assert listing["metadata"]["resourceVersion"]

    await kube.delete(CONFIGMAPS, name, namespace=namespace)
    with pytest.raises(errors.NotFound):
        await kube.get(CONFIGMAPS, name, namespace=namespace)


async def test_client_list_follows_continue_pages(
    kube: KubeClient, namespace: str, name: str
) -> None:
    names = [f"{name}-{index}" for index in range(5)]
    for page_name in names:
        body = configmap(page_name, labels={"paged": name})
        await kube.create(CONFIGMAPS, body, namespace=namespace)
    requests_before = request_count(kube, "LIST")

    listing = await kube.list(
        CONFIGMAPS, namespace=namespace, label_selector=f"paged={name}", limit=2
    )

    assert sorted(item["metadata"]["name"] for item in listing["items"]) == names
    assert "continue" not in listing["metadata"]
    assert listing["metadata"]["resourceVersion"]
    assert request_count(kube, "LIST") - requests_before == 3


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        pytest.param({"label_selector": "tier=gold"}, ["gold"], id="label"),
        pytest.param({"label_selector": "tier!=gold,tier"}, ["silver"], id="label-negated"),
        pytest.param({"field_selector": "metadata.name={silver}"}, ["silver"], id="field"),
    ],
)
async def test_client_list_applies_selectors(
    kube: KubeClient, namespace: str, name: str, selectors: dict[str, str], expected: list[str]
) -> None:
    names = {tier: f"{name}-{tier}" for tier in ("gold", "silver", "none")}
    for tier in ("gold", "silver"):
        labels = {"tier": tier, "selected-by": name}
        await kube.create(CONFIGMAPS, configmap(names[tier], labels=labels), namespace=namespace)
    await kube.create(
        CONFIGMAPS, configmap(names["none"], labels={"selected-by": name}), namespace=namespace
    )
    label_selector = ",".join(
        filter(None, [selectors.get("label_selector"), f"selected-by={name}"])
    )
    field_selector = selectors.get("field_selector", "").format(silver=names["silver"]) or None

    listing = await kube.list(
        CONFIGMAPS,
        namespace=namespace,
        label_selector=label_selector,
        field_selector=field_selector,
    )

    assert [item["metadata"]["name"] for item in listing["items"]] == [
        names[tier] for tier in expected
    ]


async def test_client_merge_patch_sets_and_removes_keys(
    kube: KubeClient, namespace: str, name: str
) -> None:
    await kube.create(
        CONFIGMAPS, {**configmap(name), "data": {"x": "1", "y": "2"}}, namespace=namespace
    )

    patched = await kube.patch(
        CONFIGMAPS, name, {"data": {"x": "10", "y": None, "z": "3"}}, namespace=namespace
    )

    assert patched["data"] == {"x": "10", "z": "3"}


async def test_client_json_patch_applies_operations_in_order(
    kube: KubeClient,
    namespace: str,
    name: str,
) -> None:
    await kube.create(CONFIGMAPS, {**configmap(name), "data": {"x": "1"}}, namespace=namespace)

    patched = await kube.patch(
        CONFIGMAPS,
        name,
        [
            {"op": "test", "path": "/data/x", "value": "1"},
            {"op": "replace", "path": "/data/x", "value": "2"},
            {"op": "add", "path": "/metadata/labels", "value": {"patched": "yes"}},
        ],
        namespace=namespace,
        patch_type="json",
    )

    assert patched["data"] == {"x": "2"}
    assert patched["metadata"]["labels"] == {"patched": "yes"}


async def test_client_patches_status_subresource_only(
    kube: KubeClient, namespace: str, name: str
) -> None:
    caches = kinds.LOCAL_MODEL_NAMESPACE_CACHES
    await kube.create(caches, namespace_cache(name), namespace=namespace)

    patched = await kube.patch(
        caches,
        name,
        {"status": {"copies": {"total": 2, "available": 1}}, "spec": {"modelSize": "9Gi"}},
        namespace=namespace,
        subresource="status",
    )

    assert patched["status"]["copies"] == {"total": 2, "available": 1}
    assert patched["spec"]["modelSize"] == "1Gi", "a status write must not change spec"


async def test_client_replace_with_stale_resource_version_raises_conflict(
    kube: KubeClient,
    namespace: str,
    name: str,
) -> None:
    original = await kube.create(
        CONFIGMAPS, {**configmap(name), "data": {"x": "1"}}, namespace=namespace
    )
    await kube.patch(CONFIGMAPS, name, {"data": {"x": "2"}}, namespace=namespace)

    with pytest.raises(errors.Conflict) as caught:
        await kube.replace(CONFIGMAPS, name, {**original, "data": {"x": "3"}}, namespace=namespace)

    assert type(caught.value) is errors.Conflict
    assert caught.value.reason == "Conflict"
    assert _is_conflict(caught.value)
    current = await kube.get(CONFIGMAPS, name, namespace=namespace)
    assert current["data"] == {"x": "2"}


async def test_client_merge_patch_carrying_stale_resource_version_raises_conflict(
    kube: KubeClient,
    namespace: str,
    name: str,
) -> None:
    original = await kube.create(CONFIGMAPS, configmap(name), namespace=namespace)
    await kube.patch(CONFIGMAPS, name, {"data": {"x": "1"}}, namespace=namespace)
    stale = {"metadata": {"resourceVersion": original["metadata"]["resourceVersion"]}}

    with pytest.raises(errors.Conflict) as caught:
        await kube.patch(CONFIGMAPS, name, {**stale, "data": {"x": "2"}}, namespace=namespace)

    assert _is_conflict(caught.value)


async def test_client_failed_json_patch_test_raises_bare_422(
    kube: KubeClient,
    namespace: str,
    name: str,
) -> None:
    original = await kube.create(CONFIGMAPS, configmap(name), namespace=namespace)
    await kube.patch(CONFIGMAPS, name, {"data": {"x": "1"}}, namespace=namespace)
    guard = {
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": original["metadata"]["resourceVersion"],
    }

    with pytest.raises(errors.Invalid) as caught:
        await kube.patch(
            CONFIGMAPS,
            name,
            [guard, {"op": "add", "path": "/data/y", "value": "2"}],
            namespace=namespace,
            patch_type="json",
        )

    error = caught.value
    assert (error.status, error.reason, error.causes) == (422, "Invalid", [])
    assert error.message == STALE_PATCH_MESSAGE
    assert _is_conflict(error), "a stale JSON patch is a conflict: retry on fresh data"
    current = await kube.get(CONFIGMAPS, name, namespace=namespace)
    assert current["data"] == {"x": "1"}


async def test_client_schema_violation_raises_invalid_with_causes(
    kube: KubeClient,
    namespace: str,
    name: str,
) -> None:
    body = namespace_cache(name)
    del body["spec"]["nodeGroups"]

    with pytest.raises(errors.Invalid) as caught:
        await kube.create(kinds.LOCAL_MODEL_NAMESPACE_CACHES, body, namespace=namespace)

    fields = {cause.get("field") for cause in caught.value.causes}
    assert "spec.nodeGroups" in fields
    assert not _is_conflict(caught.value), "validation errors must not be retried as conflicts"


async def test_client_validation_rule_violation_raises_invalid_with_causes(
    kube: KubeClient,
    namespace: str,
    name: str,
) -> None:
    caches = kinds.LOCAL_MODEL_NAMESPACE_CACHES
    await kube.create(caches, namespace_cache(name), namespace=namespace)

    with pytest.raises(errors.Invalid) as caught:
        await kube.patch(
            caches,
            name,
            {"spec": {"sourceModelUri": "http://127.0.0.1:1/other.tar.gz"}},
            namespace=namespace,
        )

    assert caught.value.causes
    assert "immutable" in caught.value.message
    assert not _is_conflict(caught.value)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda kube, ns: kube.get(CONFIGMAPS, "missing", namespace=ns), id="get"),
        pytest.param(
            lambda kube, ns: kube.patch(CONFIGMAPS, "missing", {"data": {}}, namespace=ns),
            id="patch",
        ),
        pytest.param(
            lambda kube, ns: kube.delete(CONFIGMAPS, "missing", namespace=ns), id="delete"
        ),
        pytest.param(lambda kube, ns: kube.list(BOGUS, namespace=ns), id="unknown-resource"),
    ],
)
async def test_client_missing_object_raises_not_found(
    kube: KubeClient, namespace: str, call: Callable[[KubeClient, str], Any]
) -> None:
    with pytest.raises(errors.NotFound) as caught:
        await call(kube, namespace)

    assert caught.value.status == 404


async def test_client_create_of_existing_name_raises_already_exists(
    kube: KubeClient,
    namespace: str,
    name: str,
) -> None:
    await kube.create(CONFIGMAPS, configmap(name), namespace=namespace)

    with pytest.raises(errors.AlreadyExists) as caught:
        await kube.create(CONFIGMAPS, configmap(name), namespace=namespace)

    assert caught.value.status == 409
    assert not caught.value.being_deleted


async def test_client_delete_of_object_with_finalizer_marks_it_for_deletion(
    kube: KubeClient,
    namespace: str,
    strip_finalizers: Cleanup,
    name: str,
) -> None:
    created = await kube.create(
        CONFIGMAPS, configmap(name, finalizers=[FOREIGN_FINALIZER]), namespace=namespace
    )
    strip_finalizers(CONFIGMAPS, name, namespace)

    answer = await kube.delete(CONFIGMAPS, name, namespace=namespace)

    assert answer is not None
    assert answer["metadata"]["deletionTimestamp"]
    current = await kube.get(CONFIGMAPS, name, namespace=namespace)
    assert current["metadata"]["uid"] == created["metadata"]["uid"]
    assert current["metadata"]["finalizers"] == [FOREIGN_FINALIZER]


async def test_client_create_while_old_object_is_being_deleted_raises_being_deleted(
    kube: KubeClient,
    namespace: str,
    strip_finalizers: Cleanup,
    name: str,
) -> None:
    await kube.create(
        CONFIGMAPS, configmap(name, finalizers=[FOREIGN_FINALIZER]), namespace=namespace
    )
    strip_finalizers(CONFIGMAPS, name, namespace)
    await kube.delete(CONFIGMAPS, name, namespace=namespace)

    with pytest.raises(errors.AlreadyExists) as caught:
        await kube.create(CONFIGMAPS, configmap(name), namespace=namespace)

    assert caught.value.being_deleted
    assert "object is being deleted" in caught.value.message
    assert _is_conflict(caught.value)


async def test_client_delete_with_wrong_uid_precondition_raises_conflict(
    kube: KubeClient,
    namespace: str,
    name: str,
) -> None:
    await kube.create(CONFIGMAPS, configmap(name), namespace=namespace)

    with pytest.raises(errors.Conflict):
        await kube.delete(
            CONFIGMAPS, name, namespace=namespace, precondition_uid="00000000-0000-0000-0000-0"
        )

    assert await kube.get(CONFIGMAPS, name, namespace=namespace)


async def test_client_delete_with_matching_uid_precondition_deletes(
    kube: KubeClient,
    namespace: str,
    name: str,
) -> None:
    created = await kube.create(CONFIGMAPS, configmap(name), namespace=namespace)

    await kube.delete(
        CONFIGMAPS, name, namespace=namespace, precondition_uid=created["metadata"]["uid"]
    )

    with pytest.raises(errors.NotFound):
        await kube.get(CONFIGMAPS, name, namespace=namespace)


async def test_client_gives_up_on_refused_connection_after_retries(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    monkeypatch.setattr(client_module, "RETRY_DELAYS", (0.01, 0.01))
    port = free_port()  # nothing listens here
    configuration = Configuration(host=f"http://127.0.0.1:{port}")
    labels = {"code": "<error>", "verb": "GET", "host": f"127.0.0.1:{port}"}

    async with KubeClient(configuration, user_agent="client-tests") as refused:
        with pytest.raises(errors.TransportError):
            await refused.get(CONFIGMAPS, name, namespace="default")

    assert REGISTRY.get_sample_value("rest_client_request_retries_total", labels) == 2


# --- watch ----------------------------------------------------------------------------------


async def test_client_watch_yields_changes_after_resource_version(
    kube: KubeClient, namespace: str, name: str
) -> None:
    before, after = f"{name}-before", f"{name}-after"
    await kube.create(CONFIGMAPS, configmap(before), namespace=namespace)
    since = (await kube.list(CONFIGMAPS, namespace=namespace))["metadata"]["resourceVersion"]
    await kube.create(CONFIGMAPS, configmap(after), namespace=namespace)
    await kube.patch(CONFIGMAPS, after, {"data": {"x": "1"}}, namespace=namespace)
    await kube.delete(CONFIGMAPS, after, namespace=namespace)

    seen: list[tuple[str, str]] = []
    async with asyncio.timeout(20):
        async for event in kube.watch(
            CONFIGMAPS,
            resource_version=since,
            namespace=namespace,
            timeout_seconds=15,
        ):
            if event["object"]["metadata"].get("name") in (before, after):
                seen.append((event["type"], event["object"]["metadata"]["name"]))
            if event["type"] == "DELETED":
                break

    assert seen == [("ADDED", after), ("MODIFIED", after), ("DELETED", after)]


async def test_client_watch_of_unknown_resource_raises_not_found(
    kube: KubeClient, namespace: str
) -> None:
    with pytest.raises(errors.NotFound):
        async for _ in kube.watch(BOGUS, resource_version="0", namespace=namespace):
            pass


async def test_client_watch_ends_when_server_timeout_passes(
    kube: KubeClient, namespace: str
) -> None:
    since = (await kube.list(CONFIGMAPS, namespace=namespace))["metadata"]["resourceVersion"]

    async with asyncio.timeout(15):
        events = [
            event
            async for event in kube.watch(
                CONFIGMAPS, resource_version=since, namespace=namespace, timeout_seconds=1
            )
        ]

    assert all(event["type"] == "BOOKMARK" for event in events)


# --- events ---------------------------------------------------------------------------------


async def test_event_recorder_writes_event_about_object(
    kube: KubeClient, namespace: str, name: str
) -> None:
    target = await kube.create(CONFIGMAPS, configmap(name), namespace=namespace)
    recorder = EventRecorder(kube, component="localmodel-tests")

    await recorder.record(target, type=WARNING, reason="DownloadFailed", message="x" * 2000)

    listing = await kube.list(EVENTS, namespace=namespace)
    [event] = [e for e in listing["items"] if e["reason"] == "DownloadFailed"]
    assert event["type"] == "Warning"
    assert event["involvedObject"]["uid"] == target["metadata"]["uid"]
    assert event["involvedObject"]["kind"] == "ConfigMap"
    assert event["source"]["component"] == "localmodel-tests"
    assert len(event["message"]) == 1024


async def test_event_recorder_puts_cluster_scoped_objects_in_default_namespace(
    kube: KubeClient,
    namespace: str,
    unique_name: Callable[..., str],
    name: str,
) -> None:
    target = await kube.get(NAMESPACES, namespace)
    reason = "Probe" + unique_name("r").replace("-", "")
    recorder = EventRecorder(kube, component="localmodel-tests")

    await recorder.record(target, type=WARNING, reason=reason, message="cluster-scoped")

    listing = await kube.list(EVENTS, namespace="default")
    [event] = [e for e in listing["items"] if e["reason"] == reason]
    try:
        assert event["involvedObject"]["name"] == namespace
    finally:
        await kube.delete(EVENTS, event["metadata"]["name"], namespace="default")


async def test_event_recorder_failure_is_logged_not_raised(
    kube: KubeClient,
    unique_name: Callable[..., str],
    name: str,
) -> None:
    target = configmap(name, namespace=unique_name("absent"))  # its namespace does not exist
    recorder = EventRecorder(kube, component="localmodel-tests")

    with capture_logs() as logs:
        await recorder.record(target, type=WARNING, reason="Nowhere", message="lost")

    [entry] = [entry for entry in logs if entry["event"] == "event not recorded"]
    assert entry["log_level"] == "warning"
    assert entry["reason"] == "Nowhere"
