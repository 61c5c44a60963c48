"""Reconciles the LocalModelNode named after this agent's node.

Per wanted model: a model whose directory carries the completion marker is downloaded; else the
latest download Job's state is the model's status, and a Job is created when there is none (or
when the latest succeeded yet the files are gone, at most twice, as KServe guards against
endless re-downloads). Jobs and directories of models no longer wanted are deleted. Status is
written only when it changed. A Job just created is remembered until the informer shows it, so
a lagging store never produces a second Job.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import structlog

from controller import metrics
from controller.agent.disk import ModelDirectory
from controller.agent.jobs import build_job, failure_message, job_model_status, jobs_of
from controller.api import kinds
from controller.api.naming import (
    download_pvc_name,
    is_valid_label_value,
    status_key,
    status_key_from_job_labels,
    storage_key,
)
from controller.api.nodes import node_in_group
from controller.api.status import CONDITION_READY, ModelStatus, set_condition
from controller.config import LocalModelConfig
from controller.kube.client import KubeClient
from controller.kube.errors import Invalid, NotFound
from controller.kube.events import WARNING, EventRecorder
from controller.kube.patches import is_being_deleted, replace_status
from controller.kube.resources import JOBS
from controller.runtime.controller import Result
from controller.runtime.informer import Informer

log = structlog.get_logger(__name__)

CONTROLLER_NAME = "localmodelnode"
# How long a created Job may stay invisible in the store before we stop assuming it exists.
EXPECTATION_TIMEOUT = 60.0
MAX_JOBS_PER_MODEL = 2


class NodeReconciler:
    """Drives downloads and cleanup on one node."""

    def __init__(
        self,
        client: KubeClient,
        *,
        node_name: str,
        directory: ModelDirectory,
        config: LocalModelConfig,
        local_model_nodes: Informer,
        jobs: Informer,
        claims: Informer,
        pods: Informer,
        nodes: Informer,
        node_groups: Informer,
        recorder: EventRecorder,
    ) -> None:
        self.client = client
        self.node_name = node_name
        self.directory = directory
        self.config = config
        self.local_model_nodes = local_model_nodes
        self.jobs = jobs
        self.claims = claims
        self.pods = pods
        self.nodes = nodes
        self.node_groups = node_groups
        self.recorder = recorder
        self._expected_jobs: dict[str, tuple[str, float]] = {}  # status key -> (job, created)
        self._reported_failures: set[str] = set()  # Jobs whose failure has an Event already
        self._reported_rejections: dict[str, str] = {}  # status key -> last rejection reported

    async def reconcile(self, name: str) -> Result | None:
        if name != self.node_name:
            log.debug("skipping local model node of another node", name=name)
            return None
        self.directory.ensure()
        local_model_node = self.local_model_nodes.get(name)
        if local_model_node is None or is_being_deleted(local_model_node):
            return None
        entries = (local_model_node.get("spec") or {}).get("localModels") or []
        wanted = {status_key(e["modelName"], e.get("namespace") or None): e for e in entries}

        await self._delete_unwanted_jobs(set(wanted))
        new_status: dict[str, str] = {}
        by_storage_key: dict[str, str] = {}
        for key, entry in wanted.items():
            model_key = storage_key(entry["sourceModelUri"])
            if model_key not in by_storage_key:
                # Entries with the same URI share one directory, one Job and one status.
                problem = _entry_problem(entry)
                try:
                    if problem is not None:
                        raise EntryRejected(problem)
                    state = await self._model_status(local_model_node, key, entry, model_key)
                except (EntryRejected, Invalid) as exc:
                    # This model's Job can never be created; the node's other models go on.
                    state = ModelStatus.DOWNLOAD_ERROR
                    reason = exc.message if isinstance(exc, Invalid) else str(exc)
                    await self._report_rejection(local_model_node, key, reason)
                by_storage_key[model_key] = state.value
            new_status[key] = by_storage_key[model_key]
        await self.directory.remove_unwanted(set(by_storage_key))
        self._reported_failures &= {job["metadata"]["name"] for job in self.jobs.list()}
        for key in set(self._reported_rejections) - set(wanted):
            del self._reported_rejections[key]

        await self._write_status(local_model_node, new_status)
        for state in ModelStatus:
            if state.value:
                count = sum(1 for value in new_status.values() if value == state.value)
                metrics.MODELS_BY_STATUS.labels(state.value).set(count)
        return Result(requeue_after=self.config.reconcile_frequency_seconds)

    async def _model_status(
        self, local_model_node: dict[str, Any], key: str, entry: dict[str, Any], model_key: str
    ) -> ModelStatus:
        uri = entry["sourceModelUri"]
        if self.directory.is_complete(model_key, uri):
            return ModelStatus.DOWNLOADED
        jobs = jobs_of(
            self.jobs.list(),
            model_name=entry["modelName"],
            node_name=self.node_name,
            model_namespace=entry.get("namespace") or None,
        )
        if self._job_still_expected(key, jobs):
            return ModelStatus.DOWNLOAD_PENDING
        latest = jobs[-1] if jobs else None
        if latest is None:
            return await self._start_download(local_model_node, key, entry)
        state = job_model_status(latest)
        if state is ModelStatus.DOWNLOADED:
            # The Job succeeded but the files are not (or no longer) complete on disk.
            reported = ((local_model_node.get("status") or {}).get("modelStatus") or {}).get(key)
            if reported == ModelStatus.DOWNLOADED:
                # We saw it complete, so it was lost since (deleted, damaged): fetch it again,
                # and clear the finished Jobs so that they do not count against the model.
                log.info("model lost from disk, downloading again", model=key, uri=uri)
                await self._delete_jobs(jobs)
                return await self._start_download(local_model_node, key, entry)
            if len(jobs) < MAX_JOBS_PER_MODEL:
                log.info("model folder missing, downloading again", model=key, uri=uri)
                return await self._start_download(local_model_node, key, entry)
            log.warning(
                "download succeeded but model is not on disk",
                model=key,
                models_dir=str(self.directory.models),
                hint="the node group's PV path must be the agent's host path",
            )
            return ModelStatus.DOWNLOAD_ERROR
        if state is ModelStatus.DOWNLOAD_ERROR:
            await self._report_failure(local_model_node, key, latest)
        return state

    async def _report_failure(
        self, local_model_node: dict[str, Any], key: str, job: dict[str, Any]
    ) -> None:
        job_name = job["metadata"]["name"]
        if job_name in self._reported_failures:
            return
        self._reported_failures.add(job_name)
        reason = failure_message(job)
        pod_message = self._termination_message(job_name)
        message = f"model {key}: download job {job_name} failed: {reason}"
        if pod_message:
            message += f"; the download said: {pod_message}"
        log.warning(
            "model download failed", model=key, job=job_name, reason=reason, output=pod_message
        )
        await self.recorder.record(
            local_model_node, type=WARNING, reason="DownloadFailed", message=message
        )

    async def _start_download(
        self, local_model_node: dict[str, Any], key: str, entry: dict[str, Any]
    ) -> ModelStatus:
        claim_name = self._claim_name(entry)
        if claim_name is None:
            log.warning("no node group for model on this node", model=key)
            return ModelStatus.DOWNLOAD_PENDING
        claim = self.claims.get(claim_name, self.config.job_namespace)
        phase = ((claim or {}).get("status") or {}).get("phase")
        if claim is None or is_being_deleted(claim) or phase != "Bound":
            # A pod could not be scheduled with it yet; the claim's events bring us back.
            log.info("waiting for download volume claim", model=key, claim=claim_name, phase=phase)
            return ModelStatus.DOWNLOAD_PENDING
        job = build_job(
            entry=entry,
            local_model_node=local_model_node,
            claim_name=claim_name,
            namespace=self.config.job_namespace,
            image=self.config.download_image,
            ttl_seconds_after_finished=self.config.job_ttl_seconds_after_finished,
            fs_group=self.config.fs_group,
        )
        created = await self.client.create(JOBS, job, namespace=self.config.job_namespace)
        job_name = created["metadata"]["name"]
        self._expected_jobs[key] = (job_name, time.monotonic())
        metrics.DOWNLOAD_JOBS_CREATED.inc()
        log.info("download job created", model=key, job=job_name, uri=entry["sourceModelUri"])
        return ModelStatus.DOWNLOAD_PENDING

    async def _report_rejection(
        self, local_model_node: dict[str, Any], key: str, reason: str
    ) -> None:
        if self._reported_rejections.get(key) == reason:
            return
        self._reported_rejections[key] = reason
        message = f"model {key}: no download job can be created: {reason}"
        log.warning("download job rejected", model=key, error=reason)
        await self.recorder.record(
            local_model_node, type=WARNING, reason="DownloadJobRejected", message=message
        )

    def _termination_message(self, job_name: str) -> str:
        """The last lines a failed download pod of `job_name` wrote, as its kubelet kept them."""
        for pod in self.pods.list():
            labels = pod["metadata"].get("labels") or {}
            if labels.get("batch.kubernetes.io/job-name", labels.get("job-name")) != job_name:
                continue
            for container in (pod.get("status") or {}).get("containerStatuses") or []:
                terminated = (container.get("state") or {}).get("terminated") or {}
                if terminated.get("exitCode") and terminated.get("message"):
                    return str(terminated["message"]).strip().splitlines()[-1][:500]
        return ""

    def _job_still_expected(self, key: str, jobs: list[dict[str, Any]]) -> bool:
        expected = self._expected_jobs.get(key)
        if expected is None:
            return False
        job_name, created = expected
        if any(job["metadata"]["name"] == job_name for job in jobs):
            del self._expected_jobs[key]
            return False
        if time.monotonic() - created > EXPECTATION_TIMEOUT:
            del self._expected_jobs[key]
            return False
        return True

    def _claim_name(self, entry: dict[str, Any]) -> str | None:
        group = entry.get("nodeGroup")
        if not group:
            node = self.nodes.get(self.node_name)
            matching = [
                g["metadata"]["name"]
                for g in sorted(self.node_groups.list(), key=lambda g: g["metadata"]["name"])
                if node is not None and node_in_group(node, g)
            ]
            group = matching[0] if matching else None
        if group is None:
            return None
        return download_pvc_name(entry["modelName"], group, namespace=entry.get("namespace"))

    async def _delete_unwanted_jobs(self, wanted: set[str]) -> None:
        for job in self.jobs.list():
            key = status_key_from_job_labels(job["metadata"].get("labels"))
            if key is None or key in wanted or is_being_deleted(job):
                continue
            self._expected_jobs.pop(key, None)
            await self._delete_jobs([job])

    async def _delete_jobs(self, jobs: list[dict[str, Any]]) -> None:
        """Delete Jobs and, in the background, their pods."""
        for job in jobs:
            if is_being_deleted(job):
                continue
            try:
                await self.client.delete(
                    JOBS,
                    job["metadata"]["name"],
                    namespace=job["metadata"]["namespace"],
                    propagation_policy="Background",
                )
            except NotFound:
                continue
            log.info("download job deleted", job=job["metadata"]["name"])

    async def _write_status(self, local_model_node: dict[str, Any], status: dict[str, str]) -> None:
        """Write `modelStatus` and the Ready condition, when either changed."""
        old = local_model_node.get("status") or {}
        conditions = set_condition(
            old.get("conditions"),
            **_readiness(status),
            type=CONDITION_READY,
            observed_generation=local_model_node["metadata"].get("generation"),
            now=datetime.now(UTC),
        )
        new = {**old, "modelStatus": status, "conditions": conditions}
        if new == old:
            return
        await replace_status(self.client, kinds.LOCAL_MODEL_NODES, local_model_node, new)
        log.info("model status written", models=status)


class EntryRejected(Exception):
    """Raised for a LocalModelNode entry whose download Job could never be created."""


def _entry_problem(entry: dict[str, Any]) -> str | None:
    """Why no Job can ever serve `entry` (its names become label values), or None."""
    for field in ("modelName", "namespace"):
        value = entry.get(field)
        if value and not is_valid_label_value(value):
            return f"{field} {value!r} is not a valid label value (at most 63 characters)"
    if not entry.get("sourceModelUri"):
        return "sourceModelUri is empty"
    return None


def _readiness(status: dict[str, str]) -> dict[str, str]:
    """Ready when every wanted model is downloaded (vacuously so when none is wanted)."""
    failed = sorted(key for key, value in status.items() if value == ModelStatus.DOWNLOAD_ERROR)
    done = sum(1 for value in status.values() if value == ModelStatus.DOWNLOADED)
    summary = f"{done} of {len(status)} models downloaded"
    if failed:
        message = f"{summary}; download failed: {', '.join(failed)}"
        return {"status": "False", "reason": "DownloadFailed", "message": message}
    if done < len(status):
        return {"status": "False", "reason": "Downloading", "message": summary}
    return {"status": "True", "reason": "ModelsDownloaded", "message": summary}
