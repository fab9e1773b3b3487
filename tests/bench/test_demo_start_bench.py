"""bench/demo_start.py still runs end to end (one run) and prints its two lines; figures are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO


def test_demo_start_bench_prints_a_human_line_and_a_json_line() -> None:
    r = subprocess.run(
        [sys.executable, str(REPO / "bench/demo_start.py"), "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    human, last = r.stdout.splitlines()
    assert human.startswith("demo start over 1 runs"), r.stdout
    figures = json.loads(last)
    assert figures["bench"] == "demo_start" and figures["runs"] == 1
    [run] = figures["each"]
    assert set(run) == {"startup_s", "all_up_s", "first_reading_s"}
    assert run["first_reading_s"] is not None, r.stdout  # the demo printed its own figure on Ctrl-C
