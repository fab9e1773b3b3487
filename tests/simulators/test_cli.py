"""`meterwatch simulate` as a user runs it: prints what it serves, serves it, plays a scenario, stops.

A scenario silences a line on purpose; the client must then see exactly that silence (no response before its
time-out). Anything else (the connection refused or closed, an exception response, the process gone) means
the simulator crashed or misbehaved, and so does a stop that is not clean: the process must exit 0 on SIGTERM
or SIGINT (Ctrl-C) with no traceback and no error-level log line on stderr.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from simulators.runner import SimulatorProcess
from tests.fixtures.sim import write_sim_site
from tests.helpers import wait_until


class Simulate:
    """`meterwatch simulate` in its own process group, its stderr kept in a file for the checks."""

    def __init__(self, directory: Path, site: Path, scenario: Path | None = None) -> None:
        self.stderr_path = directory / "simulate.stderr"
        with self.stderr_path.open("w", encoding="utf-8") as err:  # the child keeps its own copy
            self.sim = SimulatorProcess.spawn(site, scenario, args=("--no-mqtt",), timeout=60, stderr=err)
        self.proc = self.sim.proc
        self.endpoints = dict(line.split(": ", 1) for line in self.sim.endpoints)

    def port(self, line: str) -> int:
        return int(self.endpoints[line].rsplit(":", 1)[1])

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8")

    def crashed(self, what: str) -> str:
        code = self.proc.poll()
        return f"the simulator crashed or misbehaved: {what}\nexit code {code}; stderr:\n{self.stderr()}"

    def assert_running(self) -> None:
        assert self.proc.poll() is None, self.crashed("the process exited while serving")

    def stop(self, sig: signal.Signals, timeout: float = 30.0) -> int:
        """Send `sig` to the process group, as Ctrl-C (SIGINT) or a service manager (SIGTERM) would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(self.crashed(f"still running {timeout}s after {sig.name}"))
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def assert_stops_cleanly(self, sig: signal.Signals) -> None:
        self.assert_running()  # it served until told to stop
        code = self.stop(sig)
        assert code == 0, self.crashed(f"exit code {code} after {sig.name}")
        err = self.stderr()
        assert "Traceback" not in err, self.crashed("a traceback on stderr")
        assert "level=error" not in err, self.crashed("an error logged on stderr")


@contextmanager
def simulate(directory: Path, site: Path, scenario: Path | None = None) -> Iterator[Simulate]:
    sim = Simulate(directory, site, scenario)
    try:
        yield sim
    finally:
        sim.kill()  # only if the test failed before its own clean stop


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_simulate_serves_every_line_and_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    site = write_sim_site(tmp_path)
    with simulate(tmp_path, site) as sim:
        served = sim.endpoints
        assert served["tcp"].startswith("tcp 127.0.0.1:")
        assert served["rtutcp"].startswith("rtu-over-tcp 127.0.0.1:")
        assert served["pty"].startswith(f"rtu {tmp_path / 'ttySIM0'} -> /dev/pts/")
        assert (tmp_path / "ttySIM0").is_symlink()
        client = ModbusTcpClient("127.0.0.1", port=sim.port("tcp"), timeout=5, retries=0)
        try:
            assert client.connect()
            rr = client.read_input_registers(0, count=2, device_id=1)
        finally:
            client.close()
        assert not rr.isError(), rr
        assert rr.registers == [0x4366, 0x0000]  # 230.0 V
        sim.assert_stops_cleanly(sig)
    assert not (tmp_path / "ttySIM0").exists()  # the pty link is removed on a clean stop


def test_simulate_plays_a_scenario_that_silences_a_line(tmp_path: Path) -> None:
    site = write_sim_site(tmp_path)
    scenario = tmp_path / "cut.yaml"
    scenario.write_text("timeline:\n  - {at: 0.2s, cut_power: B1}\n")
    with simulate(tmp_path, site, scenario) as sim:
        client = ModbusTcpClient("127.0.0.1", port=sim.port("tcp"), timeout=1, retries=0)
        try:
            assert client.connect(), sim.crashed("the tcp line refused the connection")

            def silent() -> bool:
                """True once a request goes unanswered; any other failure is the simulator's fault."""
                try:
                    rr = client.read_input_registers(0, count=2, device_id=1)
                except ModbusIOException:  # no response before the time-out: the scenario's silence
                    return True
                except Exception as exc:  # refused, closed, reset, ...: not what a power cut does
                    pytest.fail(sim.crashed(f"{type(exc).__name__}: {exc}"))
                assert not rr.isError(), sim.crashed(f"an unpowered line answered with an exception: {rr}")
                return False  # still answering: the cut may not have reached this connection yet

            # line `tcp` is powered by B1-power: the scenario's cut silences it
            wait_until(silent, timeout=60, what="B1's line to go silent after the scenario's power cut")
            # silent it stays, on the same connection: the simulator is still up, not gone
            assert silent()
            sim.assert_running()
        finally:
            client.close()
        assert "scenario t=0.2s cut power B1" in sim.stderr(), sim.crashed(
            "the step is not logged as applied"
        )
        sim.assert_stops_cleanly(signal.SIGINT)


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
    assert "Traceback" not in out.stderr
