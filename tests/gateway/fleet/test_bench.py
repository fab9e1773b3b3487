"""bench/fleet_bridge.py still runs end to end on a few transitions; its speed is not asserted, only that
every message was acknowledged by the broker and the figures were printed."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO


def test_fleet_bridge_bench_prints_a_human_line_and_a_json_line() -> None:
    r = subprocess.run(
        [sys.executable, str(REPO / "bench/fleet_bridge.py"), "--events", "60"],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("fleet bridge, 60 incident transitions (120 QoS 1 messages"), r.stdout
    figures = json.loads(lines[-1])
    assert figures["bench"] == "fleet_bridge" and figures["events"] == 60
    assert figures["acked"] == figures["messages"] == 120
    assert figures["cpu_per_event_total_us"] > 0 and figures["events_per_s"] > 0
