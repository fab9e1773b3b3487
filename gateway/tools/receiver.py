"""A local HTTP receiver of notices: answers every request with 200 and hands it to a callback.

The demo (gateway/cli/demo_receiver.py) and the benches (bench/receiver.py) both stand in for the phones
and robots the notice channels post to (apprise `json://127.0.0.1:PORT/<path>` URLs). The server runs in
its own thread so that a busy event loop never stalls the gateway's sender, and it answers at once: what a
request means is the callback's business (`on_request(path, headers, body)`, called on the server's
thread with the path as sent, query included).

tests/fixtures/receiver.py does more (failures, delays, gates) and imports pytest; this one only receives.
`HttpThread`, the server on its thread, also serves the benches' other stand-ins (bench/promstack.py's
voltage exporter).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

OnRequest = Callable[[str, Mapping[str, str], bytes], None]


class HttpThread:
    """A ThreadingHTTPServer on a daemon thread of its own: serve(handler) binds `host` and `port` (port 0: a
    free one, and `port` becomes the bound one), stop() shuts it down, closes its socket and joins the
    thread (again: nothing)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, name: str = "http", poll_interval: float = 0.05
    ) -> None:
        self.host = host
        self.port = port
        self.name = name
        self.poll_interval = poll_interval  # how soon stop() is noticed by serve_forever
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        server = ThreadingHTTPServer((self.host, self.port), handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            args=(self.poll_interval,),
            name=f"{self.name}:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class LocalReceiver(HttpThread):
    """A threaded HTTP server on `host` (port 0: a free one) answering GET/POST/PUT with 200 and `{}`.

    Use start()/stop() or a `with` block; `port` is the bound port once started. The demo's and the
    benches' receivers are subclasses that say what a request means."""

    def __init__(
        self,
        on_request: OnRequest,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "receiver",
        poll_interval: float = 0.05,
    ) -> None:
        super().__init__(host, port, name, poll_interval)
        self.on_request = on_request

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        on_request = self.on_request

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                on_request(self.path, dict(self.headers.items()), body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_POST = do_GET = do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:  # the callback says what arrived
                pass

        self.serve(Handler)
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
