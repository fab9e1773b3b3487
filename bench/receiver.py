"""A small threaded HTTP receiver for the benches: records every request with its arrival time.

The server is gateway/tools/receiver.py's (the demo's too); tests/fixtures/receiver.py does more (failures,
delays, gates) but imports pytest; the benches need only the arrivals. Each request is kept as a `Hit`
(time.monotonic() at arrival, path, body); `wait_for` blocks on a condition until a predicate over the hits
holds, so a bench waits on events, not sleeps.

    with BenchReceiver() as rx:
        url = rx.url("json", "/staff")          # json://127.0.0.1:PORT/staff, an apprise target
        ...
        rx.wait_for(lambda hits: len(hits) >= 100, timeout=60)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.tools.receiver import LocalReceiver

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Hit:
    at: float  # time.monotonic() when the request's body had been read
    path: str  # without the query
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


class BenchReceiver(LocalReceiver):
    """Answers every POST/PUT/GET with 200 and records it. Use as a context manager (start/stop)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(self._arrived, host, port, name="bench-receiver")
        self._cond = threading.Condition()
        self._hits: list[Hit] = []

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

    def _arrived(self, path: str, headers: Mapping[str, str], body: bytes) -> None:  # the server's thread
        hit = Hit(time.monotonic(), path.split("?", 1)[0], body)
        with self._cond:
            self._hits.append(hit)
            self._cond.notify_all()
