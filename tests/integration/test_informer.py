"""The informer against a real kube-apiserver: list, watch, relist, tombstones, bookmarks, sync.

Faults the API server cannot be asked for (a 410 on the next watch, a dropped connection, a
silent stream) come from `WatchFaultProxy`, a loopback HTTP proxy in front of the test API
server that forwards everything and misbehaves only on the watch requests it is told to.
Everything the informer learns is checked against what the API server itself reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import Configuration

from controller.kube import errors
from controller.kube.client import KubeClient
from controller.kube.resources import CONFIGMAPS
from controller.metrics import REGISTRY
from controller.runtime import controller as controller_module
from controller.runtime import informer as informer_module
from controller.runtime.controller import Controller
from controller.runtime.informer import ADDED, DELETED, UPDATED, Event, Informer, object_key
from controller.testing.controlplane import ControlPlane
from controller.testing.names import unique_name as make_unique_name
from controller.testing.waiting import consistently, eventually

RESOURCE = "configmaps"  # the informer's metric label for CONFIGMAPS
SYNC_TIMEOUT = 10.0
EXPIRED_STATUS = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "too old resource version: 1 (1000)",
    "reason": "Expired",
    "code": 410,
}

PARTIAL_STREAM_EVENT = {
    "type": "ADDED",
    "object": {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "whole", "namespace": "ns", "resourceVersion": "7"}},
}  # fmt: skip


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(name="namespace")
def _namespace(module_namespace: str) -> str:
    return module_namespace  # objects have unique names; one namespace serves the module


@pytest.fixture(name="label")
def _label(unique_name: Callable[..., str]) -> str:
    """A label value unique to this test; its objects carry `set=<label>`."""
    return unique_name()


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # Reconnect waits start at 0.05 s instead of 0.8 s so fault tests take fractions of a second;
    # the tight-loop test restores the real value.
    monkeypatch.setattr(informer_module, "BACKOFF_INITIAL", 0.05)


class Recorder:
    """A handler that keeps every event, and whether the informer was synced at the time."""

    def __init__(self, informer: Informer) -> None:
        self.informer = informer
        self.events: list[Event] = []
        self.synced_during: list[bool] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self.synced_during.append(self.informer.synced)

    def of(self, type_: str, name: str) -> list[Event]:
        return [e for e in self.events if e.type == type_ and e.obj["metadata"]["name"] == name]

    def has(self, type_: str, name: str) -> bool:
        return bool(self.of(type_, name))


Run = Callable[[Informer], Any]


@pytest.fixture(name="run")
async def _run() -> AsyncIterator[Run]:
    """`await run(informer)`: start it and wait until synced; it is cancelled after the test."""
    tasks: list[asyncio.Task[None]] = []

    async def run(informer: Informer) -> asyncio.Task[None]:
        task = asyncio.create_task(informer.run())
        tasks.append(task)
        await asyncio.wait_for(informer.wait_synced(), timeout=SYNC_TIMEOUT)
        return task

    yield run
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def configmap(name: str, label: str | None, **data: str) -> dict[str, Any]:
    labels = {"set": label} if label else {}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels},
            "data": data}  # fmt: skip


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"resource": RESOURCE, **labels}) or 0.0


def lists(reason: str) -> float:
    return metric("localmodel_informer_lists_total", reason=reason, result="success")


async def server_versions(kube: KubeClient, namespace: str, label: str) -> dict[str, str]:
    listing = await kube.list(CONFIGMAPS, namespace=namespace, label_selector=f"set={label}")
    return {object_key(item): item["metadata"]["resourceVersion"] for item in listing["items"]}


def store_versions(informer: Informer) -> dict[str, str]:
    return {object_key(obj): obj["metadata"]["resourceVersion"] for obj in informer.list()}


class WatchFaultProxy:
    """Forwards HTTP to the test API server; the watch requests it is told to, it breaks.

    `faults` are consumed one per watch request: "gone-status" answers HTTP 410, "gone-event"
    answers 200 with an in-stream ERROR 410, "stall" sends headers and then nothing, "reset"
    closes the connection unanswered, "partial-line" ends the stream in the middle of a line
    (after one whole event, `PARTIAL_STREAM_EVENT`). `always`
    applies a fault to every watch. While `gate` is clear, watch requests wait (`held` counts
    them). `open_watches` counts streams whose headers went out; `cut_watches()` drops them,
    as a network reset would.
    """

    def __init__(self, upstream: str, ssl_context: ssl.SSLContext) -> None:
        self.upstream = upstream
        self.ssl_context = ssl_context
        self.faults: list[str] = []
        self.always: str | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = 0
        self.open_watches = 0
        self.watch_queries: list[dict[str, str]] = []
        self._streams: dict[asyncio.Task[Any], web.Request] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl_context))

    async def stop(self) -> None:
        self.gate.set()
        self.cut_watches()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def wait_watching(self, count: int = 1) -> None:
        """Wait until `count` watch streams in all have been opened through the proxy."""
        await eventually(lambda: self.open_watches >= count, timeout=10)

    def cut_watches(self) -> None:
        for task, request in list(self._streams.items()):
            if request.transport is not None:
                request.transport.close()
            task.cancel()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "true":
            return await self._forward(request)
        self.watch_queries.append(dict(request.query))
        self.held += 1
        try:
            await self.gate.wait()
        finally:
            self.held -= 1
        fault = self.faults.pop(0) if self.faults else self.always
        if fault == "gone-status":
            return web.json_response(EXPIRED_STATUS, status=410)
        if fault == "gone-event":
            line = json.dumps({"type": "ERROR", "object": EXPIRED_STATUS}) + "\n"
            return web.Response(text=line, content_type="application/json")
        if fault == "reset":
            assert request.transport is not None
            request.transport.close()
            return web.Response()  # never sent: the connection is gone
        if fault == "partial-line":
            lines = json.dumps(PARTIAL_STREAM_EVENT) + "\n" + '{"type": "MODIFIED", "obj'
            return web.Response(text=lines, content_type="application/json")
        task = asyncio.current_task()
        assert task is not None
        self._streams[task] = request
        try:
            if fault == "stall":
                response = web.StreamResponse()
                response.content_type = "application/json"
                await response.prepare(request)
                self.open_watches += 1
                await asyncio.Event().wait()  # silent until cut
            return await self._forward(request, streaming=True)
        finally:
            self._streams.pop(task, None)

    async def _forward(
        self, request: web.Request, *, streaming: bool = False
    ) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k in ("Accept", "Content-Type")}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=await request.read() or None,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None),
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            await response.prepare(request)
            self.open_watches += streaming
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


@pytest.fixture(name="proxy")
async def _proxy(control_plane: ControlPlane) -> AsyncIterator[WatchFaultProxy]:
    configuration = Configuration()
    await kube_config.load_kube_config(
        config_file=str(control_plane.kubeconfig), client_configuration=configuration
    )
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    context.load_cert_chain(configuration.cert_file, configuration.key_file)
    proxy = WatchFaultProxy(configuration.host, context)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@pytest.fixture(name="proxied")
async def _proxied(proxy: WatchFaultProxy) -> AsyncIterator[KubeClient]:
    """A client that reaches the API server only through `proxy`."""
    async with KubeClient(Configuration(host=proxy.url), user_agent="informer-tests") as client:
        yield client


# --- list, watch and the store --------------------------------------------------------------


async def test_informer_initial_list_reaches_handlers_before_synced(
    kube: KubeClient, namespace: str, label: str, run: Run
) -> None:
    names = [f"{label}-{index}" for index in range(3)]
    for name in names:
        await kube.create(CONFIGMAPS, configmap(name, label), namespace=namespace)
    informer = Informer(kube, CONFIGMAPS, namespace=namespace, label_selector=f"set={label}")
    recorder = Recorder(informer)
    informer.add_handler(recorder)
    assert not informer.synced

    await run(informer)

    assert sorted(e.obj["metadata"]["name"] for e in recorder.events) == names
    assert all(e.type == ADDED and e.initial for e in recorder.events)
    assert recorder.synced_during == [False, False, False], "synced only after delivery"
    assert store_versions(informer) == await server_versions(kube, namespace, label)
    assert metric("localmodel_informer_synced") == 1
    assert all(
        e.obj["kind"] == "ConfigMap" and e.obj["apiVersion"] == "v1" for e in recorder.events
    )
    assert all("managedFields" not in e.obj["metadata"] for e in recorder.events)


async def test_informer_delivers_create_update_delete_with_old_and_new(
    kube: KubeClient, namespace: str, label: str, run: Run
) -> None:
    informer = Informer(kube, CONFIGMAPS, namespace=namespace, label_selector=f"set={label}")
    recorder = Recorder(informer)
    informer.add_handler(recorder)
    await run(informer)
    name = f"{label}-a"

    created = await kube.create(CONFIGMAPS, configmap(name, label, v="1"), namespace=namespace)
    await eventually(lambda: recorder.has(ADDED, name), timeout=5)
    [added] = recorder.of(ADDED, name)
    assert not added.initial
    assert informer.get(name, namespace)["data"] == {"v": "1"}

    updated = await kube.patch(CONFIGMAPS, name, {"data": {"v": "2"}}, namespace=namespace)
    await eventually(lambda: recorder.has(UPDATED, name), timeout=5)
    [update] = recorder.of(UPDATED, name)
    assert update.old is not None
    assert (update.old["data"], update.obj["data"]) == ({"v": "1"}, {"v": "2"})
    assert update.old["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert update.obj["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]

    await kube.delete(CONFIGMAPS, name, namespace=namespace)
    await eventually(lambda: recorder.has(DELETED, name), timeout=5)
    [deleted] = recorder.of(DELETED, name)
    assert not deleted.final_state_unknown
    assert deleted.obj["data"] == {"v": "2"}
    assert informer.get(name, namespace) is None
    assert [e.type for e in recorder.events] == [ADDED, UPDATED, DELETED]


async def test_informer_store_matches_server_after_churn(
    kube: KubeClient, namespace: str, label: str, run: Run
) -> None:
    informer = Informer(kube, CONFIGMAPS, namespace=namespace, label_selector=f"set={label}")
    await run(informer)

    for index in range(12):
        await kube.create(CONFIGMAPS, configmap(f"{label}-{index}", label), namespace=namespace)
    for index in range(0, 12, 2):
        await kube.patch(
            CONFIGMAPS, f"{label}-{index}", {"data": {"n": str(index)}}, namespace=namespace
        )
    for index in range(0, 12, 3):
        await kube.delete(CONFIGMAPS, f"{label}-{index}", namespace=namespace)

    expected = await server_versions(kube, namespace, label)
    await eventually(lambda: store_versions(informer) == expected, timeout=10)
    assert len(informer) == 8


async def test_informer_with_label_selector_sees_only_matching_objects(
    kube: KubeClient, namespace: str, label: str, run: Run
) -> None:
    matching, other = f"{label}-in", f"{label}-out"
    informer = Informer(kube, CONFIGMAPS, namespace=namespace, label_selector=f"set={label}")
    recorder = Recorder(informer)
    informer.add_handler(recorder)
    await run(informer)

    await kube.create(CONFIGMAPS, configmap(other, None), namespace=namespace)
    await kube.create(CONFIGMAPS, configmap(matching, label), namespace=namespace)
    await eventually(lambda: recorder.has(ADDED, matching), timeout=5)
    assert informer.get(other, namespace) is None

    # Relabelling moves objects in and out of the selection: a delete and an add.
    await kube.patch(
        CONFIGMAPS, matching, {"metadata": {"labels": {"set": "x"}}}, namespace=namespace
    )
    await kube.patch(
        CONFIGMAPS, other, {"metadata": {"labels": {"set": label}}}, namespace=namespace
    )
    await eventually(lambda: recorder.has(ADDED, other), timeout=5)
    assert recorder.of(DELETED, matching)
    assert set(store_versions(informer)) == {f"{namespace}/{other}"}
    assert all(e.obj["metadata"]["labels"].get("set") == label for e in recorder.events
               if e.type == ADDED)  # fmt: skip


async def test_informer_bookmarks_advance_resume_version_without_reaching_handlers(
    proxied: KubeClient, proxy: WatchFaultProxy, kube: KubeClient, namespace: str, label: str,
    run: Run, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # The API server sends a bookmark about 2 s before a watch's deadline, once the resource's
    # version moved on; 3 s watches make that quick. The proxy only passes the streams along.
    monkeypatch.setattr(informer_module, "WATCH_TIMEOUT_RANGE", (3, 3))
    await kube.create(CONFIGMAPS, configmap(f"{label}-a", label), namespace=namespace)
    informer = Informer(proxied, CONFIGMAPS, namespace=namespace, label_selector=f"set={label}")
    recorder = Recorder(informer)
    informer.add_handler(recorder)
    bookmarks = metric("localmodel_informer_watch_events_total", type="BOOKMARK")
    await run(informer)
    await proxy.wait_watching()
    listed_version = proxy.watch_queries[0]["resourceVersion"]
    store_before = store_versions(informer)

    # An object outside the selection moves the version on without producing an event for us,
    # so only a bookmark can move the informer's resume version.
    await kube.create(CONFIGMAPS, configmap(f"{label}-unselected", None), namespace=namespace)

    def resumed_from_bookmark() -> None:
        versions = [query["resourceVersion"] for query in proxy.watch_queries]
        assert any(version != listed_version for version in versions), versions

    await eventually(resumed_from_bookmark, timeout=15)
    assert metric("localmodel_informer_watch_events_total", type="BOOKMARK") > bookmarks
    assert [e.type for e in recorder.events] == [ADDED], "bookmarks never reach handlers"
    assert store_versions(informer) == store_before


async def test_informer_index_follows_updates_and_deletes(
    kube: KubeClient, namespace: str, label: str, run: Run
) -> None:
    informer = Informer(kube, CONFIGMAPS, namespace=namespace, label_selector=f"set={label}")
    informer.add_index("tier", lambda obj: [(obj.get("data") or {}).get("tier", "none")])
    await kube.create(CONFIGMAPS, configmap(f"{label}-a", label, tier="gold"), namespace=namespace)
    await run(informer)
    assert [o["metadata"]["name"] for o in informer.by_index("tier", "gold")] == [f"{label}-a"]

    await kube.create(CONFIGMAPS, configmap(f"{label}-b", label, tier="gold"), namespace=namespace)
    await kube.patch(CONFIGMAPS, f"{label}-a", {"data": {"tier": "silver"}}, namespace=namespace)
    await kube.delete(CONFIGMAPS, f"{label}-b", namespace=namespace)
    await kube.create(CONFIGMAPS, configmap(f"{label}-c", label, tier="gold"), namespace=namespace)

    def index_settled() -> None:
        gold = [o["metadata"]["name"] for o in informer.by_index("tier", "gold")]
        silver = [o["metadata"]["name"] for o in informer.by_index("tier", "silver")]
        assert (gold, silver) == ([f"{label}-c"], [f"{label}-a"])

    await eventually(index_settled, timeout=5)


async def test_informer_handler_added_after_sync_gets_store_as_initial_adds(
    kube: KubeClient, namespace: str, label: str, run: Run
) -> None:
    for suffix in ("a", "b"):
        await kube.create(CONFIGMAPS, configmap(f"{label}-{suffix}", label), namespace=namespace)
    informer = Informer(kube, CONFIGMAPS, namespace=namespace, label_selector=f"set={label}")
    await run(informer)

    late = Recorder(informer)
    informer.add_handler(late)

    assert sorted(e.obj["metadata"]["name"] for e in late.events) == [f"{label}-a", f"{label}-b"]
    assert all(e.type == ADDED and e.initial for e in late.events)
    await kube.create(CONFIGMAPS, configmap(f"{label}-c", label), namespace=namespace)
    await eventually(lambda: late.has(ADDED, f"{label}-c"), timeout=5)


async def test_informer_failing_handler_does_not_starve_the_others(
    kube: KubeClient, namespace: str, label: str, run: Run
) -> None:
    informer = Informer(kube, CONFIGMAPS, namespace=namespace, label_selector=f"set={label}")

    def broken(event: Event) -> None:
        raise RuntimeError("handler bug")

    informer.add_handler(broken)
    recorder = Recorder(informer)
    informer.add_handler(recorder)
    await run(informer)

    await kube.create(CONFIGMAPS, configmap(f"{label}-a", label), namespace=namespace)
    await kube.create(CONFIGMAPS, configmap(f"{label}-b", label), namespace=namespace)

    await eventually(lambda: len(recorder.events) == 2, timeout=5)


# --- faults: disconnects, stalls, 410 and relists -------------------------------------------


async def test_informer_resumes_watch_after_disconnect_without_relisting(
    proxied: KubeClient, proxy: WatchFaultProxy, kube: KubeClient, namespace: str, label: str,
    run: Run,
) -> None:  # fmt: skip
    informer = Informer(proxied, CONFIGMAPS, namespace=namespace, label_selector=f"set={label}")
    recorder = Recorder(informer)
    informer.add_handler(recorder)
    await kube.create(CONFIGMAPS, configmap(f"{label}-a", label), namespace=namespace)
    await run(informer)
    relists = lists("expired") + lists("initial")
    errors_before = metric("localmodel_informer_watch_ends_total", reason="error")
    await proxy.wait_watching()
    resume_from = proxy.watch_queries[0]["resourceVersion"]

    proxy.gate.clear()
    proxy.cut_watches()
    await eventually(lambda: proxy.held == 1, timeout=5)
    await kube.create(CONFIGMAPS, configmap(f"{label}-b", label), namespace=namespace)
    proxy.gate.set()

    await eventually(lambda: recorder.has(ADDED, f"{label}-b"), timeout=5)
    assert len(recorder.of(ADDED, f"{label}-b")) == 1
    assert len(recorder.of(ADDED, f"{label}-a")) == 1, "no replay of what was already seen"
    assert lists("expired") + lists("initial") == relists, "a reconnect must not relist"
    assert metric("localmodel_informer_watch_ends_total", reason="error") == errors_before + 1
    rewatch = proxy.watch_queries[-1]
    assert (rewatch["resourceVersion"], rewatch["allowWatchBookmarks"]) == (resume_from, "true")
    assert 300 <= int(rewatch["timeoutSeconds"]) <= 600


async def test_client_watch_raises_watch_stalled_on_silent_stream(
    proxied: KubeClient, proxy: WatchFaultProxy, kube: KubeClient, namespace: str
) -> None:
    since = (await kube.list(CONFIGMAPS, namespace=namespace))["metadata"]["resourceVersion"]
    proxy.faults = ["stall"]

    with pytest.raises(errors.WatchStalled):
        async with asyncio.timeout(10):
            async for _ in proxied.watch(
                CONFIGMAPS, resource_version=since, namespace=namespace, inactivity_timeout=0.3
            ):
                pass


async def test_client_watch_drops_partial_last_line_of_a_stream(
    proxied: KubeClient, proxy: WatchFaultProxy, namespace: str
) -> None:
    proxy.faults = ["partial-line"]

    async with asyncio.timeout(10):
        events = [
            e async for e in proxied.watch(CONFIGMAPS, resource_version="1", namespace=namespace)
        ]

    assert events == [PARTIAL_STREAM_EVENT]


async def test_informer_keeps_retrying_through_repeated_connection_resets(
    proxied: KubeClient, proxy: WatchFaultProxy, kube: KubeClient, namespace: str, label: str,
    run: Run,
) -> None:  # fmt: skip
    informer = Informer(proxied, CONFIGMAPS, namespace=namespace, label_selector=f"set={label}")
    recorder = Recorder(informer)
    informer.add_handler(recorder)
    resets = metric("localmodel_informer_watch_ends_total", reason="error")
    proxy.faults = ["reset"] * 6
    await run(informer)

    await kube.create(CONFIGMAPS, configmap(f"{label}-a", label), namespace=namespace)

    await eventually(lambda: recorder.has(ADDED, f"{label}-a"), timeout=15)
    assert proxy.faults == []
    assert len(proxy.watch_queries) == 7
    # aiohttp itself retries a request once when a reused connection dies before the answer.
    assert metric("localmodel_informer_watch_ends_total", reason="error") >= resets + 3
    assert {q["resourceVersion"] for q in proxy.watch_queries} == {
        proxy.watch_queries[0]["resourceVersion"]
    }


async def test_informer_reconnects_after_silent_stream(
    proxied: KubeClient, proxy: WatchFaultProxy, kube: KubeClient, namespace: str, label: str,
    run: Run, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    assert KubeClient.watch.__kwdefaults__ is not None
    monkeypatch.setitem(KubeClient.watch.__kwdefaults__, "inactivity_timeout", 0.5)
    informer = Informer(proxied, CONFIGMAPS, namespace=namespace, label_selector=f"set={label}")
    recorder = Recorder(informer)
    informer.add_handler(recorder)
    await run(informer)
    stalls = metric("localmodel_informer_watch_ends_total", reason="inactivity")
    await proxy.wait_watching()

    proxy.faults = ["stall"]
    proxy.cut_watches()
    await proxy.wait_watching(2)  # the stalled one
    await kube.create(CONFIGMAPS, configmap(f"{label}-a", label), namespace=namespace)

    await eventually(lambda: recorder.has(ADDED, f"{label}-a"), timeout=10)
    assert metric("localmodel_informer_watch_ends_total", reason="inactivity") == stalls + 1


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param("gone-event", id="error-event-in-stream"),
        pytest.param("gone-status", id="http-410"),
    ],
)
async def test_informer_relist_after_410_emits_tombstone_for_missed_delete(
    proxied: KubeClient, proxy: WatchFaultProxy, kube: KubeClient, namespace: str, label: str,
    run: Run, fault: str,
) -> None:  # fmt: skip
    kept, gone, new = f"{label}-kept", f"{label}-gone", f"{label}-new"
    for name in (kept, gone):
        await kube.create(CONFIGMAPS, configmap(name, label, v="1"), namespace=namespace)
    informer = Informer(proxied, CONFIGMAPS, namespace=namespace, label_selector=f"set={label}")
    recorder = Recorder(informer)
    informer.add_handler(recorder)
    await run(informer)
    last_known = informer.get(gone, namespace)
    expired, tombstones = lists("expired"), metric("localmodel_informer_tombstones_total")
    await proxy.wait_watching()

    # Changes made while the informer is not watching, then a 410 on its next watch.
    proxy.gate.clear()
    proxy.cut_watches()
    await eventually(lambda: proxy.held == 1, timeout=5)
    await kube.delete(CONFIGMAPS, gone, namespace=namespace)
    await kube.patch(CONFIGMAPS, kept, {"data": {"v": "2"}}, namespace=namespace)
    await kube.create(CONFIGMAPS, configmap(new, label), namespace=namespace)
    proxy.faults = [fault]
    proxy.gate.set()

    await eventually(lambda: recorder.has(DELETED, gone), timeout=10)
    [tombstone] = recorder.of(DELETED, gone)
    assert tombstone.final_state_unknown
    assert tombstone.obj == last_known, "a tombstone carries the last state the informer knew"
    await eventually(lambda: recorder.has(ADDED, new) and recorder.has(UPDATED, kept), timeout=5)
    assert not recorder.of(ADDED, new)[0].initial
    assert recorder.of(UPDATED, kept)[0].obj["data"] == {"v": "2"}
    assert lists("expired") == expired + 1
    assert metric("localmodel_informer_tombstones_total") == tombstones + 1
    assert store_versions(informer) == await server_versions(kube, namespace, label)

    # Afterwards the informer watches again from the fresh list.
    await kube.delete(CONFIGMAPS, kept, namespace=namespace)
    await eventually(lambda: recorder.has(DELETED, kept), timeout=5)
    assert not recorder.of(DELETED, kept)[0].final_state_unknown


async def test_informer_does_not_relist_in_a_tight_loop_when_every_watch_is_gone(
    proxied: KubeClient, proxy: WatchFaultProxy, namespace: str, label: str, run: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(informer_module, "BACKOFF_INITIAL", 0.8)
    proxy.always = "gone-status"
    informer = Informer(proxied, CONFIGMAPS, namespace=namespace, label_selector=f"set={label}")
    expired = lists("expired")
    await run(informer)

    await eventually(lambda: lists("expired") >= expired + 1, timeout=10)

    # Backoff between relists: 0.8-1.6 s, then 1.6-3.2 s; never hundreds of lists a second.
    def few_relists() -> None:
        relists = lists("expired") - expired
        assert relists <= 3, f"{relists} relists within 2 s"

    await consistently(few_relists, duration=2.0)
    assert len(proxy.watch_queries) <= 4


# --- controllers wait for informers ---------------------------------------------------------


async def test_controller_reconciles_only_after_its_informer_synced(
    kube: KubeClient, namespace: str, label: str
) -> None:
    await kube.create(CONFIGMAPS, configmap(f"{label}-a", label), namespace=namespace)
    informer = Informer(kube, CONFIGMAPS, namespace=namespace, label_selector=f"set={label}")
    seen: list[tuple[str, bool]] = []

    async def reconcile(key: str) -> None:
        object_namespace, name = key.split("/")
        seen.append((key, informer.get(name, object_namespace) is not None))

    controller = Controller(make_unique_name(label), reconcile, informers=[informer])
    informer.add_handler(lambda event: controller.enqueue(object_key(event.obj)))
    controller_task = asyncio.create_task(controller.run())
    informer_task: asyncio.Task[None] | None = None
    try:
        controller.enqueue(f"{namespace}/{label}-early")
        await consistently(lambda: seen == [], duration=0.3)

        informer_task = asyncio.create_task(informer.run())

        await eventually(lambda: len(seen) == 2, timeout=SYNC_TIMEOUT)
        assert sorted(seen) == [
            (f"{namespace}/{label}-a", True),
            (f"{namespace}/{label}-early", False),
        ]
    finally:
        for task in (controller_task, informer_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def test_controller_start_fails_when_informer_does_not_sync_in_time(
    kube: KubeClient, namespace: str, label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(controller_module, "CACHE_SYNC_TIMEOUT", 0.2)
    informer = Informer(kube, CONFIGMAPS, namespace=namespace)  # never run, so never synced

    async def reconcile(key: str) -> None:
        raise AssertionError("no reconcile may run before sync")

    controller = Controller(make_unique_name(label), reconcile, informers=[informer])

    with pytest.raises(RuntimeError, match="not synced in time.*configmaps"):
        await asyncio.wait_for(controller.run(), timeout=5)
