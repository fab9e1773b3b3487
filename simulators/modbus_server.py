"""Modbus servers for every line of a site, answering from the world state and the devices' profiles.

Written on asyncio rather than on pymodbus's server, to have full control over silence, delays and dead
devices (the client side of every test is pymodbus, so conformance is still checked by an independent
implementation).

Transports: Modbus TCP (MBAP) for `tcp` lines, RTU framing over a TCP stream for `rtu_over_tcp`, and RTU on a
pseudo-terminal for `rtu` (a symlink at the line's `device` path points to the slave end, like socat's link=,
so the gateway opens the configured path).

Answers, per unit id, from the device's profile:
- functions 1, 2, 3, 4 (coils, discrete inputs, holding, input registers); any other function: exception 01.
- a count outside 1..125 registers (1..2000 bits), or a malformed request PDU: exception 03.
- an address the profile does not define: exception 02, with one exception that mirrors real meters: an
  undefined register lying in a gap of fewer than GAP_FILL registers between two defined points reads as 0,
  so a merged read spanning such gaps (a poller's max_gap is at most 124) succeeds. Everything before the
  first defined point, after the last one, or in a larger gap is out of range.
- a value the point's type cannot hold (e.g. 400 bar in an int16 with 2 decimals): exception 04.
- a string point reads the device's text (World.text: as a test set it, else "SIM-<device id>"), NUL-padded.
Silence (the client times out): unknown unit id, a stopped or unpowered device, a line whose converter is
unpowered, a broadcast (unit 0), an RTU frame with a bad CRC, a TCP frame whose protocol id is not 0.
Per device `World.delay` seconds pass before an answer (slow devices); an RTU line serves one request at a
time, so a slow device delays the line, as on a real bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import struct
import termios
import tty
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from drivers.modbus.codec import encode, encode_into, encode_text
from drivers.modbus.crc import crc_ok, with_crc
from gateway.config import Line, Site
from gateway.config.profile import Point, Profile
from gateway.core.once import OnceLog
from simulators.world import World

log = logging.getLogger("meterwatch.sim.modbus")

GAP_FILL = 125  # undefined registers in a gap shorter than this read as 0 (see module doc)
MAX_REGISTERS = 125
MAX_BITS = 2000
FUNCTIONS: dict[int, str] = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}

ILLEGAL_FUNCTION = 0x01
ILLEGAL_ADDRESS = 0x02
ILLEGAL_VALUE = 0x03
DEVICE_FAILURE = 0x04


# ---------------------------------------------------------------------------------------------------------
# RTU framing


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    return with_crc(bytes([unit]) + pdu)


def rtu_request_length(buf: bytes) -> int | None:
    """Length of the RTU request frame at the start of `buf`: 0 = need more bytes, None = unknown function."""
    if len(buf) < 2:
        return 0
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6):
        return 8
    if fc in (15, 16):
        return 9 + buf[6] if len(buf) >= 7 else 0
    return None


def char_time(line: Line) -> float:
    bits = 1 + line.bytesize + (0 if line.parity == "N" else 1) + line.stopbits
    return bits / line.baudrate


# ---------------------------------------------------------------------------------------------------------
# Register images: which addresses a profile defines, and the words they read


@dataclass
class FunctionMap:
    points: list[Point]  # whole-register points first, then bits and masked fields laid over them
    blocks: list[tuple[int, int]]  # readable [start, end) address ranges
    decimals_at: dict[int, Point | None]  # decimals register address -> the point defining it, if any

    def readable(self, address: int, count: int) -> bool:
        end = address + count
        return any(start <= address and end <= stop for start, stop in self.blocks)


def build_image(profile: Profile) -> dict[str, FunctionMap]:
    out: dict[str, FunctionMap] = {}
    for function in ("coil", "discrete", "holding", "input"):
        pts = [p for p in profile.points if p.function == function]
        if not pts:
            continue
        spans = [(p.pdu, p.pdu + p.width) for p in pts]
        decimals_at: dict[int, Point | None] = {}
        for p in pts:
            if p.decimals_register is not None:
                owner = next((q for q in pts if q.pdu == p.decimals_register), None)
                decimals_at[p.decimals_register] = owner
                spans.append((p.decimals_register, p.decimals_register + 1))
        blocks: list[tuple[int, int]] = []
        for start, stop in sorted(spans):
            if blocks and start - blocks[-1][1] < GAP_FILL:
                blocks[-1] = (blocks[-1][0], max(blocks[-1][1], stop))
            else:
                blocks.append((start, stop))
        layered = sorted(pts, key=lambda p: p.type == "bit" or p.mask is not None)
        out[function] = FunctionMap(points=layered, blocks=blocks, decimals_at=decimals_at)
    return out


class ModbusError(Exception):
    def __init__(self, code: int, why: str) -> None:
        self.code = code
        super().__init__(why)


DEFAULT_DECIMALS = 2


def read_words(
    world: World, device: str, fmap: FunctionMap, address: int, count: int, now: float
) -> list[int]:
    """The register words (or bits) [address, address+count) of one device, encoded from the world."""
    words = [0] * count
    end = address + count

    def decimals_of(p: Point) -> int | None:
        if p.decimals_register is None:
            return None
        owner = fmap.decimals_at.get(p.decimals_register)
        return int(world.value(device, owner.quantity, now)) if owner else DEFAULT_DECIMALS

    for reg, owner in fmap.decimals_at.items():
        if owner is None and address <= reg < end:
            words[reg - address] = DEFAULT_DECIMALS
    for p in fmap.points:
        lo, hi = p.pdu, p.pdu + p.width
        if hi <= address or lo >= end:
            continue
        current = [words[a - address] if address <= a < end else 0 for a in range(lo, hi)]
        try:
            if p.type == "string":
                regs = encode_text(p, world.text(device, p.quantity))
            elif p.function in ("coil", "discrete"):
                regs = [1 if world.value(device, p.quantity, now) else 0]
            elif p.type == "bit" or p.mask is not None:
                regs = encode_into(p, world.value(device, p.quantity, now), current, decimals_of(p))
            else:
                regs = encode(p, world.value(device, p.quantity, now), decimals_of(p))
        except ValueError as exc:
            raise ModbusError(DEVICE_FAILURE, f"{device}.{p.quantity}: {exc}") from exc
        for i, a in enumerate(range(lo, hi)):
            if address <= a < end:
                words[a - address] = regs[i]
    return words


def respond(world: World, device: str, image: dict[str, FunctionMap], pdu: bytes) -> bytes:
    """The response PDU (function code + data, or an exception) to a request PDU."""
    fc = pdu[0] if pdu else 0
    try:
        if fc not in FUNCTIONS:
            raise ModbusError(ILLEGAL_FUNCTION, f"function {fc} not supported")
        if len(pdu) != 5:
            raise ModbusError(ILLEGAL_VALUE, f"request PDU of {len(pdu)} bytes, expected 5")
        address, count = struct.unpack(">HH", pdu[1:5])
        function = FUNCTIONS[fc]
        bits = function in ("coil", "discrete")
        if not 1 <= count <= (MAX_BITS if bits else MAX_REGISTERS):
            raise ModbusError(ILLEGAL_VALUE, f"count {count} out of range")
        fmap = image.get(function)
        if address + count > 0x10000 or fmap is None or not fmap.readable(address, count):
            raise ModbusError(ILLEGAL_ADDRESS, f"{function} {address}+{count} not in the register map")
        words = read_words(world, device, fmap, address, count, world.now())
    except ModbusError as exc:
        return bytes([fc | 0x80, exc.code])
    if bits:
        data = bytearray((count + 7) // 8)
        for i, b in enumerate(words):
            if b:
                data[i // 8] |= 1 << (i % 8)
        return bytes([fc, len(data)]) + bytes(data)
    return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *words)


# ---------------------------------------------------------------------------------------------------------
# Lines


@dataclass
class LineCounters:
    requests: int = 0
    answered: int = 0
    exceptions: int = 0
    silent: int = 0  # requests left unanswered on purpose (dead/unpowered/unknown unit)
    bad_frames: int = 0  # CRC errors and malformed frames, ignored


@dataclass
class LineServer:
    """Everything one simulated line answers; subclasses add the transport."""

    line: Line
    world: World
    units: dict[int, str]  # unit id -> device id
    images: dict[str, dict[str, FunctionMap]]  # device id -> its register image
    counters: LineCounters = field(default_factory=LineCounters)
    endpoint: str = ""
    _once: OnceLog = field(default_factory=lambda: OnceLog(log))

    async def answer(self, unit: int, pdu: bytes) -> bytes | None:
        """The response PDU for `unit`, after the device's delay; None when nobody answers."""
        self.counters.requests += 1
        device = self.units.get(unit)
        if unit == 0 or device is None or not self.world.line_powered(self.line.id):
            self.counters.silent += 1
            return None
        if not self.world.answering(device):
            self.counters.silent += 1
            return None
        delay = self.world.delay(device)
        if delay > 0:
            await asyncio.sleep(delay)
            if not self.world.answering(device):  # it may have died while "thinking"
                self.counters.silent += 1
                return None
        try:
            out = respond(self.world, device, self.images[device], pdu)
        except Exception:  # never let one bad request kill a line server
            log.exception("simulator failed answering %s unit %s", self.line.id, unit)
            out = bytes([(pdu[0] if pdu else 0) | 0x80, DEVICE_FAILURE])
        if out[0] & 0x80:
            self.counters.exceptions += 1
        else:
            self.counters.answered += 1
        return out

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


class _TcpLine(LineServer):
    _server: asyncio.Server | None = None
    _conns: set[asyncio.StreamWriter]

    async def start(self) -> None:
        self._conns = set()
        host, port = self.line.host or "127.0.0.1", self.line.port
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        self.endpoint = f"{self._kind} {host}:{port}"

    _kind = "tcp"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._conns):
            w.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self._conns.discard(writer)
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            header = await reader.readexactly(7)
            tid, pid, length, unit = struct.unpack(">HHHB", header)
            if not 2 <= length <= 254:
                self.counters.bad_frames += 1
                return  # cannot resynchronise a TCP stream: drop the connection, as devices do
            pdu = await reader.readexactly(length - 1)
            if pid != 0:
                self.counters.bad_frames += 1
                continue
            out = await self.answer(unit, pdu)
            if out is not None:
                writer.write(struct.pack(">HHHB", tid, 0, len(out) + 1, unit) + out)
                await writer.drain()


class TcpLineServer(_TcpLine):
    """Modbus TCP (MBAP framing)."""


async def _rtu_loop(
    server: LineServer,
    read: Callable[[float | None], Awaitable[bytes | None]],
    write: Callable[[bytes], Awaitable[None]],
    silence: float,
) -> None:
    """Split a byte stream into RTU request frames and answer them, one at a time.

    A frame of a known function ends at its length; any other frame ends at `silence` (the 3.5-character gap).
    A frame with a bad CRC is dropped together with whatever follows until the line is quiet again.
    """
    buf = b""
    while True:
        if not buf:
            chunk = await read(None)
            if chunk is None:
                return
            buf = chunk
        need = rtu_request_length(buf)
        if need and len(buf) >= need:
            frame, buf = buf[:need], buf[need:]
            if crc_ok(frame):
                await _rtu_answer(server, frame, write)
                continue
            server.counters.bad_frames += 1
            buf = b""
            while await read(silence) is not None:
                pass  # discard until quiet: we lost the frame boundaries
            continue
        more = await read(silence)
        if more is not None:
            buf += more
            continue
        # Silence ends the frame.
        frame, buf = buf, b""
        if crc_ok(frame):
            await _rtu_answer(server, frame, write)
        else:
            server.counters.bad_frames += 1


async def _rtu_answer(server: LineServer, frame: bytes, write: Callable[[bytes], Awaitable[None]]) -> None:
    unit, pdu = frame[0], frame[1:-2]
    out = await server.answer(unit, pdu)
    if out is not None:
        await write(rtu_frame(unit, out))


class RtuOverTcpLineServer(_TcpLine):
    """RTU frames (with CRC) over a TCP stream, as a serial device server in transparent mode sends them."""

    _kind = "rtu-over-tcp"

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def read(timeout: float | None) -> bytes | None:
            try:
                data = await asyncio.wait_for(reader.read(512), timeout)
            except TimeoutError:
                return None
            if not data:
                raise ConnectionResetError
            return data

        async def write(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        await _rtu_loop(self, read, write, max(0.005, 3.5 * char_time(self.line)))


class PtyLineServer(LineServer):
    """RTU on a pseudo-terminal: the gateway opens the line's `device` path, a symlink to the slave end."""

    _master: int = -1
    _slave: int = -1
    _task: asyncio.Task[None] | None = None
    _link: Path | None = None

    async def start(self) -> None:
        assert self.line.device is not None
        link = Path(self.line.device)
        if link.exists() and not link.is_symlink():
            raise OSError(errno.EEXIST, f"{link} exists and is not a symlink; refusing to replace it")
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave, termios.TCSANOW)
        os.set_blocking(self._master, False)
        slave_name = os.ttyname(self._slave)
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(slave_name)
        tmp.replace(link)  # atomic: a gateway never sees the path missing
        self._link = link
        self.endpoint = f"rtu {link} -> {slave_name} ({self.line.baudrate} baud)"
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                data = os.read(self._master, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                queue.put_nowait(data)

        loop.add_reader(self._master, readable)

        async def read(timeout: float | None) -> bytes | None:
            try:
                return await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                return None

        async def write(data: bytes) -> None:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self._master, view)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
                    continue
                view = view[n:]

        silence = max(0.002, 3.5 * char_time(self.line))
        self._task = asyncio.create_task(
            _rtu_loop(self, read, write, silence), name=f"sim-pty-{self.line.id}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._master >= 0:
            asyncio.get_running_loop().remove_reader(self._master)
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1
        if self._link is not None and self._link.is_symlink():
            with contextlib.suppress(OSError):
                self._link.unlink()


SERVERS: dict[str, type[LineServer]] = {
    "tcp": TcpLineServer,
    "rtu_over_tcp": RtuOverTcpLineServer,
    "rtu": PtyLineServer,
}


def build_line_servers(site: Site, world: World) -> list[LineServer]:
    """One server per line of the site, each knowing its devices' unit ids and register images."""
    images: dict[str, dict[str, FunctionMap]] = {}
    servers: list[LineServer] = []
    for line in site.config.lines:
        units: dict[int, str] = {}
        line_images: dict[str, dict[str, FunctionMap]] = {}
        for d in site.devices_on(line.id):
            profile = site.profiles[d.profile] if d.profile else None
            if profile is None:
                continue
            if profile.name not in images:
                images[profile.name] = build_image(profile)
            units[d.unit if d.unit is not None else profile.default_unit] = d.id
            line_images[d.id] = images[profile.name]
        servers.append(SERVERS[line.transport](line=line, world=world, units=units, images=line_images))
    return servers
