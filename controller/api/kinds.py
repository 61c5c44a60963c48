"""The serving.kserve.io resources this product reconciles, and their finalizers.

Only descriptors and constants live here: the group, version, plurals and kinds that match
KServe's CRDs (manifests/crds), plus the finalizer names the manager adds. Building REST paths
is `controller.kube.resources.Resource`'s job; talking to the API server is the client's.
"""

from __future__ import annotations

from controller.kube.resources import Resource

GROUP = "serving.kserve.io"
VERSION = "v1alpha1"

# KServe's finalizer names, kept verbatim so objects written by KServe's manager are recognised.
CACHE_FINALIZER = "localmodel.kserve.io/finalizer"
NAMESPACE_CACHE_FINALIZER = "localmodelnamespacecache.kserve.io/finalizer"

LOCAL_MODEL_CACHES = Resource(GROUP, VERSION, "localmodelcaches", "LocalModelCache", False)
LOCAL_MODEL_NAMESPACE_CACHES = Resource(
    GROUP, VERSION, "localmodelnamespacecaches", "LocalModelNamespaceCache", True
)
LOCAL_MODEL_NODE_GROUPS = Resource(
    GROUP, VERSION, "localmodelnodegroups", "LocalModelNodeGroup", False
)
LOCAL_MODEL_NODES = Resource(GROUP, VERSION, "localmodelnodes", "LocalModelNode", False)

# KServe kinds we only read; their CRDs are installed by KServe itself and may be absent.
INFERENCE_SERVICES = Resource(GROUP, "v1beta1", "inferenceservices", "InferenceService", True)
LLM_INFERENCE_SERVICES = Resource(
    GROUP, "v1alpha2", "llminferenceservices", "LLMInferenceService", True
)
CLUSTER_STORAGE_CONTAINERS = Resource(
    GROUP, VERSION, "clusterstoragecontainers", "ClusterStorageContainer", False
)
