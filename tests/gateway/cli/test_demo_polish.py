"""The first hour of a new user, around the demo: no broker is one clear line (simulate and run), the demo
tells its timeline before it plays it, and the demo's dead meter becomes an incident while the demo runs.

Everything runs for real: `meterwatch simulate`, `meterwatch run` and `python -m gateway.cli.demo` as
subprocesses, a Modbus client on the simulator's socket, mosquitto where the demo starts one. "No broker" is
a free port nobody listens on.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import yaml
from pymodbus.client import ModbusTcpClient

from bench.demo_start import example_on_free_ports
from gateway.config import load_site
from gateway.core.durations import parse_duration
from simulators.runner import READY, SimulatorThread
from simulators.scenario import load_scenario, timeline_lines
from tests.helpers import REPO, free_port, wait_until
from tests.procwatch import Watched

DEMO_SCENARIO = REPO / "deploy/examples/scenarios/demo.yaml"
EXAMPLE = REPO / "deploy/examples/compound.yaml"


def write_site(directory: Path, modbus_port: int, mqtt_port: int) -> Path:
    """One meter on Modbus TCP and one tank level sensor on MQTT."""
    path = directory / "site.yaml"
    path.write_text(
        f"""\
site: {{id: nobroker, name: No broker}}
buildings:
  - {{id: B1, domains: [{{id: B1-power, kind: power}}, {{id: B1-water, kind: water}}]}}
lines:
  - {{id: tcp, transport: tcp, host: 127.0.0.1, port: {modbus_port}, timeout: 300ms}}
devices:
  - {{id: B1-main, building: B1, domain: B1-power, role: main_power, line: tcp, unit: 1, profile: sdm630,
     poll_interval: 500ms}}
  - {{id: B1-tank, building: B1, domain: B1-water, role: tank, source: mqtt, expected_interval: 1s}}
mqtt:
  host: 127.0.0.1
  port: {mqtt_port}
  subscriptions:
    - {{topic: "sensors/{{building}}/{{device}}/{{quantity}}", format: number}}
http: {{host: 127.0.0.1, port: 0}}
""",
        encoding="utf-8",
    )
    return path


def broker_lines(lines: list[str], port: int) -> list[str]:
    return [ln for ln in lines if f"no MQTT broker at 127.0.0.1:{port}" in ln]


def test_simulate_without_a_broker_says_so_in_one_line_and_serves_modbus(tmp_path: Path) -> None:
    modbus_port, mqtt_port = free_port(), free_port()
    site = write_site(tmp_path, modbus_port, mqtt_port)
    sim = Watched("gateway.cli", ["simulate", str(site)], cwd=tmp_path)
    try:
        sim.wait_for(lambda lines: bool(broker_lines(lines, mqtt_port)), 60, "the no-broker line", "err")
        sim.wait_for(lambda lines: any(ln.startswith(READY) for ln in lines), 60, "simulator ready", "out")
        (line,) = broker_lines(sim.lines("err"), mqtt_port)
        assert "B1-tank" in line and "--no-mqtt" in line and "mosquitto" in line, line  # who, and what to do
        assert "serving Modbus" in line, line
        client = ModbusTcpClient("127.0.0.1", port=modbus_port, timeout=5, retries=0)
        try:
            assert client.connect(), sim.dump()
            rr = client.read_input_registers(0, count=2, device_id=1)
        finally:
            client.close()
        assert not rr.isError(), rr
        assert rr.registers == [0x4366, 0x0000]  # 230.0 V from B1-main
        assert len(broker_lines(sim.lines(), mqtt_port)) == 1, sim.dump()  # one line, not one per retry
        code = sim.stop(signal.SIGTERM)
    finally:
        sim.kill()
    assert code == 0, sim.dump()
    assert not any("Traceback" in ln for ln in sim.lines("err")), sim.dump()


def tap_samples(tap: Path, device: str) -> list[dict[str, Any]]:
    if not tap.exists():
        return []
    rows = [json.loads(ln) for ln in tap.read_text(encoding="utf-8").splitlines() if ln.endswith("}")]
    return [r for r in rows if r["device"] == device]


def test_run_without_a_broker_warns_at_start_and_keeps_polling_modbus(tmp_path: Path) -> None:
    modbus_port, mqtt_port = free_port(), free_port()
    site_path = write_site(tmp_path, modbus_port, mqtt_port)
    tap = tmp_path / "tap.jsonl"
    with SimulatorThread(load_site(site_path), mqtt=False):
        daemon = Watched(
            "gateway.cli",
            ["run", str(site_path), "--state-dir", str(tmp_path / "state"), "--tap", str(tap)],
            cwd=tmp_path,
        )
        try:
            daemon.wait_for(lambda lines: bool(broker_lines(lines, mqtt_port)), 60, "the warning", "err")
            (line,) = broker_lines(daemon.lines("err"), mqtt_port)
            assert "level=warning" in line and "B1-tank" in line, line
            assert "Modbus collection goes on" in line, line
            polled = len(tap_samples(tap, "B1-main"))
            wait_until(
                lambda: len(tap_samples(tap, "B1-main")) >= polled + 3,
                60,
                what="B1-main polled after the warning",
            )
            assert daemon.proc.poll() is None, daemon.dump()
            code = daemon.stop(signal.SIGTERM)
        finally:
            daemon.kill()
    assert code == 0, daemon.dump()
    assert len(broker_lines(daemon.lines(), mqtt_port)) == 1, daemon.dump()


def test_the_timeline_says_what_happens_when(tmp_path: Path) -> None:
    scenario = tmp_path / "cut.yaml"
    scenario.write_text(
        "name: cut\ntimeline:\n"
        "  - {at: 20s, cut_power: B2, note: B2-main reads 0 V}\n"
        "  - {at: 50s, restore_power: B2}\n"
        "  - {at: 70s, stop_device: B3-office}\n"
        "  - {at: 70s, set: {device: B1-pressure, quantity: pressure, value: 0.4}}\n",
        encoding="utf-8",
    )
    lines = timeline_lines(load_scenario(scenario, load_site(EXAMPLE)))
    assert lines == [
        "+20s   power cut in B2: B2-main reads 0 V",
        "+50s   power back in B2",
        "+70s   B3-office stops answering; B1-pressure pressure 0.4",
    ]


def demo_steps() -> list[dict[str, Any]]:
    doc = yaml.safe_load(DEMO_SCENARIO.read_text(encoding="utf-8"))
    return list(doc["timeline"])


def test_the_demo_tells_its_timeline_and_its_dead_meter_becomes_an_incident(tmp_path: Path) -> None:
    steps = demo_steps()
    (stop,) = [s for s in steps if "stop_device" in s]  # the demo's dead meter
    dead = stop["stop_device"]
    (back,) = [s for s in steps if s.get("restore_device") == dead]
    back_line = f"demo: +{parse_duration(back['at']):g}s restore {dead}"
    site, _ = example_on_free_ports(tmp_path)
    demo = Watched("gateway.cli.demo", [str(site), "--plain", "--scenario", str(DEMO_SCENARIO)], cwd=tmp_path)

    def incident(lines: list[str]) -> bool:
        return any(
            ln.startswith("#") and "communication fault" in ln and f"symptoms={dead}" in ln for ln in lines
        )

    try:
        demo.wait_for(
            lambda lines: any(ln.startswith("demo: simulator:") for ln in lines), 60, "start", "out"
        )
        out = demo.lines("out")
        started = next(i for i, ln in enumerate(out) if ln.startswith("demo: simulator:"))
        told = [ln.removeprefix("demo:").strip() for ln in out[:started]]
        # every step of the file, with its time and its note, before anything starts
        for step in steps:
            at = f"+{parse_duration(step['at']):g}s"
            named = next(
                v if isinstance(v, str) else v.get("device") or v.get("target")
                for k, v in step.items()
                if k not in ("at", "note")
            )
            assert any(
                t.startswith(at) and named in t and " ".join(step.get("note", "").split()) in t for t in told
            ), (step, told)
        budget = parse_duration(back["at"]) + 120  # generous: only a demo that never shows it fails here
        demo.wait_for(incident, budget, f"a communication fault incident of {dead}", "out")
        out = demo.lines("out")
        first = next(i for i, ln in enumerate(out) if incident([ln]))
        assert back_line not in out[:first], (  # the incident shows while the meter is still dead
            f"{dead} became an incident only after the scenario revived it\n" + demo.dump()
        )
        code = demo.stop(signal.SIGINT)
    finally:
        demo.kill()
    assert code == 0, demo.dump()
    assert not any("Traceback" in ln for ln in demo.lines("err")), demo.dump()
