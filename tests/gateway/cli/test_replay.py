"""`meterwatch replay` through the installed command line (a subprocess, as a user runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

FLAP = REPO / "tests/cases/voltage-back-for-20s-then-gone-same-incident-flap-noted"
LATE = REPO / "tests/cases/late-root-cause-absorbs-open-device-fault"

SITE = """\
site: {id: t, timezone: Asia/Shanghai}
buildings:
  - {id: B1, households: 96, domains: [{id: B1-power, kind: power}, {id: B1-water, kind: water}]}
devices:
  - {id: pump, building: B1, domain: B1-water, role: pump, source: mqtt, expected_interval: 1s}
"""


def meterwatch(*args: str, tz: str = "America/New_York") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TZ": tz}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "replay", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )


def test_table_lists_the_incident_in_site_time() -> None:
    out = meterwatch(str(FLAP / "trace.csv"), "--config", str(FLAP / "site.yaml"))
    assert out.returncode == 0, out.stderr
    assert "1 incident(s) from trace.csv" in out.stdout
    row = next(line for line in out.stdout.splitlines() if "power_outage" in line)
    # opened 10:00:25 and resolved 10:03:20 site time (+08:00), whatever the host's zone (New York here)
    for text in ("domain:B1-power", "resolved", "2026-03-02T10:00:25+08:00", "2026-03-02T10:03:20+08:00"):
        assert text in row, row
    assert "B1-main" in row and " 96 " in row


def test_table_says_how_many_incidents_were_absorbed() -> None:
    out = meterwatch(str(LATE / "trace.csv"), "--config", str(LATE / "site.yaml"))
    assert out.returncode == 0, out.stderr
    assert "1 incident(s) (1 more absorbed into them) from trace.csv" in out.stdout


def test_json_lines_carry_category_scope_times_households_symptoms() -> None:
    out = meterwatch(str(LATE / "trace.csv"), "--config", str(LATE / "site.yaml"), "--json", tz="UTC")
    assert out.returncode == 0, out.stderr
    (rec,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert rec["category"] == "power_outage"
    assert rec["scope"] == "domain:B1-power"
    assert rec["state"] == "firing" and rec["resolved_at"] is None
    assert rec["opened_at"].endswith("+08:00")
    assert rec["symptoms"] == ["B1-u01", "B1-u02", "B1-u03", "B1-u04", "B1-u05"]
    assert rec["absorbed"] == [1]


def test_bad_trace_row_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(SITE)
    trace = tmp_path / "t.csv"
    trace.write_text(
        "ts,device,quantity,value\n1772416800,pump,current_l1,2.5\n1772416801,pump,current_l1,abc\n"
    )
    out = meterwatch(str(trace), "--config", str(tmp_path / "site.yaml"))
    assert out.returncode == 1
    assert f"{trace}:3: value: expected a number, got 'abc'" in out.stderr
    assert out.stdout == ""


def test_bad_time_and_wrong_header(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(SITE)
    trace = tmp_path / "t.csv"
    trace.write_text("ts,device,quantity,value\nyesterday,pump,current_l1,2.5\n")
    out = meterwatch(str(trace), "--config", str(tmp_path / "site.yaml"))
    assert out.returncode == 1 and f"{trace}:2: time: expected epoch seconds or ISO 8601" in out.stderr
    trace.write_text("when;current\n2026-03-02 10:00:00;2.5\n")
    out = meterwatch(str(trace), "--config", str(tmp_path / "site.yaml"))
    assert out.returncode == 1 and "a wide CSV needs a column mapping (--mapping)" in out.stderr


def test_wide_csv_with_mapping_raises_supply_incident(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(SITE)
    (tmp_path / "map.yaml").write_text(
        "separator: ';'\ntime: when\ndevice: pump\n"
        "columns: {Current: current_l1, Flow: {quantity: flow, scale: 0.06}}\n"
    )
    rows = ["when;Current;Flow"]
    for i in range(0, 300):
        flow = 120.0 if i < 100 else 0.5  # L/min
        rows.append(f"2026-03-02 10:{i // 60:02d}:{i % 60:02d};2.6;{flow}")
    (tmp_path / "w.csv").write_text("\n".join(rows) + "\n")
    site, mapping = str(tmp_path / "site.yaml"), str(tmp_path / "map.yaml")
    out = meterwatch(str(tmp_path / "w.csv"), "--config", site, "--mapping", mapping, "--json")
    assert out.returncode == 0, out.stderr
    (rec,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert (rec["category"], rec["scope"], rec["symptoms"]) == ("water_supply", "domain:B1-water", ["pump"])
    # the default pump rule: flow under 0.2 m3/h for 60 s while the motor runs (time read in site time)
    assert rec["opened_at"] == "2026-03-02T10:02:40+08:00"


def test_bad_mapping_and_bad_tail(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(SITE)
    (tmp_path / "w.csv").write_text("when;Current\n2026-03-02 10:00:00;2.5\n")
    (tmp_path / "map.yaml").write_text("time: when\ncolumns: {Current: current_l1}\nextra: 1\n")
    out = meterwatch(
        str(tmp_path / "w.csv"),
        "--config",
        str(tmp_path / "site.yaml"),
        "--mapping",
        str(tmp_path / "map.yaml"),
    )
    assert (
        out.returncode == 1
        and "map.yaml: invalid mapping: extra: Extra inputs are not permitted" in out.stderr
    )
    out = meterwatch(str(FLAP / "trace.csv"), "--config", str(FLAP / "site.yaml"), "--tail", "soon")
    assert out.returncode == 2 and "--tail: expected a duration" in out.stderr


def test_devices_missing_from_the_site_are_named(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(SITE)
    trace = tmp_path / "t.csv"
    trace.write_text("ts,device,quantity,value\n1772416800,pump,current_l1,0\n1772416800,ghost,flow,1\n")
    out = meterwatch(str(trace), "--config", str(tmp_path / "site.yaml"), "--json")
    assert out.returncode == 0, out.stderr
    assert "devices not in the site file are ignored: ghost" in out.stderr
    assert out.stdout == ""


def test_bad_site_file_exits_with_its_errors(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(SITE.replace("role: pump", "role: pumpp"))
    out = meterwatch(str(FLAP / "trace.csv"), "--config", str(tmp_path / "site.yaml"))
    assert out.returncode == 1
    assert f"{tmp_path / 'site.yaml'}:5: devices[0].role" in out.stderr
