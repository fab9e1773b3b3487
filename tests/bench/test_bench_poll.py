"""bench/poll.py still runs end to end (tiny: 2 meters of the C server, 1 s windows, no ThingsBoard);
figures are never asserted, only that every client was measured against the same server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO

BENCH = REPO / "bench/poll.py"
TINY = ["--meters", "2", "--steps", "2", "--pipelined-steps", "2", "--rss-devices", "2"]
TINY += ["--warmup", "1", "--window", "1", "--no-tb"]


@pytest.mark.timeout(600)  # ten short worker processes, one after the other
def test_poll_bench_prints_a_human_line_and_a_json_line() -> None:
    r = subprocess.run(
        [sys.executable, str(BENCH), *TINY],
        capture_output=True,
        text=True,
        timeout=550,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("poll bench at 2 meters: ") for line in lines), r.stdout
    figures = json.loads(lines[-1])
    assert figures["bench"] == "poll"
    assert figures["server"].startswith("cmeter")
    side = figures["side_by_side"]
    for kind in ("gateway", "raw_asyncio", "pymodbus", "gateway_pipelined", "raw_pipelined"):
        assert side[kind]["kind"] == kind, side[kind]
        assert side[kind]["devices"] == 2 and side[kind]["requests_per_s"] > 0, side[kind]
        assert side[kind]["rss_mib"] > 0
    assert side["thingsboard"] == {"skipped": "--no-tb"}
    assert set(figures["ratios"]) == {
        "gateway_over_raw_asyncio",
        "gateway_over_pymodbus",
        "gateway_over_thingsboard_values",
        "gateway_pipelined_over_raw_pipelined",
        "gateway_pipelined_over_raw_asyncio",
    }
    assert figures["ratios"]["gateway_over_thingsboard_values"] is None
    assert figures["server_limit"]["requests_per_s"] > 0
    assert [s["devices"] for s in figures["capacity"]["steps"]] == [2]
    assert [s["devices"] for s in figures["capacity_pipelined"]["steps"]] == [2]
    assert figures["capacity_pipelined"]["steps"][0]["kind"] == "gateway_pipelined"
    at = figures["at_capacity"]
    assert at["devices"] == 2 and at["raw_asyncio"]["devices"] == 2 and at["ratio"] > 0
    assert figures["rss"]["devices"] == 2 and figures["rss"]["raw_asyncio_rss_mib"] > 0
