"""One actor per Modbus line: it owns the connection(s) and schedules every device on the line.

- RTU lines (a serial port, or RTU framing over TCP to a serial device server) carry exactly one request
  at a time: one connection, and after every exchange the 3.5-character silence of the baud rate plus the
  line's inter_request_delay before the next request.
- A TCP line allows up to `max_connections` connections, each with up to `pipeline` requests in flight
  (built-in client; pymodbus: one). Modbus TCP lines are read through the built-in client of
  drivers/modbus/tcp.py unless the line says `client: pymodbus`; RTU framing always goes through pymodbus.
- Each device has its own schedule (its poll interval). A cycle that overruns skips the cycles it missed
  (counted in DeviceStats.skipped_cycles); nothing is queued behind it.
- Cycles start on a shared grid of the monotonic clock (GRID): devices are spread over their interval
  (by line phase and place on the line) and then gathered into the grid's slots, so that the devices of
  a slot wake in one turn of the event loop and their answers come back together.
- Nothing a device or the network does may end the actor: every failure becomes a counted ReadOutcome and
  the connection is reopened on the next request (after a gateway or device reboot too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Sequence

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from drivers.modbus.answer import expected
from drivers.modbus.framers import CheckedRtuFramer, CheckedSocketFramer, Exchange, FrameWatch, OnStray
from drivers.modbus.planner import ReadRequest, silence
from drivers.modbus.poller import DevicePoller, Emit, Read, ReadMany, ReadOutcome
from drivers.modbus.retry import with_retries
from drivers.modbus.spec import DeviceSpec, LineSpec
from drivers.modbus.tcp import RECONNECT_MAX, RECONNECT_MIN, TcpConnection
from gateway.core.once import OnceLog
from gateway.core.stats import DeviceStats, LineStats
from gateway.core.types import SourceStatus

log = logging.getLogger("meterwatch.modbus")

# Cycles start at multiples of GRID seconds of the monotonic clock. Spread one by one over the interval,
# every request was a wake-up of its own: one timer, one epoll round with one answer in it, and on
# loopback a send that also woke the idle server. 800 SDM630 at 1 s (bench/poll.py, C meter server): 41 %
# of a core spread one by one, 25 % gathered into 100 ms slots (the raw asyncio loop with every meter in
# step: 11 %; in 10 slots: 9 %). Slots this wide still spread a large site over its interval, which is
# what keeps cycles from overrunning near capacity (issue 11: all lines in step overran first).
GRID = 0.1


def on_grid(t: float) -> float:
    """The start of the grid slot that holds `t` (a point of the grid is its own slot's start, whatever the
    rounding of t / GRID)."""
    return math.floor(t / GRID + 1e-9) * GRID


# pymodbus logs every timeout at ERROR level; we count them and log once per cause instead.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

__all__ = ["RECONNECT_MAX", "RECONNECT_MIN", "Connection", "LineActor"]


class Connection:
    """One pymodbus client plus the line discipline around it (silences, reconnects, error classes).

    Answers are checked by the framers of drivers/modbus/framers.py: a frame that does not answer the request
    in flight is dropped and counted by kind, and the request waits on for its answer. On an RTU line (no
    transaction ids) the line must be silent for the 3.5-character gap (plus inter_request_delay) after the
    last byte received before the next request goes out; a frame that arrives in that silence is stale:
    dropped, counted, and it restarts the silence. After an answer the connection lingers for that same
    silence (which the next request would wait for anyway) so that, when a device or serial server answers
    twice, the later frame is taken: the earlier one was the late copy of an older answer. A late copy that
    arrives after the next request went out and has that request's shape (unit, function, count) cannot be
    told from its answer; any other shape can.
    """

    def __init__(
        self,
        line: LineSpec,
        stats: LineStats,
        name: str,
        on_change: Callable[[Connection, bool], None],
        on_stray: OnStray | None = None,
    ) -> None:
        self.line = line
        self.stats = stats
        self.name = name
        self.on_change = on_change
        self.on_stray = on_stray
        self.lock = asyncio.Lock()
        self.ready_at = 0.0
        self.gap = (silence(line) if line.serial_timing else 0.0) + line.inter_request_delay
        self.next_connect = 0.0
        self.connect_delay = RECONNECT_MIN
        self.was_connected = False
        self.attempts = 1 + line.retries
        self._attempt = self._exchange
        self.watch = FrameWatch(self._stray)
        self.client = self._client()
        framer = CheckedRtuFramer(self.watch) if line.serial_timing else CheckedSocketFramer(self.watch)
        self.client.ctx.framer = framer

    def _stray(self, unit: int, kind: str, detail: str) -> None:
        self.stats.errors[kind] += 1
        if self.on_stray is not None:
            self.on_stray(unit, kind, detail)

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

    async def _quiet(self) -> None:
        """Wait out the pause before the next request; on RTU, until the line has been silent for the gap.

        A line that never falls silent (noise, another master) is waited for at most one timeout: it must
        not stall its devices, and what it sends is dropped by the flush and the framer."""
        give_up = max(self.ready_at, time.monotonic()) + self.line.timeout
        while True:
            silent_from = self.watch.last_rx + self.gap if self.line.serial_timing else 0.0
            wait = min(max(self.ready_at, silent_from), give_up) - time.monotonic()
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    def _flush(self) -> None:
        """Drop what is left of the receive buffer: bytes before a request cannot be its answer."""
        self.client.ctx.recv_buffer = b""

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)

    async def read(self, request: ReadRequest) -> ReadOutcome:
        """One request with the line's retries (drivers/modbus/retry.py); never raises for device or network
        trouble."""
        async with self.lock:
            return await with_retries(self, request)

    async def _exchange(self, request: ReadRequest) -> ReadOutcome:
        """One attempt: send, wait for the answer (RTU: and the silence after it), classify."""
        await self._quiet()
        self._flush()
        self.watch.begin(expected(request))
        self.stats.requests += 1
        started = time.monotonic()
        response: ModbusPDU | None = None
        failure = ReadOutcome(failure="timeout")
        try:
            try:
                response = await self._send(request)
            except ModbusIOException as exc:
                failure = self._classify_silence(str(exc))
            except ConnectionException as exc:
                failure = ReadOutcome(failure="connection", detail=str(exc))
            except (ModbusException, OSError, ValueError) as exc:
                # e.g. an undecodable frame: pymodbus drops the connection; it is reopened next time.
                failure = ReadOutcome(failure="framing", detail=f"{type(exc).__name__}: {exc}")
            rtt = time.monotonic() - started
            if response is not None and self.line.serial_timing:
                await self._quiet()  # linger: a later answer to this request replaces this one
        finally:
            answer = self.watch.answer or response
            seen = self.watch.end()
            if response is None or not self.line.serial_timing:
                # After an answer on RTU the linger already kept the silence (measured from the last byte).
                self.ready_at = max(self.ready_at, time.monotonic() + self.gap)
        dropped = list(seen.dropped)
        if response is not None and answer is not None:
            return self._outcome(request, answer, rtt, dropped)
        if failure.failure == "timeout":
            failure = self._explain_silence(failure, seen, dropped)
        failure.dropped = dropped
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
        """No answer within the timeout; a closed connection is a connection failure."""
        # pymodbus closes a TCP connection itself after 3 unanswered requests in a row: still timeouts.
        if not self.client.connected and "CLOSING CONNECTION" not in detail:
            return ReadOutcome(failure="connection", detail="connection closed")
        return ReadOutcome(failure="timeout", detail=f"no answer within {self.line.timeout:g} s")

    def _explain_silence(
        self, failure: ReadOutcome, seen: Exchange, dropped: list[tuple[str, str]]
    ) -> ReadOutcome:
        """A timeout with frames dropped, a bad CRC or bytes that were no frame is that, not silence.

        The last dropped frame becomes the failure (and leaves `dropped`, so it is counted once)."""
        if dropped:
            kind, why = dropped.pop()
            return ReadOutcome(failure=kind, detail=why)
        if not seen.rx:
            return failure
        # Bytes arrived but made no frame (TCP: an MBAP header with a protocol id other than 0, or a frame
        # cut short): framing, as the built-in TCP client says too.
        if seen.bad_crc and self.line.serial_timing:
            return ReadOutcome(failure="crc", detail=f"bad CRC in {seen.bad_crc[:32].hex(' ')}")
        return ReadOutcome(failure="framing", detail=f"unusable answer {seen.rx[:32].hex(' ')}")

    @staticmethod
    def _outcome(
        request: ReadRequest, response: ModbusPDU, rtt: float, dropped: list[tuple[str, str]]
    ) -> ReadOutcome:
        if response.isError() or isinstance(response, ExceptionResponse):
            code = int(getattr(response, "exception_code", 0))
            return ReadOutcome(exception_code=code, rtt=rtt, dropped=dropped)
        if request.is_bits:
            words = [int(b) for b in response.bits[: request.count]]
        else:
            words = list(response.registers)
        return ReadOutcome(words=words, rtt=rtt, dropped=dropped)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


AnyConnection = Connection | TcpConnection


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    """Sleep until the loop's clock (the monotonic clock) reads `when`, on a loop the caller already has.

    An absolute time, not a delay: devices due at the same grid point get the same timer deadline, and the
    loop runs them in one turn."""
    wake: asyncio.Future[None] = loop.create_future()
    timer = loop.call_at(when, _set_done, wake)
    try:
        await wake
    finally:
        timer.cancel()


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ConnectionWatcher:
    """Callable the connections report to; publishes SourceStatus when the line's state changes."""

    def __init__(self, actor: LineActor) -> None:
        self.actor = actor

    def __call__(self, conn: AnyConnection, connected: bool) -> None:
        self.actor.connection_changed(conn, connected)


class LineActor:
    """The component that polls every device of one line. Publishes Samples, DeviceStatus, SourceStatus.

    `phase` (0 <= phase < 1) shifts the line's schedule by that fraction of one device's share of the poll
    interval: the site gives its k-th of K lines k/K, so that devices of all lines start their cycles spread
    over the interval instead of every line firing in step.
    """

    def __init__(
        self,
        line: LineSpec,
        devices: Sequence[DeviceSpec],
        emit: Emit,
        seed: int | None = None,
        phase: float = 0.0,
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
        if not 0.0 <= phase < 1.0:
            raise ValueError(f"line {line.id}: phase {phase} is not in [0, 1)")
        self.phase = phase
        size = line.max_connections if line.transport == "tcp" else 1
        watcher = ConnectionWatcher(self)
        self.connections: list[AnyConnection] = [
            TcpConnection(line, self.stats, f"{line.id}#{i}", watcher, self.stray)
            if line.builtin_client
            else Connection(line, self.stats, f"{line.id}#{i}", watcher, self.stray)
            for i in range(size)
        ]
        self._by_unit = {d.unit: d.id for d in devices}
        self._pool: asyncio.Queue[AnyConnection] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._connected_count = 0
        read: Read = self.read
        read_many: ReadMany | None = None
        depth = 1
        if size == 1 and isinstance(self.connections[0], TcpConnection):
            # One built-in connection admits its own `pipeline` requests: no pool, no lock in between.
            read = self.connections[0].read
            read_many, depth = self.connections[0].read_many, self.connections[0].depth
        self.pollers = {
            d.id: DevicePoller(
                line, d, read, emit, self.device_stats[d.id], self.once, self.rng, read_many, depth
            )
            for d in devices
        }

    # --- connection bookkeeping -------------------------------------------------------------------
    def connection_changed(self, conn: AnyConnection, connected: bool) -> None:
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

    def stray(self, unit: int, kind: str, detail: str) -> None:
        """A frame arrived while no request was waiting (the line counted it): the device's error too."""
        device = self._by_unit.get(unit)
        if device is None:
            self.once.warn(
                (self.line.id, "stray", kind),
                "line %s: %s frame from unit %d, which no device of the line has, dropped (%s)",
                self.line.id, kind, unit, detail,
            )  # fmt: skip
            return
        self.pollers[device].dropped(kind, detail)

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
            # A built-in connection takes `pipeline` requests at once: it is in the pool that many times.
            for _ in range(conn.depth if isinstance(conn, TcpConnection) else 1):
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
                self._device_loop(d, stop, on_grid(start + d.poll_interval * (i + self.phase) / n)),
                name=f"poll:{d.id}",
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
        loop = asyncio.get_running_loop()  # once: asyncio.sleep asks for it (a getpid() syscall) every time
        while not stop.is_set():
            if due > time.monotonic():
                await _sleep_until(loop, due)
            try:
                if poller.up is False:
                    answered = await poller.probe()
                    # Answered: poll it right away (its slot's start has passed), then on the grid again;
                    # otherwise wait a little longer each time.
                    due = on_grid(time.monotonic() + (0.0 if answered else poller.backoff()))
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
