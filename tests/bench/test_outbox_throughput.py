"""bench/outbox_throughput.py still runs end to end (5 buildings instead of 100); its speed is not asserted,
only that every notice reached the receiver and the figures were printed."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO


def test_outbox_throughput_bench_prints_human_lines_and_a_json_line() -> None:
    r = subprocess.run(
        [sys.executable, str(REPO / "bench/outbox_throughput.py"), "--buildings", "5"],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("outbox throughput, 5 buildings out at once, one json:// channel"), r.stdout
    figures = json.loads(lines[-1])
    assert figures["bench"] == "outbox_throughput" and figures["buildings"] == 5
    one, three = figures["one_channel"], figures["three_channels"]
    assert one["rows"] == one["receiver_count"] == 5  # one staff notice per building's incident
    assert three["rows"] == three["receiver_count"] == 15  # staff, residents and utility for each
    assert figures["default_rate_limit"]["rows"] == 5
    assert one["notices_per_s"] > 0 and three["notices_per_s"] > 0
