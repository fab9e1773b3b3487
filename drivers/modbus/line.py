"""One actor per Modbus line: it owns the connection(s) and schedules every device on the line.

- RTU lines (a serial port, or RTU framing over TCP to a serial device server) carry exactly one request
  at a time: one connection, and after every exchange the 3.5-character silence of the baud rate plus the
  line's inter_request_delay before the next request.
- A TCP line allows up to `max_connections` requests in flight, one per connection.
- Each device has its own schedule (its poll interval). A cycle that overruns skips the cycles it missed
  (counted in DeviceStats.skipped_cycles); nothing is queued behind it.
- Nothing a device or the network does may end the actor: every failure becomes a counted ReadOutcome and
  the connection is reopened on the next request (after a gateway or device reboot too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from drivers.modbus.crc import crc_ok
from drivers.modbus.planner import ReadRequest, silence
from drivers.modbus.poller import DevicePoller, Emit, ReadOutcome
from drivers.modbus.spec import DeviceSpec, LineSpec
from gateway.core.once import OnceLog
from gateway.core.stats import DeviceStats, LineStats
from gateway.core.types import SourceStatus

log = logging.getLogger("meterwatch.modbus")

# pymodbus logs every timeout at ERROR level; we count them and log once per cause instead.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

RECONNECT_MIN = 0.2  # seconds between connection attempts at first; doubles up to RECONNECT_MAX
RECONNECT_MAX = 5.0


class Connection:
    """One pymodbus client plus the line discipline around it (silences, reconnects, error classes)."""

    def __init__(
        self, line: LineSpec, stats: LineStats, name: str, on_change: Callable[[Connection, bool], None]
    ) -> None:
        self.line = line
        self.stats = stats
        self.name = name
        self.on_change = on_change
        self.lock = asyncio.Lock()
        self.ready_at = 0.0
        self.gap = (silence(line) if line.serial_timing else 0.0) + line.inter_request_delay
        self.rx = b""  # last receive buffer seen for the current request (to tell CRC from silence)
        self.next_connect = 0.0
        self.connect_delay = RECONNECT_MIN
        self.was_connected = False
        self.client = self._client()

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self.rx = data
        return data

    def _trace_connect(self, connected: bool) -> None:
        self.on_change(self, connected)

    def _client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        line = self.line
        # pymodbus must not retry or reconnect on its own: retries and reconnects are ours, so that a
        # request never holds the line for longer than timeout x (1 + retries).
        common = {
            "timeout": line.timeout,
            "retries": 0,
            "reconnect_delay": 0,
            "trace_packet": self._trace_packet,
            "trace_connect": self._trace_connect,
            "name": self.name,
        }
        if line.transport == "rtu":
            assert line.device is not None
            return AsyncModbusSerialClient(
                line.device,
                framer=FramerType.RTU,
                baudrate=line.baudrate,
                bytesize=line.bytesize,
                parity=line.parity,
                stopbits=line.stopbits,
                **common,  # type: ignore[arg-type]
            )
        assert line.host is not None and line.port is not None
        framer = FramerType.RTU if line.transport == "rtu_over_tcp" else FramerType.SOCKET
        return AsyncModbusTcpClient(line.host, port=line.port, framer=framer, **common)  # type: ignore[arg-type]

    async def _ensure_connected(self) -> str | None:
        """None when connected, else why not."""
        if self.client.connected:
            return None
        now = time.monotonic()
        if now < self.next_connect:
            return "not connected (next attempt in %.1f s)" % (self.next_connect - now)
        ok = False
        try:
            ok = await self.client.connect()
        except (OSError, ModbusException) as exc:
            reason = str(exc) or type(exc).__name__
        else:
            reason = "connect failed"
        if ok and self.client.connected:
            self.connect_delay = RECONNECT_MIN
            # RTU over a freshly opened port: let the line settle for one silence first.
            self.ready_at = time.monotonic() + self.gap
            return None
        self.next_connect = time.monotonic() + self.connect_delay
        self.connect_delay = min(RECONNECT_MAX, self.connect_delay * 2)
        return f"{self.line.endpoint}: {reason}"

    async def read(self, request: ReadRequest) -> ReadOutcome:
        """One request with the line's retries; never raises for device or network trouble."""
        async with self.lock:
            failure = ReadOutcome(failure="timeout")
            for _attempt in range(1 + self.line.retries):
                why_not = await self._ensure_connected()
                if why_not is not None:
                    return ReadOutcome(failure="connection", detail=why_not)
                wait = self.ready_at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.rx = b""
                self.stats.requests += 1
                started = time.monotonic()
                try:
                    response = await self._send(request)
                except ModbusIOException as exc:
                    failure = self._classify_silence(str(exc))
                except ConnectionException as exc:
                    failure = ReadOutcome(failure="connection", detail=str(exc))
                except (ModbusException, OSError, ValueError) as exc:
                    # e.g. an undecodable frame: pymodbus drops the connection; it is reopened next time.
                    failure = ReadOutcome(failure="framing", detail=f"{type(exc).__name__}: {exc}")
                else:
                    self.ready_at = time.monotonic() + self.gap
                    return self._outcome(request, response, time.monotonic() - started)
                finally:
                    self.ready_at = max(self.ready_at, time.monotonic() + self.gap)
                assert failure.failure is not None
                self.stats.errors[failure.failure] += 1
                if failure.failure == "connection":
                    break
            return failure

    async def _send(self, request: ReadRequest) -> ModbusPDU:
        c, n, unit = self.client, request.count, request.unit
        if request.function == "holding":
            return await c.read_holding_registers(request.address, count=n, device_id=unit)
        if request.function == "input":
            return await c.read_input_registers(request.address, count=n, device_id=unit)
        if request.function == "coil":
            return await c.read_coils(request.address, count=n, device_id=unit)
        return await c.read_discrete_inputs(request.address, count=n, device_id=unit)

    def _classify_silence(self, detail: str) -> ReadOutcome:
        """No frame was accepted: silence is a timeout; bytes with a wrong CRC or shape are not."""
        rx = self.rx
        if not rx or not self.line.serial_timing:
            # pymodbus closes a TCP connection itself after 3 unanswered requests in a row: still timeouts.
            if not self.client.connected and "CLOSING CONNECTION" not in detail:
                return ReadOutcome(failure="connection", detail="connection closed")
            return ReadOutcome(failure="timeout", detail=f"no answer within {self.line.timeout:g} s")
        if len(rx) >= 4 and not crc_ok(rx):
            return ReadOutcome(failure="crc", detail=f"bad CRC in {rx[:32].hex(' ')}")
        return ReadOutcome(failure="framing", detail=f"unusable answer {rx[:32].hex(' ')}")

    @staticmethod
    def _outcome(request: ReadRequest, response: ModbusPDU, rtt: float) -> ReadOutcome:
        if response.isError() or isinstance(response, ExceptionResponse):
            return ReadOutcome(exception_code=int(getattr(response, "exception_code", 0)), rtt=rtt)
        if request.is_bits:
            return ReadOutcome(words=[int(b) for b in response.bits[: request.count]], rtt=rtt)
        return ReadOutcome(words=list(response.registers), rtt=rtt)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


class ConnectionWatcher:
    """Callable the connections report to; publishes SourceStatus when the line's state changes."""

    def __init__(self, actor: LineActor) -> None:
        self.actor = actor

    def __call__(self, conn: Connection, connected: bool) -> None:
        self.actor.connection_changed(conn, connected)


class LineActor:
    """The component that polls every device of one line. Publishes Samples, DeviceStatus, SourceStatus."""

    def __init__(
        self, line: LineSpec, devices: Sequence[DeviceSpec], emit: Emit, seed: int | None = None
    ) -> None:
        self.line = line
        self.name = f"modbus:{line.id}"
        self.devices = list(devices)
        self.emit = emit
        self.stats = LineStats(line=line.id, transport=line.transport)
        self.device_stats = {d.id: DeviceStats(device=d.id, line=line.id) for d in devices}
        for s in self.device_stats.values():
            s.up = False  # not answered yet
        self.once = OnceLog(log)
        self.rng = random.Random(seed)
        size = line.max_connections if line.transport == "tcp" else 1
        watcher = ConnectionWatcher(self)
        self.connections = [Connection(line, self.stats, f"{line.id}#{i}", watcher) for i in range(size)]
        self._pool: asyncio.Queue[Connection] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._connected_count = 0
        self.pollers = {
            d.id: DevicePoller(line, d, self.read, emit, self.device_stats[d.id], self.once, self.rng)
            for d in devices
        }

    # --- connection bookkeeping -------------------------------------------------------------------
    def connection_changed(self, conn: Connection, connected: bool) -> None:
        if connected:
            if conn.was_connected:
                self.stats.reconnects += 1
            conn.was_connected = True
            self._connected_count += 1
        else:
            self._connected_count = max(0, self._connected_count - 1)
        now_connected = self._connected_count > 0
        if now_connected != self.stats.connected:
            self.stats.connected = now_connected
            event = SourceStatus(
                self.name,
                time.time(),
                now_connected,
                "" if now_connected else "connection lost",
                tuple(d.id for d in self.devices),
            )
            task = asyncio.get_running_loop().create_task(self._emit(event))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            log.info(
                "line connected" if now_connected else "line disconnected",
                extra={"fields": {"line": self.line.id, "endpoint": self.line.endpoint}},
            )

    async def _emit(self, event: SourceStatus) -> None:
        await self.emit(event)

    async def read(self, request: ReadRequest) -> ReadOutcome:
        assert self._pool is not None
        conn = await self._pool.get()
        try:
            return await conn.read(request)
        finally:
            self._pool.put_nowait(conn)

    # --- scheduling -------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._pool = asyncio.Queue()
        for conn in self.connections:
            self._pool.put_nowait(conn)
        log.info(
            "modbus line starting",
            extra={
                "fields": {"line": self.line.id, "endpoint": self.line.endpoint, "devices": len(self.devices)}
            },
        )
        start = time.monotonic()
        n = max(1, len(self.devices))
        tasks = [
            asyncio.create_task(
                self._device_loop(d, stop, start + d.poll_interval * i / n), name=f"poll:{d.id}"
            )
            for i, d in enumerate(self.devices)
        ]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for conn in self.connections:
                conn.close()
            if self._pending:
                await asyncio.gather(*self._pending, return_exceptions=True)

    async def _device_loop(self, device: DeviceSpec, stop: asyncio.Event, first_due: float) -> None:
        poller = self.pollers[device.id]
        stats = self.device_stats[device.id]
        interval = device.poll_interval
        due = first_due
        while not stop.is_set():
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                if poller.up is False:
                    answered = await poller.probe()
                    # Answered: poll it right away; otherwise wait a little longer each time.
                    due = time.monotonic() + (0.0 if answered else poller.backoff())
                    continue
                began = time.monotonic()
                await poller.cycle()
                self.stats.last_cycle_seconds = time.monotonic() - began
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not stop polling (ThingsBoard #2132)
                stats.errors["internal"] += 1
                self.once.warn(
                    (device.id, "internal", type(exc).__name__), "%s: poll failed: %r", device.id, exc
                )
            due += interval
            now = time.monotonic()
            if now > due:
                missed = int((now - due) // interval) + 1
                stats.skipped_cycles += missed
                due += missed * interval
