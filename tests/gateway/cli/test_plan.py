"""`meterwatch plan` and `meterwatch check` on real site files, through the installed command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

EXAMPLE = REPO / "deploy/examples/compound.yaml"


def meterwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_plan_of_example_site_shows_merged_reads() -> None:
    out = meterwatch("plan", str(EXAMPLE))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "line b1-gw (tcp 127.0.0.1:15021)" in text
    # SDM630 phase block: 18 values in one FC04 read of 36 registers.
    assert "unit 1 FC04 addr 0 (0x0000) count 36: voltage_l1 voltage_l2" in text
    assert "unit 2 FC03 addr 8192 (0x2000) count 50:" in text  # DTSU666 measurement block
    assert "unit 3 FC03 addr 3 (0x0003) count 2: pressure_decimals pressure" in text
    assert "line b3-rs485 (rtu /tmp/meterwatch-demo/ttyB3 9600 8N1)" in text
    assert "cycle typical" in text


def test_check_prints_summary() -> None:
    out = meterwatch("check", str(EXAMPLE))
    assert out.returncode == 0, out.stderr
    assert "3 Modbus line(s) with 9 device(s), 2 MQTT device(s)" in out.stdout
    assert "B2-shop: unit 2 sdm120, 2 read(s) every 5.00 s" in out.stdout


SLOW = """\
site: {id: s1}
buildings:
  - id: B1
    domains: [{id: B1-power, kind: power}]
lines:
  - {id: slow, transport: rtu, device: /dev/ttyUSB9, baudrate: 2400, timeout: 1s}
devices:
"""


def test_line_that_cannot_fit_fails_check_and_plan(tmp_path: Path) -> None:
    body = SLOW + "".join(
        f"  - {{id: m{i}, building: B1, line: slow, unit: {i}, profile: sdm630, poll_interval: 1s}}\n"
        for i in range(1, 6)
    )
    site = tmp_path / "site.yaml"
    site.write_text(body)
    check = meterwatch("check", str(site))
    assert check.returncode == 1
    assert "line slow" in check.stdout and "CANNOT FIT" in check.stdout and "ERROR" in check.stdout
    plan = meterwatch("plan", str(site))
    assert plan.returncode == 1 and "15 request(s)/cycle" in plan.stdout
