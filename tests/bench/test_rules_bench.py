"""bench/rules.py runs (small, without the live part) so the bench cannot rot; its speed is not asserted."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO


def test_bench_rules_small_run_prints_a_human_line_and_a_json_line() -> None:
    out = subprocess.run(
        [sys.executable, "bench/rules.py", "--devices", "200", "--seconds", "480", "--no-live"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("rules engine: 9600 samples (200 devices x 10 quantities")
    assert "live detection latency: skipped (--no-live)" in lines
    figures = json.loads(lines[-1])
    assert figures["bench"] == "rules" and figures["live"] is None
    # the building outage half-way through is one domain incident, resolved once power is back
    assert figures["throughput"]["incidents"] == {"power_outage domain resolved": 1}
    assert figures["memory"]["bytes_per_device"] > 0
