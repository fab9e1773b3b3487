"""bench/poll.py still runs end to end (tiny: 1 and 2 meters, 1 s windows); figures are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO

BENCH = REPO / "bench/poll.py"


def test_poll_bench_prints_a_human_line_and_a_json_line() -> None:
    r = subprocess.run(
        [sys.executable, str(BENCH), "--steps", "1,2", "--warmup", "1", "--window", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("poll bench: ") for line in lines), r.stdout
    figures = json.loads(lines[-1])
    assert figures["bench"] == "poll"
    steps = figures["steps"]
    assert [s["devices"] for s in steps][:1] == [1]
    assert all(s["kind"] == "gateway" and s["requests"] > 0 and s["rss_mib"] > 0 for s in steps)
    if figures["max_devices_no_overrun"]:  # under heavy load even 1 meter may overrun: then no raw run
        assert figures["raw"]["requests"] > 0
        assert figures["cpu_ratio_gateway_over_raw"] is None or figures["cpu_ratio_gateway_over_raw"] > 0
