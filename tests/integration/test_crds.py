"""The CRDs in manifests/crds, as the real kube-apiserver enforces them (KServe compatibility).

Covers acceptance items 1-5 of docs/kserve-localmodel.md: kinds and scopes, required fields,
the immutable sourceModelUri, accepted edits, status enums; and that KServe-shaped objects and
our samples apply without losing fields. No controller runs here: only the API server judges.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api import kinds
from controller.api.status import ModelStatus, NodeStatus
from controller.kube.client import KubeClient
from controller.kube.errors import Conflict, Invalid, NotFound
from controller.kube.resources import CUSTOM_RESOURCE_DEFINITIONS, STORAGE_CLASSES, Resource
from controller.testing.waiting import eventually

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"
ABSENT_GROUP = "crd-tests-absent-group"
CACHE_KINDS = [
    pytest.param(kinds.LOCAL_MODEL_CACHES, id="cluster-cache"),
    pytest.param(kinds.LOCAL_MODEL_NAMESPACE_CACHES, id="namespace-cache"),
]


class Objects:
    """Creates objects for one test and deletes them afterwards, waiting until they are gone."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self.created: list[tuple[Resource, str, str | None]] = []

    async def create(self, resource: Resource, body: dict, *, namespace: str | None = None) -> dict:
        created = await self.kube.create(resource, body, namespace=namespace)
        self.created.append((resource, created["metadata"]["name"], namespace))
        return created

    async def delete_all(self) -> None:
        # Newest first, each one gone before the next: a cache goes before its node group.
        for resource, name, namespace in reversed(self.created):
            try:
                await self.kube.delete(resource, name, namespace=namespace)
            except NotFound:
                continue

            async def is_gone(resource=resource, name=name, namespace=namespace) -> None:
                try:
                    await self.kube.get(resource, name, namespace=namespace)
                except NotFound:
                    return
                raise AssertionError(f"{resource.kind} {name} still exists")

            await eventually(is_gone, timeout=60)


@pytest.fixture(name="objects")
async def _objects(kube: KubeClient) -> AsyncIterator[Objects]:
    objects = Objects(kube)
    try:
        yield objects
    finally:
        await objects.delete_all()


def cache_body(resource: Resource, name: str, **spec: Any) -> dict:
    body_spec = {
        "sourceModelUri": "hf://sentence-transformers/all-MiniLM-L6-v2",
        "modelSize": "100Mi",
        # A group nobody creates: a manager running in the same session places nothing.
        "nodeGroups": [ABSENT_GROUP],
    }
    body_spec.update(spec)
    return {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": name},
        "spec": {key: value for key, value in body_spec.items() if value is not None},
    }


def node_group_body(name: str) -> dict:
    return {
        "apiVersion": kinds.LOCAL_MODEL_NODE_GROUPS.api_version,
        "kind": kinds.LOCAL_MODEL_NODE_GROUPS.kind,
        "metadata": {"name": name},
        "spec": {
            "storageLimit": "10Gi",
            "persistentVolumeSpec": {
                "accessModes": ["ReadWriteOnce"],
                "capacity": {"storage": "10Gi"},
                "local": {"path": "/models"},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "kserve/localmodel", "operator": "In", "values": ["w"]}
                                ]
                            }
                        ]
                    }
                },
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "local-storage",
                "volumeMode": "Filesystem",
            },
            "persistentVolumeClaimSpec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "10Gi"}},
                "storageClassName": "local-storage",
                "volumeMode": "Filesystem",
            },
        },
    }


async def replace_status(
    kube: KubeClient,
    resource: Resource,
    name: str,
    status: dict,
    *,
    namespace: str | None = None,
) -> dict:
    """Write the whole status at once, so what is read back is exactly what was written.

    A merge patch would mix our values with any status a running manager wrote meanwhile.
    """
    patch = [{"op": "add", "path": "/status", "value": status}]
    return await kube.patch(
        resource, name, patch, namespace=namespace, patch_type="json", subresource="status"
    )


@pytest.fixture(name="ns")
def _ns(request: pytest.FixtureRequest, resource: Resource) -> str | None:
    """The namespace to create `resource` in: a fresh one for namespaced kinds, else None."""
    # Only namespaced kinds pay for creating and deleting a namespace.
    return request.getfixturevalue("namespace") if resource.namespaced else None


async def test_crds_are_established_with_kserve_names_and_scopes(kube: KubeClient) -> None:
    expected_scopes = {
        kinds.LOCAL_MODEL_CACHES: "Cluster",
        kinds.LOCAL_MODEL_NAMESPACE_CACHES: "Namespaced",
        kinds.LOCAL_MODEL_NODE_GROUPS: "Cluster",
        kinds.LOCAL_MODEL_NODES: "Cluster",
    }
    for resource, scope in expected_scopes.items():
        crd = await kube.get(CUSTOM_RESOURCE_DEFINITIONS, f"{resource.plural}.{kinds.GROUP}")
        assert crd["spec"]["scope"] == scope
        assert [(v["name"], v["served"], v["storage"]) for v in crd["spec"]["versions"]] == [
            ("v1alpha1", True, True)
        ]
        assert crd["status"]["acceptedNames"]["kind"] == resource.kind
        assert crd["status"]["acceptedNames"]["listKind"] == f"{resource.kind}List"
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True"
        assert conditions.get("NonStructuralSchema", "False") == "False"


async def test_each_kind_is_served_at_its_scope(
    kube: KubeClient, objects: Objects, namespace: str, unique_name: Callable[..., str]
) -> None:
    cache = await objects.create(
        kinds.LOCAL_MODEL_CACHES, cache_body(kinds.LOCAL_MODEL_CACHES, unique_name())
    )
    assert "namespace" not in cache["metadata"]
    ns_cache = cache_body(kinds.LOCAL_MODEL_NAMESPACE_CACHES, unique_name())
    created = await objects.create(
        kinds.LOCAL_MODEL_NAMESPACE_CACHES, ns_cache, namespace=namespace
    )
    assert created["metadata"]["namespace"] == namespace
    group = await objects.create(kinds.LOCAL_MODEL_NODE_GROUPS, node_group_body(unique_name()))
    assert "namespace" not in group["metadata"]
    node = await objects.create(
        kinds.LOCAL_MODEL_NODES,
        {
            "apiVersion": kinds.LOCAL_MODEL_NODES.api_version,
            "kind": kinds.LOCAL_MODEL_NODES.kind,
            "metadata": {"name": unique_name()},
            "spec": {"localModels": []},
        },
    )
    assert "namespace" not in node["metadata"]

    # Namespaced kind is listed per namespace; cluster kinds have no namespace in their path.
    listed = await kube.list(kinds.LOCAL_MODEL_NAMESPACE_CACHES, namespace=namespace)
    assert [item["metadata"]["name"] for item in listed["items"]] == [ns_cache["metadata"]["name"]]
    assert "/namespaces/" not in kinds.LOCAL_MODEL_CACHES.path(namespace=namespace, name="c")


@pytest.mark.parametrize("resource", CACHE_KINDS)
@pytest.mark.parametrize(
    "missing",
    [
        pytest.param("sourceModelUri", id="no-uri"),
        pytest.param("modelSize", id="no-size"),
        pytest.param("nodeGroups", id="no-groups"),
    ],
)
async def test_cache_without_required_field_is_rejected(
    objects: Objects, ns: str | None, resource: Resource, missing: str
) -> None:
    body = cache_body(resource, "missing-field", **{missing: None})
    with pytest.raises(Invalid) as caught:
        await objects.create(resource, body, namespace=ns)
    assert f"spec.{missing}" in caught.value.message
    assert "Required value" in caught.value.message


@pytest.mark.parametrize("resource", CACHE_KINDS)
async def test_cache_without_spec_is_rejected(
    objects: Objects, ns: str | None, resource: Resource
) -> None:
    body = cache_body(resource, "no-spec")
    del body["spec"]
    with pytest.raises(Invalid) as caught:
        await objects.create(resource, body, namespace=ns)
    assert "spec: Required value" in caught.value.message


@pytest.mark.parametrize("resource", CACHE_KINDS)
async def test_cache_with_empty_node_groups_is_rejected(
    objects: Objects, ns: str | None, resource: Resource
) -> None:
    body = cache_body(resource, "empty-groups", nodeGroups=[])
    with pytest.raises(Invalid) as caught:
        await objects.create(resource, body, namespace=ns)
    assert "spec.nodeGroups" in caught.value.message


@pytest.mark.parametrize("resource", CACHE_KINDS)
async def test_cache_with_malformed_model_size_is_rejected(
    objects: Objects, ns: str | None, resource: Resource
) -> None:
    body = cache_body(resource, "bad-size", modelSize="a lot")
    with pytest.raises(Invalid) as caught:
        await objects.create(resource, body, namespace=ns)
    assert "spec.modelSize" in caught.value.message


@pytest.mark.parametrize("resource", CACHE_KINDS)
@pytest.mark.parametrize("verb", [pytest.param("patch", id="patch"), pytest.param("put", id="put")])
async def test_changing_source_model_uri_is_rejected(
    kube: KubeClient,
    objects: Objects,
    ns: str | None,
    unique_name: Callable[..., str],
    resource: Resource,
    verb: str,
) -> None:
    created = await objects.create(resource, cache_body(resource, unique_name()), namespace=ns)
    name = created["metadata"]["name"]
    new_uri = "hf://sentence-transformers/all-mpnet-base-v2"

    async def put_new_uri() -> None:
        # The session's manager writes to new caches too (finalizer, status): PUT the latest
        # version, and try again when it raced such a write.
        changed = await kube.get(resource, name, namespace=ns)
        changed["spec"]["sourceModelUri"] = new_uri
        try:
            await kube.replace(resource, name, changed, namespace=ns)
        except Conflict as exc:
            raise AssertionError(f"raced another writer: {exc}") from exc

    with pytest.raises(Invalid) as caught:
        if verb == "patch":
            await kube.patch(resource, name, {"spec": {"sourceModelUri": new_uri}}, namespace=ns)
        else:
            await eventually(put_new_uri, timeout=10)

    assert "StorageUri is immutable" in caught.value.message
    stored = await kube.get(resource, name, namespace=ns)
    assert stored["spec"]["sourceModelUri"] == created["spec"]["sourceModelUri"]


@pytest.mark.parametrize("resource", CACHE_KINDS)
@pytest.mark.parametrize(
    "edit",
    [
        pytest.param({"nodeGroups": [ABSENT_GROUP, "gpus"]}, id="node-groups"),
        pytest.param({"modelSize": "2Gi"}, id="model-size"),
        pytest.param({"modelSize": 1073741824}, id="model-size-integer"),
        pytest.param({"serviceAccountName": "model-reader"}, id="service-account"),
        pytest.param(
            {"storage": {"key": "localmodel", "parameters": {"region": "eu-west-1"}}}, id="storage"
        ),
        pytest.param({"sourceModelUri": "hf://sentence-transformers/all-MiniLM-L6-v2"}, id="same"),
    ],
)
async def test_other_cache_edits_are_accepted(
    kube: KubeClient,
    objects: Objects,
    ns: str | None,
    unique_name: Callable[..., str],
    resource: Resource,
    edit: dict,
) -> None:
    created = await objects.create(resource, cache_body(resource, unique_name()), namespace=ns)

    patched = await kube.patch(resource, created["metadata"]["name"], {"spec": edit}, namespace=ns)

    for field, value in edit.items():
        assert patched["spec"][field] == value


@pytest.mark.parametrize("resource", CACHE_KINDS)
async def test_cache_node_status_outside_enum_is_rejected(
    kube: KubeClient,
    objects: Objects,
    ns: str | None,
    unique_name: Callable[..., str],
    resource: Resource,
) -> None:
    created = await objects.create(resource, cache_body(resource, unique_name()), namespace=ns)
    name = created["metadata"]["name"]

    with pytest.raises(Invalid) as caught:
        await kube.patch(
            resource,
            name,
            {"status": {"nodeStatus": {"n1": "NodeDownloadFinished"}}},
            namespace=ns,
            subresource="status",
        )
    assert "nodeStatus" in caught.value.message
    assert "Unsupported value" in caught.value.message

    every_value = {f"n{i}": status.value for i, status in enumerate(NodeStatus)}
    status = {"nodeStatus": every_value, "copies": {"available": 1, "total": 6, "failed": 1}}
    accepted = await replace_status(kube, resource, name, status, namespace=ns)
    assert accepted["status"] == status


async def test_local_model_node_model_status_outside_enum_is_rejected(
    kube: KubeClient, objects: Objects, unique_name: Callable[..., str]
) -> None:
    name = unique_name()
    await objects.create(
        kinds.LOCAL_MODEL_NODES,
        {
            "apiVersion": kinds.LOCAL_MODEL_NODES.api_version,
            "kind": kinds.LOCAL_MODEL_NODES.kind,
            "metadata": {"name": name},
            "spec": {"localModels": [{"modelName": "m", "sourceModelUri": "s3://b/m"}]},
        },
    )

    with pytest.raises(Invalid) as caught:
        await kube.patch(
            kinds.LOCAL_MODEL_NODES,
            name,
            {"status": {"modelStatus": {"m": "Downloaded"}}},
            subresource="status",
        )
    assert "modelStatus" in caught.value.message
    assert "Unsupported value" in caught.value.message

    every_value = {f"m{i}": status.value for i, status in enumerate(ModelStatus)}
    accepted = await replace_status(
        kube, kinds.LOCAL_MODEL_NODES, name, {"modelStatus": every_value}
    )
    assert accepted["status"] == {"modelStatus": every_value}


async def test_local_model_node_entry_requires_name_and_uri(
    objects: Objects, unique_name: Callable[..., str]
) -> None:
    body = {
        "apiVersion": kinds.LOCAL_MODEL_NODES.api_version,
        "kind": kinds.LOCAL_MODEL_NODES.kind,
        "metadata": {"name": unique_name()},
        "spec": {"localModels": [{"modelName": "m"}]},
    }
    with pytest.raises(Invalid) as caught:
        await objects.create(kinds.LOCAL_MODEL_NODES, body)
    assert "sourceModelUri" in caught.value.message


@pytest.mark.parametrize(
    ("condition", "complaint"),
    [
        pytest.param({"status": "Maybe"}, "status", id="bad-status"),
        pytest.param({"reason": "not camel case"}, "reason", id="bad-reason"),
        pytest.param({"lastTransitionTime": None}, "lastTransitionTime", id="no-time"),
    ],
)
async def test_malformed_condition_is_rejected(
    kube: KubeClient,
    objects: Objects,
    unique_name: Callable[..., str],
    condition: dict,
    complaint: str,
) -> None:
    created = await objects.create(
        kinds.LOCAL_MODEL_CACHES, cache_body(kinds.LOCAL_MODEL_CACHES, unique_name())
    )
    good = {
        "type": "Ready",
        "status": "True",
        "reason": "AllCopiesAvailable",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 1,
    }
    bad = {key: value for key, value in {**good, **condition}.items() if value is not None}
    name = created["metadata"]["name"]

    with pytest.raises(Invalid) as caught:
        await kube.patch(
            kinds.LOCAL_MODEL_CACHES,
            name,
            {"status": {"conditions": [bad]}},
            subresource="status",
        )
    assert complaint in caught.value.message

    status = {"conditions": [good], "observedGeneration": 1}
    accepted = await replace_status(kube, kinds.LOCAL_MODEL_CACHES, name, status)
    assert accepted["status"] == status


async def test_cache_status_is_only_written_through_the_status_subresource(
    kube: KubeClient, objects: Objects, unique_name: Callable[..., str]
) -> None:
    created = await objects.create(
        kinds.LOCAL_MODEL_CACHES, cache_body(kinds.LOCAL_MODEL_CACHES, unique_name())
    )
    patched = await kube.patch(
        kinds.LOCAL_MODEL_CACHES,
        created["metadata"]["name"],
        {"status": {"nodeStatus": {"n1": "NodeDownloaded"}}},
    )
    assert "status" not in patched or not patched["status"].get("nodeStatus")


async def test_node_group_has_no_status_subresource(
    kube: KubeClient, objects: Objects, unique_name: Callable[..., str]
) -> None:
    created = await objects.create(kinds.LOCAL_MODEL_NODE_GROUPS, node_group_body(unique_name()))
    name = created["metadata"]["name"]

    with pytest.raises(NotFound):
        await kube.patch(
            kinds.LOCAL_MODEL_NODE_GROUPS,
            name,
            {"status": {"used": "1Gi"}},
            subresource="status",
        )
    patched = await kube.patch(kinds.LOCAL_MODEL_NODE_GROUPS, name, {"status": {"used": "1Gi"}})
    assert patched["status"] == {"used": "1Gi"}


@pytest.mark.parametrize(
    "missing",
    [
        pytest.param("storageLimit", id="no-limit"),
        pytest.param("persistentVolumeSpec", id="no-pv-spec"),
        pytest.param("persistentVolumeClaimSpec", id="no-pvc-spec"),
    ],
)
async def test_node_group_without_required_field_is_rejected(
    objects: Objects, unique_name: Callable[..., str], missing: str
) -> None:
    body = node_group_body(unique_name())
    del body["spec"][missing]
    with pytest.raises(Invalid) as caught:
        await objects.create(kinds.LOCAL_MODEL_NODE_GROUPS, body)
    assert f"spec.{missing}" in caught.value.message


async def test_node_group_affinity_term_needs_node_selector_terms(
    objects: Objects, unique_name: Callable[..., str]
) -> None:
    body = node_group_body(unique_name())
    body["spec"]["persistentVolumeSpec"]["nodeAffinity"]["required"] = {}
    with pytest.raises(Invalid) as caught:
        await objects.create(kinds.LOCAL_MODEL_NODE_GROUPS, body)
    assert "nodeSelectorTerms" in caught.value.message


async def test_kserve_shaped_objects_apply_unchanged(
    kube: KubeClient, objects: Objects, namespace: str, unique_name: Callable[..., str]
) -> None:
    group = node_group_body(unique_name())
    # A PV source we do not model field by field must survive as written.
    group["spec"]["persistentVolumeSpec"].pop("local")
    group["spec"]["persistentVolumeSpec"]["nfs"] = {"server": "127.0.0.1", "path": "/exports/m"}
    group["spec"]["persistentVolumeSpec"]["mountOptions"] = ["nfsvers=4.1"]
    group["spec"]["persistentVolumeSpec"]["nodeAffinity"]["required"]["nodeSelectorTerms"].append(
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-1"]}]}
    )
    group["spec"]["persistentVolumeClaimSpec"]["selector"] = {"matchLabels": {"tier": "local"}}
    cache = cache_body(
        kinds.LOCAL_MODEL_CACHES,
        unique_name(),
        nodeGroups=[group["metadata"]["name"], "second"],
        serviceAccountName="model-reader",
        storage={"key": "localmodel", "parameters": {"type": "s3", "bucket": "models"}},
    )
    ns_cache = cache_body(kinds.LOCAL_MODEL_NAMESPACE_CACHES, unique_name(), modelSize=1000)
    node = {
        "apiVersion": kinds.LOCAL_MODEL_NODES.api_version,
        "kind": kinds.LOCAL_MODEL_NODES.kind,
        "metadata": {"name": unique_name()},
        "spec": {
            "localModels": [
                {
                    "modelName": cache["metadata"]["name"],
                    "sourceModelUri": cache["spec"]["sourceModelUri"],
                    "nodeGroup": group["metadata"]["name"],
                    "serviceAccountName": "model-reader",
                    "storage": {"key": "localmodel"},
                },
                {
                    "modelName": ns_cache["metadata"]["name"],
                    "sourceModelUri": ns_cache["spec"]["sourceModelUri"],
                    "namespace": namespace,
                    "nodeGroup": group["metadata"]["name"],
                },
            ]
        },
    }

    for resource, body, where in [
        (kinds.LOCAL_MODEL_NODE_GROUPS, group, None),
        (kinds.LOCAL_MODEL_CACHES, cache, None),
        (kinds.LOCAL_MODEL_NAMESPACE_CACHES, ns_cache, namespace),
        (kinds.LOCAL_MODEL_NODES, node, None),
    ]:
        await objects.create(resource, body, namespace=where)
        stored = await kube.get(resource, body["metadata"]["name"], namespace=where)
        assert stored["spec"] == body["spec"], f"{resource.kind} spec changed on the way in"

    # KServe's status shape, as its manager writes it, is accepted as is.
    kserve_status = {
        "nodeStatus": {"gpu-1": "NodeDownloaded", "gpu-2": "NodeDownloading"},
        "copies": {"available": 1, "total": 2},
        "inferenceServices": [{"namespace": namespace, "name": "sklearn"}],
        "llmInferenceServices": [{"namespace": namespace, "name": "llama"}],
    }
    written = await replace_status(
        kube, kinds.LOCAL_MODEL_CACHES, cache["metadata"]["name"], kserve_status
    )
    assert written["status"] == kserve_status


async def test_samples_apply(
    kube: KubeClient, objects: Objects, unique_name: Callable[..., str]
) -> None:
    storage_class = yaml.safe_load((SAMPLES / "storageclass.yaml").read_text())
    group = yaml.safe_load((SAMPLES / "nodegroup.yaml").read_text())
    cache = yaml.safe_load((SAMPLES / "cache.yaml").read_text())
    # Fresh names, so this test never collides with a `make dev` cluster's objects or other tests.
    storage_class["metadata"]["name"] = unique_name("local-storage")
    group["metadata"]["name"] = unique_name("workers")
    cache["metadata"]["name"] = unique_name("all-minilm")
    for template in ("persistentVolumeSpec", "persistentVolumeClaimSpec"):
        group["spec"][template]["storageClassName"] = storage_class["metadata"]["name"]
    cache["spec"]["nodeGroups"] = [group["metadata"]["name"]]
    # Select no node, so a manager running in the same session starts no download for it.
    terms = group["spec"]["persistentVolumeSpec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    terms[0]["matchExpressions"][0]["values"] = [unique_name("no-node")]

    await objects.create(STORAGE_CLASSES, storage_class)
    for resource, body in [
        (kinds.LOCAL_MODEL_NODE_GROUPS, group),
        (kinds.LOCAL_MODEL_CACHES, cache),
    ]:
        await objects.create(resource, body)
        stored = await kube.get(resource, body["metadata"]["name"])
        assert stored["spec"] == body["spec"]
