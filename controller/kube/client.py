"""An asyncio client for the Kubernetes REST API over one shared aiohttp session.

kubernetes_asyncio is used only to load configuration (kubeconfig or in-cluster service account,
including token refresh); requests, retries, error mapping and watch streams are ours, so that
their timeouts and failure modes are explicit. Caching and list/watch bookkeeping live in
`controller.runtime.informer`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import Configuration

from controller import metrics
from controller.kube.errors import (
    ApiError,
    ServerError,
    TooManyRequests,
    TransportError,
    WatchStalled,
    error_for,
)
from controller.kube.resources import Resource

log = structlog.get_logger(__name__)

PATCH_CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)
# Transient failures are retried this many times, with these waits (seconds) between tries.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
MAX_WATCH_LINE = 32 * 1024 * 1024
DEFAULT_WATCH_INACTIVITY = 70.0
DEFAULT_FIELD_MANAGER = "localmodel-controller"


class KubeClient:
    """Talks to one API server. Safe to share between tasks; close it once at shutdown."""

    def __init__(self, configuration: Configuration, *, user_agent: str) -> None:
        self._configuration = configuration
        self.host = configuration.host.rstrip("/")
        self._host_label = urlsplit(self.host).netloc
        self._ssl = _ssl_context(configuration)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100, ssl=self._ssl),
            headers={"User-Agent": user_agent, "Accept": "application/json"},
            read_bufsize=2**21,
        )

    @classmethod
    async def from_kubeconfig(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        context: str | None = None,
        user_agent: str = DEFAULT_FIELD_MANAGER,
    ) -> KubeClient:
        """Load credentials from `path`, or in-cluster, or from ~/.kube/config (in that order)."""
        configuration = Configuration()
        if path is not None:
            await kube_config.load_kube_config(
                config_file=os.fspath(path), context=context, client_configuration=configuration
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            kube_config.load_incluster_config(client_configuration=configuration)
        else:
            await kube_config.load_kube_config(context=context, client_configuration=configuration)
        return cls(configuration, user_agent=user_agent)

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- typed verbs ---------------------------------------------------------------------------

    async def get(self, resource: Resource, name: str, *, namespace: str | None = None) -> dict:
        """Return one object; raises `NotFound` when it does not exist."""
        return await self._request("GET", resource.path(namespace=namespace, name=name))

    async def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
        limit: int = 500,
    ) -> dict:
        """Return the whole collection as one List object, following `continue` pages."""
        params: dict[str, str] = {"limit": str(limit)}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if resource_version is not None:
            params["resourceVersion"] = resource_version
            if resource_version_match:
                params["resourceVersionMatch"] = resource_version_match
                params.pop("limit")
        path = resource.path(namespace=namespace)
        page = await self._request("GET", path, params=params, verb="LIST")
        items = list(page.get("items") or [])
        while (page.get("metadata") or {}).get("continue"):
            params = {**params, "continue": page["metadata"]["continue"]}
            params.pop("resourceVersion", None)
            params.pop("resourceVersionMatch", None)
            page = await self._request("GET", path, params=params, verb="LIST")
            items.extend(page.get("items") or [])
        page["items"] = items
        page.setdefault("metadata", {}).pop("continue", None)
        return page

    async def create(
        self, resource: Resource, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> dict:
        """Create an object; raises `AlreadyExists` (see `.being_deleted`) on a name clash."""
        return await self._request("POST", resource.path(namespace=namespace), body=body)

    async def replace(
        self,
        resource: Resource,
        name: str,
        body: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> dict:
        path = resource.path(namespace=namespace, name=name, subresource=subresource)
        return await self._request("PUT", path, body=body)

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> dict:
        """Patch an object. `patch_type` is "merge", "json" (RFC 6902) or "strategic"."""
        path = resource.path(namespace=namespace, name=name, subresource=subresource)
        return await self._request(
            "PATCH", path, body=patch, content_type=PATCH_CONTENT_TYPES[patch_type]
        )

    async def delete(
        self,
        resource: Resource,
        name: str,
        *,
        namespace: str | None = None,
        propagation_policy: str | None = None,
        grace_period_seconds: int | None = None,
        precondition_uid: str | None = None,
    ) -> dict | None:
        """Delete an object; raises `NotFound` when it is already gone."""
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation_policy:
            options["propagationPolicy"] = propagation_policy
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if precondition_uid:
            options["preconditions"] = {"uid": precondition_uid}
        path = resource.path(namespace=namespace, name=name)
        return await self._request("DELETE", path, body=options)

    async def watch(
        self,
        resource: Resource,
        *,
        resource_version: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int | None = None,
        inactivity_timeout: float = DEFAULT_WATCH_INACTIVITY,
    ) -> AsyncIterator[dict]:
        """Yield watch events (`{"type", "object"}`) from `resource_version` on.

        ADDED, MODIFIED, DELETED and BOOKMARK events are yielded. An in-stream ERROR event is
        raised as the matching `ApiError` (410 becomes `Gone`), exactly as if the server had
        answered the request with that status. A stream that is silent for `inactivity_timeout`
        seconds raises `WatchStalled`; the server ending the stream simply ends the iteration.
        """
        params = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
        }
        if timeout_seconds is not None:
            params["timeoutSeconds"] = str(timeout_seconds)
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=inactivity_timeout)
        url = self.host + resource.path(namespace=namespace)
        try:
            async with self._session.get(
                url, params=params, headers=await self._auth_headers(), timeout=timeout
            ) as response:
                metrics.REST_REQUESTS.labels(str(response.status), "WATCH", self._host_label).inc()
                if response.status != 200:
                    raise await _error_from_response(response)
                buffer = b""
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    if len(buffer) > MAX_WATCH_LINE:
                        raise TransportError(f"watch line exceeds {MAX_WATCH_LINE} bytes")
                    while (newline := buffer.find(b"\n")) >= 0:
                        line, buffer = buffer[:newline], buffer[newline + 1 :]
                        if line.strip():
                            yield _decode_event(line)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise WatchStalled(f"no data on watch for {inactivity_timeout}s") from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"watch {resource.plural}: {exc!r}") from exc

    # --- plumbing ------------------------------------------------------------------------------

    async def _auth_headers(self) -> dict[str, str]:
        settings = await self._configuration.auth_settings()
        bearer = settings.get("BearerToken")
        if bearer and bearer.get("value"):
            return {"Authorization": bearer["value"]}
        return {}

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        verb: str | None = None,
    ) -> dict:
        """Send one request, retrying transient failures (connection, 429, 5xx) a few times."""
        verb = verb or method
        for attempt, delay in enumerate((*RETRY_DELAYS, None)):
            try:
                return await self._request_once(
                    method, path, params=params, body=body, content_type=content_type, verb=verb
                )
            except (TransportError, TooManyRequests, ServerError) as exc:
                if delay is None:
                    raise
                code = str(exc.status) if isinstance(exc, ApiError) else "<error>"
                metrics.REST_REQUEST_RETRIES.labels(code, verb, self._host_label).inc()
                wait = delay * (1 + random.random())
                if isinstance(exc, ApiError) and exc.retry_after:
                    wait = max(wait, min(exc.retry_after, 30.0))
                log.warning(
                    "api request retried", verb=verb, path=path, attempt=attempt + 1,
                    error=str(exc), wait_seconds=round(wait, 2),
                )  # fmt: skip
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _request_once(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        body: Any,
        content_type: str,
        verb: str,
    ) -> dict:
        headers = await self._auth_headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        started = time.monotonic()
        try:
            async with self._session.request(
                method, self.host + path, params=params, data=data, headers=headers,
                timeout=REQUEST_TIMEOUT,
            ) as response:  # fmt: skip
                metrics.REST_REQUESTS.labels(str(response.status), method, self._host_label).inc()
                if response.status >= 400:
                    raise await _error_from_response(response)
                payload = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            metrics.REST_REQUESTS.labels("<error>", method, self._host_label).inc()
            raise TransportError(f"{method} {path}: {exc!r}") from exc
        finally:
            metrics.REST_REQUEST_DURATION.labels(verb, self._host_label).observe(
                time.monotonic() - started
            )
        return json.loads(payload) if payload else {}


def _ssl_context(configuration: Configuration) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def _error_from_response(response: aiohttp.ClientResponse) -> ApiError:
    raw = await response.read()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {"message": raw[:500].decode("utf-8", "replace")}
    if not isinstance(body, dict):
        body = {"message": str(body)[:500]}
    retry_after = response.headers.get("Retry-After")
    return error_for(
        response.status, body, float(retry_after) if retry_after and retry_after.isdigit() else None
    )


def _decode_event(line: bytes) -> dict:
    event = json.loads(line)
    if event.get("type") == "ERROR":
        status = event.get("object") or {}
        raise error_for(int(status.get("code") or 500), status, None)
    return event
