"""bench/fleet_view.py still runs end to end on a small fleet; its figures are not asserted (speed lives in
bench/), only that the view showed every simulated site, incident and KPI snapshot and the lines printed."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO


def test_fleet_view_bench_prints_a_human_line_and_a_json_line() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "bench.fleet_view", "--sites", "30"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("fleet view, 30 sites ("), r.stdout
    figures = json.loads(lines[-1])
    assert figures["bench"] == "fleet_view" and figures["sites"] == 30
    assert figures["messages"] == 60 + figures["incidents"]
    assert figures["rss_mib"] > 0 and figures["caught_up_s"] > 0
