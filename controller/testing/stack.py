"""Our processes on top of a local control plane: the product as a cluster would run it.

`Stack` starts, as separate processes, a loopback model server, the node simulator, the manager
and one agent per simulated node, waits until each is healthy, and stops them in reverse order.
`make dev` and the integration tests both use it. Node `<name>` keeps its disk under
`<workdir>/nodes/<name>`; the node group's PV path `/models` maps to `<that>/models`, which is
also the agent's models root (what the DaemonSet mounts at /mnt/models).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from controller.api.naming import MODELS_DIR
from controller.config import CONFIGMAP_KEY, CONFIGMAP_NAME
from controller.kube.client import KubeClient
from controller.kube.errors import AlreadyExists
from controller.kube.resources import CONFIGMAPS, NAMESPACES
from controller.testing.modelserver import minilm_model_dir
from controller.testing.processes import ManagedProcess, free_port, wait_healthy

log = structlog.get_logger(__name__)

JOB_NAMESPACE = "kserve-localmodel-jobs"
MODEL_NAME = "all-MiniLM-L6-v2"
WORKER_LABEL = {"kserve/localmodel": "worker"}
CONFIG_NAMESPACE = "kserve"
# Agents look at their disks this often, so a lost model comes back within seconds here.
AGENT_RESYNC_SECONDS = 5
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


@dataclass(frozen=True)
class StackNode:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


class Stack:
    """Model server, node simulator, manager and agents, as subprocesses."""

    def __init__(
        self,
        workdir: Path,
        *,
        kubeconfig: Path,
        nodes: Sequence[StackNode],
        job_namespace: str = JOB_NAMESPACE,
        model_server_port: int | None = None,
        log_level: str = "info",
    ) -> None:
        self.workdir = Path(workdir)
        self.kubeconfig = Path(kubeconfig)
        self.nodes = list(nodes)
        self.job_namespace = job_namespace
        self.log_level = log_level
        self.log_dir = self.workdir / "logs"
        self.model_server_port = model_server_port or free_port()
        self.manager_metrics_port = free_port()
        self.nodesim_control_port = free_port()
        self.manager_log = self.log_dir / "manager.log"
        self.agent_metrics_ports = {node.name: free_port() for node in self.nodes}
        self._processes: list[ManagedProcess] = []

    # --- addresses ------------------------------------------------------------------------

    def node_root(self, node: str) -> Path:
        """This machine's directory for the node's disk (the node group PV's `/` on it)."""
        return self.workdir / "nodes" / node

    def models_root(self, node: str) -> Path:
        """The agent's models root: the PV path `/models` on that node."""
        return self.node_root(node) / "models"

    def model_dir(self, node: str, storage_key: str) -> Path:
        return self.models_root(node) / MODELS_DIR / storage_key

    def model_url(self, name: str = MODEL_NAME) -> str:
        return f"http://127.0.0.1:{self.model_server_port}/{name}.tar.gz"

    @property
    def manager_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.manager_metrics_port}/metrics"

    def agent_metrics_url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.agent_metrics_ports[node]}/metrics"

    @property
    def nodesim_control_url(self) -> str:
        return f"http://127.0.0.1:{self.nodesim_control_port}"

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Stack:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(self._configure())
        deadline = time.monotonic() + START_TIMEOUT
        try:
            self._start_model_server(deadline)
            self._start_node_simulator(deadline)
            self._start_manager(deadline)
            for node in self.nodes:
                self._start_agent(node.name, deadline)
        except BaseException:
            self.stop()
            raise
        log.info("stack started", nodes=[node.name for node in self.nodes], logs=str(self.log_dir))
        return self

    def stop(self) -> None:
        for process in reversed(self._processes):
            process.stop(timeout=STOP_TIMEOUT)
        self._processes.clear()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def exited(self) -> list[str]:
        """Names of processes that exited; none should while the stack runs."""
        return [p.name for p in self._processes if p.exit_code is not None]

    # --- the processes --------------------------------------------------------------------

    def _python(self, name: str, args: list[str]) -> ManagedProcess:
        process = ManagedProcess(
            name=name, args=[sys.executable, *args], log_path=self.log_dir / f"{name}.log"
        )
        process.start(die_with_parent=True)
        self._processes.append(process)
        return process

    def _controller(self, name: str, args: list[str]) -> ManagedProcess:
        common = ["-m", "controller", "--log-level", self.log_level, "--log-format", "json"]
        return self._python(name, [*common, *args])

    def _start_model_server(self, deadline: float) -> None:
        process = self._python(
            "modelserver",
            [
                "-m", "controller.testing.modelserver",
                "--port", str(self.model_server_port),
                "--directory", f"{MODEL_NAME}={minilm_model_dir()}",
            ],
        )  # fmt: skip
        health = f"http://127.0.0.1:{self.model_server_port}/.well-known/healthz"
        wait_healthy(process, health, context=None, deadline=deadline)

    def _start_node_simulator(self, deadline: float) -> None:
        node_args = []
        for node in self.nodes:
            labels = "".join(f",{key}={value}" for key, value in node.labels.items())
            node_args += ["--node", node.name + labels]
        process = self._python(
            "nodesim",
            [
                "-m", "controller.testing.nodesim",
                "--kubeconfig", str(self.kubeconfig),
                "--root", str(self.workdir / "nodes"),
                "--control-port", str(self.nodesim_control_port),
                *node_args,
            ],
        )  # fmt: skip
        wait_healthy(process, f"{self.nodesim_control_url}/readyz", context=None, deadline=deadline)

    def _start_manager(self, deadline: float) -> None:
        probe_port = free_port()
        process = self._controller(
            "manager",
            [
                "manager",
                "--kubeconfig", str(self.kubeconfig),
                "--job-namespace", self.job_namespace,
                "--metrics-bind-address", f"127.0.0.1:{self.manager_metrics_port}",
                "--health-probe-bind-address", f"127.0.0.1:{probe_port}",
            ],
        )  # fmt: skip
        wait_healthy(
            process, f"http://127.0.0.1:{probe_port}/readyz", context=None, deadline=deadline
        )

    def _start_agent(self, node: str, deadline: float) -> None:
        probe_port = free_port()
        self.models_root(node).mkdir(parents=True, exist_ok=True)
        process = self._controller(
            f"agent-{node}",
            [
                "agent",
                "--kubeconfig", str(self.kubeconfig),
                "--node-name", node,
                "--models-root", str(self.models_root(node)),
                "--job-namespace", self.job_namespace,
                "--metrics-bind-address", f"127.0.0.1:{self.agent_metrics_ports[node]}",
                "--health-probe-bind-address", f"127.0.0.1:{probe_port}",
            ],
        )  # fmt: skip
        wait_healthy(
            process, f"http://127.0.0.1:{probe_port}/readyz", context=None, deadline=deadline
        )

    async def _configure(self) -> None:
        """The jobs namespace, and KServe's ConfigMap with a short agent resync period."""
        async with await KubeClient.from_kubeconfig(self.kubeconfig) as client:
            for namespace in (self.job_namespace, CONFIG_NAMESPACE):
                try:
                    await client.create(NAMESPACES, {"metadata": {"name": namespace}})
                except AlreadyExists:
                    pass
            local_model = {"reconcilationFrequencyInSecs": AGENT_RESYNC_SECONDS}
            configmap = {
                "metadata": {"name": CONFIGMAP_NAME},
                "data": {CONFIGMAP_KEY: json.dumps(local_model)},
            }
            try:
                await client.create(CONFIGMAPS, configmap, namespace=CONFIG_NAMESPACE)
            except AlreadyExists:
                pass
