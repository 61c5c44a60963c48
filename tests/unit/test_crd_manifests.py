"""Offline checks of manifests/crds and manifests/samples against controller/api.

The API server checks that the CRDs install (tests/integration/test_crds.py); these tests keep
the YAML and the Python vocabulary from drifting apart: names, scopes, enums, required fields.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.api import kinds
from controller.api.nodes import node_in_group, node_selector_problems
from controller.api.status import ConditionStatus, ModelStatus, NodeStatus

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "manifests" / "crds"
SAMPLE_DIR = REPO / "manifests" / "samples"

RESOURCES = {
    "serving.kserve.io_localmodelcaches.yaml": kinds.LOCAL_MODEL_CACHES,
    "serving.kserve.io_localmodelnamespacecaches.yaml": kinds.LOCAL_MODEL_NAMESPACE_CACHES,
    "serving.kserve.io_localmodelnodegroups.yaml": kinds.LOCAL_MODEL_NODE_GROUPS,
    "serving.kserve.io_localmodelnodes.yaml": kinds.LOCAL_MODEL_NODES,
}
CACHE_FILES = [
    "serving.kserve.io_localmodelcaches.yaml",
    "serving.kserve.io_localmodelnamespacecaches.yaml",
]


def load(path: Path) -> dict:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(documents) == 1, f"{path.name} must hold exactly one object"
    return documents[0]


def only_version(crd: dict) -> dict:
    versions = crd["spec"]["versions"]
    assert len(versions) == 1
    return versions[0]


def schema(crd: dict) -> dict:
    return only_version(crd)["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("file_name", [pytest.param(f, id=f.split("_")[1]) for f in RESOURCES])
def test_crd_names_and_scope_match_the_resource_descriptor(file_name):
    crd = load(CRD_DIR / file_name)
    resource = RESOURCES[file_name]
    names = crd["spec"]["names"]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{resource.plural}.{kinds.GROUP}"
    assert crd["spec"]["group"] == kinds.GROUP == resource.group
    assert names == {
        "kind": resource.kind,
        "listKind": f"{resource.kind}List",
        "plural": resource.plural,
        "singular": resource.kind.lower(),
    }
    assert crd["spec"]["scope"] == ("Namespaced" if resource.namespaced else "Cluster")
    version = only_version(crd)
    assert version["name"] == kinds.VERSION == resource.version
    assert version["served"] is True
    assert version["storage"] is True


@pytest.mark.parametrize(
    ("file_name", "has_status_subresource"),
    [
        pytest.param("serving.kserve.io_localmodelcaches.yaml", True, id="caches"),
        pytest.param("serving.kserve.io_localmodelnamespacecaches.yaml", True, id="ns-caches"),
        pytest.param("serving.kserve.io_localmodelnodes.yaml", True, id="nodes"),
        pytest.param("serving.kserve.io_localmodelnodegroups.yaml", False, id="node-groups"),
    ],
)
def test_status_subresource_only_where_kserve_has_it(file_name, has_status_subresource):
    version = only_version(load(CRD_DIR / file_name))
    assert ("status" in version.get("subresources", {})) is has_status_subresource


@pytest.mark.parametrize("file_name", [pytest.param(f, id=f.split("_")[1]) for f in CACHE_FILES])
def test_cache_spec_validation_matches_kserve(file_name):
    root = schema(load(CRD_DIR / file_name))
    # Our one deliberate restriction: a cache without spec names nothing and is refused.
    assert root["required"] == ["spec"]
    spec = root["properties"]["spec"]
    assert sorted(spec["required"]) == ["modelSize", "nodeGroups", "sourceModelUri"]
    assert spec["properties"]["nodeGroups"]["minItems"] == 1
    assert spec["properties"]["sourceModelUri"]["x-kubernetes-validations"] == [
        {"rule": "self == oldSelf", "message": "StorageUri is immutable"}
    ]
    assert spec["properties"]["modelSize"]["x-kubernetes-int-or-string"] is True
    assert set(spec["properties"]) == {
        "sourceModelUri",
        "modelSize",
        "nodeGroups",
        "serviceAccountName",
        "storage",
    }


def test_both_cache_kinds_share_one_schema():
    cluster, namespaced = (schema(load(CRD_DIR / name)) for name in CACHE_FILES)
    assert cluster["properties"] == namespaced["properties"]
    assert cluster["required"] == namespaced["required"]
    cluster_version, namespaced_version = (only_version(load(CRD_DIR / n)) for n in CACHE_FILES)
    assert (
        cluster_version["additionalPrinterColumns"]
        == (namespaced_version["additionalPrinterColumns"])
    )


@pytest.mark.parametrize("file_name", [pytest.param(f, id=f.split("_")[1]) for f in CACHE_FILES])
def test_cache_node_status_enum_is_node_status(file_name):
    status = schema(load(CRD_DIR / file_name))["properties"]["status"]["properties"]
    assert status["nodeStatus"]["additionalProperties"]["enum"] == [s.value for s in NodeStatus]
    assert set(status["copies"]["properties"]) == {"available", "total", "failed"}


def test_local_model_node_model_status_enum_is_model_status():
    status = schema(load(CRD_DIR / "serving.kserve.io_localmodelnodes.yaml"))["properties"][
        "status"
    ]["properties"]
    assert status["modelStatus"]["additionalProperties"]["enum"] == [s.value for s in ModelStatus]


def test_local_model_node_entry_fields():
    spec = schema(load(CRD_DIR / "serving.kserve.io_localmodelnodes.yaml"))["properties"]["spec"]
    entry = spec["properties"]["localModels"]["items"]
    assert spec["required"] == ["localModels"]
    assert sorted(entry["required"]) == ["modelName", "sourceModelUri"]
    assert set(entry["properties"]) == {
        "sourceModelUri",
        "modelName",
        "namespace",
        "nodeGroup",
        "serviceAccountName",
        "storage",
    }


@pytest.mark.parametrize(
    "file_name",
    [
        pytest.param("serving.kserve.io_localmodelcaches.yaml", id="caches"),
        pytest.param("serving.kserve.io_localmodelnamespacecaches.yaml", id="ns-caches"),
        pytest.param("serving.kserve.io_localmodelnodes.yaml", id="nodes"),
    ],
)
def test_conditions_are_a_standard_list_map(file_name):
    status = schema(load(CRD_DIR / file_name))["properties"]["status"]["properties"]
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert item["properties"]["status"]["enum"] == [s.value for s in ConditionStatus]
    assert sorted(item["required"]) == ["lastTransitionTime", "message", "reason", "status", "type"]
    assert item["properties"]["observedGeneration"]["format"] == "int64"
    assert status["observedGeneration"]["format"] == "int64"


def test_node_group_spec_matches_kserve():
    spec = schema(load(CRD_DIR / "serving.kserve.io_localmodelnodegroups.yaml"))["properties"][
        "spec"
    ]
    assert sorted(spec["required"]) == [
        "persistentVolumeClaimSpec",
        "persistentVolumeSpec",
        "storageLimit",
    ]
    pv = spec["properties"]["persistentVolumeSpec"]
    required = pv["properties"]["nodeAffinity"]["properties"]["required"]
    assert required["required"] == ["nodeSelectorTerms"]
    assert {
        "local",
        "hostPath",
        "capacity",
        "accessModes",
        "storageClassName",
        "volumeMode",
    } <= set(pv["properties"])
    pvc = spec["properties"]["persistentVolumeClaimSpec"]
    assert {"accessModes", "resources", "storageClassName", "volumeMode", "volumeName"} <= set(
        pvc["properties"]
    )


@pytest.mark.parametrize(
    ("file_name", "columns"),
    [
        pytest.param(
            "serving.kserve.io_localmodelcaches.yaml",
            {
                "URI": ".spec.sourceModelUri",
                "Ready": '.status.conditions[?(@.type=="Ready")].status',
                "Available": ".status.copies.available",
                "Total": ".status.copies.total",
                "Age": ".metadata.creationTimestamp",
            },
            id="caches",
        ),
        pytest.param(
            "serving.kserve.io_localmodelnodegroups.yaml",
            {
                "StorageLimit": ".spec.storageLimit",
                "StorageClass": ".spec.persistentVolumeSpec.storageClassName",
                "Age": ".metadata.creationTimestamp",
            },
            id="node-groups",
        ),
        pytest.param(
            "serving.kserve.io_localmodelnodes.yaml",
            {
                "Ready": '.status.conditions[?(@.type=="Ready")].status',
                "Age": ".metadata.creationTimestamp",
            },
            id="nodes",
        ),
    ],
)
def test_printer_columns(file_name, columns):
    version = only_version(load(CRD_DIR / file_name))
    found = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert found == columns


def _structural_problems(node: dict, path: str) -> list[str]:
    """Find schema nodes the API server would refuse as non-structural (a missing type)."""
    problems = []
    typed = "type" in node or node.get("x-kubernetes-int-or-string") is True
    if not typed:
        problems.append(f"{path}: no type")
    for name, child in (node.get("properties") or {}).items():
        problems += _structural_problems(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        problems += _structural_problems(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _structural_problems(node["additionalProperties"], f"{path}{{}}")
    return problems


@pytest.mark.parametrize("file_name", [pytest.param(f, id=f.split("_")[1]) for f in RESOURCES])
def test_schemas_are_structural(file_name):
    assert _structural_problems(schema(load(CRD_DIR / file_name)), "") == []


def test_kustomization_lists_every_crd_file():
    kustomization = load(CRD_DIR / "kustomization.yaml")
    on_disk = sorted(p.name for p in CRD_DIR.glob("serving.kserve.io_*.yaml"))
    assert sorted(kustomization["resources"]) == on_disk == sorted(RESOURCES)


def test_sample_node_group_selects_labelled_workers_only():
    group = load(SAMPLE_DIR / "nodegroup.yaml")
    selector = group["spec"]["persistentVolumeSpec"]["nodeAffinity"]["required"]
    worker = {"metadata": {"name": "w1", "labels": {"kserve/localmodel": "worker"}}}
    control_plane = {"metadata": {"name": "cp", "labels": {"node-role.kubernetes.io/control": ""}}}
    assert node_selector_problems(selector) == []
    assert node_in_group(worker, group) is True
    assert node_in_group(control_plane, group) is False


def test_samples_refer_to_each_other():
    storage_class = load(SAMPLE_DIR / "storageclass.yaml")
    group = load(SAMPLE_DIR / "nodegroup.yaml")
    cache = load(SAMPLE_DIR / "cache.yaml")
    assert storage_class["volumeBindingMode"] == "Immediate"
    assert (
        group["spec"]["persistentVolumeSpec"]["storageClassName"]
        == (storage_class["metadata"]["name"])
    )
    assert (
        group["spec"]["persistentVolumeClaimSpec"]["storageClassName"]
        == (storage_class["metadata"]["name"])
    )
    assert cache["spec"]["nodeGroups"] == [group["metadata"]["name"]]
    assert cache["apiVersion"] == group["apiVersion"] == f"{kinds.GROUP}/{kinds.VERSION}"
