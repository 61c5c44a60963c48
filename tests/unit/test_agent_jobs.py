from __future__ import annotations

from typing import Any

import pytest

from controller.agent.jobs import build_job, job_model_status, jobs_of
from controller.api.naming import storage_key
from controller.api.status import ModelStatus

URI = "http://127.0.0.1:8765/model.tar.gz"
LOCAL_MODEL_NODE = {"metadata": {"name": "node-1", "uid": "uid-1"}}


def job_for(entry: dict[str, Any], *, fs_group: int | None = None) -> dict[str, Any]:
    return build_job(
        entry=entry,
        local_model_node=LOCAL_MODEL_NODE,
        claim_name="c1-g",
        namespace="jobs",
        image="img:1",
        ttl_seconds_after_finished=3600,
        fs_group=fs_group,
    )


def test_build_job_has_kserves_shape() -> None:
    job = job_for({"modelName": "c1", "sourceModelUri": URI, "nodeGroup": "g"})
    meta, pod = job["metadata"], job["spec"]["template"]["spec"]
    assert meta["generateName"] == "c1-node-1"
    assert meta["namespace"] == "jobs"
    assert meta["labels"] == {"model": "c1", "node": "node-1"}
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "serving.kserve.io/v1alpha1",
            "kind": "LocalModelNode",
            "name": "node-1",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": "node-1"}
    assert "nodeName" not in pod
    assert pod["restartPolicy"] == "Never"
    assert "securityContext" not in pod
    (container,) = pod["containers"]
    assert container["name"] == "kserve-localmodel-download"
    assert container["args"] == [URI, "/mnt/models"]
    assert container["volumeMounts"] == [
        {
            "name": "kserve-pvc-source",
            "mountPath": "/mnt/models",
            "subPath": f"models/{storage_key(URI)}",
        }
    ]
    assert pod["volumes"] == [
        {"name": "kserve-pvc-source", "persistentVolumeClaim": {"claimName": "c1-g"}}
    ]


def test_build_job_labels_namespaced_entries_and_sets_fs_group() -> None:
    job = job_for({"modelName": "c1", "namespace": "ns", "sourceModelUri": URI}, fs_group=1000)
    assert job["metadata"]["labels"]["modelNamespace"] == "ns"
    assert job["spec"]["template"]["spec"]["securityContext"] == {"fsGroup": 1000}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param({}, ModelStatus.DOWNLOAD_PENDING, id="new"),
        pytest.param({"active": 1}, ModelStatus.DOWNLOAD_PENDING, id="active-not-ready"),
        pytest.param({"active": 1, "ready": 1}, ModelStatus.DOWNLOADING, id="ready"),
        pytest.param({"failed": 1, "active": 1}, ModelStatus.DOWNLOAD_ERROR, id="failed"),
        pytest.param({"failed": 1, "succeeded": 1}, ModelStatus.DOWNLOADED, id="succeeded"),
    ],
)
def test_job_model_status_follows_kserves_order(status: dict, expected: ModelStatus) -> None:
    assert job_model_status({"status": status}) is expected


def job(name: str, created: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created, "labels": labels}}


def test_jobs_of_sorts_oldest_first_and_keeps_namespace_caches_apart() -> None:
    jobs = [
        job("b", "2026-01-02T00:00:00Z", model="c1", node="n1"),
        job("a", "2026-01-01T00:00:00Z", model="c1", node="n1"),
        job("ns", "2026-01-01T00:00:00Z", model="c1", node="n1", modelNamespace="ns"),
        job("other-node", "2026-01-01T00:00:00Z", model="c1", node="n2"),
    ]
    cluster = jobs_of(jobs, model_name="c1", node_name="n1", model_namespace=None)
    assert [j["metadata"]["name"] for j in cluster] == ["a", "b"]
    namespaced = jobs_of(jobs, model_name="c1", node_name="n1", model_namespace="ns")
    assert [j["metadata"]["name"] for j in namespaced] == ["ns"]
