"""HTTP endpoints of a process: /metrics on one address, /healthz and /readyz on another.

Checks are named callables returning None when fine or a reason string when not. A probe answers
200 "ok" when every check passes and 500 with one `[+]name ok` / `[-]name failed: reason` line
per check otherwise; `?verbose` always lists them.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller import metrics

log = structlog.get_logger(__name__)

Check = Callable[[], str | None]


class ProbeServer:
    """Serves metrics and health probes until `stop`."""

    def __init__(
        self,
        *,
        metrics_address: str,
        probe_address: str,
        liveness: dict[str, Check],
        readiness: dict[str, Check],
    ) -> None:
        self.metrics_address = metrics_address
        self.probe_address = probe_address
        self.liveness = liveness
        self.readiness = readiness
        self._runners: list[web.AppRunner] = []

    async def start(self) -> None:
        metrics_app = web.Application()
        metrics_app.router.add_get("/metrics", self._metrics)
        probe_app = web.Application()
        probe_app.router.add_get("/healthz", self._probe(self.liveness))
        probe_app.router.add_get("/readyz", self._probe(self.readiness))
        for app, address in ((metrics_app, self.metrics_address), (probe_app, self.probe_address)):
            if address in ("", "0"):
                continue  # disabled
            host, _, port = address.rpartition(":")
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host or "0.0.0.0", int(port)).start()
            self._runners.append(runner)
            log.info("http server listening", address=address)

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @staticmethod
    def _probe(checks: dict[str, Check]) -> Callable[[web.Request], object]:
        async def handler(request: web.Request) -> web.Response:
            lines, healthy = [], True
            for name, check in checks.items():
                try:
                    problem = check()
                except Exception as exc:  # a broken check is a failed check, not a crash
                    problem = f"check raised {exc!r}"
                healthy &= problem is None
                lines.append(f"[+]{name} ok" if problem is None else f"[-]{name} failed: {problem}")
            if healthy and "verbose" not in request.query:
                return web.Response(text="ok")
            text = "\n".join(lines) + ("\nok" if healthy else "\nhealth check failed")
            return web.Response(text=text + "\n", status=200 if healthy else 500)

        return handler
