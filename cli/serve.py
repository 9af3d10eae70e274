"""`--serve`: the routes the packs registered on the stand-in server (LoRA Lab's /loralab/ status and control
routes), on a small aiohttp app in a thread of its own, also under /api/ as the host serves them."""
from __future__ import annotations

import asyncio
import logging
import threading

from aiohttp import web

log = logging.getLogger(__name__)


def application(routes: web.RouteTableDef) -> web.Application:
    app = web.Application()
    app.add_routes(routes)
    twins = web.RouteTableDef()  # server.PromptServer.add_routes: an /api twin of every route
    for route in routes:
        if isinstance(route, web.RouteDef):
            twins.route(route.method, "/api" + route.path)(route.handler, **route.kwargs)
    app.add_routes(twins)
    return app


class StatusServer:
    """Serves `routes` on `addresses` x `port` until `stop`."""

    def __init__(self, routes: web.RouteTableDef, addresses: list[str], port: int) -> None:
        self.app, self.addresses, self.port = application(routes), addresses, port
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, name="loralab-status-server", daemon=True)

    def start(self) -> StatusServer:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise OSError(f"cannot serve the status routes on port {self.port}: {self._error}") from self._error
        for address in self.addresses:
            log.info("LoRA Lab status routes at http://%s:%d/loralab/jobs", address, self.port)
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self._runner = web.AppRunner(self.app, access_log=None)
            self.loop.run_until_complete(self._runner.setup())
            for address in self.addresses:
                self.loop.run_until_complete(web.TCPSite(self._runner, address, self.port).start())
        except OSError as e:
            self._error = e
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._runner.cleanup())
        self.loop.close()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
