"""A node simulator: kubelets for a kubelet-less test cluster, running pods as local processes.

Owns Node objects and their heartbeats (Lease in kube-node-lease plus the Ready condition), and
the pods bound to those nodes: it maps their volumes onto directories under `root/<node>/`,
runs containers whose command starts with python/python3 as subprocesses, and reports pod
status through pods/status the way a kubelet does. Everything else a kubelet does (images,
probes, restarts, init containers, secrets, resource limits) is out of scope: such pods end
Failed with a reason saying what is not simulated. Scheduling, binding and Job bookkeeping are
the real scheduler's and controller-manager's job.

Usage: `python -m controller.testing.nodesim --kubeconfig K --root DIR --node NAME[,k=v...]
[--control-port P]`; the control port serves `POST /nodes/<name>/heartbeats` with body
`{"enabled": false|true}` on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import posixpath
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from controller.kube.client import KubeClient
from controller.kube.errors import ApiError, Conflict, KubeError, NotFound
from controller.kube.resources import (
    LEASES,
    NODES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    PODS,
)
from controller.runtime.informer import DELETED, Event, Informer
from controller.testing.controlplane import KUBE_VERSION
from controller.testing.processes import set_parent_death_signal

log = structlog.get_logger(__name__)

NODE_LEASE_NAMESPACE = "kube-node-lease"
NODE_IP = "127.0.0.1"
RUNNABLE_COMMANDS = ("python", "python3")
CAPACITY = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
# Like terminationMessagePolicy FallbackToLogsOnError: the end of the logs, bounded.
MESSAGE_MAX_LINES = 80
MESSAGE_MAX_BYTES = 2048
# How long a deleted pod's processes get between SIGTERM and SIGKILL (capped grace period).
MAX_KILL_GRACE_SECONDS = 10.0
_NODE_CONDITIONS = (
    ("Ready", "True", "KubeletReady", "simulated kubelet is posting ready status"),
    ("MemoryPressure", "False", "KubeletHasSufficientMemory", "simulated"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "simulated"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "simulated"),
)


@dataclass(frozen=True)
class SimulatedNode:
    """A node to register: its name and extra labels (hostname and os labels are added)."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)


class CannotRunPod(Exception):
    """Raised while preparing a pod that the simulator cannot run; ends the pod Failed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass
class _ContainerPlan:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    stdout: Path
    stderr: Path


@dataclass
class _ContainerResult:
    name: str
    exit_code: int
    started_at: str
    finished_at: str
    message: str


@dataclass
class _PodRun:
    """What the simulator does for one pod uid: the runner task and its live processes."""

    node: str
    task: asyncio.Task[None] | None = None
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    deleting: bool = False


def local_volume(
    name: str, *, node: str, path: str, claim: tuple[str, str] | None = None
) -> dict[str, Any]:
    """A `local` PersistentVolume at `path` on one simulated node (optionally pre-bound to the
    claim (namespace, name)), as a node group's template would produce it for that node."""
    requirement = {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
    spec: dict[str, Any] = {
        "capacity": {"storage": "1Gi"},
        "accessModes": ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": "",
        "local": {"path": path},
        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [requirement]}]}},
    }
    if claim is not None:
        spec["claimRef"] = {"namespace": claim[0], "name": claim[1]}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": spec,
    }


def now_time() -> str:
    """metav1.Time, second precision."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro_time() -> str:
    """metav1.MicroTime, as Leases want it."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_ready_status(node: dict[str, Any]) -> str | None:
    """The status ("True", "False", "Unknown") of a Node's Ready condition, None if absent."""
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status")
    return None


class NodeSimulator:
    """Registers `nodes`, keeps them alive and runs the pods bound to them.

    `run()` works until cancelled; on cancellation it kills every process it started. Nodes
    stay registered (call `delete_nodes()` to remove them). Safe to use from one event loop.
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        root: Path,
        nodes: Sequence[SimulatedNode],
        python: str = sys.executable,
        heartbeat_interval: float = 10.0,
        lease_duration_seconds: int = 40,
    ) -> None:
        if not nodes:
            raise ValueError("NodeSimulator needs at least one node")
        self.client = client
        self.root = Path(root).resolve()
        self.nodes = {node.name: node for node in nodes}
        self.python = python
        self.heartbeat_interval = heartbeat_interval
        self.lease_duration_seconds = lease_duration_seconds
        self._heartbeats_enabled = {name: True for name in self.nodes}
        self._heartbeat_wakeups = {name: asyncio.Event() for name in self.nodes}
        self._node_uids: dict[str, str] = {}
        self._runs: dict[str, _PodRun] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Set once every node is registered and pods are being watched.
        self.started = asyncio.Event()

    # --- public surface ------------------------------------------------------------------------

    def node_dir(self, node_name: str) -> Path:
        """The directory standing in for `node_name`'s root filesystem."""
        self._check_node(node_name)
        return self.root / node_name

    def host_path(self, node_name: str, path: str) -> Path:
        """Where the absolute in-node `path` lives on this machine: <root>/<node><path>."""
        if not posixpath.isabs(path):
            raise ValueError(f"node path {path!r} is not absolute")
        return self.node_dir(node_name) / posixpath.normpath(path).lstrip("/")

    def stop_heartbeats(self, node_name: str) -> None:
        """Stop renewing the node's Lease and Ready condition; it goes NotReady/Unknown later."""
        self._check_node(node_name)
        self._heartbeats_enabled[node_name] = False
        log.info("node heartbeats stopped", node=node_name)

    def resume_heartbeats(self, node_name: str) -> None:
        """Renew the node's Lease and Ready condition again, starting right away."""
        self._check_node(node_name)
        self._heartbeats_enabled[node_name] = True
        self._heartbeat_wakeups[node_name].set()
        log.info("node heartbeats resumed", node=node_name)

    def heartbeats_enabled(self, node_name: str) -> bool:
        self._check_node(node_name)
        return self._heartbeats_enabled[node_name]

    async def run(self) -> None:
        """Register the nodes, then heartbeat and run pods until cancelled."""
        for node in self.nodes.values():
            await self._register_node(node)
        informers = []
        for name in self.nodes:
            informer = Informer(self.client, PODS, field_selector=f"spec.nodeName={name}")
            informer.add_handler(self._on_pod_event)
            informers.append(informer)
        try:
            async with asyncio.TaskGroup() as group:
                for name in self.nodes:
                    group.create_task(self._heartbeat_forever(name))
                for informer in informers:
                    group.create_task(informer.run())
                for informer in informers:
                    await informer.wait_synced()
                self.started.set()
                log.info("node simulator started", nodes=sorted(self.nodes), root=str(self.root))
        finally:
            await self._kill_everything()

    async def delete_nodes(self) -> None:
        """Delete the simulated Node objects (and with them, through GC, their Leases)."""
        for name in self.nodes:
            with contextlib.suppress(NotFound):
                await self.client.delete(NODES, name)
                log.info("node deleted", node=name)

    # --- nodes ---------------------------------------------------------------------------------

    def _check_node(self, node_name: str) -> None:
        if node_name not in self.nodes:
            raise KeyError(f"node {node_name!r} is not simulated here (have {sorted(self.nodes)})")

    async def _register_node(self, node: SimulatedNode) -> None:
        labels = {
            **node.labels,
            "kubernetes.io/hostname": node.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }
        self.node_dir(node.name).mkdir(parents=True, exist_ok=True)
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": labels},
            "spec": {},
        }
        try:
            created = await self.client.create(NODES, body)
        except Conflict:
            # Re-registration, as a restarted kubelet does: labels are brought up to date.
            created = await self.client.patch(NODES, node.name, {"metadata": {"labels": labels}})
        self._node_uids[node.name] = created["metadata"]["uid"]
        await self._post_node_status(node.name, initial=True)
        await self._renew_lease(node.name)
        log.info("node registered", node=node.name, labels=labels)

    async def _heartbeat_forever(self, node_name: str) -> None:
        wakeup = self._heartbeat_wakeups[node_name]
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=self.heartbeat_interval)
            wakeup.clear()
            if not self._heartbeats_enabled[node_name]:
                continue
            try:
                await self._renew_lease(node_name)
                await self._post_node_status(node_name)
            except KubeError as exc:
                log.warning("node heartbeat failed", node=node_name, error=str(exc))

    async def _renew_lease(self, node_name: str) -> None:
        spec = {
            "holderIdentity": node_name,
            "leaseDurationSeconds": self.lease_duration_seconds,
            "renewTime": now_micro_time(),
        }
        try:
            await self.client.patch(
                LEASES, node_name, {"spec": spec}, namespace=NODE_LEASE_NAMESPACE
            )
        except NotFound:
            owner = {
                "apiVersion": "v1",
                "kind": "Node",
                "name": node_name,
                "uid": self._node_uids[node_name],
            }
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": node_name,
                    "namespace": NODE_LEASE_NAMESPACE,
                    "ownerReferences": [owner],
                },
                "spec": spec,
            }
            await self.client.create(LEASES, lease, namespace=NODE_LEASE_NAMESPACE)

    async def _post_node_status(self, node_name: str, *, initial: bool = False) -> None:
        current = await self.client.get(NODES, node_name)
        existing = {c.get("type"): c for c in (current.get("status") or {}).get("conditions") or []}
        now = now_time()
        conditions = []
        for kind, status, reason, message in _NODE_CONDITIONS:
            previous = existing.get(kind) or {}
            # The transition time moves only when the status changes, as the kubelet does.
            changed = previous.get("status") != status
            conditions.append(
                {
                    "type": kind,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now
                    if changed
                    else previous.get("lastTransitionTime", now),
                }
            )
        status_patch: dict[str, Any] = {"conditions": conditions}
        if initial:
            status_patch.update(
                capacity=CAPACITY,
                allocatable=CAPACITY,
                addresses=[
                    {"type": "InternalIP", "address": NODE_IP},
                    {"type": "Hostname", "address": node_name},
                ],
                daemonEndpoints={"kubeletEndpoint": {"Port": 0}},
                nodeInfo={
                    "machineID": node_name,
                    "systemUUID": node_name,
                    "bootID": node_name,
                    "kernelVersion": "simulated",
                    "osImage": "localmodel node simulator",
                    "containerRuntimeVersion": "nodesim://1",
                    "kubeletVersion": f"v{KUBE_VERSION}",
                    "kubeProxyVersion": "",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            )
        await self.client.patch(
            NODES, node_name, {"status": status_patch}, patch_type="strategic", subresource="status"
        )

    # --- pods: reacting to events --------------------------------------------------------------

    def _on_pod_event(self, event: Event) -> None:
        pod = event.obj
        meta = pod.get("metadata") or {}
        uid = meta.get("uid", "")
        node = (pod.get("spec") or {}).get("nodeName")
        if node not in self.nodes:
            return
        if event.type == DELETED:
            run = self._runs.pop(uid, None)
            if run is not None:
                # Gone without a graceful delete (force delete): stop at once.
                for process in run.processes.values():
                    _signal_group(process, signal.SIGKILL)
            return
        run = self._runs.get(uid)
        if meta.get("deletionTimestamp"):
            if run is None:
                run = self._runs[uid] = _PodRun(node=node)
            if not run.deleting:
                run.deleting = True
                self._spawn(self._terminate_and_delete(pod, run), pod)
            return
        if run is not None:
            return
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if phase in ("Succeeded", "Failed"):
            return
        run = self._runs[uid] = _PodRun(node=node)
        if phase == "Running":
            # Running, yet not ours: it was started by an earlier simulator process.
            self._spawn(
                self._post_pod_status(
                    pod,
                    _failed_status(
                        reason="NodeSimulatorRestarted",
                        message="the node simulator restarted and lost this pod's processes",
                    ),
                ),
                pod,
            )
            return
        run.task = self._spawn(self._run_pod_reporting_errors(pod, run), pod)

    def _spawn(self, coroutine: Any, pod: dict[str, Any]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        meta = pod["metadata"]

        def finished(done: asyncio.Task[None]) -> None:
            self._tasks.discard(done)
            if not done.cancelled() and done.exception() is not None:
                log.error(
                    "pod handling failed",
                    namespace=meta.get("namespace"),
                    name=meta.get("name"),
                    exc_info=done.exception(),
                )

        task.add_done_callback(finished)
        return task

    # --- pods: running -------------------------------------------------------------------------

    async def _run_pod_reporting_errors(self, pod: dict[str, Any], run: _PodRun) -> None:
        # A failure of the simulator itself ends the pod Failed, so nobody waits on it forever.
        try:
            await self._run_pod(pod, run)
        except Exception as exc:
            await _stop_processes(run.processes.values(), grace=0)
            message = f"{type(exc).__name__}: {exc}"
            await self._post_pod_status(pod, _failed_status("NodeSimulatorError", message))
            raise

    async def _run_pod(self, pod: dict[str, Any], run: _PodRun) -> None:
        meta = pod["metadata"]
        bound = log.bind(namespace=meta["namespace"], name=meta["name"], node=run.node)
        try:
            plans = await self._plan_pod(pod, run.node)
        except CannotRunPod as exc:
            bound.info("pod cannot run", reason=exc.reason, message=exc.message)
            await self._post_pod_status(pod, _failed_status(exc.reason, exc.message))
            return
        if run.deleting:
            return

        started_at = now_time()
        try:
            for plan in plans:
                plan.stdout.parent.mkdir(parents=True, exist_ok=True)
                with plan.stdout.open("wb") as out, plan.stderr.open("wb") as err:
                    run.processes[plan.name] = await asyncio.create_subprocess_exec(
                        *plan.argv,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        env=plan.env,
                        cwd=plan.cwd,
                        start_new_session=True,
                        preexec_fn=set_parent_death_signal,
                    )
        except OSError as exc:
            for process in run.processes.values():
                _signal_group(process, signal.SIGKILL)
            await self._post_pod_status(
                pod, _failed_status("ContainerCannotRun", f"cannot start {plan.argv[0]}: {exc}")
            )
            return
        if run.deleting:
            for process in run.processes.values():
                _signal_group(process, signal.SIGTERM)
        bound.info("pod started", containers=[plan.name for plan in plans])
        await self._post_pod_status(pod, _running_status(pod, started_at=started_at))

        results = await asyncio.gather(
            *(self._wait_container(plan, run, started_at=started_at) for plan in plans)
        )
        bound.info("pod finished", exit_codes={r.name: r.exit_code for r in results})
        await self._post_pod_status(pod, _terminal_status(pod, results, started_at=started_at))

    async def _wait_container(
        self, plan: _ContainerPlan, run: _PodRun, *, started_at: str
    ) -> _ContainerResult:
        exit_code = await run.processes[plan.name].wait()
        if exit_code < 0:
            exit_code = 128 - exit_code  # killed by signal N: a container reports 128+N
        return _ContainerResult(
            name=plan.name,
            exit_code=exit_code,
            started_at=started_at,
            finished_at=now_time(),
            message=_log_tail(plan.stderr) if exit_code else "",
        )

    async def _plan_pod(self, pod: dict[str, Any], node: str) -> list[_ContainerPlan]:
        """Work out each container's argv, env and directories; raise CannotRunPod if unable."""
        spec = pod.get("spec") or {}
        meta = pod["metadata"]
        if spec.get("initContainers"):
            # TODO(#2): run init containers in order before the app containers.
            raise CannotRunPod("UnsupportedInitContainers", "init containers are not simulated")
        policy = spec.get("restartPolicy", "Always")
        if policy != "Never":
            raise CannotRunPod(
                "UnsupportedRestartPolicy",
                f"only restartPolicy Never is simulated, this pod has {policy}",
            )
        pod_dir = self.node_dir(node) / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
        volumes = await self._volume_dirs(pod, node=node, pod_dir=pod_dir)
        plans = []
        for container in spec.get("containers") or []:
            plans.append(self._plan_container(pod, container, volumes=volumes, pod_dir=pod_dir))
        return plans

    def _plan_container(
        self,
        pod: dict[str, Any],
        container: dict[str, Any],
        *,
        volumes: dict[str, Path],
        pod_dir: Path,
    ) -> _ContainerPlan:
        name = container["name"]
        command = list(container.get("command") or [])
        if not command or posixpath.basename(command[0]) not in RUNNABLE_COMMANDS:
            raise CannotRunPod(
                "UnsupportedCommand",
                f"container {name} runs {command[:1] or 'its image entrypoint'}; only commands "
                f"starting with {' or '.join(RUNNABLE_COMMANDS)} are simulated",
            )
        mounts: list[tuple[str, Path]] = []
        for mount in container.get("volumeMounts") or []:
            source = volumes.get(mount["name"])
            if source is None:
                raise CannotRunPod("VolumeNotFound", f"container {name} mounts unknown volume")
            sub_path = mount.get("subPath") or ""
            parts = sub_path.split("/")
            if posixpath.isabs(sub_path) or ".." in parts:
                raise CannotRunPod("InvalidSubPath", f"subPath {sub_path!r} leaves its volume")
            target = source / sub_path if sub_path else source
            target.mkdir(parents=True, exist_ok=True)
            mounts.append((posixpath.normpath(mount["mountPath"]), target))
        # Longest mount path first, so nested mounts win over their parents.
        mounts.sort(key=lambda item: len(item[0]), reverse=True)

        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(pod_dir / "home"),
            "HOSTNAME": pod["metadata"]["name"],
            "LANG": "C.UTF-8",
        }
        if os.environ.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        for variable in container.get("env") or []:
            env[variable["name"]] = _rewrite(_env_value(pod, variable), mounts)
        (pod_dir / "home").mkdir(parents=True, exist_ok=True)

        working_dir = container.get("workingDir")
        cwd = Path(_rewrite(working_dir, mounts)) if working_dir else pod_dir
        if not cwd.is_absolute() or not str(cwd).startswith(str(self.root)):
            cwd = pod_dir
        argv = [self.python]
        argv += [_rewrite(arg, mounts) for arg in command[1:] + list(container.get("args") or [])]
        return _ContainerPlan(
            name=name,
            argv=argv,
            env=env,
            cwd=cwd,
            stdout=pod_dir / "logs" / f"{name}.stdout",
            stderr=pod_dir / "logs" / f"{name}.stderr",
        )

    async def _volume_dirs(
        self, pod: dict[str, Any], *, node: str, pod_dir: Path
    ) -> dict[str, Path]:
        """Map each volume of the pod to a directory on this machine (created if missing)."""
        namespace = pod["metadata"]["namespace"]
        dirs: dict[str, Path] = {}
        for volume in (pod.get("spec") or {}).get("volumes") or []:
            name = volume["name"]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                path = await self._claim_path(claim, namespace=namespace)
                directory = self.host_path(node, path)
            elif "hostPath" in volume:
                directory = self.host_path(node, volume["hostPath"]["path"])
            elif "emptyDir" in volume:
                directory = pod_dir / "volumes" / name
            else:
                kind = next((key for key in volume if key != "name"), "unknown")
                raise CannotRunPod(
                    "UnsupportedVolume",
                    f"volume {name} is of type {kind}; simulated are persistentVolumeClaim "
                    "(local or hostPath PV), hostPath and emptyDir",
                )
            directory.mkdir(parents=True, exist_ok=True)
            dirs[name] = directory
        return dirs

    async def _claim_path(self, claim: str, *, namespace: str) -> str:
        try:
            pvc = await self.client.get(PERSISTENT_VOLUME_CLAIMS, claim, namespace=namespace)
        except NotFound:
            raise CannotRunPod(
                "PersistentVolumeClaimNotFound", f"PVC {namespace}/{claim} does not exist"
            ) from None
        volume_name = (pvc.get("spec") or {}).get("volumeName")
        if not volume_name:
            raise CannotRunPod(
                "PersistentVolumeClaimNotBound", f"PVC {namespace}/{claim} is not bound to a PV"
            )
        try:
            pv = await self.client.get(PERSISTENT_VOLUMES, volume_name)
        except NotFound:
            raise CannotRunPod(
                "PersistentVolumeNotFound",
                f"PV {volume_name} (bound to PVC {namespace}/{claim}) does not exist",
            ) from None
        pv_spec = pv.get("spec") or {}
        path = (pv_spec.get("local") or {}).get("path") or (pv_spec.get("hostPath") or {}).get(
            "path"
        )
        if not path:
            raise CannotRunPod(
                "UnsupportedVolume", f"PV {volume_name} is neither a local nor a hostPath volume"
            )
        return path

    # --- pods: deleting and reporting ----------------------------------------------------------

    async def _terminate_and_delete(self, pod: dict[str, Any], run: _PodRun) -> None:
        meta = pod["metadata"]
        grace = min(float(meta.get("deletionGracePeriodSeconds") or 0), MAX_KILL_GRACE_SECONDS)
        await _stop_processes(run.processes.values(), grace=grace)
        if run.task is not None:
            # Let the runner report the terminated containers before the pod goes away.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(run.task), timeout=MAX_KILL_GRACE_SECONDS)
        try:
            await self.client.delete(
                PODS,
                meta["name"],
                namespace=meta["namespace"],
                grace_period_seconds=0,
                precondition_uid=meta["uid"],
            )
            log.info("pod deleted", namespace=meta["namespace"], name=meta["name"])
        except (NotFound, Conflict):
            pass  # already gone, or a new pod with the same name that is not ours to delete

    async def _post_pod_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            await self.client.patch(
                PODS,
                meta["name"],
                {"metadata": {"uid": meta["uid"]}, "status": status},
                namespace=meta["namespace"],
                patch_type="strategic",
                subresource="status",
            )
        except (NotFound, Conflict):
            pass  # the pod is gone (or replaced under the same name): nobody reads this status
        except ApiError as exc:
            log.error(
                "pod status update failed",
                namespace=meta["namespace"],
                name=meta["name"],
                error=str(exc),
            )

    async def _kill_everything(self) -> None:
        processes = [p for run in self._runs.values() for p in run.processes.values()]
        await _stop_processes(processes, grace=2.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --- helpers -----------------------------------------------------------------------------------


def _rewrite(value: str, mounts: list[tuple[str, Path]]) -> str:
    """Map a path inside a container (or `--flag=<path>`) to the host directory mounted there."""
    prefix = ""
    if "=" in value and not value.startswith("/"):
        prefix, _, value = value.partition("=")
        prefix += "="
    for mount_path, host in mounts:
        if value == mount_path:
            return prefix + str(host)
        base = mount_path.rstrip("/") + "/"
        if value.startswith(base):
            return prefix + str(host / value[len(base) :])
    return prefix + value


def _env_value(pod: dict[str, Any], variable: dict[str, Any]) -> str:
    if "valueFrom" not in variable:
        return str(variable.get("value", ""))
    field_path = ((variable["valueFrom"] or {}).get("fieldRef") or {}).get("fieldPath")
    meta, spec = pod["metadata"], pod.get("spec") or {}
    fields = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": NODE_IP,
        "status.hostIP": NODE_IP,
    }
    if field_path in fields:
        return str(fields[field_path] or "")
    raise CannotRunPod(
        "UnsupportedEnv",
        f"env {variable['name']}: only plain values and fieldRef to {sorted(fields)} are simulated",
    )


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_bytes().splitlines()[-MESSAGE_MAX_LINES:]
    except OSError:
        return ""
    return b"\n".join(lines)[-MESSAGE_MAX_BYTES:].decode(errors="replace")


def _signal_group(process: asyncio.subprocess.Process, signum: int) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)


async def _stop_processes(processes: Any, *, grace: float) -> None:
    """SIGTERM each process group, wait up to `grace` seconds, then SIGKILL what is left."""
    running = [p for p in processes if p.returncode is None]
    for process in running:
        _signal_group(process, signal.SIGTERM)
    if not running:
        return
    _, pending = await asyncio.wait(
        [asyncio.ensure_future(p.wait()) for p in running], timeout=grace
    )
    for process in running:
        _signal_group(process, signal.SIGKILL)
    if pending:
        await asyncio.gather(*pending)


def _condition(kind: str, status: str, *, reason: str | None = None) -> dict[str, Any]:
    condition = {"type": kind, "status": status, "lastTransitionTime": now_time()}
    if reason:
        condition["reason"] = reason
    return condition


def _running_status(pod: dict[str, Any], *, started_at: str) -> dict[str, Any]:
    containers = (pod.get("spec") or {}).get("containers") or []
    return {
        "phase": "Running",
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "podIP": NODE_IP,
        "podIPs": [{"ip": NODE_IP}],
        "startTime": started_at,
        "conditions": [
            _condition("PodReadyToStartContainers", "True"),
            _condition("Initialized", "True"),
            _condition("ContainersReady", "True"),
            _condition("Ready", "True"),
        ],
        "containerStatuses": [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "containerID": f"nodesim://{pod['metadata']['uid']}-{c['name']}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": started_at}},
            }
            for c in containers
        ],
    }


def _terminal_status(
    pod: dict[str, Any], results: Sequence[_ContainerResult], *, started_at: str
) -> dict[str, Any]:
    images = {
        c["name"]: c.get("image", "") for c in (pod.get("spec") or {}).get("containers") or []
    }
    succeeded = all(result.exit_code == 0 for result in results)
    statuses = []
    for result in results:
        terminated: dict[str, Any] = {
            "exitCode": result.exit_code,
            "reason": "Completed" if result.exit_code == 0 else "Error",
            "startedAt": result.started_at,
            "finishedAt": result.finished_at,
        }
        if result.message:
            terminated["message"] = result.message
        statuses.append(
            {
                "name": result.name,
                "image": images.get(result.name, ""),
                "imageID": "",
                "containerID": f"nodesim://{pod['metadata']['uid']}-{result.name}",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }
        )
    return {
        "phase": "Succeeded" if succeeded else "Failed",
        "startTime": started_at,
        "conditions": [
            _condition("PodReadyToStartContainers", "False"),
            _condition("ContainersReady", "False", reason="PodCompleted"),
            _condition("Ready", "False", reason="PodCompleted"),
        ],
        "containerStatuses": statuses,
    }


def _failed_status(reason: str, message: str) -> dict[str, Any]:
    return {
        "phase": "Failed",
        "reason": reason,
        "message": message,
        "conditions": [
            _condition("ContainersReady", "False", reason=reason),
            _condition("Ready", "False", reason=reason),
        ],
    }


# --- command line ------------------------------------------------------------------------------


def parse_node(text: str) -> SimulatedNode:
    """Parse `NAME[,key=value...]` into a SimulatedNode."""
    name, *pairs = text.split(",")
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"label {pair!r} of node {name!r} is not key=value")
        labels[key] = value
    if not name:
        raise argparse.ArgumentTypeError(f"node {text!r} has no name")
    return SimulatedNode(name=name, labels=labels)


def control_app(simulator: NodeSimulator) -> web.Application:
    """HTTP control endpoint: `POST /nodes/<name>/heartbeats` with `{"enabled": bool}`, and
    `GET /readyz`, 200 once every node is registered and the pod informers are synced."""

    async def readyz(request: web.Request) -> web.Response:
        if simulator.started.is_set():
            return web.Response(text="ok")
        return web.Response(text="nodes not registered yet", status=503)

    async def heartbeats(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        enabled = body.get("enabled") if isinstance(body, dict) else None
        if not isinstance(enabled, bool):
            return web.json_response({"error": '"enabled" must be true or false'}, status=400)
        if name not in simulator.nodes:
            return web.json_response({"error": f"node {name} is not simulated"}, status=404)
        if enabled:
            simulator.resume_heartbeats(name)
        else:
            simulator.stop_heartbeats(name)
        return web.json_response({"node": name, "enabled": enabled})

    app = web.Application()
    app.router.add_post("/nodes/{name}/heartbeats", heartbeats)
    app.router.add_get("/readyz", readyz)
    return app


async def _serve(args: argparse.Namespace) -> None:
    client = await KubeClient.from_kubeconfig(args.kubeconfig)
    simulator = NodeSimulator(client, root=args.root, nodes=args.node, python=args.python)
    runner: web.AppRunner | None = None
    try:
        if args.control_port is not None:
            runner = web.AppRunner(control_app(simulator))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", args.control_port).start()
            log.info("control endpoint listening", port=args.control_port)
        await simulator.run()
    finally:
        if runner is not None:
            await runner.cleanup()
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m controller.testing.nodesim",
        description="Simulate kubelets: register nodes, keep them Ready, run their pods.",
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True, help="nodes' filesystems live here")
    parser.add_argument(
        "--node", type=parse_node, action="append", required=True, help="NAME[,key=value...]"
    )
    parser.add_argument("--control-port", type=int, help="loopback port of the control endpoint")
    parser.add_argument("--python", default=sys.executable, help="interpreter for containers")
    args = parser.parse_args(argv)

    from controller import logs

    logs.configure()

    async def serve_until_signalled() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await _serve(args)

    asyncio.run(serve_until_signalled())
    return 0


if __name__ == "__main__":
    sys.exit(main())
