"""Liveness and readiness of the daemon, shared by /healthz, /readyz and the systemd READY=1 signal.

/readyz (`check`) is 200 when every component has been started (the last component marks it) and the
sink can store samples: the spool accepts appends (durable mode), the buffer exists (best-effort), or the
site has no influx section (nothing to store). While the spool fails (a full disk, an I/O error) it is 503
and `checks.storage` says why in one line, so a load balancer or a monitor sees it; the metric
meterwatch_spool_failing says the same.

systemd's READY=1 (`ready`) means only "started": the daemon collects and detects even while its storage
fails (the sink sheds, gateway/sink/shedding.py), and a unit that never became ready would be killed at
TimeoutStartSec and restarted into the same full disk, detecting nothing.

InfluxDB being down does NOT make the gateway unready: that is what the spool is for; the metrics say how
far behind it is.
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
            accepting = sink.accepting
            failing = sink.storage.failing
            checks["sink"] = "accepting" if accepting else "spool not accepting"
            checks["storage"] = f"failing: {failing}" if failing else "ok"
            checks["influx_reachable"] = sink.stats.reachable
            checks["spool_points"] = sink.buffer.stats.points
            ok = checks["started"] and accepting
        else:
            checks["sink"] = "not configured (no influx section)"
            ok = checks["started"]
        return bool(ok), checks

    @property
    def ready(self) -> bool:
        """For systemd's READY=1: started (see the module docstring for why storage does not count)."""
        return self.started_at is not None
