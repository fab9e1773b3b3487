"""bench/notify_latency.py still runs end to end (one cut; the Prometheus half with 1 s intervals and
group_wait 0; `make test` installs Debian's prometheus and prometheus-alertmanager, so a missing peer fails
here); figures are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO


def test_notify_latency_bench_prints_human_lines_and_a_json_line() -> None:
    args = ["--runs", "1", "--prom-runs", "1", "--prom-interval", "1s", "--group-wait", "0s", "--quiet"]
    r = subprocess.run(
        [sys.executable, str(REPO / "bench/notify_latency.py"), *args],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("notify latency over 1 runs (default rules"), r.stdout
    assert lines[1].startswith("prometheus + alertmanager"), r.stdout
    figures = json.loads(lines[-1])
    assert figures["bench"] == "notify_latency" and figures["rules"] == "default"
    assert len(figures["meterwatch"]["each_s"]) == 1
    assert "power outage: B01" in figures["meterwatch"]["first_notice_title"]
    peer = figures["prometheus_alertmanager"]
    assert "skipped" not in peer, peer  # scripts/bootstrap installs the peer: its absence is a failure
    assert peer["runs"] == 1 and len(peer["each_s"]) == 1
