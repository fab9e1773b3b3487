"""Liveness and readiness of the daemon, shared by /healthz, /readyz and the systemd READY=1 signal.

Ready means: every component has been started (the last component marks it) and the sink can take
samples: the spool accepts appends (durable mode), the buffer exists (best-effort), or the site has no
influx section (nothing to store). InfluxDB being down does NOT make the gateway unready: that is what
the spool is for; the metrics say how far behind it is.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.sink.forwarder import Forwarder


class Readiness:
    def __init__(self, sink: Forwarder | None = None) -> None:
        self.sink = sink
        self.started_at: float | None = None

    def mark_started(self) -> None:
        if self.started_at is None:
            self.started_at = time.time()

    def check(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {"started": self.started_at is not None}
        sink = self.sink
        if sink is not None:
            checks["sink"] = "accepting" if sink.accepting else "spool not accepting"
            checks["influx_reachable"] = sink.stats.reachable
            checks["spool_points"] = sink.buffer.stats.points
            ok = checks["started"] and sink.accepting
        else:
            checks["sink"] = "not configured (no influx section)"
            ok = checks["started"]
        return bool(ok), checks

    @property
    def ready(self) -> bool:
        return self.check()[0]
