"""Every Modbus data type simulator -> poller over real sockets and a pseudo-terminal (tests/profiles/).

kitchen-sink: a coil, a discrete input (PLC ref), a bit of a holding register, uint64, int64, float64 in all
four orders, a scaled int32 with offset, PLC refs 30001/40051, a sentinel, and info points (two strings, a
numeric serial number). limits-bank: merged reads that reach exactly 2000 bits and 125 registers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.modbus.planner import plan_reads
from drivers.modbus.probe import run_probe
from gateway.config import Site, load_site
from gateway.config.profile import Point
from gateway.core.types import DeviceInfo, Sample
from simulators.runner import SimulatorThread
from simulators.world import ManualClock, World
from tests.drivers.modbus.test_poller import Actors, Recorder, specs, until
from tests.fixtures.sim import SimHandle
from tests.helpers import REPO, free_port

PROFILES = REPO / "tests/profiles"

KITCHEN = {
    "relay": 1.0,
    "door_open": 1.0,
    "alarm_flags": 0x21,
    "energy_counter_wh": 9_007_199_254_740_991.0,  # 2**53 - 1: the largest integer a float carries exactly
    "balance": -123_456_789_012_345.0,
    "f64_abcd": 1234.5678901234567,
    "f64_cdab": -0.000123456789,
    "f64_badc": 6.02214076e23,
    "f64_dcba": 299792458.125,
    "temperature": -12.34,
    "level": 2.345,
    "setpoint": -300.0,
    "humidity": 45.6,
}
TEXT = {
    "K-tcp": {"model_name": "KS-1000 Meter", "firmware": "v2.1", "serial_number": "12345678"},
    "K-pty": {"model_name": "KS-1000 RTU", "firmware": "9.01", "serial_number": "4294967295"},
}


@dataclass
class TypesSim:
    site: Site
    world: World


def write_site(directory: Path) -> Path:
    tcp, pty = free_port(), directory / "ttyTYPES0"
    text = f"""site: {{id: types, name: Data types test site}}
buildings:
  - id: B1
    domains: [{{id: B1-power, kind: power}}]
lines:
  - {{id: tcp, transport: tcp, host: 127.0.0.1, port: {tcp}, timeout: 500ms}}
  - {{id: pty, transport: rtu, device: "{pty}", baudrate: 38400, timeout: 1s}}
profiles_dir: {PROFILES}
devices:
  - {{id: K-tcp, building: B1, domain: B1-power, line: tcp, unit: 1, profile: kitchen-sink,
      poll_interval: 300ms}}
  - {{id: BANK, building: B1, domain: B1-power, line: tcp, unit: 2, profile: limits-bank,
      poll_interval: 300ms, max_gap: 100}}
  - {{id: K-pty, building: B1, domain: B1-power, line: pty, unit: 5, profile: kitchen-sink,
      poll_interval: 300ms}}
"""
    path = directory / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def types_sim(tmp_path: Path) -> Iterator[TypesSim]:
    site = load_site(write_site(tmp_path))
    thread = SimulatorThread(site, clock=ManualClock(), mqtt=False).start()
    try:
        yield TypesSim(site, thread.world)
    finally:
        thread.stop()


def set_kitchen(world: World, device: str) -> dict[str, float]:
    for q, v in KITCHEN.items():
        world.set_value(device, q, v)
    for q, t in TEXT[device].items():
        if q == "serial_number":
            world.set_value(device, q, float(t))
        else:
            world.set_text(device, q, t)
    return {**KITCHEN, "alarm_low_battery": 1.0}  # bit 5 of alarm_flags 0x21


def infos(rec: Recorder, device: str) -> list[DeviceInfo]:
    return [e for e in rec.events if isinstance(e, DeviceInfo) and e.device == device]


async def test_kitchen_sink_round_trips_over_tcp_and_rtu(types_sim: TypesSim) -> None:
    expected = {d: set_kitchen(types_sim.world, d) for d in ("K-tcp", "K-pty")}
    rec = Recorder()
    line_specs = [(ln, [d for d in devs if d.id != "BANK"]) for ln, devs in specs(types_sim.site)]
    async with Actors(line_specs, rec) as actors:
        await until(
            lambda: all(set(rec.latest(d)) >= set(expected[d]) and infos(rec, d) for d in expected),
            20,
            "every value and the device info of both kitchen-sink devices",
        )
        cycles = {d: actors[ln].device_stats[d].cycles for ln, d in (("tcp", "K-tcp"), ("pty", "K-pty"))}
        await until(
            lambda: all(actors[ln].device_stats[d].cycles >= cycles[d] + 3 for ln, d in (("tcp", "K-tcp"),
                        ("pty", "K-pty"))),
            20,
            "three more cycles",
        )  # fmt: skip
        for ln, d in (("tcp", "K-tcp"), ("pty", "K-pty")):
            assert actors[ln].device_stats[d].errors == {}, d
    for d in expected:
        got = rec.latest(d)
        assert {q: got[q] for q in expected[d]} == expected[d], d
        # Info points are text, read once while the device stays up, never Sample values.
        assert [i.text for i in infos(rec, d)] == [TEXT[d]], d
        assert not set(TEXT[d]) & set(got), d


async def test_info_is_read_again_when_a_device_comes_back(types_sim: TypesSim) -> None:
    set_kitchen(types_sim.world, "K-tcp")
    rec = Recorder()
    line_specs = specs(types_sim.site, ["tcp"], timeout=0.2, down_after=2, backoff_max=0.5)
    line_specs = [(ln, [d for d in devs if d.id == "K-tcp"]) for ln, devs in line_specs]
    async with Actors(line_specs, rec):
        await until(lambda: infos(rec, "K-tcp"), 10, "the first device info")
        # The meter is swapped for another while it is off the bus.
        types_sim.world.stop_device("K-tcp")
        await until(lambda: any(not s.up for s in rec.statuses("K-tcp")), 10, "the device down")
        types_sim.world.set_text("K-tcp", "model_name", "KS-2000 Spare")
        types_sim.world.set_value("K-tcp", "serial_number", 777.0)
        types_sim.world.restore_device("K-tcp")
        await until(lambda: len(infos(rec, "K-tcp")) >= 2, 10, "the device info read again")
    second = infos(rec, "K-tcp")[1].text
    assert second == {"model_name": "KS-2000 Spare", "firmware": "v2.1", "serial_number": "777"}
    assert [s.up for s in rec.statuses("K-tcp")] == [True, False, True]


async def test_sentinel_is_counted_not_published(types_sim: TypesSim) -> None:
    set_kitchen(types_sim.world, "K-tcp")
    rec = Recorder()
    line_specs = [(ln, [d for d in devs if d.id == "K-tcp"]) for ln, devs in specs(types_sim.site, ["tcp"])]
    async with Actors(line_specs, rec) as actors:
        st = actors["tcp"].device_stats["K-tcp"]
        await until(lambda: "humidity" in rec.latest("K-tcp"), 10, "a humidity reading")
        types_sim.world.set_value("K-tcp", "humidity", 6553.5)  # raw 0xFFFF: the meter's "not available"
        await until(lambda: st.errors["not_available"] >= 1, 10, "a sentinel read")
        mark = len(rec.events)
        await until(lambda: st.errors["not_available"] >= 3, 10, "more sentinel reads")
        types_sim.world.set_value("K-tcp", "humidity", 50.0)
        await until(lambda: rec.latest("K-tcp")["humidity"] == 50.0, 10, "a reading again")
    after = [e for e in rec.events[mark:] if isinstance(e, Sample) and e.device == "K-tcp"]
    inputs = [s for s in after if "level" in s.values]
    assert inputs, "no FC04 sample after the sentinel"
    sentinel_samples = [s for s in inputs if "humidity" not in s.values]
    assert len(sentinel_samples) >= 2
    # The meter said "no reading": the other value of the same read is published, the sample stays good.
    assert all(s.values["level"] == 2.345 and s.quality == "good" for s in sentinel_samples)
    assert 6553.5 not in [s.values.get("humidity") for s in rec.samples("K-tcp")]
    assert set(st.errors) == {"not_available"}


async def test_merged_reads_reach_2000_bits_and_125_registers(types_sim: TypesSim) -> None:
    (line, devices), *_ = specs(types_sim.site, ["tcp"])
    bank = next(d for d in devices if d.id == "BANK")
    assert [(r.function, r.address, r.count) for r in bank.requests] == [
        ("coil", 0, 2000),
        ("coil", 2000, 1),
        ("holding", 0, 125),
        ("holding", 125, 1),
    ]
    expected: dict[str, float] = {}
    for p in types_sim.site.profiles["limits-bank"].points:
        a = p.pdu
        value = float((a // 100) % 2 or a in (1999, 2000)) if p.function == "coil" else float(a + 1000)
        types_sim.world.set_value("BANK", p.quantity, value)
        expected[p.quantity] = value
    rec = Recorder()
    async with Actors([(line, [bank])], rec) as actors:
        await until(lambda: set(rec.latest("BANK")) >= set(expected), 10, "every bank value")
        assert actors["tcp"].device_stats["BANK"].errors == {}
    got = rec.latest("BANK")
    assert {q: got[q] for q in expected} == expected
    assert sum(expected.values()) > 0 and min(expected.values()) == 0.0  # both bit values are exercised


async def test_probe_prints_the_registers_as_text(
    types_sim: TypesSim, capsys: pytest.CaptureFixture[str]
) -> None:
    set_kitchen(types_sim.world, "K-tcp")
    port = next(ln.port for ln in types_sim.site.config.lines if ln.id == "tcp")
    # model_name (8 registers, high byte first) then firmware (4 registers, low byte first).
    code = await run_probe("127.0.0.1", port or 0, None, False, 9600, "N", 1, 1, "100", 12, "holding", 1.0)
    out = capsys.readouterr().out
    assert code == 0, out
    row = next(line for line in out.splitlines() if line.startswith("ascii"))
    assert row == (
        "ascii (type: string, byte_order: big): |KS-1000 Meter...2v1.....|"
        "  (byte_order: little): |SK1-00 0eMet.r..v2.1....|"
    )


async def test_sdm630_serial_number_is_device_info(sim: SimHandle) -> None:
    """The shipped SDM630 profile's serial number (holding 0xFC00) over TCP and a pty: text, not a reading."""
    sim.world.set_value("T-sdm630", "serial_number", 19_061_234.0)
    sim.world.set_value("P-sdm630", "serial_number", 4_000_000_001.0)
    rec = Recorder()
    line_specs = [
        (ln, [d for d in devs if d.id.endswith("sdm630")]) for ln, devs in specs(sim.site, ["tcp", "pty"])
    ]
    async with Actors(line_specs, rec):
        await until(lambda: infos(rec, "T-sdm630") and infos(rec, "P-sdm630"), 15, "both serial numbers")
    assert infos(rec, "T-sdm630")[0].text == {"serial_number": "19061234"}
    assert infos(rec, "P-sdm630")[0].text == {"serial_number": "4000000001"}
    assert "serial_number" not in rec.latest("T-sdm630")


async def test_info_register_the_device_lacks_is_not_read_every_cycle(sim: SimHandle) -> None:
    """An info read answered with exception 02 is counted once and not retried before the info refresh."""
    missing = Point(quantity="firmware", function="holding", address=0xFC03, type="string", count=2)
    line, devices = next(iter(specs(sim.site, ["tcp"], poll_interval=0.1)))
    device = next(d for d in devices if d.id == "T-sdm630")
    extra = plan_reads([missing], device.unit, info=True)
    device = dataclasses.replace(device, info_requests=(*device.info_requests, *extra))
    sim.world.set_value("T-sdm630", "serial_number", 42.0)
    rec = Recorder()
    async with Actors([(line, [device])], rec) as actors:
        st = actors["tcp"].device_stats["T-sdm630"]
        await until(lambda: st.cycles >= 10, 15, "ten cycles")
    assert [i.text for i in infos(rec, "T-sdm630")] == [{"serial_number": "42"}]
    assert st.errors == {"exception_2": 1}


async def test_probe_reads_coils_and_discrete_inputs_as_bits(
    types_sim: TypesSim, capsys: pytest.CaptureFixture[str]
) -> None:
    set_kitchen(types_sim.world, "K-tcp")  # relay (coil 0) on, door_open (discrete input 2, ref 10003) on
    port = next(ln.port for ln in types_sim.site.config.lines if ln.id == "tcp") or 0
    # the simulator serves exactly the profile's bits: coil 0 and discrete input 2
    code = await run_probe("127.0.0.1", port, None, False, 9600, "N", 1, 1, "0", 1, "coil", 1.0)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "FC01 address 0 (0x0000) count 1" in out and "    0 (0x0000): 1" in out
    code = await run_probe("127.0.0.1", port, None, False, 9600, "N", 1, 1, "2", 1, "discrete", 1.0)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "FC02 address 2 (0x0002) count 1" in out and "    2 (0x0002): 1" in out
    set_value = types_sim.world.set_value
    set_value("K-tcp", "relay", 0.0)
    code = await run_probe("127.0.0.1", port, None, False, 9600, "N", 1, 1, "0", 1, "coil", 1.0)
    assert code == 0 and "    0 (0x0000): 0" in capsys.readouterr().out
    # bits allow 2000 per read, registers 125
    code = await run_probe("127.0.0.1", port, None, False, 9600, "N", 1, 1, "0", 126, "holding", 1.0)
    assert code == 2 and "--count must be 1..125" in capsys.readouterr().err
