"""The manager process: informers, the LocalModelCache controller and its event mapping."""

from __future__ import annotations

from dataclasses import dataclass, replace

import structlog

from controller import config as configuration
from controller.api import kinds
from controller.kube.client import KubeClient
from controller.kube.events import EventRecorder
from controller.kube.resources import NODES, PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES
from controller.manager import mapping
from controller.manager.cache_reconciler import CONTROLLER_NAME, CacheReconciler
from controller.runtime.controller import Controller
from controller.runtime.process import Process

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ManagerOptions:
    kubeconfig: str | None
    namespace: str  # where inferenceservice-config lives (POD_NAMESPACE)
    metrics_address: str
    probe_address: str
    workers: int
    job_namespace: str | None  # overrides the ConfigMap's jobNamespace when set


async def run(options: ManagerOptions) -> int:
    client = await KubeClient.from_kubeconfig(options.kubeconfig, user_agent="localmodel-manager")
    settings = await configuration.load(client, namespace=options.namespace)
    if options.job_namespace:
        settings = replace(settings, job_namespace=options.job_namespace)

    process = Process(
        client,
        metrics_address=options.metrics_address,
        probe_address=options.probe_address,
        name="manager",
    )
    caches = process.informer(kinds.LOCAL_MODEL_CACHES)
    caches.add_index(mapping.CACHES_BY_GROUP, mapping.index_caches_by_group)
    node_groups = process.informer(kinds.LOCAL_MODEL_NODE_GROUPS)
    nodes = process.informer(NODES)
    local_model_nodes = process.informer(kinds.LOCAL_MODEL_NODES)
    volumes = process.informer(PERSISTENT_VOLUMES)
    claims = process.informer(PERSISTENT_VOLUME_CLAIMS, namespace=settings.job_namespace)

    reconciler = CacheReconciler(
        client,
        config=settings,
        caches=caches,
        node_groups=node_groups,
        nodes=nodes,
        local_model_nodes=local_model_nodes,
        volumes=volumes,
        claims=claims,
        recorder=EventRecorder(client, component="localmodel-manager"),
    )
    controller = Controller(
        CONTROLLER_NAME, reconciler.reconcile, informers=process.informers, workers=options.workers
    )
    enqueue = controller.enqueue
    caches.add_handler(mapping.on_cache(enqueue))
    node_groups.add_handler(mapping.on_node_group(caches, enqueue))
    nodes.add_handler(mapping.on_node(caches, node_groups, enqueue))
    local_model_nodes.add_handler(mapping.on_local_model_node(enqueue))
    volumes.add_handler(mapping.on_owned(enqueue))
    claims.add_handler(mapping.on_owned(enqueue))
    process.add_controller(controller)
    log.info("manager starting", job_namespace=settings.job_namespace, workers=options.workers)
    return await process.run()
