"""The daemon's one HTTP server: a FastAPI app served by uvicorn inside the daemon's event loop.

Routes of its own: GET /metrics (Prometheus text format), GET /healthz (the process and its event loop
answer), GET /readyz (200 when ready, 503 otherwise, see gateway/observe/health.py; JSON with the checks).

Other parts of the daemon add routes as FastAPI `APIRouter`s, handed to `make_app` by gateway/app/daemon.py,
which builds the server after every other part. Routes run on the daemon's event loop: keep handlers short
and non-blocking (or `async` with awaited I/O).

The listening socket is bound before uvicorn starts, so a busy port is logged as a clear error and the
daemon keeps collecting (uvicorn itself would call sys.exit). Uvicorn's own signal handlers are not
installed: the daemon owns SIGTERM/SIGINT and tells this server to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator, Sequence
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.config import Site
from gateway.core.bus import Bus
from gateway.observe.health import Readiness
from gateway.observe.metrics import Exported, make_registry

log = logging.getLogger("meterwatch.http")


def make_app(
    site: Site,
    exported: Exported,
    readiness: Readiness,
    routers: Sequence[APIRouter] = (),
    bus: Bus | None = None,
) -> FastAPI:
    app = FastAPI(title="meterwatch", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    registry = make_registry(site, exported, bus)

    # These handlers are `async` on purpose: they run on the daemon's loop, the only thread that mutates the
    # counters and dicts they read (a sync handler would run in a worker thread, racing the loop). They
    # take a few milliseconds; a hung loop therefore also shows as a failing /healthz.
    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ok, checks = readiness.check()
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    for router in routers:
        app.include_router(router)
    return app


class _InLoopServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the daemon owns the signals


class HttpServer:
    name = "http"

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.bound_port: int | None = None  # once listening: the port (the one picked, for port 0)

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        return sock

    async def run(self, stop: asyncio.Event) -> None:
        try:
            sock = self._bind()
        except OSError as exc:
            log.error(
                "cannot listen for HTTP: /metrics, /healthz and the API are unavailable; collection goes on",
                extra={"fields": {"host": self.host, "port": self.port, "error": exc.strerror or str(exc)}},
            )
            await stop.wait()
            return
        self.bound_port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2
        )
        server = _InLoopServer(config)
        log.info("HTTP listening", extra={"fields": {"host": self.host, "port": self.bound_port}})
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        stopper.cancel()
        with contextlib.suppress(Exception):
            await serving
        sock.close()


def describe(app: FastAPI) -> list[dict[str, Any]]:
    """Routes of the app (for logs and tests)."""
    return [{"path": getattr(r, "path", ""), "name": getattr(r, "name", "")} for r in app.routes]
