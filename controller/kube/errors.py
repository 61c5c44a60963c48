"""Typed errors for Kubernetes API responses.

The tree, so callers can catch at the depth they care about:

    ApiError                 any non-2xx answer (status, reason, message from the Status body)
      NotFound               404
      Forbidden              403
      Conflict               409 on a write whose precondition failed (resourceVersion, uid)
        AlreadyExists        409 with reason AlreadyExists (includes "object is being deleted")
      Gone                   410: a resourceVersion is too old; the informer relists
      Invalid                422: the object or patch was rejected by validation
      TooManyRequests        429: throttled; `retry_after` holds the server's hint
      ServerError            5xx
    TransportError           the request never got an HTTP answer (connection, TLS, timeout)
      WatchStalled           a watch stream went silent past its inactivity deadline
"""

from __future__ import annotations

from typing import Any


class KubeError(Exception):
    """Base of every error raised by `controller.kube`."""


class TransportError(KubeError):
    """Raised when a request got no HTTP answer (connection refused, reset, TLS, timeout)."""


class ApiError(KubeError):
    """Raised when the API server answers with a non-2xx status."""

    def __init__(
        self,
        status: int,
        *,
        reason: str = "",
        message: str = "",
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}
        self.retry_after = retry_after

    @property
    def causes(self) -> list[dict[str, Any]]:
        return list((self.body.get("details") or {}).get("causes") or [])


class NotFound(ApiError):
    """Raised on 404: the object (or its namespace) does not exist."""


class Forbidden(ApiError):
    """Raised on 403: RBAC denies the request, or the namespace is terminating."""

    @property
    def namespace_terminating(self) -> bool:
        return any(c.get("type") == "NamespaceTerminating" for c in self.causes)


class Conflict(ApiError):
    """Raised on 409: a precondition (resourceVersion or uid) did not hold."""


class AlreadyExists(Conflict):
    """Raised on 409 AlreadyExists, including creates that race an object still being deleted."""

    @property
    def being_deleted(self) -> bool:
        return "being deleted" in self.message


class Gone(ApiError):
    """Raised on 410: the requested resourceVersion has been compacted away."""


class Invalid(ApiError):
    """Raised on 422: validation (schema, CEL rule, or a failed JSON-patch test) rejected it."""


class TooManyRequests(ApiError):
    """Raised on 429: the API server throttled the request."""


class ServerError(ApiError):
    """Raised on 5xx."""


def error_for(status: int, body: dict[str, Any] | None, retry_after: float | None) -> ApiError:
    """Build the most specific `ApiError` for an HTTP status and its Status body."""
    body = body or {}
    reason = str(body.get("reason") or "")
    message = str(body.get("message") or "")
    kind: type[ApiError]
    if status == 404:
        kind = NotFound
    elif status == 403:
        kind = Forbidden
    elif status == 409:
        kind = AlreadyExists if reason == "AlreadyExists" else Conflict
    elif status == 410:
        kind = Gone
    elif status == 422:
        kind = Invalid
    elif status == 429:
        kind = TooManyRequests
    elif status >= 500:
        kind = ServerError
    else:
        kind = ApiError
    return kind(status, reason=reason, message=message, body=body, retry_after=retry_after)


class WatchStalled(TransportError):
    """Raised when a watch stream sent nothing (not even a bookmark) for too long."""
