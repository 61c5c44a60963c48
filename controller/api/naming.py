"""Every name, key and label value the manager and the agent derive from a cache.

The manager creates PVs and PVCs and the agent mounts them in download Jobs; both must agree on
each name, so each name has exactly one function here and nobody builds one by hand. The shapes
are KServe's (plain `-` joins, 16-hex storage key, `models/<key>` sub-path), so objects and disks
left by KServe stay usable. This module is pure: no I/O, no Kubernetes calls.
"""

from __future__ import annotations

import hashlib
import re

STORAGE_KEY_LENGTH = 16
MODELS_DIR = "models"

# Download Job labels (KServe's keys): the agent finds its Jobs by them.
JOB_LABEL_MODEL = "model"
JOB_LABEL_NODE = "node"
JOB_LABEL_MODEL_NAMESPACE = "modelNamespace"

LABEL_VALUE_MAX_LENGTH = 63
DNS_SUBDOMAIN_MAX_LENGTH = 253

_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def storage_key(uri: str) -> str:
    """Return the first 16 hex characters of the SHA-256 of `uri`, byte for byte.

    No trimming or normalisation: `s3://foo` and `s3://foo/` are different keys, as in KServe,
    because existing model directories on nodes are named by this key.
    """
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:STORAGE_KEY_LENGTH]


def match_storage_uri(cached: str, candidate: str) -> bool:
    """Tell whether `candidate` is the cached URI itself or a path below it.

    One trailing `/` is ignored on each side; a sub-path must continue with `/`, so
    `gs://b/model2` does not match `gs://b/model`. A string that is not a URI matches only
    itself. An empty cached URI matches nothing (KServe would let it match every absolute path).
    """
    cached = cached.removesuffix("/")
    candidate = candidate.removesuffix("/")
    if not cached:
        return False
    return candidate == cached or candidate.startswith(cached + "/")


def status_key(model_name: str, namespace: str | None = None) -> str:
    """Key of a model in LocalModelNode `status.modelStatus`: `name`, or `namespace/name`."""
    return f"{namespace}/{model_name}" if namespace else model_name


def download_pv_name(cache_name: str, node_group: str, *, namespace: str | None = None) -> str:
    """PV the download Jobs of `cache_name` write through, one per node group.

    Cluster caches: `<cache>-<group>-download`; namespace caches (pass their namespace):
    `<cache>-<group>-<namespace>-download`.
    """
    if namespace:
        return f"{cache_name}-{node_group}-{namespace}-download"
    return f"{cache_name}-{node_group}-download"


def download_pvc_name(cache_name: str, node_group: str, *, namespace: str | None = None) -> str:
    """PVC in the jobs namespace that download Jobs mount, bound to `download_pv_name`.

    Cluster caches: `<cache>-<group>`; namespace caches: `<cache>-<group>-<namespace>-download`
    (the same as their PV name, as in KServe).
    """
    if namespace:
        return f"{cache_name}-{node_group}-{namespace}-download"
    return f"{cache_name}-{node_group}"


def serving_pv_name(cache_name: str, node_group: str, consumer_namespace: str) -> str:
    """PV that model servers in `consumer_namespace` read the cached model through."""
    return f"{cache_name}-{node_group}-{consumer_namespace}"


def serving_pvc_name(cache_name: str, node_group: str) -> str:
    """PVC in a consumer namespace that model servers mount; KServe's webhooks expect this name."""
    return f"{cache_name}-{node_group}"


def model_subpath(key: str) -> str:
    """Sub-path of a model inside the node group's volume: `models/<storage key>`."""
    return f"{MODELS_DIR}/{key}"


def job_generate_name(model_name: str, node_name: str) -> str:
    """`generateName` of a download Job: `<model>-<node>` (the API server adds 5 characters).

    The API server cuts a generateName to 58 characters before adding its random suffix, so
    long names are shortened there; Jobs are found by their labels, never by name.
    """
    return f"{model_name}-{node_name}"


def job_labels(
    *,
    model_name: str,
    node_name: str,
    model_namespace: str | None = None,
) -> dict[str, str]:
    """Labels of a download Job; `modelNamespace` only for namespace caches."""
    labels = {JOB_LABEL_MODEL: model_name, JOB_LABEL_NODE: node_name}
    if model_namespace:
        labels[JOB_LABEL_MODEL_NAMESPACE] = model_namespace
    return labels


def job_label_selector(
    *,
    model_name: str,
    node_name: str,
    model_namespace: str | None = None,
) -> str:
    """Label selector for the download Jobs of one model on one node.

    For a cluster cache it also requires that `modelNamespace` is absent, so the Jobs of a
    namespace cache with the same name are not mistaken for ours (KServe's selector omits this).
    """
    selector = f"{JOB_LABEL_MODEL}={model_name},{JOB_LABEL_NODE}={node_name}"
    if model_namespace:
        return f"{selector},{JOB_LABEL_MODEL_NAMESPACE}={model_namespace}"
    return f"{selector},!{JOB_LABEL_MODEL_NAMESPACE}"


def status_key_from_job_labels(labels: dict[str, str] | None) -> str | None:
    """Status key of the model a download Job belongs to, or None when it has no `model` label."""
    labels = labels or {}
    model_name = labels.get(JOB_LABEL_MODEL)
    if not model_name:
        return None
    return status_key(model_name, labels.get(JOB_LABEL_MODEL_NAMESPACE))


def is_valid_label_value(value: str) -> bool:
    """Tell whether `value` can be the value of a Job label: 1-63 characters of the label rule.

    Kubernetes also allows the empty value; we refuse it because our labels always name a model,
    a node or a namespace.
    """
    return len(value) <= LABEL_VALUE_MAX_LENGTH and _LABEL_VALUE.fullmatch(value) is not None


def is_valid_object_name(name: str) -> bool:
    """Tell whether `name` is a DNS-1123 subdomain, the rule for PV, PVC and Job names."""
    return len(name) <= DNS_SUBDOMAIN_MAX_LENGTH and _DNS_SUBDOMAIN.fullmatch(name) is not None
