"""Download Jobs: how the agent builds them and how their state maps to a model status.

The Job has KServe's shape, so tooling that looks for it keeps working: generateName
`<model>-<node>`, labels `model`/`node` (+ `modelNamespace`), owned by the LocalModelNode,
pinned with a `kubernetes.io/hostname` node selector (not `nodeName`, so the scheduler binds the
volume), one container `kserve-localmodel-download` with args `[uri, /mnt/models]` and the
download PVC mounted at `/mnt/models` with subPath `models/<storageKey>`.
"""

from __future__ import annotations

from typing import Any

from controller.api import kinds
from controller.api.naming import job_generate_name, job_labels, model_subpath, storage_key
from controller.api.status import ModelStatus
from controller.download.errors import EXIT_INVALID

CONTAINER_NAME = "kserve-localmodel-download"
VOLUME_NAME = "kserve-pvc-source"
MOUNT_PATH = "/mnt/models"
DOWNLOAD_COMMAND = ["python", "-m", "controller", "download"]


def build_job(
    *,
    entry: dict[str, Any],
    local_model_node: dict[str, Any],
    claim_name: str,
    namespace: str,
    image: str,
    ttl_seconds_after_finished: int,
    fs_group: int | None,
) -> dict[str, Any]:
    """The Job that downloads `entry`'s model onto the node through PVC `claim_name`."""
    node_name = local_model_node["metadata"]["name"]
    uri = entry["sourceModelUri"]
    labels = job_labels(
        model_name=entry["modelName"],
        node_name=node_name,
        model_namespace=entry.get("namespace") or None,
    )
    pod_spec: dict[str, Any] = {
        "nodeSelector": {"kubernetes.io/hostname": node_name},
        "restartPolicy": "Never",
        "containers": [
            {
                "name": CONTAINER_NAME,
                "image": image,
                "command": list(DOWNLOAD_COMMAND),
                "args": [uri, MOUNT_PATH],
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [
                    {
                        "name": VOLUME_NAME,
                        "mountPath": MOUNT_PATH,
                        "subPath": model_subpath(storage_key(uri)),
                    }
                ],
            }
        ],
        "volumes": [{"name": VOLUME_NAME, "persistentVolumeClaim": {"claimName": claim_name}}],
    }
    if fs_group is not None:
        pod_spec["securityContext"] = {"fsGroup": fs_group}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "generateName": job_generate_name(entry["modelName"], node_name),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": kinds.LOCAL_MODEL_NODES.api_version,
                    "kind": kinds.LOCAL_MODEL_NODES.kind,
                    "name": node_name,
                    "uid": local_model_node["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "ttlSecondsAfterFinished": ttl_seconds_after_finished,
            # The downloader exits with EXIT_INVALID when retrying cannot help (say, an
            # unsupported URI scheme): fail the Job at once instead of six pods later.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER_NAME,
                            "operator": "In",
                            "values": [EXIT_INVALID],
                        },
                    }
                ]
            },
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def job_model_status(job: dict[str, Any]) -> ModelStatus:
    """KServe's mapping: succeeded > failed > ready pods > pending."""
    status = job.get("status") or {}
    if status.get("succeeded", 0) > 0:
        return ModelStatus.DOWNLOADED
    if status.get("failed", 0) > 0:
        return ModelStatus.DOWNLOAD_ERROR
    if status.get("ready", 0) > 0:
        return ModelStatus.DOWNLOADING
    return ModelStatus.DOWNLOAD_PENDING


def failure_message(job: dict[str, Any]) -> str:
    """Why a Job failed, from its Failed condition, for Events and logs."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return f"{condition.get('reason', 'Failed')}: {condition.get('message', '')}".strip()
    failed = (job.get("status") or {}).get("failed", 0)
    return f"{failed} download pod(s) failed; the Job may still retry"


def jobs_of(
    jobs: list[dict[str, Any]], *, model_name: str, node_name: str, model_namespace: str | None
) -> list[dict[str, Any]]:
    """The Jobs of one model on one node, oldest first.

    A cluster cache's Jobs are those without a `modelNamespace` label, so a namespace cache
    with the same name never passes for it.
    """
    wanted = job_labels(model_name=model_name, node_name=node_name, model_namespace=model_namespace)
    selected = []
    for job in jobs:
        labels = job["metadata"].get("labels") or {}
        if all(labels.get(k) == v for k, v in wanted.items()) and (
            model_namespace or "modelNamespace" not in labels
        ):
            selected.append(job)
    return sorted(
        selected,
        key=lambda j: (j["metadata"].get("creationTimestamp", ""), j["metadata"].get("name", "")),
    )
