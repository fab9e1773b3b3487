"""The daemon's one HTTP server: a FastAPI app served by uvicorn inside the daemon's event loop.

Routes of its own: GET /metrics (Prometheus text format), GET /healthz (the process and its event loop
answer), GET /readyz (200 when ready, 503 otherwise, see gateway/observe/health.py; JSON with the checks).

Other parts of the daemon add routes as FastAPI `APIRouter`s, handed to `make_app` by gateway/app/daemon.py,
which builds the server after every other part. Routes run on the daemon's event loop: keep handlers short
and non-blocking (or `async` with awaited I/O).

The listening socket is bound before uvicorn starts, so a busy port is logged as a clear error and the
daemon keeps collecting (uvicorn itself would call sys.exit). Uvicorn's own signal handlers are not
installed: the daemon owns SIGTERM/SIGINT and tells this server to stop.

Exhaustion. Hundreds of connections that never send a request would hold file descriptors until the
process runs out, and then asyncio logs every failed accept (hundreds of thousands of lines a minute) while
/metrics and /healthz go dark. So: at most `MAX_CONNECTIONS` connections are served at once (one past that
is closed as soon as it is accepted, and counted); a connection whose request headers are not complete
`HEADER_TIMEOUT` seconds after it opened (or after its previous response) is closed; asyncio's "out of
system resource" accept error is logged once a minute with a count. HEAD is answered on every GET route.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import Generator, Iterable, Sequence
from typing import Any

import h11
import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.config import Site
from gateway.core.bus import Bus
from gateway.observe.health import Readiness
from gateway.observe.metrics import Exported, MetricsRenderer

log = logging.getLogger("meterwatch.http")

MAX_CONNECTIONS = 256
HEADER_TIMEOUT = 5.0


class Guard:
    """Counts of what the connection guard refused (read by /metrics)."""

    shed = 0  # connections closed at once: MAX_CONNECTIONS were open
    header_timeouts = 0  # connections closed: no complete request headers within HEADER_TIMEOUT


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a cap on open connections and a deadline for request headers."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= MAX_CONNECTIONS:
            Guard.shed += 1
            transport.abort()  # frees the descriptor now; nothing of this connection was started
            return
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(HEADER_TIMEOUT, self._headers_late)

    def _headers_late(self) -> None:
        self._deadline = None
        # IDLE: no complete request since the connection opened or the last response ended
        if self.conn.their_state == h11.IDLE and not self.transport.is_closing():
            Guard.header_timeouts += 1
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self.transport is None:  # shed in connection_made: uvicorn never saw it
            return
        super().connection_lost(exc)


class HeadAsGet:
    """Answers HEAD on every GET route: the app sees a GET; uvicorn, which knows the request was HEAD,
    sends the headers (with the GET's length) and no body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)


class _AcceptErrorsOncePerMinute(logging.Filter):
    """asyncio logs every accept that fails for lack of descriptors; let one through a minute, with the
    count of those held back."""

    def __init__(self) -> None:
        super().__init__()
        self.last = -math.inf
        self.held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "out of system resource" not in str(record.msg):
            return True
        now = time.monotonic()
        if now - self.last < 60.0:
            self.held += 1
            return False
        if self.held:
            record.msg = f"{record.msg} ({self.held} more since the last such line)"
        record.exc_info = None  # the traceback is always the same EMFILE
        self.last, self.held = now, 0
        return True


_accept_filter = _AcceptErrorsOncePerMinute()


class _GuardCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        refused = CounterMetricFamily(
            "meterwatch_http_connections_refused",
            "HTTP connections the server closed unserved: cap (too many open), header_timeout (request "
            "headers not complete in time)",
            labels=["reason"],
        )
        refused.add_metric(["cap"], Guard.shed)
        refused.add_metric(["header_timeout"], Guard.header_timeouts)
        yield refused


def make_app(
    site: Site,
    exported: Exported,
    readiness: Readiness,
    routers: Sequence[APIRouter] = (),
    bus: Bus | None = None,
    collectors: Sequence[Collector] = (),
) -> FastAPI:
    """`collectors`: more families for /metrics, called in the rendering thread (see MetricsRenderer)."""
    app = FastAPI(title="meterwatch", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    renderer = MetricsRenderer(site, exported, bus, extra=[_GuardCollector(), *collectors])

    # These handlers are `async` on purpose: they run on the daemon's loop, the only thread that mutates the
    # counters and dicts they read (a sync handler would run in a worker thread, racing the loop). They
    # take a few milliseconds; a hung loop therefore also shows as a failing /healthz. /metrics copies
    # the counters here and renders the copy in a worker thread (0.46 CPU-s at 1,000 devices on the loop
    # stalled polling for half a second at every scrape).
    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(await renderer.scrape(), media_type=CONTENT_TYPE_LATEST)

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
        if _accept_filter not in logging.getLogger("asyncio").filters:
            logging.getLogger("asyncio").addFilter(_accept_filter)
        config = uvicorn.Config(
            HeadAsGet(self.app),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            http=GuardedH11Protocol,
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
