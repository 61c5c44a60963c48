"""List-then-watch cache of one resource, with indexes and event handlers.

An `Informer` lists the collection, replaces its store with the result (emitting adds, updates
and deletes, the latter flagged `final_state_unknown` when learned only from a relist), then
watches from the list's resourceVersion. It resumes from the last seen version after a stream
ends or stalls, relists on 410 Gone, accepts bookmarks, and backs off on failures (0.8 s doubling
to 30 s, with jitter). It is `synced` once the first list reached every handler.

Handlers are plain callables that must be quick (they only enqueue keys). Reconcilers read the
store; they never write to it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from controller import metrics
from controller.kube.client import KubeClient
from controller.kube.errors import ApiError, Gone, KubeError, TransportError, WatchStalled
from controller.kube.resources import Resource

log = structlog.get_logger(__name__)

ADDED, UPDATED, DELETED = "added", "updated", "deleted"
WATCH_TIMEOUT_RANGE = (300, 600)
BACKOFF_INITIAL, BACKOFF_MAX, BACKOFF_RESET_AFTER = 0.8, 30.0, 120.0


@dataclass(frozen=True)
class Event:
    """One change delivered to handlers. `old` is set for updates; deletes carry the last state."""

    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None = None
    final_state_unknown: bool = False
    initial: bool = False


Handler = Callable[[Event], None]
IndexFunc = Callable[[dict[str, Any]], list[str]]


def object_key(obj: dict[str, Any]) -> str:
    """Store key of an object: "namespace/name", or "name" when cluster-scoped."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else meta["name"]


def strip_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    (obj.get("metadata") or {}).pop("managedFields", None)
    return obj


class Informer:
    """Keeps a local copy of one resource (optionally filtered) up to date."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.name = resource.plural if not resource.group else f"{resource.plural}.{resource.group}"
        self._store: dict[str, dict[str, Any]] = {}
        self._indexers: dict[str, IndexFunc] = {}
        self._indexes: dict[str, dict[str, set[str]]] = {}
        self._handlers: list[Handler] = []
        self._synced = asyncio.Event()
        self._last_rv = ""
        self.last_activity = time.monotonic()

    # --- reading ------------------------------------------------------------------------------

    def get(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The cached object, or None. Treat the result as read-only."""
        return self._store.get(f"{namespace}/{name}" if namespace else name)

    def list(self) -> list[dict[str, Any]]:
        return list(self._store.values())

    def by_index(self, index: str, value: str) -> list[dict[str, Any]]:
        keys = self._indexes[index].get(value, set())
        return [self._store[key] for key in sorted(keys)]

    def __len__(self) -> int:
        return len(self._store)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    # --- wiring (before run) ------------------------------------------------------------------

    def add_index(self, name: str, func: IndexFunc) -> None:
        self._indexers[name] = func
        self._indexes[name] = {}
        for key, obj in self._store.items():
            self._index_add(key, obj)

    def add_handler(self, handler: Handler) -> None:
        """Register a handler; one added after the first list gets the store as initial adds."""
        self._handlers.append(handler)
        if self.synced:
            for obj in self.list():
                self._call(handler, Event(ADDED, obj, initial=True))

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """List and watch until cancelled. Never returns on its own; errors are retried."""
        backoff = _Backoff()
        reason = "initial"
        while True:
            try:
                await self._list_and_replace(reason)
            except KubeError as exc:
                log.warning("informer list failed", resource=self.name, error=str(exc))
                await asyncio.sleep(backoff.next())
                continue
            reason = await self._watch_until_relist(backoff)

    async def _watch_until_relist(self, backoff: _Backoff) -> str:
        """Watch from the last resourceVersion; return why a relist is needed."""
        while True:
            started = time.monotonic()
            events = 0
            try:
                async for event in self.client.watch(
                    self.resource,
                    resource_version=self._last_rv,
                    namespace=self.namespace,
                    label_selector=self.label_selector,
                    field_selector=self.field_selector,
                    timeout_seconds=random.randint(*WATCH_TIMEOUT_RANGE),
                ):
                    events += 1
                    self._apply_watch_event(event)
                ended = "timeout"
            except Gone:
                metrics.INFORMER_WATCH_ENDS.labels(self.name, "expired").inc()
                log.info(
                    "informer watch expired", resource=self.name, resource_version=self._last_rv
                )
                if not events:
                    # Refused before any event, maybe right after a fresh list: back off so that
                    # a server that keeps answering 410 cannot drive a list/watch loop.
                    await asyncio.sleep(backoff.next())
                return "expired"
            except WatchStalled:
                ended = "inactivity"
            except TransportError as exc:
                ended = "error"
                log.info("informer watch disconnected", resource=self.name, error=str(exc))
            except ApiError as exc:
                ended = {401: "unauthorized", 403: "forbidden", 429: "throttled"}.get(
                    exc.status, "error"
                )
                log.warning("informer watch failed", resource=self.name, error=str(exc))
            metrics.INFORMER_WATCH_ENDS.labels(self.name, ended).inc()

            # A stream that ends quickly without events is an error, not a normal timeout.
            healthy = ended == "timeout" and (events or time.monotonic() - started >= 1.0)
            if healthy:
                backoff.success()
            else:
                await asyncio.sleep(backoff.next())

    # --- applying changes ---------------------------------------------------------------------

    async def _list_and_replace(self, reason: str) -> None:
        started = time.monotonic()
        try:
            listing = await self.client.list(
                self.resource,
                namespace=self.namespace,
                label_selector=self.label_selector,
                field_selector=self.field_selector,
            )
        except KubeError:
            metrics.INFORMER_LISTS.labels(self.name, reason, "error").inc()
            raise
        metrics.INFORMER_LISTS.labels(self.name, reason, "success").inc()
        metrics.INFORMER_LIST_DURATION.labels(self.name).observe(time.monotonic() - started)
        self.last_activity = time.monotonic()

        kind = self.resource.kind
        api_version = self.resource.api_version
        fresh: dict[str, dict[str, Any]] = {}
        for item in listing.get("items") or []:
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", api_version)
            fresh[object_key(item)] = strip_managed_fields(item)

        initial = not self.synced
        for key in [key for key in self._store if key not in fresh]:
            metrics.INFORMER_TOMBSTONES.labels(self.name).inc()
            self._delete(key, final_state_unknown=True)
        for key, obj in fresh.items():
            self._upsert(key, obj, initial=initial)
        self._last_rv = listing["metadata"]["resourceVersion"]
        metrics.INFORMER_STORE_OBJECTS.labels(self.name).set(len(self._store))
        if initial:
            self._synced.set()
            metrics.INFORMER_SYNCED.labels(self.name).set(1)
            log.info("informer synced", resource=self.name, objects=len(self._store))

    def _apply_watch_event(self, event: dict[str, Any]) -> None:
        event_type = event.get("type", "")
        obj = event.get("object") or {}
        metrics.INFORMER_WATCH_EVENTS.labels(self.name, event_type).inc()
        self.last_activity = time.monotonic()
        metrics.INFORMER_LAST_EVENT.labels(self.name).set(time.time())
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if event_type == "BOOKMARK":
            if rv:
                self._last_rv = rv
            return
        if event_type not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("informer skipped unknown event", resource=self.name, type=event_type)
            return
        strip_managed_fields(obj)
        key = object_key(obj)
        if event_type == "DELETED":
            self._delete(key, last_state=obj)
        else:
            self._upsert(key, obj)
        if rv:
            self._last_rv = rv
        metrics.INFORMER_STORE_OBJECTS.labels(self.name).set(len(self._store))

    def _upsert(self, key: str, obj: dict[str, Any], *, initial: bool = False) -> None:
        old = self._store.get(key)
        if old is not None and _rv(old) == _rv(obj):
            return  # replayed or unchanged: handlers have seen this state already
        if old is not None:
            self._index_remove(key, old)
        self._store[key] = obj
        self._index_add(key, obj)
        event = Event(UPDATED, obj, old=old) if old is not None else Event(ADDED, obj)
        if initial:
            event = Event(event.type, obj, old=old, initial=True)
        self._notify(event)

    def _delete(
        self,
        key: str,
        *,
        last_state: dict[str, Any] | None = None,
        final_state_unknown: bool = False,
    ) -> None:
        old = self._store.pop(key, None)
        if old is not None:
            self._index_remove(key, old)
        obj = last_state or old
        if obj is not None:
            self._notify(Event(DELETED, obj, final_state_unknown=final_state_unknown))

    def _notify(self, event: Event) -> None:
        for handler in self._handlers:
            self._call(handler, event)

    def _call(self, handler: Handler, event: Event) -> None:
        try:
            handler(event)
        except Exception:
            # A faulty handler must not stop the informer for every other handler.
            log.exception("informer handler failed", resource=self.name, type=event.type)

    def _index_add(self, key: str, obj: dict[str, Any]) -> None:
        for name, func in self._indexers.items():
            for value in func(obj):
                self._indexes[name].setdefault(value, set()).add(key)

    def _index_remove(self, key: str, obj: dict[str, Any]) -> None:
        for name, func in self._indexers.items():
            for value in func(obj):
                keys = self._indexes[name].get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._indexes[name][value]


def _rv(obj: dict[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


class _Backoff:
    """List/watch backoff: 0.8 s doubling with jitter, capped at 30 s, reset after 2 quiet min."""

    def __init__(self) -> None:
        self._delay = BACKOFF_INITIAL
        self._last_failure = 0.0

    def next(self) -> float:
        now = time.monotonic()
        if now - self._last_failure > BACKOFF_RESET_AFTER:
            self._delay = BACKOFF_INITIAL
        self._last_failure = now
        delay = self._delay * (1 + random.random())
        self._delay = min(self._delay * 2, BACKOFF_MAX)
        return min(delay, BACKOFF_MAX)

    def success(self) -> None:
        if time.monotonic() - self._last_failure > BACKOFF_RESET_AFTER:
            self._delay = BACKOFF_INITIAL
