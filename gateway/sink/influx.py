"""Synchronous writes through influxdb-client's v2 write API, with every answer classified.

We never use the client's batching mode: it keeps points only in memory and gives up after
max_retry_time (180 s by default). The forwarder owns batching, retries and the spool; this module makes
one HTTP request per call and says what the answer means:

| answer                         | outcome      | what the forwarder does                              |
|--------------------------------|--------------|------------------------------------------------------|
| 2xx                            | ok           | forget the points (ack the spool)                    |
| 429, 5xx                       | retry        | back off, honouring Retry-After                      |
| 413                            | too_large    | split the batch in halves                            |
| 400, 422, other 4xx            | rejected     | split to isolate the bad points, dead-letter them    |
| 401, 403, 404, 405             | config       | keep the points, raise a clear error and a metric    |
| 400 "unsupported path"         | config       | the same: the URL is wrong, not the points           |
| refused, timeout, DNS, reset   | unreachable  | keep the points, retry with capped backoff           |

The request is the one influxdb-client's write API makes (POST /api/v2/write?org=..&bucket=..&precision=us,
Content-Type text/plain, Authorization "Token ..." when a token is set), sent with http.client over ONE
kept-alive connection: the forwarder already has the request body (the spool's chunks, bytes), so the
client's per-request machinery (serialising the record, building the request through urllib3's pool)
was most of the HTTP thread's CPU: 1.1-1.5 us a point, against ~0.2 us this way. A connection the server
closed while idle fails on reuse before any answer; such a request is sent once more on a new connection
(at worst a batch is written twice, which the store overwrites: the same points).
"""

from __future__ import annotations

import email.utils
import http.client
import ssl
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.config.store import InfluxConfig
from gateway.sink.lineproto import PRECISION

OutcomeKind = Literal["ok", "retry", "too_large", "rejected", "config", "unreachable"]


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    kind: OutcomeKind
    status: int | None = None
    retry_after: float | None = None
    message: str = ""


def classify_status(status: int) -> OutcomeKind:
    if 200 <= status < 300:
        return "ok"
    if status == 413:
        return "too_large"
    if status in (401, 403, 404, 405):
        return "config"
    if status == 429 or status >= 500:
        return "retry"
    return "rejected"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After is either delay-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# What servers answer when the write went to a path they do not serve: VictoriaMetrics says 400 with this
# text (it would otherwise be taken for bad points, and every point would go to the dead-letter file).
_WRONG_PATH_TEXTS = ("unsupported path requested",)
WRONG_ENDPOINT_HINT = (
    "the write endpoint is not where influx.url points: give the server's base URL without a path, "
    "e.g. http://host:8086 (the client adds /api/v2/write)"
)


def says_wrong_endpoint(status: int, body: str) -> bool:
    """The answer says the request went to the wrong place (not that the points are bad). InfluxDB's own
    404 names the missing bucket or org: that is the influx section's bucket or org, not its URL."""
    if status == 404:
        return not any(word in body.lower() for word in ("bucket", "organization", "org "))
    return status == 405 or (status == 400 and any(t in body for t in _WRONG_PATH_TEXTS))


def _body_text(data: bytes, reason: str) -> str:
    text = data.decode("utf-8", "replace").strip() or reason.strip()
    return text[:500]


# Failures of a reused connection that mean "the server closed it meanwhile" (no answer was read).
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class InfluxWriter:
    """One blocking write per call over a kept-alive connection; used from one worker thread at a time."""

    def __init__(self, cfg: InfluxConfig) -> None:
        self.cfg = cfg
        parts = urllib.parse.urlsplit(cfg.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port
        query = urllib.parse.urlencode({"org": cfg.org, "bucket": cfg.bucket, "precision": PRECISION})
        # after the URL's own path, as influxdb-client does (the config refuses one; a proxy may need it)
        self._path = f"{parts.path.rstrip('/')}/api/v2/write?{query}"
        self._headers = {
            "Accept-Encoding": "identity",
            "Content-Type": "text/plain",
            "Accept": "application/json",
            "User-Agent": "meterwatch",
        }
        if cfg.token is not None and cfg.token.get_secret_value():
            self._headers["Authorization"] = f"Token {cfg.token.get_secret_value()}"
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.cfg.timeout, context=ssl.create_default_context()
                )
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.cfg.timeout)
        return self._conn

    def write(self, lines: Sequence[str]) -> WriteOutcome:
        return self.write_body("\n".join(lines))

    def write_body(self, body: str | bytes) -> WriteOutcome:
        """One request whose body is `body`: line protocol, lines separated by newlines."""
        data = body.encode("utf-8") if isinstance(body, str) else body
        try:
            try:
                reused = self._conn is not None and self._conn.sock is not None
                status, headers, answer, reason = self._post(data)
            except _STALE:
                if not reused:
                    raise
                self.close()
                status, headers, answer, reason = self._post(data)
        except (http.client.HTTPException, OSError) as exc:
            self.close()
            return WriteOutcome("unreachable", None, None, f"{type(exc).__name__}: {exc}"[:500])
        kind = classify_status(status)
        if kind == "ok":
            return WriteOutcome("ok", status)
        retry_after = parse_retry_after(headers.get("Retry-After"))
        text = _body_text(answer, reason)
        message = f"HTTP {status}: {text}"
        if says_wrong_endpoint(status, text):
            kind = "config"
            message += f" ({WRONG_ENDPOINT_HINT})"
        return WriteOutcome(kind, status, retry_after, message)

    def _post(self, data: bytes) -> tuple[int, http.client.HTTPMessage, bytes, str]:
        conn = self._connection()
        conn.request("POST", self._path, data, self._headers)
        resp = conn.getresponse()
        answer = resp.read()  # read whole, so the connection can carry the next request
        return resp.status, resp.headers, answer, resp.reason or ""

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
