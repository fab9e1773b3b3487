"""Liveness and readiness of the daemon, shared by /healthz, /readyz and the systemd READY=1 signal.

Ready means: every component has been started (the last builder's components mark it) and the sink can
take samples: the spool accepts appends (durable mode), the buffer exists (best-effort), or the site has
no influx section (nothing to store). InfluxDB being down does NOT make the gateway unready: that is what
the spool is for; the metrics say how far behind it is.
"""

from __future__ import annotations

import time
from typing import Any

STARTED = "runtime_started_at"


def mark_started(services: dict[str, object]) -> None:
    services.setdefault(STARTED, time.time())


def readiness(services: dict[str, object]) -> tuple[bool, dict[str, Any]]:
    from gateway.sink.forwarder import Forwarder

    checks: dict[str, Any] = {"started": STARTED in services}
    sink = services.get("sink")
    if isinstance(sink, Forwarder):
        checks["sink"] = "accepting" if sink.accepting else "spool not accepting"
        checks["influx_reachable"] = sink.stats.reachable
        checks["spool_points"] = sink.buffer.stats.points
        ok = checks["started"] and sink.accepting
    else:
        checks["sink"] = "not configured (no influx section)"
        ok = checks["started"]
    return bool(ok), checks
