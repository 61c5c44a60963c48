"""Every Prometheus metric this product exports, on one dedicated registry.

Names reuse the ecosystem's (`controller_runtime_*`, `workqueue_*`, `rest_client_*`) so existing
dashboards work; our own live under `localmodel_`. No metric carries a per-object label.
The HTTP endpoint that serves `REGISTRY` lives in `controller.runtime.server`.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client import (
    gc_collector as _gc,
)
from prometheus_client import (
    platform_collector as _platform,
)
from prometheus_client import (
    process_collector as _process,
)

disable_created_metrics()

REGISTRY = CollectorRegistry()
_process.ProcessCollector(registry=REGISTRY)
_platform.PlatformCollector(registry=REGISTRY)
_gc.GCCollector(registry=REGISTRY)

RECONCILE_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8,
    0.9, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 9, 10, 15, 20, 25, 30, 40, 50, 60,
)  # fmt: skip
QUEUE_BUCKETS = tuple(10.0**exponent for exponent in range(-8, 4))
REST_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
FINALIZER_BUCKETS = (0.1, 0.5, 1, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)
LIST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# --- Kubernetes API client -------------------------------------------------------------------

REST_REQUESTS = Counter(
    "rest_client_requests", "HTTP requests to the API server, by status code, method and host.",
    ["code", "method", "host"], registry=REGISTRY,
)  # fmt: skip
REST_REQUEST_DURATION = Histogram(
    "rest_client_request_duration_seconds", "Latency of API requests (watch streams excluded).",
    ["verb", "host"], buckets=REST_BUCKETS, registry=REGISTRY,
)  # fmt: skip
REST_REQUEST_RETRIES = Counter(
    "rest_client_request_retries", "API requests retried after a transient failure.",
    ["code", "verb", "host"], registry=REGISTRY,
)  # fmt: skip

# --- Reconcile loop --------------------------------------------------------------------------

RECONCILE_TOTAL = Counter(
    "controller_runtime_reconcile", "Reconciliations by controller and result.",
    ["controller", "result"], registry=REGISTRY,
)  # fmt: skip
RECONCILE_ERRORS = Counter(
    "controller_runtime_reconcile_errors", "Reconciliations that ended in an error.",
    ["controller"], registry=REGISTRY,
)  # fmt: skip
TERMINAL_RECONCILE_ERRORS = Counter(
    "controller_runtime_terminal_reconcile_errors", "Reconcile errors that are not retried.",
    ["controller"], registry=REGISTRY,
)  # fmt: skip
RECONCILE_PANICS = Counter(
    "controller_runtime_reconcile_panics", "Reconciliations that raised an unexpected exception.",
    ["controller"], registry=REGISTRY,
)  # fmt: skip
RECONCILE_TIME = Histogram(
    "controller_runtime_reconcile_time_seconds", "Duration of one reconciliation.",
    ["controller"], buckets=RECONCILE_BUCKETS, registry=REGISTRY,
)  # fmt: skip
MAX_CONCURRENT_RECONCILES = Gauge(
    "controller_runtime_max_concurrent_reconciles", "Configured number of workers.",
    ["controller"], registry=REGISTRY,
)  # fmt: skip
ACTIVE_WORKERS = Gauge(
    "controller_runtime_active_workers", "Workers currently reconciling.",
    ["controller"], registry=REGISTRY,
)  # fmt: skip
RECONCILE_CONFLICTS = Counter(
    "localmodel_reconcile_conflicts", "Reconciliations requeued because a write hit a conflict.",
    ["controller"], registry=REGISTRY,
)  # fmt: skip

# --- Work queue ------------------------------------------------------------------------------

QUEUE_DEPTH = Gauge(
    "workqueue_depth", "Keys ready to be processed (delayed and rate-limited keys excluded).",
    ["name", "controller"], registry=REGISTRY,
)  # fmt: skip
QUEUE_DELAYED = Gauge(
    "localmodel_workqueue_delayed", "Keys waiting for a delay or a backoff to expire.",
    ["name", "controller"], registry=REGISTRY,
)  # fmt: skip
QUEUE_ADDS = Counter(
    "workqueue_adds", "Keys added to the queue (deduplicated adds are not counted).",
    ["name", "controller"], registry=REGISTRY,
)  # fmt: skip
QUEUE_RETRIES = Counter(
    "workqueue_retries", "Delayed or rate-limited re-adds.",
    ["name", "controller"], registry=REGISTRY,
)  # fmt: skip
QUEUE_LATENCY = Histogram(
    "workqueue_queue_duration_seconds", "Time a key waits in the queue before processing.",
    ["name", "controller"], buckets=QUEUE_BUCKETS, registry=REGISTRY,
)  # fmt: skip
QUEUE_WORK_DURATION = Histogram(
    "workqueue_work_duration_seconds", "Time spent processing one key.",
    ["name", "controller"], buckets=QUEUE_BUCKETS, registry=REGISTRY,
)  # fmt: skip
QUEUE_UNFINISHED_WORK = Gauge(
    "workqueue_unfinished_work_seconds", "Sum of the ages of keys being processed.",
    ["name", "controller"], registry=REGISTRY,
)  # fmt: skip
QUEUE_LONGEST_RUNNING = Gauge(
    "workqueue_longest_running_processor_seconds", "Age of the longest-running key.",
    ["name", "controller"], registry=REGISTRY,
)  # fmt: skip

# --- Informers -------------------------------------------------------------------------------

INFORMER_SYNCED = Gauge(
    "localmodel_informer_synced", "1 once the informer's first list reached its handlers.",
    ["resource"], registry=REGISTRY,
)  # fmt: skip
INFORMER_STORE_OBJECTS = Gauge(
    "localmodel_informer_store_objects", "Objects held in the informer's store.",
    ["resource"], registry=REGISTRY,
)  # fmt: skip
INFORMER_LISTS = Counter(
    "localmodel_informer_lists", "Full lists, by why they happened and how they ended.",
    ["resource", "reason", "result"], registry=REGISTRY,
)  # fmt: skip
INFORMER_LIST_DURATION = Histogram(
    "localmodel_informer_list_duration_seconds", "Duration of full lists.",
    ["resource"], buckets=LIST_BUCKETS, registry=REGISTRY,
)  # fmt: skip
INFORMER_WATCH_ENDS = Counter(
    "localmodel_informer_watch_ends", "Watch streams that ended, by reason.",
    ["resource", "reason"], registry=REGISTRY,
)  # fmt: skip
INFORMER_WATCH_EVENTS = Counter(
    "localmodel_informer_watch_events", "Watch events received, by type.",
    ["resource", "type"], registry=REGISTRY,
)  # fmt: skip
INFORMER_LAST_EVENT = Gauge(
    "localmodel_informer_last_event_timestamp_seconds", "Unix time of the last line on a watch.",
    ["resource"], registry=REGISTRY,
)  # fmt: skip
INFORMER_TOMBSTONES = Counter(
    "localmodel_informer_tombstones", "Deletes learned only from a relist.",
    ["resource"], registry=REGISTRY,
)  # fmt: skip

# --- Finalizers and deletion -----------------------------------------------------------------

FINALIZER_DURATION = Histogram(
    "localmodel_finalizer_duration_seconds",
    "Time from an object's deletionTimestamp until our finalizer's removal was accepted.",
    ["controller", "finalizer"], buckets=FINALIZER_BUCKETS, registry=REGISTRY,
)  # fmt: skip
FINALIZER_ADDITIONS = Counter(
    "localmodel_finalizer_additions", "Finalizers we added.",
    ["controller", "finalizer"], registry=REGISTRY,
)  # fmt: skip
FINALIZER_REMOVALS = Counter(
    "localmodel_finalizer_removals", "Finalizers we removed.",
    ["controller", "finalizer"], registry=REGISTRY,
)  # fmt: skip

# --- Downloads (agent) -----------------------------------------------------------------------

MODELS_BY_STATUS = Gauge(
    "localmodel_node_models", "Models on this agent's node, by download status.",
    ["status"], registry=REGISTRY,
)  # fmt: skip
DOWNLOAD_JOBS_CREATED = Counter(
    "localmodel_download_jobs_created", "Download Jobs created by this agent.",
    registry=REGISTRY,
)  # fmt: skip
