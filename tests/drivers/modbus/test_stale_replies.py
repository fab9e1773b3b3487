"""Stale and malformed Modbus answers never become values, and are counted by kind (issue 8, item 3).

A device written for these tests answers every read the way its mode says, over RTU on a pseudo-terminal,
RTU over TCP and Modbus TCP (raw sockets, frames built by hand, CRC from drivers/modbus/crc.py):
- late_twice: each answer is preceded by a copy of the previous one (a device or serial server that answers
  twice, its second copy landing on the next request): the SDM120's 32-register voltage block offered for
  its 10-register frequency block, or, for two single-register reads, a copy of the same shape;
- twice: each answer is sent again right after it;
- wrong_function: an FC03 answer to an FC04 request (and the other way round);
- extra / short: two registers too many, one too few;
- wrong_unit: the answer comes from another unit id.

Every register reads a value that names its address (input registers: float32 1000 + address; holding
registers: the address as uint16), so a value from the wrong register or function cannot pass for a right
one. The line actors run in the test's loop, as in the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import termios
import tty
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import pytest

from drivers.modbus.crc import with_crc
from drivers.modbus.planner import plan_reads
from drivers.modbus.spec import DeviceSpec, LineSpec, Transport
from gateway.config.profile import Profile, builtin_profiles, load_profile_file
from gateway.core.types import DeviceStatus
from tests.drivers.modbus.test_poller import Actors, Recorder
from tests.helpers import eventually as until

Mode = Literal["late_twice", "twice", "wrong_function", "extra", "short", "wrong_unit"]
UNIT = 1
DOWN_AFTER = 3

TWIN = """\
name: twin
manufacturer: test
model: twin
kind: power
default_unit: 1
defaults: {function: holding, type: uint16}
points:
  - {quantity: level_a, address: 10}
  - {quantity: level_b, address: 200}
"""


def registers(function: int, address: int, count: int) -> bytes:
    """Input registers read float32 1000 + (even) address, holding registers their address."""
    words = []
    for a in range(address, address + count):
        if function == 4:
            even = a - a % 2
            hi, lo = struct.unpack(">HH", struct.pack(">f", 1000.0 + even))
            words.append(hi if a % 2 == 0 else lo)
        else:
            words.append(a & 0xFFFF)
    return b"".join(w.to_bytes(2, "big") for w in words)


class Device:
    """Answers each read as `mode` says; `frame` wraps a PDU for the transport (RTU or MBAP)."""

    def __init__(self, mode: Mode, frame: Callable[[int, bytes, int], bytes]) -> None:
        self.mode = mode
        self.frame = frame
        self.previous = b""
        self.requests = 0

    def answer(self, unit: int, function: int, address: int, count: int, tid: int) -> list[bytes]:
        """The writes that answer one request (each element is written on its own)."""
        self.requests += 1
        mode = self.mode
        n = count + 2 if mode == "extra" else count - 1 if mode == "short" else count
        if mode == "wrong_function":
            function = {3: 4, 4: 3}[function]
        data = registers(function, address, n)
        frame = self.frame(
            unit + 1 if mode == "wrong_unit" else unit, bytes([function, len(data)]) + data, tid
        )
        previous, self.previous = self.previous, frame
        if mode == "late_twice":
            return [previous + frame]  # one write: the stale copy lands right in front of the answer
        if mode == "twice":
            return [frame, frame]
        return [frame]


def rtu(unit: int, pdu: bytes, tid: int) -> bytes:
    return with_crc(bytes([unit]) + pdu)


def mbap(unit: int, pdu: bytes, tid: int) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def parse_rtu(req: bytes) -> tuple[int, int, int, int]:
    unit, function, address, count = struct.unpack(">BBHH", req[:6])
    return unit, function, address, count


async def write_all(write: Callable[[bytes], None], drain: Callable[[], object], frames: list[bytes]) -> None:
    for f in frames:
        write(f)
        result = drain()
        if asyncio.iscoroutine(result):
            await result
        await asyncio.sleep(0)  # a write of its own, not coalesced with the next


@asynccontextmanager
async def serve(transport: Transport, device: Device, tmp_path: Path) -> AsyncIterator[LineSpec]:
    """The device on a fresh endpoint; yields the line that reaches it."""
    common = {"id": "bad", "timeout": 0.25, "down_after": DOWN_AFTER, "backoff_min": 0.1, "backoff_max": 0.2}
    if transport == "rtu":
        async with _pty(device) as path:
            yield LineSpec(transport="rtu", device=path, baudrate=19200, **common)  # type: ignore[arg-type]
        return

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                if transport == "tcp":
                    tid, _pid, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                    pdu = await reader.readexactly(length - 1)
                    function, address, count = struct.unpack(">BHH", pdu[:5])
                else:
                    unit, function, address, count = parse_rtu(await reader.readexactly(8))
                    tid = 0
                await write_all(
                    writer.write, writer.drain, device.answer(unit, function, address, count, tid)
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield LineSpec(transport=transport, host="127.0.0.1", port=port, **common)  # type: ignore[arg-type]
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def _pty(device: Device) -> AsyncIterator[str]:
    master, slave = os.openpty()
    tty.setraw(slave, termios.TCSANOW)
    os.set_blocking(master, False)
    loop = asyncio.get_running_loop()
    buffer = bytearray()
    pending: set[asyncio.Task[None]] = set()

    def write(data: bytes) -> None:
        os.write(master, data)  # a few bytes into an empty pty buffer: never blocks

    def readable() -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            buffer.extend(os.read(master, 4096))
        while len(buffer) >= 8:
            unit, function, address, count = parse_rtu(bytes(buffer[:8]))
            del buffer[:8]
            frames = device.answer(unit, function, address, count, 0)
            task = loop.create_task(write_all(write, lambda: None, frames))
            pending.add(task)
            task.add_done_callback(pending.discard)

    loop.add_reader(master, readable)
    try:
        yield os.ttyname(slave)
    finally:
        loop.remove_reader(master)
        for t in list(pending):
            t.cancel()
        os.close(master)
        os.close(slave)


def sdm120() -> tuple[Profile, dict[str, float]]:
    profile = builtin_profiles()["sdm120"]
    return profile, {p.quantity: 1000.0 + p.pdu for p in profile.points}


def twin(tmp_path: Path) -> tuple[Profile, dict[str, float]]:
    path = tmp_path / "twin.yaml"
    path.write_text(TWIN, encoding="utf-8")
    profile = load_profile_file(path)
    return profile, {p.quantity: float(p.pdu) for p in profile.points}


def spec(profile: Profile) -> DeviceSpec:
    return DeviceSpec(id="m", unit=UNIT, poll_interval=0.1, requests=tuple(plan_reads(profile.points, UNIT)))


TRANSPORTS: list[Transport] = ["rtu", "rtu_over_tcp", "tcp"]


# ---------------------------------------------------------------------------------------------------------
# answers twice: the values stay right, the copies are counted as stale


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", ["late_twice", "twice"])
@pytest.mark.parametrize("which", ["sdm120", "twin"])
async def test_a_device_that_answers_twice_never_stores_a_wrong_value(
    transport: Transport, mode: Mode, which: str, tmp_path: Path
) -> None:
    profile, expected = sdm120() if which == "sdm120" else twin(tmp_path)
    device = Device(mode, mbap if transport == "tcp" else rtu)
    rec = Recorder()
    async with serve(transport, device, tmp_path) as line, Actors([(line, [spec(profile)])], rec) as actors:
        st = actors["bad"].device_stats["m"]

        def wrong() -> list[tuple[str, float]]:
            return [(q, v) for s in rec.samples("m") for q, v in s.values.items() if v != expected[q]]

        def every_quantity_read_thrice() -> bool:
            seen = [q for s in rec.samples("m") for q in s.values]
            return all(seen.count(q) >= 3 for q in expected)

        await until(lambda: wrong() or every_quantity_read_thrice(), 15, "every quantity read three times")
        assert wrong() == []
        await until(lambda: st.errors["stale"] >= 3, 15, "stale copies counted")
        line_errors = dict(actors["bad"].stats.errors)
        device_errors = dict(st.errors)
        assert st.up

    assert wrong() == []
    assert set(device_errors) == {"stale"}, device_errors  # nothing failed: no timeout, no framing
    assert line_errors == device_errors


# ---------------------------------------------------------------------------------------------------------
# answers of the wrong function, unit or length: no values at all, the device fails and goes down


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("wrong_function", "wrong_function"),
        ("extra", "framing"),
        ("short", "framing"),
        ("wrong_unit", "wrong_unit"),
    ],
)
async def test_a_device_whose_answers_do_not_fit_the_request_fails_and_goes_down(
    transport: Transport, mode: Mode, kind: str, tmp_path: Path
) -> None:
    profile, _ = sdm120()
    device = Device(mode, mbap if transport == "tcp" else rtu)
    rec = Recorder()
    async with serve(transport, device, tmp_path) as line, Actors([(line, [spec(profile)])], rec) as actors:
        st = actors["bad"].device_stats["m"]

        def down() -> list[DeviceStatus]:
            return [s for s in rec.statuses("m") if not s.up]

        await until(lambda: down() or rec.samples("m"), 20, f"the device down after {mode} answers")
        assert rec.samples("m") == []
        await until(lambda: st.errors[kind] >= DOWN_AFTER, 10, f"{kind} counted")
        line_errors = dict(actors["bad"].stats.errors)
        device_errors = dict(st.errors)
        up = st.up

    assert rec.samples("m") == []
    assert not up
    assert kind in down()[0].reason and "cycles" in down()[0].reason
    assert [s.up for s in rec.statuses("m")] == [False]  # never up: an answer that does not fit is none
    assert set(device_errors) == {kind}, device_errors  # not timeouts: the counter says why
    assert line_errors == device_errors
