"""Poller against the simulators over real sockets and a pseudo-terminal.

The simulators run in their own thread and event loop (tests/fixtures/sim.py); the line actors run in the
test's loop, exactly as in the daemon.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import struct
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from drivers.modbus.crc import crc_bytes
from drivers.modbus.line import LineActor
from drivers.modbus.spec import DeviceSpec, LineSpec
from gateway.app.modbus import modbus_specs
from gateway.config import Site, load_site
from gateway.core.types import DeviceStatus, Event, Sample, SourceStatus
from tests.fixtures.sim import SimHandle
from tests.helpers import eventually as until

# ---------------------------------------------------------------------------------------------------------
# helpers


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)

    def samples(self, device: str) -> list[Sample]:
        return [e for e in self.events if isinstance(e, Sample) and e.device == device]

    def latest(self, device: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in self.samples(device):
            out.update(s.values)
        return out

    def statuses(self, device: str) -> list[DeviceStatus]:
        return [e for e in self.events if isinstance(e, DeviceStatus) and e.device == device]


def specs(
    site: Site, lines: Iterable[str] | None = None, **line_overrides: object
) -> list[tuple[LineSpec, list[DeviceSpec]]]:
    poll = line_overrides.pop("poll_interval", None)
    out = []
    for line, devices in modbus_specs(site):
        if lines is not None and line.id not in lines:
            continue
        line = dataclasses.replace(line, **line_overrides)  # type: ignore[arg-type]
        if poll is not None:
            devices = [dataclasses.replace(d, poll_interval=float(poll)) for d in devices]  # type: ignore[arg-type]
        out.append((line, devices))
    return out


class Actors:
    """Line actors running in the test's loop until the block ends."""

    def __init__(self, line_specs: list[tuple[LineSpec, list[DeviceSpec]]], emit: Recorder) -> None:
        self.actors = [LineActor(line, devices, emit, seed=1) for line, devices in line_specs]
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def __getitem__(self, line_id: str) -> LineActor:
        return next(a for a in self.actors if a.line.id == line_id)

    async def __aenter__(self) -> Actors:
        self.tasks = [asyncio.create_task(a.run(self.stop)) for a in self.actors]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), timeout=10)
        for t in self.tasks:
            assert t.exception() is None


def exact_values(sim: SimHandle, device: str) -> dict[str, float]:
    """Set every settable quantity of `device` to a value that float32 (and each scale) carries exactly."""
    profile = sim.site.profiles[sim.site.device(device).profile or ""]
    unit = sim.site.device(device).unit or 1
    expected: dict[str, float] = {}
    for i, p in enumerate(profile.points):
        q = p.quantity
        if q == "pipe_empty" or p.info:
            continue  # a bit of error_code; info points are not readings (test_types_live.py)
        if q == "error_code":
            value = 9.0  # bits 0 and 3: no signal, pipe empty
        elif q == "signal_quality":
            value = 87.0
        elif q == "pressure_decimals":
            value = 2.0
        elif q == "pressure":
            value = 3.25 + unit / 100
        elif q.startswith("power_factor"):
            value = round(0.9 + i / 1000, 3)
        else:
            value = round(100 + 7.25 * i + unit * 0.5, 2)
        sim.world.set_value(device, q, value)
        expected[q] = value
    if "error_code" in expected:
        expected["pipe_empty"] = 1.0
    return expected


# ---------------------------------------------------------------------------------------------------------
# round trips


async def test_every_profile_round_trips_exactly(sim: SimHandle) -> None:
    """All six profiles over Modbus TCP, RTU over TCP and RTU on a pseudo-terminal: exact values."""
    devices = [d.id for d in sim.site.config.devices]
    expected = {d: exact_values(sim, d) for d in devices}
    rec = Recorder()
    async with Actors(specs(sim.site, poll_interval=0.3), rec):
        await until(
            lambda: (
                all(set(rec.latest(d)) >= set(expected[d]) for d in devices)
                and len(rec.samples("T-sdm630")) >= 3
            ),
            15,
            "every value of every device, three cycles of T-sdm630",
        )
    for d in devices:
        got = rec.latest(d)
        assert {q: got[q] for q in expected[d]} == expected[d], d
    # The DTSU666 sends raw scaled floats and the TUF-2000M low word first: both decoded to engineering units.
    assert rec.latest("T-dtsu666")["current_l1"] == expected["T-dtsu666"]["current_l1"]
    assert rec.latest("P-tuf")["flow"] == expected["P-tuf"]["flow"]
    assert rec.latest("R-pressure")["pressure"] == 3.28
    # A cycle is one Sample holding every read's values (the SDM630 is three reads), cycles in time order.
    sdm = rec.samples("T-sdm630")[:3]
    assert len(sdm) == 3 and all(set(s.values) >= set(expected["T-sdm630"]) for s in sdm)
    assert sdm[0].ts < sdm[1].ts < sdm[2].ts


async def test_rtu_on_pseudo_terminal_keeps_one_request_on_the_wire(sim: SimHandle) -> None:
    rec = Recorder()
    async with Actors(specs(sim.site, ["pty"], poll_interval=0.2), rec) as actors:
        await until(
            lambda: all(len(rec.samples(d)) >= 6 for d in ("P-sdm630", "P-ddsu666", "P-tuf")), 15, "samples"
        )
        stats = actors["pty"].stats
    assert stats.connected and stats.errors == {}
    for d in ("P-sdm630", "P-ddsu666", "P-tuf"):
        assert actors["pty"].device_stats[d].errors == {}, d
    assert rec.latest("P-ddsu666")["voltage_l1"] == 230.0
    # Two requests on the wire at once would garble frames: the simulator would count bad frames.
    assert sim.thread.sim is not None
    counters = sim.thread.sim.lines["pty"].counters
    assert counters.bad_frames == 0 and counters.answered >= 18


# ---------------------------------------------------------------------------------------------------------
# failure isolation


async def test_dead_device_on_shared_rtu_line(sim: SimHandle) -> None:
    """A dead device costs the others at most one timeout per cycle, goes down, and comes back alone."""
    line_specs = specs(sim.site, ["rtutcp"], poll_interval=0.4, timeout=0.2, down_after=2, backoff_max=1.0)
    rec = Recorder()
    dead, others = "R-sdm120", ("R-dtsu666", "R-pressure")
    async with Actors(line_specs, rec) as actors:
        actor = actors["rtutcp"]
        await until(lambda: all(rec.samples(d) for d in (dead, *others)), 10, "first samples")
        before = {d: (actor.device_stats[d].requests, actor.device_stats[d].cycles) for d in (dead, *others)}
        samples_before = {d: len(rec.samples(d)) for d in others}
        sim.world.stop_device(dead)
        await until(lambda: any(not s.up for s in rec.statuses(dead)), 10, "the dead device marked down")
        down = next(s for s in rec.statuses(dead) if not s.up)
        assert "timeout" in down.reason
        await asyncio.sleep(1.5)  # several probes and several cycles of the others
        st = actor.device_stats[dead]
        poller = actor.pollers[dead]
        requests = st.requests - before[dead][0]
        cycles = st.cycles - before[dead][1]
        # One request per failed cycle (its other reads are skipped) and one per probe, nothing more.
        assert requests == st.errors["timeout"] <= cycles + poller.probe_attempts
        assert cycles == actor.line.down_after  # once down, only probes
        for d in others:
            assert actor.device_stats[d].skipped_cycles == 0, d
            assert actor.device_stats[d].errors == {}, d
            assert len(rec.samples(d)) > samples_before[d] + 3, d
        sim.world.restore_device(dead)
        await until(lambda: rec.statuses(dead)[-1].up, 5, "the device back up")
        n = len(rec.samples(dead))
        await until(lambda: len(rec.samples(dead)) >= n + 4, 5, "normal polling again")
    assert [s.up for s in rec.statuses(dead)] == [True, False, True]


async def test_exceptions_out_of_range_and_nan_are_counted_and_skipped(
    sim: SimHandle, caplog: pytest.LogCaptureFixture
) -> None:
    from drivers.modbus.planner import plan_reads
    from gateway.config.profile import Point

    sdm120 = sim.site.profiles["sdm120"]
    extra = [
        Point(quantity="import_power", function="input", address=0x0500, type="float32"),  # not on an SDM120
        Point(quantity="serial_number", function="holding", address=0xFC00, type="uint32"),  # no holding map
    ]
    device = DeviceSpec(
        id="R-sdm120", unit=2, poll_interval=0.2, requests=tuple(plan_reads([*sdm120.points, *extra], 2))
    )
    line = next(ln for ln, _ in specs(sim.site, ["rtutcp"]))
    sim.world.set_value("R-sdm120", "voltage_l1", math.nan)
    rec = Recorder()
    async with Actors([(line, [device])], rec) as actors:
        st = actors["rtutcp"].device_stats["R-sdm120"]
        await until(lambda: st.cycles >= 4, 10, "four cycles")
    done = st.cycles - 1  # the last one may still be running
    assert st.errors["exception_2"] >= 2 * done  # two reads out of range, every cycle
    assert st.errors["nan"] >= done
    assert st.up and [s.up for s in rec.statuses("R-sdm120")] == [True]
    values = rec.latest("R-sdm120")
    assert "voltage_l1" not in values and "import_power" not in values and "serial_number" not in values
    assert values["frequency"] == 50.0
    first = next(s for s in rec.samples("R-sdm120") if "current_l1" in s.values)
    assert first.quality == "decode_error"
    logged = [r.getMessage() for r in caplog.records if "Modbus exception 02" in r.getMessage()]
    assert len(logged) == 2  # once per cause, not once per cycle
    assert sum("voltage_l1 read nan" in r.getMessage() for r in caplog.records) == 1


async def test_overrunning_cycle_is_skipped_not_queued(sim: SimHandle) -> None:
    line_specs = specs(sim.site, ["tcp"], poll_interval=0.1, timeout=1.0)
    line, devices = line_specs[0]
    devices = [d for d in devices if d.id == "T-sdm630"]
    sim.world.set_delay("T-sdm630", 0.12)  # 3 reads: about 0.36 s per cycle against a 0.1 s interval
    rec = Recorder()
    async with Actors([(line, devices)], rec) as actors:
        st = actors["tcp"].device_stats["T-sdm630"]
        started = time.monotonic()
        await until(lambda: st.cycles >= 4, 10, "four slow cycles")
        elapsed = time.monotonic() - started
        assert st.skipped_cycles >= 2 * (st.cycles - 1)
        assert st.cycles <= elapsed / 0.3 + 2  # cycles ran back to back at most, none queued
        sim.world.set_delay("T-sdm630", 0.0)
        skipped = st.skipped_cycles
        cycles = st.cycles
        await until(lambda: st.cycles >= cycles + 5, 5, "normal cycles")
        assert st.skipped_cycles <= skipped + 1
    assert st.errors == {}


async def test_reconnects_after_gateway_reboot(sim: SimHandle) -> None:
    from simulators.runner import SimulatorThread

    line_specs = specs(
        sim.site, ["tcp", "rtutcp"], poll_interval=0.2, timeout=0.2, down_after=2, backoff_max=0.5
    )
    rec = Recorder()
    async with Actors(line_specs, rec) as actors:
        await until(
            lambda: actors["tcp"].stats.connected and actors["rtutcp"].stats.connected, 5, "connected"
        )
        await until(lambda: len(rec.samples("T-sdm630")) >= 3, 5, "samples")
        await asyncio.to_thread(sim.thread.stop)  # the gateways power off: connections drop
        await until(lambda: not actors["tcp"].stats.connected, 5, "line tcp disconnected")
        await until(lambda: any(not s.up for s in rec.statuses("T-sdm630")), 5, "device down")
        replacement = SimulatorThread(sim.site, clock=sim.clock, mqtt=False)
        await asyncio.to_thread(replacement.start)  # same ports: the gateways are back
        try:
            n = len(rec.samples("T-sdm630"))
            await until(
                lambda: len(rec.samples("T-sdm630")) > n and len(rec.samples("R-dtsu666")) > 0, 10, "resumed"
            )
            await until(
                lambda: rec.statuses("R-dtsu666")[-1].up and rec.statuses("T-sdm630")[-1].up, 10, "up"
            )
        finally:
            await asyncio.to_thread(replacement.stop)
    tcp = [e for e in rec.events if isinstance(e, SourceStatus) and e.source == "modbus:tcp"]
    assert [e.connected for e in tcp][:3] == [True, False, True]
    assert actors["tcp"].stats.reconnects >= 1


# ---------------------------------------------------------------------------------------------------------
# CRC errors: the simulator never sends a bad CRC on purpose, so a few bytes of test-only server do.


async def test_crc_errors_are_counted_and_skipped(tmp_path: Path) -> None:
    from drivers.modbus.planner import plan_reads
    from gateway.config.profile import builtin_profiles

    state = {"corrupt": True, "requests": 0}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await reader.readexactly(8)
                state["requests"] += 1
                unit, address, count = (
                    req[0],
                    int.from_bytes(req[2:4], "big"),
                    int.from_bytes(req[4:6], "big"),
                )
                words = [2 if address + i == 3 else 300 for i in range(count)]  # 2 decimals, raw 300
                body = bytes([unit, 3, 2 * count]) + b"".join(w.to_bytes(2, "big") for w in words)
                crc = crc_bytes(body)
                if state["corrupt"]:
                    crc = bytes([crc[0] ^ 0xFF, crc[1]])
                writer.write(body + crc)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pressure = builtin_profiles()["rs485-pressure"]
    device = DeviceSpec(id="p", unit=1, poll_interval=0.15, requests=tuple(plan_reads(pressure.points, 1)))
    line = LineSpec(
        id="crc", transport="rtu_over_tcp", host="127.0.0.1", port=port, timeout=0.1, down_after=50
    )
    rec = Recorder()
    try:
        async with Actors([(line, [device])], rec) as actors:
            st = actors["crc"].device_stats["p"]
            await until(lambda: st.errors["crc"] >= 3, 5, "CRC errors counted")
            assert rec.samples("p") == []
            state["corrupt"] = False
            await until(lambda: rec.samples("p"), 5, "good frames decoded")
    finally:
        server.close()
        await server.wait_closed()
    assert set(st.errors) == {"crc"}
    assert rec.latest("p") == {"pressure_decimals": 2.0, "pressure": 3.0}
    assert st.errors["crc"] == actors["crc"].stats.errors["crc"]


async def test_daemon_builder_publishes_to_the_bus(sim: SimHandle, tmp_path: Path) -> None:
    from gateway.app.modbus import build
    from gateway.core.bus import Bus

    site = load_site(sim.site_path)
    bus = Bus()
    sub = bus.subscribe("test")
    components = build(site, bus)
    assert sorted(c.name for c in components) == ["modbus:pty", "modbus:rtutcp", "modbus:tcp"]
    assert {c.stats.line for c in components} == {"tcp", "rtutcp", "pty"}
    assert {d for c in components for d in c.device_stats} == {d.id for d in site.config.devices}
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in components]
    seen: set[str] = set()
    try:
        while len(seen) < len(site.config.devices):
            event = await asyncio.wait_for(sub.get(), timeout=10)
            if isinstance(event, Sample):
                seen.add(event.device)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    by_line = {c.stats.line: c for c in components}
    assert by_line["tcp"].stats.requests > 0
    assert next(c.device_stats["P-tuf"] for c in components if "P-tuf" in c.device_stats).samples > 0


# ---------------------------------------------------------------------------------------------------------
# ReadOutcome.data (the lean TCP path) against ReadOutcome.words (pymodbus): the same Samples, stats, logs


def register_bank_meter(script: list[str], bank: dict[tuple[str, int], int]) -> object:
    """A device seen through the poller's read seam: answers from `bank`, as words or as wire data."""
    from drivers.modbus.planner import ReadRequest
    from drivers.modbus.poller import ReadOutcome

    def read_for(as_data: bool) -> object:
        calls = 0

        async def read(request: ReadRequest) -> ReadOutcome:
            nonlocal calls
            step = script[calls % len(script)]
            calls += 1
            if step == "timeout":
                return ReadOutcome(failure="timeout", detail="no answer within 1 s")
            if step == "exception" and request.address > 0:
                return ReadOutcome(exception_code=2, rtt=0.01)
            words = [bank.get((request.function, request.address + i), 0) for i in range(request.count)]
            if as_data and not request.is_bits:
                return ReadOutcome(data=struct.pack(f">{len(words)}H", *words), rtt=0.01)
            return ReadOutcome(words=words, rtt=0.01)

        return read

    return read_for


async def test_data_outcomes_publish_exactly_what_words_outcomes_do(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from drivers.modbus.codec import encode
    from drivers.modbus.planner import plan_reads
    from drivers.modbus.poller import DevicePoller
    from gateway.config.profile import Point
    from gateway.core.once import OnceLog
    from gateway.core.stats import DeviceStats

    points = [
        Point(quantity="voltage", function="input", address=0, type="float32"),
        Point(quantity="current", function="input", address=2, type="float32", word_order="little"),
        Point(quantity="gone", function="input", address=4, type="uint16", not_available=(0xFFFF,)),
        Point(quantity="broken", function="input", address=5, type="float32"),  # NaN below
        Point(quantity="decimals", function="input", address=7, type="uint16"),
        Point(quantity="pressure", function="input", address=8, type="int16", decimals_register=7),
        Point(
            quantity="energy", function="input", address=40, type="uint32", scale=0.01, byte_order="little"
        ),
        Point(quantity="alarm", function="coil", address=3, type="bit"),
    ]
    requests = tuple(plan_reads(points, unit=1))
    assert len(requests) == 3
    bank: dict[tuple[str, int], int] = {}

    def put(quantity: str, words: list[int]) -> None:
        p = next(p for p in points if p.quantity == quantity)
        for i, w in enumerate(words):
            bank[(p.function or "", p.pdu + i)] = w

    put("voltage", encode(points[0], 230.2))
    put("current", encode(points[1], 1.25))
    put("gone", [0xFFFF])
    put("broken", [0x7FC0, 0x0000])
    put("decimals", [2])
    put("pressure", encode(points[5], -3.21, 2))
    put("energy", encode(points[6], 123456.78))
    put("alarm", [1])
    script = ["ok", "ok", "ok", "ok", "exception", "ok", "timeout", "ok", "ok", "ok", "ok"]
    line = LineSpec(id="bank", transport="tcp", host="127.0.0.1", port=1, down_after=2)
    device = DeviceSpec(id="M1", unit=1, poll_interval=1.0, requests=requests)
    runs = []
    for as_data in (False, True):
        caplog.clear()
        rec = Recorder()
        stats = DeviceStats("M1", "bank")
        read = register_bank_meter(script, bank)(as_data)  # type: ignore[operator]
        poller = DevicePoller(line, device, read, rec, stats, OnceLog(logging.getLogger("test.bank")))
        for _ in range(6):
            await poller.cycle()
        samples = [(s.values, s.quality) for s in rec.samples("M1")]
        logs = [r.getMessage() for r in caplog.records if r.name == "test.bank"]
        runs.append((samples, dict(stats.errors), stats.samples, stats.requests, logs))
    assert runs[0] == runs[1]
    samples, errors, *_, logs = runs[1]
    assert samples[0] == (
        {"voltage": 230.2, "current": 1.25, "decimals": 2.0, "pressure": -3.21},
        "decode_error",
    )
    assert ({"energy": 123456.78}, "good") in samples and ({"alarm": 1.0}, "good") in samples
    assert (
        errors["not_available"] == errors["nan"] > 0 and errors["exception_2"] > 0 and errors["timeout"] == 1
    )
    assert sum("timeout" in m for m in logs) == 1 and sum("Modbus exception" in m for m in logs) >= 1
