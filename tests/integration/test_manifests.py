"""manifests/install (with its optional kserve-namespace/) and manifests/monitoring, as the real
API server judges them.

Every document passes a server-side dry-run apply (a monitoring document whose API is not
served is skipped, and the test says so). The shipped RBAC lets each service account make
exactly the calls listed in tests/unit/test_api_usage.py and nothing else, which
SubjectAccessReviews ask the authorizer. Finally the manager and the agent run as processes with
only their service account's permissions. Workloads are only dry-run: applied for real, their
pods would land on the simulated nodes the other tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from controller.api import kinds
from controller.api.naming import JOB_LABEL_NODE, download_pvc_name
from controller.api.status import ModelStatus
from controller.kube.client import KubeClient
from controller.kube.errors import KubeError, NotFound
from controller.kube.resources import (
    JOBS,
    NAMESPACES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    PODS,
    Resource,
)
from controller.testing.controlplane import ControlPlane, free_port
from controller.testing.nodesim import local_volume
from controller.testing.waiting import eventually
from tests.unit.test_api_usage import API_USES, JOBS_NAMESPACE, KSERVE_NAMESPACE, Use

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "manifests" / "install"
MONITORING = ROOT / "manifests" / "monitoring"
KSERVE_NAMESPACE_DIR = INSTALL / "kserve-namespace"  # optional: only where KServe is absent
SCRAPE_CONFIG = MONITORING / "prometheus-scrape-config.yaml"
FIELD_MANAGER = "localmodel-manifests-test"
SUBJECT_ACCESS_REVIEWS = Resource(
    "authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview", False
)
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
COMPONENTS = ("manager", "agent")
SERVICE_ACCOUNT_GROUPS = ("system:serviceaccounts", f"system:serviceaccounts:{KSERVE_NAMESPACE}")
ALL_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
# Asked about for every verb besides the resources either process uses: neither may touch them.
# (group, resource, subresource, namespaced)
UNUSED_RESOURCES = (
    ("", "secrets", "", True),
    ("", "pods", "", True),
    ("", "serviceaccounts", "", True),
    ("", "namespaces", "", False),
    ("coordination.k8s.io", "leases", "", True),
    ("rbac.authorization.k8s.io", "clusterroles", "", False),
    ("rbac.authorization.k8s.io", "rolebindings", "", True),
    (kinds.GROUP, "localmodelnamespacecaches", "", True),
    (kinds.GROUP, "inferenceservices", "", True),
)
NAMESPACED = {use.resource for use in API_USES if use.namespace} | {
    resource for _, resource, _, namespaced in UNUSED_RESOURCES if namespaced
}
# Namespaced resources are asked about in each of these; "" means all namespaces at once.
PROBED_NAMESPACES = ("", KSERVE_NAMESPACE, JOBS_NAMESPACE, "default", "kube-system")
REVIEW_CONCURRENCY = 16
GRANT_PROPAGATION_TIMEOUT = 30.0
PROCESS_START_TIMEOUT = 60.0
PROCESS_STOP_TIMEOUT = 20.0
NAMESPACE_DELETION_TIMEOUT = 120.0


# --- rendering the kustomizations ------------------------------------------------------------


def render(directory: Path) -> list[dict[str, Any]]:
    """The documents `kustomize build directory` produces, for the features our files use.

    Supported: `resources` (files and directories), `images` (name, newName, newTag) and
    `replacements` with `kind`/`name` selections and dotted field paths. Anything else fails, so
    a kustomization that outgrows this reader is noticed rather than half-rendered.
    """
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources", "images", "replacements"}
    assert not unsupported, f"{directory}: the test cannot render {sorted(unsupported)}"
    documents: list[dict[str, Any]] = []
    for entry in kustomization.get("resources") or []:
        path = directory / entry
        if path.is_dir():
            documents += render(path)
        else:
            documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for image in kustomization.get("images") or []:
        _set_image(documents, image)
    for replacement in kustomization.get("replacements") or []:
        _replace(documents, replacement)
    return documents


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    pod = ((document.get("spec") or {}).get("template") or {}).get("spec") or {}
    return [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]


def _split_image(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    return (name, tag) if name and "/" not in tag else (image, "")


def _set_image(documents: list[dict[str, Any]], image: dict[str, str]) -> None:
    assert set(image) <= {"name", "newName", "newTag"}, f"unsupported image entry {image}"
    for document in documents:
        for container in _containers(document):
            name, tag = _split_image(container["image"])
            if name == image["name"]:
                new_tag = image.get("newTag", tag)
                new_name = image.get("newName", name)
                container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def _select(documents: list[dict[str, Any]], selector: dict[str, str]) -> list[dict[str, Any]]:
    assert set(selector) <= {"kind", "name"}, f"unsupported selector {selector}"
    return [
        doc
        for doc in documents
        if doc.get("kind") == selector.get("kind", doc.get("kind"))
        and doc["metadata"]["name"] == selector.get("name", doc["metadata"]["name"])
    ]


def _path_step(node: Any, segment: str) -> Any:
    if segment.startswith("[") and segment.endswith("]"):
        key, _, value = segment[1:-1].partition("=")
        return next(item for item in node if item.get(key) == value)
    return node[int(segment)] if isinstance(node, list) else node[segment]


def _field(document: dict[str, Any], path: str) -> tuple[Any, str | int]:
    """The container of the field at `path` and the key or index of the field in it."""
    *parents, last = path.split(".")
    node: Any = document
    for segment in parents:
        node = _path_step(node, segment)
    return node, int(last) if isinstance(node, list) else last


def _replace(documents: list[dict[str, Any]], replacement: dict[str, Any]) -> None:
    source = replacement["source"]
    assert set(replacement) == {"source", "targets"}, f"unsupported replacement {replacement}"
    (origin,) = _select(documents, {k: v for k, v in source.items() if k != "fieldPath"})
    holder, key = _field(origin, source["fieldPath"])
    value = holder[key]
    for target in replacement["targets"]:
        assert set(target) == {"select", "fieldPaths"}, f"unsupported target {target}"
        for document in _select(documents, target["select"]):
            for path in target["fieldPaths"]:
                holder, key = _field(document, path)
                holder[key] = value


def _identity(document: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = document["metadata"]
    return (document["apiVersion"], document["kind"], meta.get("namespace", ""), meta["name"])


def _by_identity(documents: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], Any]:
    return {_identity(document): document for document in documents}


def _one(documents: list[dict[str, Any]], *, kind: str, name: str) -> dict[str, Any]:
    (document,) = _select(documents, {"kind": kind, "name": name})
    return document


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions with In) selects `labels`."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        assert expression["operator"] == "In", f"unsupported operator in {expression}"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


# --- checks without a cluster ---------------------------------------------------------------


@pytest.mark.parametrize(
    "directory",
    [
        pytest.param(INSTALL, id="install"),
        pytest.param(KSERVE_NAMESPACE_DIR, id="kserve-namespace"),
        pytest.param(MONITORING, id="monitoring"),
    ],
)
def test_manifests_render_as_kubectl_kustomize_renders_them(directory: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (which embeds kustomize) is not installed: render() is unchecked")
    built = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    expected = _by_identity([doc for doc in yaml.safe_load_all(built.stdout) if doc])
    assert _by_identity(render(directory)) == expected


def test_install_leaves_kserve_namespace_alone_and_stays_in_known_namespaces() -> None:
    """Applying a Namespace `kserve` would strip the labels KServe's install gave it."""
    documents = render(INSTALL)
    namespaces = {d["metadata"]["name"] for d in documents if d["kind"] == "Namespace"}
    assert namespaces == {JOBS_NAMESPACE}
    used = {d["metadata"].get("namespace") for d in documents} - {None}
    assert used == {KSERVE_NAMESPACE, JOBS_NAMESPACE, "default"}
    (kserve,) = render(KSERVE_NAMESPACE_DIR)
    assert (kserve["kind"], kserve["metadata"]["name"]) == ("Namespace", KSERVE_NAMESPACE)


def test_agent_hands_its_own_image_to_download_jobs() -> None:
    agent = _one(render(INSTALL), kind="DaemonSet", name="localmodel-agent")
    containers = {c["name"]: c for c in _containers(agent)}
    args = containers["agent"]["args"]
    assert args[0] == "agent"
    download_image = args[args.index("--download-image") + 1]
    assert download_image == containers["agent"]["image"]
    assert containers["prepare-models-dir"]["image"] == containers["agent"]["image"]


def _workload(documents: list[dict[str, Any]], component: str) -> dict[str, Any]:
    kind = "Deployment" if component == "manager" else "DaemonSet"
    return _one(documents, kind=kind, name=f"localmodel-{component}")


@pytest.mark.parametrize("component", COMPONENTS)
def test_workload_runs_hardened_with_the_settings_the_cli_reads(component: str) -> None:
    documents = render(INSTALL)
    pod = _workload(documents, component)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == f"localmodel-{component}"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    hardened = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["securityContext"] == hardened
    for init in pod.get("initContainers") or []:
        # The one exception (agent.yaml says why): it hands the host directory to the image user.
        assert init["name"] == "prepare-models-dir"
        assert init["securityContext"]["capabilities"] == {
            "drop": ["ALL"],
            "add": ["CHOWN", "FOWNER"],
        }
    for each in [*(pod.get("initContainers") or []), container]:
        assert set(each["resources"]) == {"requests", "limits"}, each["name"]
    env = {variable["name"]: variable["valueFrom"]["fieldRef"] for variable in container["env"]}
    assert env["POD_NAMESPACE"] == {"fieldPath": "metadata.namespace"}
    args = container["args"]
    assert args[0] == component
    assert args[args.index("--job-namespace") + 1] == JOBS_NAMESPACE
    roles_there = {
        d["metadata"]["name"]
        for d in documents
        if d["kind"] == "RoleBinding" and d["metadata"]["namespace"] == JOBS_NAMESPACE
    }
    assert f"localmodel-{component}" in roles_there
    if component == "agent":
        assert env["NODE_NAME"] == {"fieldPath": "spec.nodeName"}
        assert pod["nodeSelector"] == {"kserve/localmodel": "worker"}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
        assert volumes["models"]["hostPath"] == {"path": "/models", "type": "DirectoryOrCreate"}
        assert mounts["models"] == args[args.index("--models-root") + 1] == "/mnt/models"
    else:
        deployment = _workload(documents, component)["spec"]
        # No leader election yet: never two managers, not even during a rollout.
        assert deployment["replicas"] == 1
        assert deployment["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("component", COMPONENTS)
def test_metrics_service_selects_its_pods_and_port(component: str) -> None:
    documents = render(INSTALL)
    workload = _workload(documents, component)
    service = _one(documents, kind="Service", name=f"localmodel-{component}-metrics")
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    assert _matches({"matchLabels": service["spec"]["selector"]}, pod_labels)
    assert _matches(workload["spec"]["selector"], pod_labels)
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    # The CLI's defaults: --metrics-bind-address :8080, --health-probe-bind-address :8081.
    assert ports == {"metrics": 8080, "health": 8081}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "health"}


def test_service_monitor_scrapes_exactly_the_metrics_services() -> None:
    services = [d for d in render(INSTALL) if d["kind"] == "Service"]
    (monitor,) = render(MONITORING)
    spec = monitor["spec"]
    selected = {
        s["metadata"]["name"]
        for s in services
        if _matches(spec["selector"], s["metadata"]["labels"])
        and s["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
    }
    assert selected == {"localmodel-manager-metrics", "localmodel-agent-metrics"}
    for service in (s for s in services if s["metadata"]["name"] in selected):
        port_names = {port["name"] for port in service["spec"]["ports"]}
        assert {endpoint["port"] for endpoint in spec["endpoints"]} <= port_names


def _kept(relabel_configs: list[dict[str, Any]], labels: dict[str, str]) -> bool:
    """Whether Prometheus keeps a target with `labels` (keep actions only; others ignored)."""
    for rule in relabel_configs:
        if rule.get("action", "replace") != "keep":
            continue
        value = ";".join(labels.get(name, "") for name in rule["source_labels"])
        if not re.fullmatch(rule["regex"], value):
            return False
    return True


def test_scrape_config_keeps_exactly_the_metrics_endpoints() -> None:
    (job,) = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]
    (discovery,) = job["kubernetes_sd_configs"]
    assert discovery["role"] == "endpointslice"
    kept = set()
    for service in (d for d in render(INSTALL) if d["kind"] == "Service"):
        meta = service["metadata"]
        if meta["namespace"] not in discovery["namespaces"]["names"]:
            continue
        labels = {
            f"__meta_kubernetes_service_label_{re.sub('[^a-zA-Z0-9_]', '_', k)}": v
            for k, v in meta["labels"].items()
        }
        for port in service["spec"]["ports"]:
            port_labels = {**labels, "__meta_kubernetes_endpointslice_port_name": port["name"]}
            if _kept(job["relabel_configs"], port_labels):
                kept.add((meta["name"], port["name"]))
    assert kept == {
        ("localmodel-manager-metrics", "metrics"),
        ("localmodel-agent-metrics", "metrics"),
    }


# --- the API server: discovery, apply, reviews -----------------------------------------------


class Discovery:
    """Maps apiVersion + kind to a Resource through the API server's discovery documents."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self._groups: dict[str, dict[str, Resource] | None] = {}

    async def resource(self, api_version: str, kind: str) -> Resource | None:
        """The Resource of `kind`, or None when the API server does not serve it."""
        if api_version not in self._groups:
            self._groups[api_version] = await self._served(api_version)
        served = self._groups[api_version]
        return None if served is None else served.get(kind)

    async def _served(self, api_version: str) -> dict[str, Resource] | None:
        group, _, version = api_version.rpartition("/")
        path = f"/apis/{api_version}" if group else f"/api/{api_version}"
        try:
            listing = await self.kube._request("GET", path)
        except NotFound:
            return None
        return {
            entry["kind"]: Resource(
                group, version, entry["name"], entry["kind"], entry["namespaced"]
            )
            for entry in listing.get("resources") or []
            if "/" not in entry["name"]
        }


async def apply(
    kube: KubeClient, document: dict[str, Any], *, resource: Resource, dry_run: bool
) -> dict[str, Any]:
    """Server-side apply `document`, for real or as a dry run (the client has no apply verb)."""
    meta = document["metadata"]
    params = {"fieldManager": FIELD_MANAGER, "force": "true"}
    if dry_run:
        params["dryRun"] = "All"
    return await kube._request(
        "PATCH",
        resource.path(namespace=meta.get("namespace"), name=meta["name"]),
        params=params,
        body=document,
        content_type="application/apply-patch+yaml",
    )


async def exists(kube: KubeClient, document: dict[str, Any], *, resource: Resource) -> bool:
    try:
        meta = document["metadata"]
        await kube.get(resource, meta["name"], namespace=meta.get("namespace"))
    except NotFound:
        return False
    return True


async def delete_and_wait(
    kube: KubeClient, created: list[tuple[Resource, str, str | None]]
) -> None:
    """Delete what a test created (in reverse) and wait until every object is really gone."""
    for resource, name, namespace in reversed(created):
        with contextlib.suppress(NotFound):
            await kube.delete(resource, name, namespace=namespace)
    for resource, name, namespace in created:

        async def is_gone(resource=resource, name=name, namespace=namespace) -> None:
            try:
                await kube.get(resource, name, namespace=namespace)
            except NotFound:
                return
            raise AssertionError(f"{resource.kind} {namespace or ''}/{name} still exists")

        timeout = NAMESPACE_DELETION_TIMEOUT if resource == NAMESPACES else 60.0
        await eventually(is_gone, timeout=timeout, interval=0.2)


def service_account(component: str) -> str:
    return f"system:serviceaccount:{KSERVE_NAMESPACE}:localmodel-{component}"


async def is_allowed(
    kube: KubeClient,
    component: str,
    *,
    verb: str,
    group: str,
    resource: str,
    subresource: str = "",
    namespace: str = "",
    name: str = "",
) -> bool:
    review = {
        "apiVersion": SUBJECT_ACCESS_REVIEWS.api_version,
        "kind": SUBJECT_ACCESS_REVIEWS.kind,
        "spec": {
            "user": service_account(component),
            "groups": [*SERVICE_ACCOUNT_GROUPS, "system:authenticated"],
            "resourceAttributes": {
                "verb": verb,
                "group": group,
                "resource": resource,
                "subresource": subresource,
                "namespace": namespace,
                "name": name,
            },
        },
    }
    answer = await kube.create(SUBJECT_ACCESS_REVIEWS, review)
    return bool((answer.get("status") or {}).get("allowed"))


async def denied_uses(kube: KubeClient, component: str) -> list[Use]:
    uses = [use for use in API_USES if use.component == component]
    answers = await asyncio.gather(*(_ask(kube, use) for use in uses))
    return [use for use, allowed in zip(uses, answers, strict=True) if not allowed]


async def _ask(kube: KubeClient, use: Use) -> bool:
    return await is_allowed(
        kube,
        use.component,
        verb=use.verb,
        group=use.group,
        resource=use.resource,
        subresource=use.subresource,
        namespace=use.namespace,
        name=use.name,
    )


async def wait_for_grants(kube: KubeClient, component: str) -> None:
    """Until the authorizer allows every listed call (RBAC objects take a moment to apply)."""

    async def all_allowed() -> None:
        denied = await denied_uses(kube, component)
        assert not denied, f"{component} is denied calls its code makes:\n" + "\n".join(
            map(str, denied)
        )

    await eventually(all_allowed, timeout=GRANT_PROPAGATION_TIMEOUT, interval=0.5)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(name="install_namespaces")
async def _install_namespaces(kube: KubeClient) -> AsyncIterator[None]:
    """The namespaces manifests/install needs; those this test creates are deleted afterwards."""
    created: list[tuple[Resource, str, str | None]] = []
    try:
        for document in render(KSERVE_NAMESPACE_DIR) + render(INSTALL):
            if document["kind"] != "Namespace":
                continue
            if not await exists(kube, document, resource=NAMESPACES):
                created.append((NAMESPACES, document["metadata"]["name"], None))
                await apply(kube, document, resource=NAMESPACES, dry_run=False)
        yield
    finally:
        await delete_and_wait(kube, created)


@pytest.fixture(name="install_rbac")
async def _install_rbac(kube: KubeClient, install_namespaces: None) -> AsyncIterator[None]:
    """Service accounts, roles and bindings of manifests/install, applied for real."""
    discovery = Discovery(kube)
    created: list[tuple[Resource, str, str | None]] = []
    try:
        for document in render(INSTALL):
            if document["kind"] not in RBAC_KINDS:
                continue
            resource = await discovery.resource(document["apiVersion"], document["kind"])
            assert resource is not None, f"{document['kind']} is not served"
            if not await exists(kube, document, resource=resource):
                meta = document["metadata"]
                created.append((resource, meta["name"], meta.get("namespace")))
            await apply(kube, document, resource=resource, dry_run=False)
        yield
    finally:
        await delete_and_wait(kube, created)


# --- server-side dry run -----------------------------------------------------------------------


async def dry_run_problems(kube: KubeClient, documents: list[dict[str, Any]]) -> list[str]:
    discovery = Discovery(kube)
    problems = []
    for document in documents:
        resource = await discovery.resource(document["apiVersion"], document["kind"])
        identity = "/".join(filter(None, _identity(document)[1:]))
        if resource is None:
            problems.append(f"{identity}: {document['apiVersion']} is not served")
            continue
        try:
            answer = await apply(kube, document, resource=resource, dry_run=True)
        except KubeError as exc:  # every document is reported, not just the first failure
            problems.append(f"{identity}: {exc}")
            continue
        if answer.get("kind") != document["kind"]:
            problems.append(f"{identity}: unexpected answer {answer.get('kind')}")
    return problems


async def test_install_documents_pass_server_side_dry_run(
    kube: KubeClient, install_namespaces: None
) -> None:
    documents = render(KSERVE_NAMESPACE_DIR) + render(INSTALL)
    kinds_seen = {document["kind"] for document in documents}
    assert {"CustomResourceDefinition", "Deployment", "DaemonSet", "ClusterRole"} <= kinds_seen
    problems = await dry_run_problems(kube, documents)
    assert not problems, "\n".join(problems)


def test_service_monitor_selects_the_metrics_port_of_both_components() -> None:
    """The ServiceMonitor's CRD is not served here, so check what it selects by reading it."""
    (monitor,) = [d for d in render(MONITORING) if d["kind"] == "ServiceMonitor"]
    services = [d for d in render(INSTALL) if d["kind"] == "Service"]
    selector = monitor["spec"]["selector"]
    namespaces = monitor["spec"]["namespaceSelector"]["matchNames"]

    def selected(service: dict[str, Any]) -> bool:
        labels = service["metadata"].get("labels") or {}
        if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
            return False
        for expression in selector.get("matchExpressions", []):
            assert expression["operator"] == "In", expression  # the only operator used here
            if labels.get(expression["key"]) not in expression["values"]:
                return False
        return service["metadata"]["namespace"] in namespaces

    chosen = [s for s in services if selected(s)]
    components = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in chosen}
    assert components == {"manager", "agent"}, [s["metadata"]["name"] for s in chosen]
    for service in chosen:
        ports = {port.get("name") for port in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports, (service["metadata"]["name"], ports)


# --- RBAC ------------------------------------------------------------------------------------


@pytest.mark.parametrize("component", COMPONENTS)
async def test_rbac_allows_every_call_the_code_makes(
    kube: KubeClient, install_rbac: None, component: str
) -> None:
    await wait_for_grants(kube, component)


def _probes(component: str) -> list[dict[str, str]]:
    """Requests to ask about: every verb on every resource in `PROBED_NAMESPACES`, plus the
    objects roles name (and a neighbour of each, which must stay out of reach)."""
    targets = {(u.group, u.resource, u.subresource) for u in API_USES} | {
        (g, r, sub) for g, r, sub, _ in UNUSED_RESOURCES
    }
    probes = []
    for group, resource, subresource in sorted(targets):
        namespaces = PROBED_NAMESPACES if resource in NAMESPACED else ("",)
        for namespace in namespaces:
            for verb in ALL_VERBS:
                probes.append(
                    {
                        "verb": verb,
                        "group": group,
                        "resource": resource,
                        "subresource": subresource,
                        "namespace": namespace,
                    }
                )
    for use in API_USES:
        if use.component == component and use.name:
            # The role names this object; another object of the same kind stays out of reach.
            named = {k: getattr(use, k) for k in ("verb", "group", "resource", "namespace")}
            probes.append({**named, "subresource": use.subresource, "name": use.name})
            probes.append({**named, "subresource": use.subresource, "name": "not-" + use.name})
    return probes


def _expected(component: str, probe: dict[str, str]) -> bool:
    wanted = Use(component=component, name=probe.get("name", ""), **_without_name(probe))
    return wanted in API_USES


def _without_name(probe: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in probe.items() if k != "name"}


@pytest.mark.parametrize("component", COMPONENTS)
async def test_rbac_grants_nothing_beyond_the_calls_the_code_makes(
    kube: KubeClient, install_rbac: None, component: str
) -> None:
    await wait_for_grants(kube, component)
    probes = _probes(component)
    limit = asyncio.Semaphore(REVIEW_CONCURRENCY)

    async def ask(probe: dict[str, str]) -> bool:
        async with limit:
            return await is_allowed(kube, component, **probe)

    answers = await asyncio.gather(*(ask(probe) for probe in probes))
    wrong = [
        f"{'allowed' if allowed else 'denied'}: {probe}"
        for probe, allowed in zip(probes, answers, strict=True)
        if allowed != _expected(component, probe)
    ]
    assert not wrong, f"{component}: {len(wrong)} of {len(probes)} answers differ:\n" + "\n".join(
        wrong
    )
    # Every listed call was among the probes, so the matrix covered what the code does.
    assert sum(answers) == len([use for use in API_USES if use.component == component])


DENIED = [
    pytest.param("agent", "delete", "", "persistentvolumes", "", id="agent-delete-pv"),
    pytest.param("agent", "delete", "", "persistentvolumeclaims", JOBS_NAMESPACE, id="agent-pvc"),
    pytest.param("agent", "get", "", "secrets", JOBS_NAMESPACE, id="agent-read-secrets"),
    pytest.param("agent", "patch", kinds.GROUP, "localmodelcaches", "", id="agent-patch-cache"),
    pytest.param("agent", "create", kinds.GROUP, "localmodelnodes", "", id="agent-create-node"),
    pytest.param("manager", "create", "batch", "jobs", JOBS_NAMESPACE, id="manager-create-job"),
    pytest.param("manager", "delete", "", "persistentvolumes", "", id="manager-delete-pv"),
    pytest.param("manager", "get", "", "secrets", KSERVE_NAMESPACE, id="manager-read-secrets"),
    pytest.param("manager", "create", "", "events", KSERVE_NAMESPACE, id="manager-events-kserve"),
    pytest.param(
        "manager", "update", "coordination.k8s.io", "leases", KSERVE_NAMESPACE, id="manager-lease"
    ),
]


@pytest.mark.parametrize(("component", "verb", "group", "resource", "namespace"), DENIED)
async def test_rbac_denies(
    kube: KubeClient,
    install_rbac: None,
    component: str,
    verb: str,
    group: str,
    resource: str,
    namespace: str,
) -> None:
    assert Use(component, verb, group, resource, namespace=namespace) not in API_USES
    await wait_for_grants(kube, component)
    allowed = await is_allowed(
        kube, component, verb=verb, group=group, resource=resource, namespace=namespace
    )
    assert not allowed, f"{service_account(component)} may {verb} {resource} in '{namespace}'"


# --- the processes, with only their service account's permissions -----------------------------


class RunningProcess:
    """`python -m controller ...` started by a test; its output goes to `log_path`."""

    def __init__(
        self, process: asyncio.subprocess.Process, *, log_path: Path, probe_port: int
    ) -> None:
        self.process = process
        self.log_path = log_path
        self.probe_port = probe_port

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def ready(self) -> None:
        """Passes once /readyz answers 200; raises at once (no retry) if the process exited."""
        if self.process.returncode is not None:
            raise RuntimeError(f"exited with {self.process.returncode}:\n{self.log()[-4000:]}")
        url = f"http://127.0.0.1:{self.probe_port}/readyz?verbose"
        try:
            async with aiohttp.ClientSession() as session, session.get(url) as answer:
                text = await answer.text()
        except aiohttp.ClientError as exc:
            raise AssertionError(f"{url}: {exc!r}") from exc
        assert answer.status == 200, f"{url} answered {answer.status}: {text}"


@contextlib.asynccontextmanager
async def running(args: list[str], *, log_path: Path) -> AsyncIterator[RunningProcess]:
    """Run the product's CLI until the block ends, then stop it with SIGTERM."""
    probe_port = free_port()
    command = [
        sys.executable, "-m", "controller", "--log-format", "json", *args,
        "--metrics-bind-address", f"127.0.0.1:{free_port()}",
        "--health-probe-bind-address", f"127.0.0.1:{probe_port}",
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=log_file, stderr=asyncio.subprocess.STDOUT, cwd=ROOT
        )
    try:
        yield RunningProcess(process, log_path=log_path, probe_port=probe_port)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), PROCESS_STOP_TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()


def _kubeconfig_for(control_plane: ControlPlane, *, component: str, directory: Path) -> Path:
    return control_plane.write_kubeconfig(
        directory / f"{component}.kubeconfig",
        user=service_account(component),
        groups=SERVICE_ACCOUNT_GROUPS,
    )


def _process_args(component: str, kubeconfig: Path) -> list[str]:
    return [
        component, "--kubeconfig", str(kubeconfig), "--namespace", KSERVE_NAMESPACE,
        "--job-namespace", JOBS_NAMESPACE,
    ]  # fmt: skip


def assert_never_forbidden(process: RunningProcess) -> None:
    log = process.log()
    assert "forbidden" not in log.lower(), f"a request was forbidden:\n{log[-4000:]}"


async def test_manager_syncs_with_only_its_service_account_permissions(
    kube: KubeClient, control_plane: ControlPlane, install_rbac: None, tmp_path: Path
) -> None:
    await wait_for_grants(kube, "manager")
    kubeconfig = _kubeconfig_for(control_plane, component="manager", directory=tmp_path)
    args = _process_args("manager", kubeconfig)
    async with running(args, log_path=tmp_path / "manager.log") as manager:
        await eventually(manager.ready, timeout=PROCESS_START_TIMEOUT, interval=0.2)
        assert_never_forbidden(manager)
        assert manager.process.returncode is None
    assert manager.process.returncode == 0, manager.log()[-4000:]


def _download_volume(name: str, node: str) -> dict[str, Any]:
    """A local PV on `node`, as a node group's template would produce it."""
    return local_volume(name, node=node, path="/models")


def _download_claim(name: str, volume: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": JOBS_NAMESPACE},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "volumeName": volume,
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }


async def test_agent_starts_and_removes_a_download_with_only_its_service_account_permissions(
    kube: KubeClient,
    control_plane: ControlPlane,
    install_rbac: None,
    tmp_path: Path,
    unique_name: Callable[..., str],
) -> None:
    """Job create and delete, status patch and every watch, as the agent's service account.

    The node does not exist, so the Job's pod stays Pending: nothing is downloaded or run.
    """
    await wait_for_grants(kube, "agent")
    node, model, group = unique_name("node"), unique_name("model"), unique_name("group")
    created: list[tuple[Resource, str, str | None]] = []
    try:
        claim_name = download_pvc_name(model, group)
        await kube.create(PERSISTENT_VOLUMES, _download_volume(claim_name, node))
        created.append((PERSISTENT_VOLUMES, claim_name, None))
        await kube.create(
            PERSISTENT_VOLUME_CLAIMS,
            _download_claim(claim_name, claim_name),
            namespace=JOBS_NAMESPACE,
        )
        created.append((PERSISTENT_VOLUME_CLAIMS, claim_name, JOBS_NAMESPACE))
        entry = {
            "modelName": model,
            "sourceModelUri": "http://127.0.0.1:9/m.tgz",
            "nodeGroup": group,
        }
        local_model_node = {
            "apiVersion": kinds.LOCAL_MODEL_NODES.api_version,
            "kind": kinds.LOCAL_MODEL_NODES.kind,
            "metadata": {"name": node},
            "spec": {"localModels": [entry]},
        }
        await kube.create(kinds.LOCAL_MODEL_NODES, local_model_node)
        created.append((kinds.LOCAL_MODEL_NODES, node, None))

        kubeconfig = _kubeconfig_for(control_plane, component="agent", directory=tmp_path)
        args = [
            *_process_args("agent", kubeconfig),
            "--node-name", node, "--models-root", str(tmp_path / "models"),
        ]  # fmt: skip
        async with running(args, log_path=tmp_path / "agent.log") as agent:
            await eventually(agent.ready, timeout=PROCESS_START_TIMEOUT, interval=0.2)

            # A bound claim lets the agent create the Job; the pod passes the namespace's
            # Pod Security level and waits for a node that never comes.
            async def job_and_pod_exist() -> str:
                jobs = await kube.list(
                    JOBS, namespace=JOBS_NAMESPACE, label_selector=f"{JOB_LABEL_NODE}={node}"
                )
                assert len(jobs["items"]) == 1, (
                    f"jobs: {[j['metadata']['name'] for j in jobs['items']]}"
                )
                job_name = jobs["items"][0]["metadata"]["name"]
                pods = await kube.list(
                    PODS, namespace=JOBS_NAMESPACE, label_selector=f"job-name={job_name}"
                )
                assert pods["items"], f"no pod for job {job_name} yet"
                return job_name

            job_name = await eventually(job_and_pod_exist, timeout=60, interval=0.2)

            async def status_written() -> None:
                current = await kube.get(kinds.LOCAL_MODEL_NODES, node)
                model_status = (current.get("status") or {}).get("modelStatus") or {}
                assert model_status == {model: ModelStatus.DOWNLOAD_PENDING.value}, model_status

            await eventually(status_written, timeout=30, interval=0.2)

            # The model is no longer wanted on the node: the agent deletes its Job.
            await kube.patch(kinds.LOCAL_MODEL_NODES, node, {"spec": {"localModels": []}})

            async def job_gone() -> None:
                try:
                    job = await kube.get(JOBS, job_name, namespace=JOBS_NAMESPACE)
                except NotFound:
                    return
                assert job["metadata"].get("deletionTimestamp"), f"job {job_name} not deleted"

            await eventually(job_gone, timeout=30, interval=0.2)
            assert_never_forbidden(agent)
        assert agent.process.returncode == 0, agent.log()[-4000:]
    finally:
        await delete_and_wait(kube, created)
