"""A real, local Kubernetes control plane for tests and `make dev`.

Owns the processes: etcd, kube-apiserver and, optionally, kube-controller-manager and
kube-scheduler, all on 127.0.0.1 free ports, with throwaway certificates from
`controller.testing.certs`, an admin kubeconfig, and our CRDs installed. It does not run
kubelets (`controller.testing.nodesim` simulates nodes) and does not download binaries:
tools/build-binaries.sh (`make binaries`) builds them. Synchronous on purpose: fixtures and the
CLI start it once and talk to it through a kubeconfig.

Usage: `python -m controller.testing.controlplane --workdir DIR` starts it, prints the
kubeconfig path and runs until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import structlog
import yaml

from controller import logs
from controller.testing.certs import ControlPlaneCerts, write_control_plane_certs
from controller.testing.processes import (
    POLL_INTERVAL,
    ManagedProcess,
    StartError,
    free_port,
    wait_healthy,
)

log = structlog.get_logger(__name__)

KUBE_VERSION = "1.36.3"
ASSETS_ENV = "LOCALMODEL_KUBE_ASSETS"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CRD_DIR = REPO_ROOT / "manifests" / "crds"

# Controllers a kubelet-less test cluster needs: Jobs and their pods, cascading and namespace
# deletion, PV/PVC binding and protection finalizers, TTL cleanup of finished Jobs, NotReady
# detection for silent nodes, removal of pods bound to nodes that no longer exist, and
# aggregation of our CRDs' rules into the built-in admin/edit/view roles.
# Left out on purpose: taint-eviction-controller (evicting pods from NotReady nodes would race
# the scenarios our tests stage by hand) and every controller that needs a cloud or tokens.
CONTROLLERS = (
    "job-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    "ttl-after-finished-controller",
    "node-lifecycle-controller",
    "pod-garbage-collector-controller",
    "clusterrole-aggregation-controller",
)

# Node health timing, shortened from the defaults (5s / 50s / 1m) so that a node whose
# heartbeats stop turns Unknown within about 25 s. NodeSimulator renews leases every 10 s, so
# one missed renewal is tolerated.
NODE_MONITOR_PERIOD_SECONDS = 2
NODE_MONITOR_GRACE_PERIOD_SECONDS = 20
NODE_STARTUP_GRACE_PERIOD_SECONDS = 20

START_ATTEMPTS = 3


class ControlPlaneError(RuntimeError):
    """Raised when the control plane cannot be set up or used."""


class MissingBinariesError(ControlPlaneError):
    """Raised when a control-plane binary is not in the assets directory."""


def default_assets_dir() -> Path:
    """$LOCALMODEL_KUBE_ASSETS, else the cache dir tools/build-binaries.sh writes into."""
    if os.environ.get(ASSETS_ENV):
        return Path(os.environ[ASSETS_ENV])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "localmodel-controller" / f"k8s-v{KUBE_VERSION}"


def find_binaries(assets: Path | None, *, names: Iterable[str]) -> dict[str, Path]:
    """Return the path of each named binary in `assets` (default: `default_assets_dir()`).

    Raises MissingBinariesError naming the directory and every missing binary.
    """
    directory = assets if assets is not None else default_assets_dir()
    found = {name: directory / name for name in names}
    missing = [name for name, path in found.items() if not os.access(path, os.X_OK)]
    if missing:
        raise MissingBinariesError(
            f"control-plane binaries missing from {directory}: {', '.join(missing)}. "
            f"Run `make binaries` to build them (or set {ASSETS_ENV} to a directory that has "
            "etcd, kube-apiserver, kube-controller-manager and kube-scheduler)."
        )
    return found


class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager, kube-scheduler) on loopback.

    Layout under `workdir`: pki/ (certificates), etcd/ (data, wiped on every start), logs/
    (one `<component>.log` each, overwritten on every start) and `kubeconfig` (admin, group
    system:masters). With `die_with_parent` (default) the kernel kills the processes when the
    thread that started them ends, so start from a thread that lives as long as they should.

    kube-controller-manager runs CONTROLLERS with node health timing shortened for tests: a
    node whose heartbeats stop is marked Unknown after `node_monitor_grace_period` (20 s,
    checked every 2 s) instead of 50 s; a new node gets 20 s instead of 1 min to report.

    Not thread-safe. `start()` raises MissingBinariesError, StartError (with the failing
    process's log tail) or ControlPlaneError, and leaves nothing running when it raises.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        assets: Path | None = None,
        crd_dirs: Sequence[Path] | None = None,
        with_controller_manager: bool = True,
        with_scheduler: bool = True,
        start_timeout: float = 60.0,
        stop_timeout: float = 20.0,
        die_with_parent: bool = True,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.assets = assets
        self.crd_dirs = list(crd_dirs) if crd_dirs is not None else None
        self.with_controller_manager = with_controller_manager
        self.with_scheduler = with_scheduler
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.die_with_parent = die_with_parent
        self.log_dir = self.workdir / "logs"
        self.pki_dir = self.workdir / "pki"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.node_monitor_grace_period = float(NODE_MONITOR_GRACE_PERIOD_SECONDS)
        self._server: str | None = None
        self._certs: ControlPlaneCerts | None = None
        self._admin_ssl: ssl.SSLContext | None = None
        self._processes: list[ManagedProcess] = []

    @property
    def server(self) -> str:
        """The API server's https URL; raises ControlPlaneError before start()."""
        if self._server is None:
            raise ControlPlaneError("the control plane is not started")
        return self._server

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every process, wait until each is healthy, install the CRDs.

        The whole start is retried (up to 3 attempts) when a port picked as free was taken
        by someone else before our process bound it.
        """
        if self._processes:
            raise ControlPlaneError("the control plane is already started")
        names = ["etcd", "kube-apiserver"]
        if self.with_controller_manager:
            names.append("kube-controller-manager")
        if self.with_scheduler:
            names.append("kube-scheduler")
        binaries = find_binaries(self.assets, names=names)
        crds = load_crds(self._crd_dirs())
        started = time.monotonic()
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_once(binaries, crds)
            except StartError as exc:
                self.stop()
                if not exc.port_race or attempt == START_ATTEMPTS:
                    raise
                log.warning("control plane port race", attempt=attempt, error=str(exc)[:200])
                continue
            except BaseException:
                self.stop()
                raise
            log.info(
                "control plane started",
                server=self._server,
                kubeconfig=str(self.kubeconfig),
                crds=len(crds),
                duration_s=round(time.monotonic() - started, 1),
            )
            return

    def stop(self) -> None:
        """Stop every process in reverse start order; safe to call twice or after a failed start."""
        while self._processes:
            self._processes.pop().stop(timeout=self.stop_timeout)
        self._server = None

    def get_json(self, path: str) -> dict[str, Any]:
        """GET `path` (e.g. "/version") as admin; raise ControlPlaneError unless it answers 200."""
        status, body = self._call("GET", path)
        if status != 200:
            raise ControlPlaneError(f"GET {path} answered {status}: {body.get('message', body)}")
        return body

    def write_kubeconfig(self, path: Path, *, user: str, groups: Sequence[str] = ()) -> Path:
        """Write a kubeconfig for `user` in `groups` (client certificate); return its path.

        RBAC applies to users outside system:masters, which lets tests run a component with
        exactly the permissions its manifests grant.
        """
        if self._certs is None:
            raise ControlPlaneError("the control plane is not started")
        cert, key = self._certs.write_client_cert(self.pki_dir, user=user, groups=groups)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": _b64(self._certs.serving_ca),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": _b64(cert),
                        "client-key-data": _b64(key),
                    },
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # -- start steps ------------------------------------------------------------------------

    def _crd_dirs(self) -> list[Path]:
        if self.crd_dirs is not None:
            return self.crd_dirs
        return [DEFAULT_CRD_DIR] if DEFAULT_CRD_DIR.is_dir() else []

    def _start_once(self, binaries: dict[str, Path], crds: list[dict[str, Any]]) -> None:
        # Fresh state on every attempt: a stale etcd member or old certificates would not match.
        etcd_dir = self.workdir / "etcd"
        shutil.rmtree(etcd_dir, ignore_errors=True)
        etcd_dir.mkdir(parents=True, mode=0o700)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        certs = write_control_plane_certs(self.pki_dir)
        self._certs = certs
        deadline_for = self._deadline

        # etcd first; its /health answers only once it has a leader.
        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd_args = [
            str(binaries["etcd"]),
            "--name=default",
            f"--data-dir={etcd_dir}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
        ]
        if _supports_flag(binaries["etcd"], "--unsafe-no-fsync"):
            etcd_args.append("--unsafe-no-fsync=true")
        etcd = self._launch("etcd", etcd_args)
        wait_healthy(etcd, f"{etcd_url}/health", context=None, deadline=deadline_for())

        # kube-apiserver: RBAC, client certificates, our service-account keys. The advertise
        # address stays on loopback and no endpoint reconciler runs, because Endpoints must not
        # point at loopback and nothing in a test cluster reaches the API through the Service.
        api_port = free_port()
        self._server = f"https://127.0.0.1:{api_port}"
        apiserver = self._launch(
            "kube-apiserver",
            [
                str(binaries["kube-apiserver"]),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                # Reach "kubelets" (kubectl logs/exec) by the InternalIP the node simulator
                # reports, 127.0.0.1, never by resolving a node's hostname through DNS.
                "--kubelet-preferred-address-types=InternalIP",
                f"--secure-port={api_port}",
                f"--cert-dir={self.pki_dir}",
                f"--tls-cert-file={certs.serving_cert}",
                f"--tls-private-key-file={certs.serving_key}",
                f"--client-ca-file={certs.client_ca}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                f"--service-account-issuer={self._server}/",
                f"--service-account-key-file={certs.service_account_public}",
                f"--service-account-signing-key-file={certs.service_account_private}",
            ],
        )
        self.write_kubeconfig(self.kubeconfig, user="admin", groups=["system:masters"])
        self._admin_ssl = self._client_ssl_context()
        for endpoint in ("/healthz", "/readyz"):
            wait_healthy(
                apiserver,
                f"{self._server}{endpoint}",
                context=self._admin_ssl,
                deadline=deadline_for(),
            )
        self._wait_for_default_namespace(apiserver, deadline=deadline_for())

        # Controllers and scheduler use the admin kubeconfig, also for delegated authn/authz of
        # their own /healthz, and serve with our serving certificate so polling can verify TLS.
        component_flags = [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--tls-cert-file={certs.serving_cert}",
            f"--tls-private-key-file={certs.serving_key}",
        ]
        components: list[tuple[ManagedProcess, int]] = []
        if self.with_controller_manager:
            port = free_port()
            kcm_args = [
                str(binaries["kube-controller-manager"]),
                *component_flags,
                f"--secure-port={port}",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--node-monitor-period={NODE_MONITOR_PERIOD_SECONDS}s",
                f"--node-monitor-grace-period={NODE_MONITOR_GRACE_PERIOD_SECONDS}s",
                f"--node-startup-grace-period={NODE_STARTUP_GRACE_PERIOD_SECONDS}s",
            ]
            components.append((self._launch("kube-controller-manager", kcm_args), port))
        if self.with_scheduler:
            port = free_port()
            scheduler_args = [
                str(binaries["kube-scheduler"]),
                *component_flags,
                f"--secure-port={port}",
            ]
            components.append((self._launch("kube-scheduler", scheduler_args), port))
        for process, port in components:
            wait_healthy(
                process,
                f"https://127.0.0.1:{port}/healthz",
                context=self._admin_ssl,
                deadline=deadline_for(),
            )

        self._install_crds(crds, deadline=deadline_for())

    def _deadline(self) -> float:
        return time.monotonic() + self.start_timeout

    def _launch(self, name: str, args: list[str]) -> ManagedProcess:
        process = ManagedProcess(name=name, args=args, log_path=self.log_dir / f"{name}.log")
        process.start(die_with_parent=self.die_with_parent)
        self._processes.append(process)
        return process

    def _client_ssl_context(self) -> ssl.SSLContext:
        assert self._certs is not None
        context = ssl.create_default_context(cafile=str(self._certs.serving_ca))
        admin_cert = self.pki_dir / "user-admin.crt"
        context.load_cert_chain(admin_cert, self.pki_dir / "user-admin.key")
        return context

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        if self._admin_ssl is None:
            raise ControlPlaneError("the control plane is not started")
        request = urllib.request.Request(
            self.server + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Accept": "application/json", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, context=self._admin_ssl, timeout=10) as answer:
                return answer.status, _parse_json(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _parse_json(exc.read())

    def _wait_for_default_namespace(self, apiserver: ManagedProcess, *, deadline: float) -> None:
        # The namespace controller is not needed for this: the apiserver's bootstrap creates it.
        while True:
            status, body = self._call("GET", "/api/v1/namespaces/default")
            if status == 200:
                return
            if time.monotonic() > deadline:
                raise StartError(
                    f"namespace default did not appear: last answer {status} {body}",
                    log_tail=apiserver.log_tail(),
                )
            time.sleep(POLL_INTERVAL)

    def _install_crds(self, crds: list[dict[str, Any]], *, deadline: float) -> None:
        base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        for crd in crds:
            name = crd["metadata"]["name"]
            status, existing = self._call("GET", f"{base}/{name}")
            if status == 404:
                status, answer = self._call("POST", base, crd)
            elif status == 200:
                crd = {**crd, "metadata": {**crd["metadata"]}}
                crd["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
                status, answer = self._call("PUT", f"{base}/{name}", crd)
            else:
                answer = existing
            if status not in (200, 201):
                raise ControlPlaneError(
                    f"cannot install CRD {name}: {status} {answer.get('message', answer)}"
                )
        for crd in crds:
            self._wait_for_crd(crd, deadline=deadline)
            log.debug("crd installed", name=crd["metadata"]["name"])

    def _wait_for_crd(self, crd: dict[str, Any], *, deadline: float) -> None:
        name = crd["metadata"]["name"]
        group = crd["spec"]["group"]
        plural = crd["spec"]["names"]["plural"]
        versions = [v["name"] for v in crd["spec"].get("versions", []) if v.get("served")]
        problem = "not checked yet"
        while time.monotonic() < deadline:
            problem = self._crd_problem(name=name, group=group, plural=plural, versions=versions)
            if problem is None:
                return
            time.sleep(POLL_INTERVAL)
        raise ControlPlaneError(f"CRD {name} not ready: {problem}")

    def _crd_problem(
        self, *, name: str, group: str, plural: str, versions: list[str]
    ) -> str | None:
        status, body = self._call(
            "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
        )
        if status != 200:
            return f"GET answered {status}"
        conditions = {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []}
        for wanted in ("NamesAccepted", "Established"):
            condition = conditions.get(wanted) or {}
            if condition.get("status") != "True":
                return f"{wanted} is not True: {condition.get('message', 'no condition yet')}"
        for version in versions:
            status, discovery = self._call("GET", f"/apis/{group}/{version}")
            served = {r.get("name") for r in discovery.get("resources") or []}
            if status != 200 or plural not in served:
                return f"discovery of {group}/{version} does not list {plural} yet"
        return None


def load_crds(directories: Iterable[Path]) -> list[dict[str, Any]]:
    """Read every CustomResourceDefinition from .yaml/.yml/.json files in `directories`.

    Multi-document files are split; documents of other kinds are ignored. A missing
    directory, unparsable YAML or a CRD without spec.group / spec.names raises
    ControlPlaneError naming the file.
    """
    crds: list[dict[str, Any]] = []
    for directory in directories:
        if not directory.is_dir():
            raise ControlPlaneError(f"CRD directory {directory} does not exist")
        for path in sorted(directory.iterdir()):
            if path.suffix not in (".yaml", ".yml", ".json"):
                continue
            try:
                documents = list(yaml.safe_load_all(path.read_text()))
            except yaml.YAMLError as exc:
                raise ControlPlaneError(f"cannot parse {path}: {exc}") from exc
            for document in documents:
                if not isinstance(document, dict):
                    continue
                if document.get("kind") != "CustomResourceDefinition":
                    continue
                spec = document.get("spec") or {}
                names = spec.get("names") or {}
                if not (spec.get("group") and names.get("kind") and names.get("plural")):
                    raise ControlPlaneError(
                        f"{path}: CRD {document.get('metadata', {}).get('name')!r} lacks "
                        "spec.group, spec.names.kind or spec.names.plural"
                    )
                crds.append(document)
    return crds


def _supports_flag(binary: Path, flag: str) -> bool:
    shown = subprocess.run(
        [str(binary), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    return any(line.strip().startswith(flag) for line in (shown.stdout + shown.stderr).splitlines())


def _parse_json(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {"message": raw[:500].decode(errors="replace")}
    return parsed if isinstance(parsed, dict) else {"items": parsed}


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m controller.testing.controlplane",
        description="Run a local Kubernetes control plane until Ctrl-C or SIGTERM.",
    )
    parser.add_argument("--workdir", type=Path, required=True, help="state, certs and logs")
    parser.add_argument("--assets", type=Path, help=f"binaries dir (default ${ASSETS_ENV})")
    parser.add_argument(
        "--crd-dir", type=Path, action="append", help=f"CRD dir (default {DEFAULT_CRD_DIR})"
    )
    parser.add_argument("--no-controller-manager", action="store_true")
    parser.add_argument("--no-scheduler", action="store_true")
    args = parser.parse_args(argv)
    logs.configure()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    plane = ControlPlane(
        args.workdir,
        assets=args.assets,
        crd_dirs=args.crd_dir,
        with_controller_manager=not args.no_controller_manager,
        with_scheduler=not args.no_scheduler,
    )
    try:
        plane.start()
        print(plane.kubeconfig, flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    except (ControlPlaneError, StartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
