"""The agent process: informers scoped to this node, and the LocalModelNode controller."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from controller import config as configuration
from controller.agent.disk import ModelDirectory
from controller.agent.node_reconciler import CONTROLLER_NAME, NodeReconciler
from controller.api import kinds
from controller.api.naming import JOB_LABEL_NODE
from controller.kube.client import KubeClient
from controller.kube.events import EventRecorder
from controller.kube.resources import JOBS, NODES, PERSISTENT_VOLUME_CLAIMS, PODS
from controller.runtime.controller import Controller
from controller.runtime.informer import UPDATED, Event
from controller.runtime.process import Process

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class AgentOptions:
    kubeconfig: str | None
    node_name: str
    models_root: Path
    namespace: str
    metrics_address: str
    probe_address: str
    job_namespace: str | None
    download_image: str | None


async def run(options: AgentOptions) -> int:
    client = await KubeClient.from_kubeconfig(options.kubeconfig, user_agent="localmodel-agent")
    settings = await configuration.load(client, namespace=options.namespace)
    if options.job_namespace:
        settings = replace(settings, job_namespace=options.job_namespace)
    if options.download_image:
        settings = replace(settings, download_image=options.download_image)

    process = Process(
        client,
        metrics_address=options.metrics_address,
        probe_address=options.probe_address,
        name="agent",
    )
    own_name = f"metadata.name={options.node_name}"
    local_model_nodes = process.informer(kinds.LOCAL_MODEL_NODES, field_selector=own_name)
    jobs = process.informer(
        JOBS,
        namespace=settings.job_namespace,
        label_selector=f"{JOB_LABEL_NODE}={options.node_name}",
    )
    claims = process.informer(PERSISTENT_VOLUME_CLAIMS, namespace=settings.job_namespace)
    # Download pods carry the Job's labels; their termination message says why one failed.
    pods = process.informer(
        PODS,
        namespace=settings.job_namespace,
        label_selector=f"{JOB_LABEL_NODE}={options.node_name}",
    )
    nodes = process.informer(NODES, field_selector=own_name)
    node_groups = process.informer(kinds.LOCAL_MODEL_NODE_GROUPS)

    reconciler = NodeReconciler(
        client,
        node_name=options.node_name,
        directory=ModelDirectory(options.models_root),
        config=settings,
        local_model_nodes=local_model_nodes,
        jobs=jobs,
        claims=claims,
        pods=pods,
        nodes=nodes,
        node_groups=node_groups,
        recorder=EventRecorder(client, component="localmodel-agent"),
    )
    controller = Controller(CONTROLLER_NAME, reconciler.reconcile, informers=process.informers)

    def on_local_model_node(event: Event) -> None:
        # Status is ours: reacting to our own status writes would only repeat work.
        if event.type == UPDATED and event.old is not None:
            old, new = event.old["metadata"], event.obj["metadata"]
            unchanged = old.get("generation") == new.get("generation") and old.get(
                "annotations"
            ) == new.get("annotations")
            if unchanged and not new.get("deletionTimestamp"):
                return
        controller.enqueue(options.node_name)

    local_model_nodes.add_handler(on_local_model_node)
    jobs.add_handler(lambda event: controller.enqueue(options.node_name))
    claims.add_handler(lambda event: controller.enqueue(options.node_name))
    process.add_controller(controller)
    log.info(
        "agent starting",
        node=options.node_name,
        models_root=str(options.models_root),
        job_namespace=settings.job_namespace,
    )
    return await process.run()
