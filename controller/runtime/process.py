"""One controller process: its informers, controllers and HTTP probes, from start to stop.

`Process.run` starts the probe server, every informer and every controller, and returns when
SIGTERM/SIGINT arrives (graceful: controllers drain in-flight reconciles first) or when one of
its tasks dies (an informer or controller must never stop on its own, so that is fatal and the
exit code is non-zero, letting Kubernetes restart the pod). A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import structlog

from controller.kube.client import KubeClient
from controller.kube.resources import Resource
from controller.runtime.controller import Controller
from controller.runtime.informer import Informer
from controller.runtime.server import ProbeServer

log = structlog.get_logger(__name__)

# An informer that heard nothing (no event, bookmark or reconnect) for this long is unhealthy.
INFORMER_SILENCE_LIMIT = 600.0


class Process:
    """Owns the tasks of one manager or agent process."""

    def __init__(
        self, client: KubeClient, *, metrics_address: str, probe_address: str, name: str
    ) -> None:
        self.client = client
        self.name = name
        self.informers: list[Informer] = []
        self.controllers: list[Controller] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.server = ProbeServer(
            metrics_address=metrics_address,
            probe_address=probe_address,
            liveness={"informers": self._informers_alive},
            readiness={"informers": self._informers_synced},
        )

    def informer(self, resource: Resource, **selectors: str | None) -> Informer:
        informer = Informer(self.client, resource, **selectors)
        self.informers.append(informer)
        return informer

    def add_controller(self, controller: Controller) -> None:
        self.controllers.append(controller)

    async def run(self) -> int:
        """Run until a signal (exit code 0) or until a task fails (exit code 1)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals_seen = 0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            if signals_seen > 1:
                log.warning("second signal, exiting now", signal=signal.Signals(signum).name)
                os._exit(1)
            log.info("shutdown requested", signal=signal.Signals(signum).name)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)

        await self.server.start()
        for informer in self.informers:
            self._tasks[f"informer {informer.name}"] = asyncio.create_task(informer.run())
        for controller in self.controllers:
            self._tasks[f"controller {controller.name}"] = asyncio.create_task(controller.run())
        log.info("process started", process=self.name)

        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            [stopper, *self._tasks.values()], return_when=asyncio.FIRST_COMPLETED
        )
        exit_code = 0
        for name, task in self._tasks.items():
            if task in done:
                exit_code = 1
                error = task.exception() if not task.cancelled() else None
                log.error("task stopped unexpectedly", task=name, error=repr(error))
        await self._stop(stopper)
        return exit_code

    async def _stop(self, stopper: asyncio.Task[bool]) -> None:
        # Controllers first, so in-flight reconciles finish against live informers.
        stopper.cancel()
        for prefix in ("controller ", "informer "):
            tasks = [task for name, task in self._tasks.items() if name.startswith(prefix)]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.server.stop()
        await self.client.close()
        log.info("process stopped", process=self.name)

    def _informers_synced(self) -> str | None:
        pending = [informer.name for informer in self.informers if not informer.synced]
        return f"not synced: {', '.join(pending)}" if pending else None

    def _informers_alive(self) -> str | None:
        dead = [name for name, task in self._tasks.items() if task.done()]
        if dead:
            return f"stopped: {', '.join(dead)}"
        now = time.monotonic()
        silent = [i.name for i in self.informers if now - i.last_activity > INFORMER_SILENCE_LIMIT]
        return f"silent: {', '.join(silent)}" if silent else None
