"""Issue #4 acceptance, live: the real daemon polls simulated meters over Modbus TCP, feeds the engine from
the bus, stores incidents in SQLite and serves them on /api/incidents; `meterwatch incidents` lists them.

Site (bench/rules_live.py): poll 0.5 s, power outage `for` 2 s, `clear_for` 3 s. B1-main reads 0 V when B1
is cut (its own auxiliary supply); B1-unit is powered by the circuit it measures and goes silent.

The tests wait on events (the incident listed, the symptom joined, the incident resolved) with generous
time-outs that fail only when the event never comes; how fast detection is (the acceptance budget of poll
interval + `for` + 2 s) is measured and printed by `python -m bench.rules_live`, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from bench.rules_live import CLEAR_FOR, LiveSite, incident, open_incidents
from tests.helpers import free_port, wait_until


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "incidents", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def b1_open(live: LiveSite) -> list[dict[str, Any]]:
    return [i for i in open_incidents(live.daemon) if i["scope"] == "domain:B1-power"]


def test_power_cut_opens_one_incident_and_restore_resolves_it_after_clear_for(tmp_path: Path) -> None:
    with LiveSite(tmp_path, http_port=free_port()) as live:
        assert live.daemon.api("/api/incidents?state=all")["incidents"] == []
        live.sim.world.cut_power("B1")
        # a time-out, not a speed claim: bench/rules_live.py measures the latency against its budget
        [inc] = wait_until(lambda: b1_open(live), timeout=60, what="B1's power incident")
        assert (inc["category"], inc["state"], inc["households"]) == ("power_outage", "firing", 40)
        assert inc["severity"] == "critical"

        # the silenced unit meter joins it as a symptom: still one incident, no communication fault
        wait_until(
            lambda: "B1-unit" in incident(live.daemon, inc["id"])["symptoms"],
            timeout=60,
            what="B1-unit as a symptom",
        )
        everything = live.daemon.api("/api/incidents?state=all")["incidents"]
        assert [i["id"] for i in everything] == [inc["id"]]
        assert [i.id for i in live.daemon.incidents.open_incidents()] == [inc["id"]]

        # `meterwatch incidents SITE.yaml`: the address comes from the site's http section
        out = run_cli(str(live.site_path), "--json")
        assert out.returncode == 0, out.stderr
        [line] = out.stdout.splitlines()
        assert json.loads(line)["id"] == inc["id"]
        table = run_cli(str(live.site_path))
        assert table.returncode == 0 and "domain:B1-power" in table.stdout

        restored = time.time()
        live.sim.world.restore_power("B1")
        wait_until(
            lambda: incident(live.daemon, inc["id"])["state"] == "resolved", timeout=60, what="resolution"
        )
        detail = incident(live.daemon, inc["id"])
        events = [e["event"] for e in detail["timeline"]]
        assert events[0] == "opened" and events[-1] == "resolved"
        assert "recovering" in events
        resolved_at = detail["timeline"][-1]["ts"]
        assert resolved_at >= restored + CLEAR_FOR  # only after clear_for of fresh healthy readings
        assert live.daemon.api("/api/incidents")["incidents"] == []
        listed = run_cli("--url", live.daemon.url, "--all", "--json")
        assert [json.loads(x)["state"] for x in listed.stdout.splitlines()] == ["resolved"]
        with pytest.raises(urllib.error.HTTPError, match="404"):
            live.daemon.api("/api/incidents/999")
        with pytest.raises(urllib.error.HTTPError, match="422"):
            live.daemon.api("/api/incidents?state=bogus")


def test_incidents_cli_names_the_address_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    port = free_port()
    out = run_cli("--url", f"http://127.0.0.1:{port}")
    assert out.returncode == 1
    assert f"cannot reach the daemon at http://127.0.0.1:{port}" in out.stderr
    assert "meterwatch run" in out.stderr
    assert out.stdout == ""
