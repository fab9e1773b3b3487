"""`meterwatch simulate` as a user runs it: prints what it serves, serves it, plays a scenario, stops."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pymodbus.client import ModbusTcpClient

from simulators.runner import SimulatorProcess
from tests.fixtures.sim import write_sim_site
from tests.helpers import wait_until


def test_simulate_serves_every_line_and_stops_on_sigterm(tmp_path: Path) -> None:
    site = write_sim_site(tmp_path)
    proc = SimulatorProcess.spawn(site, args=("--no-mqtt",))
    try:
        served = dict(line.split(": ", 1) for line in proc.endpoints)
        assert served["tcp"].startswith("tcp 127.0.0.1:")
        assert served["rtutcp"].startswith("rtu-over-tcp 127.0.0.1:")
        assert served["pty"].startswith(f"rtu {tmp_path / 'ttySIM0'} -> /dev/pts/")
        assert (tmp_path / "ttySIM0").is_symlink()
        port = int(served["tcp"].rsplit(":", 1)[1])
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        assert client.connect()
        rr = client.read_input_registers(0, count=2, device_id=1)
        client.close()
        assert rr.registers == [0x4366, 0x0000]  # 230.0 V
    finally:
        assert proc.stop() == 0
    assert not (tmp_path / "ttySIM0").exists()  # the pty link is removed on a clean stop


def test_simulate_plays_a_scenario(tmp_path: Path) -> None:
    site = write_sim_site(tmp_path)
    scenario = tmp_path / "cut.yaml"
    scenario.write_text("timeline:\n  - {at: 0.2s, cut_power: B1}\n")
    proc = SimulatorProcess.spawn(site, scenario, args=("--no-mqtt",))
    try:
        port = int(dict(line.split(": ", 1) for line in proc.endpoints)["tcp"].rsplit(":", 1)[1])
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=0.3, retries=0)
        assert client.connect()

        def silent() -> bool:
            try:
                rr = client.read_input_registers(0, count=2, device_id=1)
            except Exception:
                return True
            return rr.isError()

        wait_until(silent, timeout=10, what="B1's line to go silent after the scenario's power cut")
        client.close()
    finally:
        proc.stop()


def test_simulate_rejects_a_bad_scenario_with_file_and_line(tmp_path: Path) -> None:
    site = write_sim_site(tmp_path)
    scenario = tmp_path / "bad.yaml"
    scenario.write_text("timeline:\n  - {at: 1s, stop_device: nobody}\n")
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "simulate", str(site), "--scenario", str(scenario)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert f"{scenario}:2: timeline[0].stop_device: unknown device 'nobody'" in out.stderr
