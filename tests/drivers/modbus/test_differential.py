"""The built-in Modbus TCP client against pymodbus, the reference (issue 11): same values, same error kinds.

Every profile of drivers/profiles/ (and tests/profiles/: coils, discrete inputs, 2000 bits and 125 registers
in one read) is served by the simulator on one Modbus TCP line; each device's planned reads go through a
pymodbus connection (line.Connection) and a built-in one (tcp.TcpConnection), and then through the poller's
normal decode: the registers, the Samples and the device info must be identical. Devices that do not answer,
answer an exception, answer the wrong shape, answer twice or late, send bytes that are no frame or close
the connection must give identical outcome kinds and identical error counters on both paths.
Nothing here is about speed (bench/modbus_client.py is).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import struct
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.modbus.line import Connection
from drivers.modbus.planner import ReadRequest
from drivers.modbus.poller import DevicePoller, ReadOutcome
from drivers.modbus.spec import Client, DeviceSpec, LineSpec
from drivers.modbus.tcp import TcpConnection
from gateway.app.modbus import modbus_specs
from gateway.config import Site, load_site
from gateway.core.once import OnceLog
from gateway.core.stats import DeviceStats, LineStats
from gateway.core.types import DeviceInfo, Sample
from simulators.runner import SimulatorThread
from simulators.world import ManualClock, World
from tests.drivers.modbus.test_poller import Recorder
from tests.drivers.modbus.test_stale_replies import Device, Mode, mbap, registers, serve
from tests.helpers import REPO, free_port
from tests.helpers import eventually as until

CLIENTS: tuple[Client, Client] = ("pymodbus", "builtin")
PROFILES = sorted(p.stem for p in (REPO / "drivers/profiles").glob("*.yaml"))
TEST_PROFILES = ["kitchen-sink", "limits-bank"]  # tests/profiles/: bits, 64-bit types, the read limits
TIMEOUT = 0.25
# A late answer comes LATE after its request on a line whose timeout is LATE_TIMEOUT: a quarter second after
# the deadline, and a quarter second before the deadline of the request sent at that deadline, so that a
# loop slowed by a loaded machine cannot turn it into an answer or the next one into a timeout.
LATE_TIMEOUT = 0.5
LATE = 0.75

log = logging.getLogger("meterwatch.test.differential")


def connection(line: LineSpec, client: Client, stats: LineStats) -> Connection | TcpConnection:
    line = dataclasses.replace(line, client=client)
    make = TcpConnection if line.builtin_client else Connection
    conn = make(line, stats, f"{line.id}:{client}", lambda c, up: None)
    assert isinstance(conn, TcpConnection) == (client == "builtin")
    return conn


@dataclass(frozen=True)
class Seen:
    """One read's outcome, as far as both paths must agree on it."""

    failure: str | None
    exception_code: int | None
    values: list[int] | None

    @staticmethod
    def of(outcome: ReadOutcome) -> Seen:
        return Seen(outcome.failure, outcome.exception_code, outcome.registers())


# ---------------------------------------------------------------------------------------------------------
# every profile, simulated: identical registers, Samples and device info


@dataclass
class ProfileSim:
    site: Site
    world: World
    line: LineSpec
    devices: dict[str, DeviceSpec]  # profile name -> its device


def write_site(directory: Path) -> Path:
    devices = "\n".join(
        f"  - {{id: D-{name}, building: B1, domain: B1-power, line: tcp, unit: {unit},"
        f" profile: {name}{', max_gap: 100' if name == 'limits-bank' else ''}}}"
        for unit, name in enumerate([*PROFILES, *TEST_PROFILES], start=1)
    )
    text = f"""site: {{id: differential, name: Both Modbus TCP clients}}
buildings:
  - id: B1
    domains: [{{id: B1-power, kind: power}}]
lines:
  - {{id: tcp, transport: tcp, host: 127.0.0.1, port: {free_port()}, timeout: 1s}}
profiles_dir: {REPO / "tests/profiles"}
devices:
{devices}
"""
    path = directory / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def profile_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProfileSim]:
    site = load_site(write_site(tmp_path_factory.mktemp("differential")))
    thread = SimulatorThread(site, clock=ManualClock(), mqtt=False).start()
    try:
        ((line, devices),) = modbus_specs(site)
        by_profile = {site.device(d.id).profile or "": d for d in devices}
        yield ProfileSim(site, thread.world, line, by_profile)
    finally:
        thread.stop()


async def planned_reads(line: LineSpec, device: DeviceSpec, client: Client) -> list[Seen]:
    conn = connection(line, client, LineStats(line=line.id, transport=line.transport))
    try:
        return [Seen.of(await conn.read(r)) for r in (*device.requests, *device.info_requests)]
    finally:
        conn.close()


async def one_cycle(
    line: LineSpec, device: DeviceSpec, client: Client, pipeline: int = 1
) -> tuple[Recorder, DeviceStats]:
    """One poll cycle (and the info read that follows the first answered one) through the poller; with
    `pipeline` > 1 (built-in client) the cycle's reads go out that many at once (TcpConnection.read_many)."""
    stats = LineStats(line=line.id, transport=line.transport)
    conn = connection(dataclasses.replace(line, pipeline=pipeline), client, stats)
    rec = Recorder()
    device_stats = DeviceStats(device=device.id, line=line.id)
    many = conn.read_many if isinstance(conn, TcpConnection) and pipeline > 1 else None
    poller = DevicePoller(
        line, device, conn.read, rec, device_stats, OnceLog(log), random.Random(1), many, pipeline
    )
    if many is not None and len(device.requests) > 1:
        assert poller._groups, "the cycle is not read in groups"
        assert isinstance(conn, TcpConnection)
        await conn._ensure_connected()  # read_many sends together on an open connection

        async def not_together(requests: object) -> list[ReadOutcome]:
            raise AssertionError("the reads went out one by one")

        conn._one_by_one = not_together  # type: ignore[method-assign]
    try:
        assert await poller.cycle()
    finally:
        conn.close()
    assert stats.errors == Counter(), stats.errors
    return rec, device_stats


@pytest.mark.parametrize("profile", [*PROFILES, *TEST_PROFILES])
async def test_a_pipelined_cycle_gives_the_samples_of_pymodbus(profile_sim: ProfileSim, profile: str) -> None:
    """The cycle's reads sent four at a time in one write give what pymodbus gives one at a time."""
    device = profile_sim.devices[profile]
    (ref, ref_stats), (got, got_stats) = (
        await one_cycle(profile_sim.line, device, "pymodbus"),
        await one_cycle(profile_sim.line, device, "builtin", pipeline=4),
    )
    assert [e for e in got.events if isinstance(e, Sample)] != []
    for kind in (Sample, DeviceInfo):
        mine = [
            (getattr(e, "values", None), getattr(e, "text", None)) for e in got.events if isinstance(e, kind)
        ]
        theirs = [
            (getattr(e, "values", None), getattr(e, "text", None)) for e in ref.events if isinstance(e, kind)
        ]
        assert mine == theirs, kind
    assert got_stats.requests == ref_stats.requests and got_stats.errors == ref_stats.errors


@pytest.mark.parametrize("profile", [*PROFILES, *TEST_PROFILES])
async def test_every_profile_reads_the_same_through_both_clients(
    profile_sim: ProfileSim, profile: str
) -> None:
    device = profile_sim.devices[profile]
    seen = {c: await planned_reads(profile_sim.line, device, c) for c in CLIENTS}
    assert seen["builtin"] == seen["pymodbus"]
    assert all(s.failure is None and s.exception_code is None and s.values for s in seen["pymodbus"])

    polled = {c: await one_cycle(profile_sim.line, device, c) for c in CLIENTS}
    samples = {c: [s.values for s in rec.events if isinstance(s, Sample)] for c, (rec, _) in polled.items()}
    info = {c: [e.text for e in rec.events if isinstance(e, DeviceInfo)] for c, (rec, _) in polled.items()}
    quality = {c: [s.quality for s in rec.events if isinstance(s, Sample)] for c, (rec, _) in polled.items()}
    assert samples["builtin"] == samples["pymodbus"]
    assert info["builtin"] == info["pymodbus"]
    assert quality["builtin"] == quality["pymodbus"]
    # one Sample per cycle with every planned reading (no profile here has a value the simulator cannot give)
    assert len(samples["pymodbus"]) == 1
    assert set(samples["pymodbus"][0]) == {p.quantity for r in device.requests for p in r.points}
    assert polled["builtin"][1].errors == polled["pymodbus"][1].errors
    if device.info_requests:
        assert info["pymodbus"] and info["pymodbus"][0]


async def test_exception_answers_give_the_same_code(profile_sim: ProfileSim) -> None:
    """An unmapped register (02) and a value the register cannot hold (04, the simulator told so)."""
    pressure = profile_sim.devices["rs485-pressure"]
    unit = pressure.unit
    unmapped = ReadRequest(unit, "holding", 60000, 2, ())
    probed = dataclasses.replace(pressure, requests=(unmapped, *pressure.requests), info_requests=())
    profile_sim.world.set_value("D-rs485-pressure", "pressure", 400.0)  # beyond an int16 with 2 decimals
    try:
        seen = {c: await planned_reads(profile_sim.line, probed, c) for c in CLIENTS}
    finally:
        profile_sim.world.set_value("D-rs485-pressure", "pressure", 3.0)
    assert seen["builtin"] == seen["pymodbus"]
    assert [s.exception_code for s in seen["pymodbus"]][:1] == [2]
    assert 4 in [s.exception_code for s in seen["pymodbus"]]


async def test_a_silent_unit_times_out_on_both_and_the_connection_is_opened_again(
    profile_sim: ProfileSim,
) -> None:
    """Five requests in a row without an answer drop the connection (pymodbus's rule, kept by the built-in
    client: a connection the network lost silently is opened again); the sixth connects anew."""
    line = dataclasses.replace(profile_sim.line, timeout=TIMEOUT)
    nobody = ReadRequest(99, "holding", 0, 2, ())
    seen = {}
    for c in CLIENTS:
        stats = LineStats(line=line.id, transport=line.transport)
        changes: list[bool] = []
        make = TcpConnection if c == "builtin" else Connection
        conn = make(
            dataclasses.replace(line, client=c), stats, c, lambda _c, up, changes=changes: changes.append(up)
        )
        try:
            reads = [Seen.of(await conn.read(nobody)) for _ in range(6)]
            seen[c] = (reads, dict(stats.errors), changes[:3])
        finally:
            conn.close()
    assert seen["builtin"] == seen["pymodbus"]
    assert seen["pymodbus"] == ([Seen("timeout", None, None)] * 6, {"timeout": 6}, [True, False, True])


# ---------------------------------------------------------------------------------------------------------
# devices that answer wrongly (tests/drivers/modbus/test_stale_replies.py's, and a few more here)

READS = [
    ReadRequest(1, "input", 0, 10, ()),
    ReadRequest(1, "input", 70, 10, ()),
    ReadRequest(1, "holding", 12, 2, ()),
]


async def faulty_reads(
    line: LineSpec, client: Client, n: int, settle: Counter[str]
) -> tuple[list[Seen], Counter[str]]:
    """`n` reads of READS in turn; then waits until the line counted at least `settle` (late copies)."""
    stats = LineStats(line=line.id, transport=line.transport)
    conn = connection(line, client, stats)
    try:
        seen = [Seen.of(await conn.read(READS[i % len(READS)])) for i in range(n)]
        await until(lambda: all(stats.errors[k] >= v for k, v in settle.items()), 5, f"{settle} counted")
    finally:
        conn.close()
    return seen, stats.errors


def good(i: int) -> Seen:
    r = READS[i % len(READS)]
    data = registers(r.code, r.address, r.count)
    return Seen(None, None, list(struct.unpack(f">{r.count}H", data)))


@pytest.mark.parametrize(
    ("mode", "expect", "errors"),
    [
        ("late_twice", [good(0), good(1), good(2)], {"stale": 2}),  # a copy of the previous answer first
        ("twice", [good(0), good(1), good(2)], {"stale": 3}),  # each answer again right after it
        ("wrong_function", [Seen("wrong_function", None, None)] * 2, {"wrong_function": 2}),
        ("extra", [Seen("framing", None, None)] * 2, {"framing": 2}),
        ("short", [Seen("framing", None, None)] * 2, {"framing": 2}),
        ("wrong_unit", [Seen("wrong_unit", None, None)] * 2, {"wrong_unit": 2}),
    ],
)
async def test_answers_that_do_not_fit_give_the_same_kinds(
    mode: Mode, expect: list[Seen], errors: dict[str, int], tmp_path: Path
) -> None:
    seen = {}
    for c in CLIENTS:
        async with serve("tcp", Device(mode, mbap), tmp_path) as line:
            if all(s.failure is None for s in expect):  # answered at once: a slow loop must not time out
                line = dataclasses.replace(line, timeout=1.0)
            seen[c] = await faulty_reads(line, c, len(expect), Counter(errors))
    assert seen["builtin"] == seen["pymodbus"]
    assert seen["pymodbus"] == (expect, Counter(errors))


# A device is a function of (the connection's request number, tid, unit, pdu) -> what to do: bytes to send
# (after a delay), or None: close the connection.
Script = Callable[[int, int, int, bytes], Awaitable[bytes | None]]


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[LineSpec]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        try:
            while True:
                tid, _pid, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                out = await script(n, tid, unit, pdu)
                n += 1
                if out is None:
                    break
                writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield LineSpec(id="scripted", transport="tcp", host="127.0.0.1", port=port, timeout=TIMEOUT)
    finally:
        server.close()
        await server.wait_closed()


def answer(tid: int, unit: int, pdu: bytes) -> bytes:
    function, address, count = struct.unpack(">BHH", pdu[:5])
    data = registers(function, address, count)
    return mbap(unit, bytes([function, len(data)]) + data, tid)


async def late_first(n: int, tid: int, unit: int, pdu: bytes) -> bytes | None:
    if n == 0:
        await asyncio.sleep(LATE)  # after the request's deadline, while the next one waits
    return answer(tid, unit, pdu)


async def protocol_id(n: int, tid: int, unit: int, pdu: bytes) -> bytes | None:
    frame = bytearray(answer(tid, unit, pdu))
    frame[3] = 1  # protocol id 1: not Modbus
    return bytes(frame)


async def noise(n: int, tid: int, unit: int, pdu: bytes) -> bytes | None:
    return b"\xff" * 12


async def cut_short(n: int, tid: int, unit: int, pdu: bytes) -> bytes | None:
    return answer(tid, unit, pdu)[:-3]  # the MBAP length promises three bytes more than ever come


async def no_byte_count(n: int, tid: int, unit: int, pdu: bytes) -> bytes | None:
    return mbap(unit, pdu[:1], tid)  # the function code alone, a frame of 8 bytes


async def hang_up(n: int, tid: int, unit: int, pdu: bytes) -> bytes | None:
    return None


@pytest.mark.parametrize(
    ("script", "expect", "errors"),
    [
        (late_first, [Seen("timeout", None, None), good(1), good(2)], {"timeout": 1, "stale": 1}),
        (protocol_id, [Seen("framing", None, None)], {"framing": 1}),
        (noise, [Seen("framing", None, None)], {"framing": 1}),
        (cut_short, [Seen("framing", None, None)], {"framing": 1}),
        (no_byte_count, [Seen("framing", None, None)], {"framing": 1}),
        (hang_up, [Seen("connection", None, None)], {"connection": 1}),
    ],
    ids=["late_answer", "protocol_id", "noise", "cut_short", "no_byte_count", "hang_up"],
)
async def test_late_garbled_and_closed_answers_give_the_same_kinds(
    script: Script, expect: list[Seen], errors: dict[str, int]
) -> None:
    seen = {}
    for c in CLIENTS:
        async with scripted(script) as line:
            if script is late_first:
                line = dataclasses.replace(line, timeout=LATE_TIMEOUT)
            seen[c] = await faulty_reads(line, c, len(expect), Counter(errors))
    assert seen["builtin"] == seen["pymodbus"]
    assert seen["pymodbus"] == (expect, Counter(errors))


async def test_a_retry_takes_the_answer_the_first_attempt_missed_on_both() -> None:
    """retries: 1: the first attempt times out, its late answer arrives during the second (stale), then the
    second's own answer."""
    seen = {}
    for c in CLIENTS:
        async with scripted(late_first) as line:
            seen[c] = await faulty_reads(
                dataclasses.replace(line, retries=1, timeout=LATE_TIMEOUT),
                c,
                2,
                Counter({"timeout": 1, "stale": 1}),
            )
    assert seen["builtin"] == seen["pymodbus"]
    assert seen["pymodbus"] == ([good(0), good(1)], Counter({"timeout": 1, "stale": 1}))
