"""A small threaded HTTP receiver for the benches: records every request with its arrival time.

tests/fixtures/receiver.py does more (failures, delays, gates) but imports pytest; the benches need only
the arrivals. Each request is kept as a `Hit` (time.monotonic() at arrival, path, body); `wait_for` blocks
on a condition until a predicate over the hits holds, so a bench waits on events, not sleeps.

    with BenchReceiver() as rx:
        url = rx.url("json", "/staff")          # json://127.0.0.1:PORT/staff, an apprise target
        ...
        rx.wait_for(lambda hits: len(hits) >= 100, timeout=60)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Hit:
    at: float  # time.monotonic() when the request's body had been read
    path: str  # without the query
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


class BenchReceiver:
    """Answers every POST/PUT/GET with 200 and records it. Use as a context manager (start/stop)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._cond = threading.Condition()
        self._hits: list[Hit] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, scheme: str = "json", path: str = "/") -> str:
        return f"{scheme}://{self.host}:{self.port}{path}"

    def hits(self, path: str | None = None) -> list[Hit]:
        with self._cond:
            return [h for h in self._hits if path is None or h.path == path]

    def count(self, path: str | None = None) -> int:
        return len(self.hits(path))

    def wait_for(self, found: Callable[[list[Hit]], T | None], timeout: float, what: str) -> T:
        """Block until `found(hits)` returns something truthy and return it; TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = found(list(self._hits))
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
                self._cond.wait(min(left, 0.5))

    def _record(self, hit: Hit) -> None:
        with self._cond:
            self._hits.append(hit)
            self._cond.notify_all()

    def start(self) -> BenchReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                receiver._record(Hit(time.monotonic(), self.path.split("?", 1)[0], body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_POST = do_GET = do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name=f"bench-receiver:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> BenchReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
