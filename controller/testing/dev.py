"""`make dev`: the whole product on this machine, caching a real model onto simulated nodes.

Starts a local control plane and the stack (model server, node simulator, manager, agents),
applies the samples in manifests/samples, follows the cache until every worker node reports
NodeDownloaded, checks the files on each node against the source, then keeps everything
running until Ctrl-C and prints how to look around.
"""

from __future__ import annotations

import asyncio
import fcntl
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import IO, Any

import yaml

from controller.api import kinds
from controller.api.naming import storage_key
from controller.kube.client import KubeClient
from controller.kube.errors import AlreadyExists
from controller.kube.resources import STORAGE_CLASSES, Resource
from controller.testing.controlplane import REPO_ROOT, ControlPlane
from controller.testing.modelserver import minilm_model_dir, tree_digest
from controller.testing.stack import WORKER_LABEL, Stack, StackNode

SAMPLES = REPO_ROOT / "manifests" / "samples"
SAMPLE_FILES = ("storageclass.yaml", "nodegroup.yaml", "cache.yaml")
DEFAULT_MODEL_PORT = 8765
DOWNLOAD_TIMEOUT = 600.0
RESOURCES: dict[str, Resource] = {
    "StorageClass": STORAGE_CLASSES,
    "LocalModelNodeGroup": kinds.LOCAL_MODEL_NODE_GROUPS,
    "LocalModelCache": kinds.LOCAL_MODEL_CACHES,
}


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


async def run(*, workdir: Path, node_count: int) -> int:
    lock = await asyncio.to_thread(_lock, workdir)
    if lock is None:
        print(f"error: another `make dev` is using {workdir}; stop it first", file=sys.stderr)
        return 1
    workdir = await asyncio.to_thread(_fresh_directory, workdir)
    # With three or more nodes the last one is outside the node group, to show it gets nothing.
    nodes = [
        StackNode(
            f"node-{index}", dict(WORKER_LABEL) if node_count < 3 or index < node_count else {}
        )
        for index in range(1, node_count + 1)
    ]
    workers = [node.name for node in nodes if node.labels]

    say("starting the control plane (etcd, kube-apiserver, controller-manager, scheduler)")
    plane = ControlPlane(workdir / "control-plane")
    await asyncio.to_thread(plane.start)
    stack: Stack | None = None
    try:
        say(f"starting model server, node simulator ({len(nodes)} nodes), manager and agents")
        stack = Stack(
            workdir, kubeconfig=plane.kubeconfig, nodes=nodes, model_server_port=_model_port()
        )
        await asyncio.to_thread(stack.start)
        if stack.model_server_port != DEFAULT_MODEL_PORT:
            say(
                f"port {DEFAULT_MODEL_PORT} is busy: the model server listens on "
                f"{stack.model_server_port}, and the sample cache is applied with that URI "
                "(manifests/samples/cache.yaml as is would point at whatever uses the port)"
            )
        async with await KubeClient.from_kubeconfig(plane.kubeconfig) as client:
            cache = await _apply_samples(client, model_url=stack.model_url())
            say(f"caching {cache['spec']['sourceModelUri']} onto {', '.join(workers)}")
            await _follow(client, cache["metadata"]["name"], expected=workers)
        _check_files(stack, workers, uri=cache["spec"]["sourceModelUri"])
        _print_help(plane, stack, cache["metadata"]["name"])
        await _wait_for_signal()
        say("stopping")
        return 0
    finally:
        if stack is not None:
            await asyncio.to_thread(stack.stop)
        await asyncio.to_thread(plane.stop)


def _lock(workdir: Path) -> IO[bytes] | None:
    """Hold `<workdir>.lock` for the life of the process; None when another run holds it."""
    handle = workdir.resolve().with_name(workdir.name + ".lock").open("wb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle  # the lock lasts as long as this open file


def _fresh_directory(workdir: Path) -> Path:
    workdir = workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)  # state of an earlier run: every run starts a fresh cluster
    workdir.mkdir(parents=True)
    return workdir


def _model_port() -> int:
    """8765, as the sample cache says, unless something else listens there already."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", DEFAULT_MODEL_PORT))
        except OSError:
            return 0
    return DEFAULT_MODEL_PORT


async def _apply_samples(client: KubeClient, *, model_url: str) -> dict[str, Any]:
    cache: dict[str, Any] = {}
    for name in SAMPLE_FILES:
        for document in yaml.safe_load_all((SAMPLES / name).read_text()):
            if document["kind"] == "LocalModelCache":
                document["spec"]["sourceModelUri"] = model_url
                cache = document
            try:
                await client.create(RESOURCES[document["kind"]], document)
            except AlreadyExists:
                pass
    return cache


async def _follow(client: KubeClient, name: str, *, expected: list[str]) -> None:
    """Print each change of the cache's node status until every expected node has the model."""
    last: dict[str, str] = {}
    async with asyncio.timeout(DOWNLOAD_TIMEOUT):
        while True:
            cache = await client.get(kinds.LOCAL_MODEL_CACHES, name)
            node_status = (cache.get("status") or {}).get("nodeStatus") or {}
            if node_status != last:
                say("  " + ", ".join(f"{node}: {s}" for node, s in sorted(node_status.items())))
                last = node_status
            if all(node_status.get(node) == "NodeDownloaded" for node in expected):
                copies = cache["status"].get("copies") or {}
                say(f"cached on {copies.get('available')} of {copies.get('total')} nodes")
                return
            await asyncio.sleep(1)


def _check_files(stack: Stack, workers: list[str], *, uri: str) -> None:
    source = tree_digest(minilm_model_dir())
    for node in workers:
        directory = stack.model_dir(node, storage_key(uri))
        copied = tree_digest(directory)
        if copied != source:
            raise RuntimeError(f"files in {directory} differ from the source model")
        say(f"  {node}: {len(copied)} files match the source (sha256) in {directory}")


def _print_help(plane: ControlPlane, stack: Stack, cache: str) -> None:
    print(
        f"""
The cluster keeps running until Ctrl-C. To look around:

  export KUBECONFIG={plane.kubeconfig}
  kubectl get localmodelcache,localmodelnodegroup,localmodelnode
  kubectl get localmodelcache {cache} -o yaml
  kubectl -n {stack.job_namespace} get jobs,pods,pvc
  ls {stack.workdir / "nodes"}/*/models/models

Manager metrics: {stack.manager_metrics_url}
Agent metrics:   {", ".join(stack.agent_metrics_url(node.name) for node in stack.nodes)}
Process logs:    {stack.log_dir}
Pod logs:        {stack.workdir / "nodes"}/<node>/pods/<namespace>_<pod>_<uid>/logs/
""",
        flush=True,
    )


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
