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
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import urllib3
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

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


def _body_text(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = str(body or exc.reason or "").strip()
    return text[:500]


class InfluxWriter:
    """One blocking write per call; safe to call from a worker thread."""

    def __init__(self, cfg: InfluxConfig) -> None:
        self.cfg = cfg
        token = cfg.token.get_secret_value() if cfg.token is not None else ""
        self.client = InfluxDBClient(
            url=cfg.url, token=token, org=cfg.org, timeout=int(cfg.timeout * 1000), retries=False
        )
        self.api = self.client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: Sequence[str]) -> WriteOutcome:
        return self.write_body("\n".join(lines))

    def write_body(self, body: str | bytes) -> WriteOutcome:
        """One request whose body is `body`: line protocol, lines separated by newlines."""
        try:
            self.api.write(
                bucket=self.cfg.bucket,
                org=self.cfg.org,
                record=body,
                write_precision=PRECISION,  # type: ignore[arg-type]
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            headers = exc.headers
            retry_after = parse_retry_after(headers.get("Retry-After") if headers else None)
            kind = classify_status(status) if status else "unreachable"
            body = _body_text(exc)
            message = f"HTTP {status}: {body}"
            if says_wrong_endpoint(status, body):
                kind = "config"
                message += f" ({WRONG_ENDPOINT_HINT})"
            return WriteOutcome(kind, status, retry_after, message)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return WriteOutcome("unreachable", None, None, f"{type(exc).__name__}: {exc}"[:500])
        return WriteOutcome("ok", 204)

    def close(self) -> None:
        self.client.close()
