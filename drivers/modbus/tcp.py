"""The built-in Modbus TCP client: MBAP frames on an asyncio Protocol, one timer per connection.

pymodbus costs a client, a framer, a decoded PDU object and a `wait_for` timer per request: 35-40 % of the
gateway's CPU when polling (issue 11). Here a request is one `struct` pack and one write, its answer one
`struct` unpack, and the register payload goes to the poller as the bytes on the wire (ReadOutcome.data).

Answers are matched by transaction id and checked as drivers/modbus/framers.py checks them for pymodbus
(the checks of drivers/modbus/answer.py, the same kinds and details): a frame with a transaction id no
request is waiting for is stale, one of another unit, function or byte count is dropped by kind, and the
request keeps waiting for its answer until its deadline. When the deadline passes, the last frame dropped
is the failure (a device that only ever answers wrongly fails with that kind, not with a timeout); bytes
that never became a frame are framing; nothing at all is a timeout. An MBAP header that cannot be a
Modbus TCP answer (protocol id not 0, a length outside 2..254) leaves the stream without frame boundaries:
the requests waiting fail as framing and the connection is dropped, to be reopened by the next request.

Deadlines: every request of a connection has the same timeout, so they expire in the order they were sent
and one timer handle (armed at the oldest deadline, re-armed when it fires) serves all of them; an answered
request leaves the timer as it is (a stale wake-up costs one callback per timeout, not one per request).

`pipeline` requests may be outstanding on one connection (the line's setting; 1 = one at a time, what most
meters and every serial gateway need). Callers beyond that wait in order.

The line discipline is line.Connection's: the line's retries (the loop of drivers/modbus/retry.py, shared
with it), its inter_request_delay, connection attempts backed off from RECONNECT_MIN to RECONNECT_MAX, and
the same error counters in LineStats.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from drivers.modbus.answer import EXCEPTION_BIT, FRAMING, STALE, Expected, expected
from drivers.modbus.planner import ReadRequest
from drivers.modbus.poller import ReadOutcome
from drivers.modbus.retry import with_retries
from drivers.modbus.spec import LineSpec
from gateway.core.stats import LineStats

if TYPE_CHECKING:
    from drivers.modbus.framers import OnStray

RECONNECT_MIN = 0.2  # seconds between connection attempts at first; doubles up to RECONNECT_MAX
RECONNECT_MAX = 5.0

HEADER = struct.Struct(">HHHB")  # transaction id, protocol id, length (unit id onwards), unit id
REQUEST = struct.Struct(">HHHBBHH")  # MBAP header, function code, address, count
MAX_LENGTH = 254  # unit id + a PDU of at most 253 bytes
HEX_KEPT = 32  # bytes of a frame shown in a detail
# After this many requests in a row without an answer the connection is dropped and opened again by the next
# request, as pymodbus does (at the fifth, with its own retries at 0): a connection the network silently lost
# (a NAT or firewall that forgot it, a device rebooted behind a gateway) would otherwise never answer again.
UNANSWERED_LIMIT = 5


def _hex(frame: bytes) -> str:
    return frame[:HEX_KEPT].hex(" ") + (" ..." if len(frame) > HEX_KEPT else "")


class _Pending:
    """One request on the wire, waiting for its answer."""

    __slots__ = ("byte_count", "deadline", "dropped", "expected", "future", "started", "tid")

    def __init__(
        self, tid: int, want: Expected, future: asyncio.Future[ReadOutcome], started: float, deadline: float
    ) -> None:
        self.tid = tid
        self.expected = want
        self.byte_count = want.byte_count
        self.future = future
        self.started = started
        self.deadline = deadline
        self.dropped: list[tuple[str, str]] = []

    def settle(self, outcome: ReadOutcome) -> None:
        if not self.future.done():  # its reader may have been cancelled
            self.future.set_result(outcome)

    def fail(self, kind: str, detail: str) -> None:
        self.settle(ReadOutcome(failure=kind, detail=detail, dropped=self.dropped))


class _Link(asyncio.Protocol):
    """One TCP connection's protocol; forwards to its TcpConnection while it is the current link."""

    def __init__(self, owner: TcpConnection) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.data_received = owner._received  # type: ignore[method-assign]  # no hop per packet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.owner._lost(self, exc)


class TcpConnection:
    """One Modbus TCP connection with the line discipline of line.Connection (retries, reconnect backoff,
    error classes, counters), without pymodbus. `read` never raises for device or network trouble."""

    def __init__(
        self,
        line: LineSpec,
        stats: LineStats,
        name: str,
        on_change: Callable[[TcpConnection, bool], None],
        on_stray: OnStray | None = None,
    ) -> None:
        assert line.host is not None and line.port is not None
        # the loop of the live connection: asyncio.get_running_loop() is a getpid() syscall per call, which
        # costs microseconds in a sandbox and was 5 % of the gateway's CPU at 800 meters (py-spy)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.host, self.port = line.host, line.port
        self.line = line
        self.stats = stats
        self.name = name
        self.on_change = on_change
        self.on_stray = on_stray
        self.depth = max(1, line.pipeline)
        self.timeout = line.timeout
        self.attempts = 1 + line.retries
        self.gap = line.inter_request_delay  # pause between requests (after an answer, and between sends)
        self.ready_at = 0.0
        self.next_connect = 0.0
        self.connect_delay = RECONNECT_MIN
        self.was_connected = False
        self._link: _Link | None = None
        self._connect_lock = asyncio.Lock()
        self._pending: dict[int, _Pending] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._rx = b""  # the start of a frame whose rest has not arrived
        self._tid = 0
        self._inflight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._expected: dict[tuple[int, int, int, int], Expected] = {}
        self._silence = f"no answer within {line.timeout:g} s"
        self._unanswered = 0  # requests in a row that ended at their deadline
        # one attempt of the retry loop (drivers/modbus/retry.py), chosen once: no pause, no extra await
        self._attempt = self._paced if self.gap else self._exchange

    @property
    def connected(self) -> bool:
        return self._link is not None

    # --- reading ---------------------------------------------------------------------------------
    async def read(self, request: ReadRequest) -> ReadOutcome:
        """One request with the line's retries."""
        if self._inflight < self.depth and not self._waiters:
            self._inflight += 1
        else:
            await self._admitted()  # returns holding a place handed over by a request that ended
        try:
            link = self._link
            if self.attempts == 1 and link is not None and not self.gap:
                # The common case, without the retry loop: one attempt on an open connection, its answer
                # awaited here (a coroutine less to resume per request than through _exchange).
                outcome = await self._send(link, request)
                if outcome.dropped:
                    for kind, _why in outcome.dropped:
                        self.stats.errors[kind] += 1
                if outcome.failure is not None:
                    self.stats.errors[outcome.failure] += 1
                return outcome
            return await with_retries(self, request)
        finally:
            self._release()

    async def read_many(self, requests: Sequence[ReadRequest]) -> list[ReadOutcome]:
        """`requests` in order, as `read` would answer each; the list ends early after a request that got no
        usable answer (a failure), as a device's cycle does.

        When they all fit in the pipeline (and the line has no retries or pause) they go out in one write,
        all outstanding at once: the send is the largest cost of a request here (a syscall and the kernel's
        loopback or network path), and a cycle of 3 reads costs one. Otherwise one `read` after another."""
        n = len(requests)
        link = self._link
        if (
            n < 2
            or self._inflight + n > self.depth
            or self._waiters
            or self.attempts != 1
            or self.gap
            or link is None
            or link.transport is None
            or self._loop is None
        ):
            return await self._one_by_one(requests)
        self._inflight += n
        try:
            loop = self._loop
            now = loop.time()
            deadline = now + self.timeout
            frames = []
            futures = []
            for request in requests:
                tid = self._tid = self._tid % 0xFFFF + 1
                want = self._want(request)
                future: asyncio.Future[ReadOutcome] = loop.create_future()
                self._pending[tid] = _Pending(tid, want, future, now, deadline)
                frames.append(
                    REQUEST.pack(tid, 0, 6, request.unit, want.function, request.address, request.count)
                )
                futures.append(future)
            if len(self._pending) == n:
                self._rx = b""  # bytes before these requests cannot be their answers
            link.transport.write(b"".join(frames))
            self.stats.requests += n
            if self._timer is None:
                self._timer = loop.call_at(deadline, self._expire)
            outcomes: list[ReadOutcome] = []
            errors = self.stats.errors
            for future in futures:
                outcome = await future
                for kind, _why in outcome.dropped:
                    errors[kind] += 1
                outcomes.append(outcome)
                if outcome.failure is not None:
                    errors[outcome.failure] += 1
                    break  # the others' answers, if any come, are taken and dropped as a cancelled read's
            return outcomes
        finally:
            for _ in range(n):
                self._release()

    async def _one_by_one(self, requests: Sequence[ReadRequest]) -> list[ReadOutcome]:
        outcomes: list[ReadOutcome] = []
        for request in requests:
            outcome = await self.read(request)
            outcomes.append(outcome)
            if outcome.failure is not None:
                break
        return outcomes

    async def _paced(self, request: ReadRequest) -> ReadOutcome:
        """One attempt on a line with an inter_request_delay: the pause before, the next one's start after."""
        await self._pause()
        outcome = await self._exchange(request)
        self.ready_at = max(self.ready_at, time.monotonic() + self.gap)
        return outcome

    async def _pause(self) -> None:
        """Wait out the line's inter_request_delay; the place after it is taken before anyone else's."""
        while (wait := self.ready_at - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        self.ready_at = time.monotonic() + self.gap

    def _release(self) -> None:
        """A place among the outstanding requests is free: hand it to the first waiter, or give it back.

        Handed over, never freed first: a caller arriving before the waiter runs must not take it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # not cancelled while it waited
                waiter.set_result(None)
                return
        self._inflight -= 1

    async def _admitted(self) -> None:
        """Wait for a place among the connection's outstanding requests (first come, first served)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed the place, then cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _want(self, request: ReadRequest) -> Expected:
        key = (request.unit, request.code, request.address, request.count)
        want = self._expected.get(key)
        if want is None:
            if len(self._expected) > 4096:  # ad-hoc reads (probes): keep the cache bounded
                self._expected.clear()
            want = self._expected[key] = expected(request)
        return want

    async def _exchange(self, request: ReadRequest) -> ReadOutcome:
        link = self._link
        assert link is not None
        return await self._send(link, request)

    def _send(self, link: _Link, request: ReadRequest) -> asyncio.Future[ReadOutcome]:
        """Write the request on `link` and list it as pending; the future is its outcome.

        A caller cancelled while awaiting it (the line stops, a caller gives up) leaves the request listed
        until its answer or its deadline, so that its answer is taken and dropped quietly, not counted as a
        stale one."""
        loop = self._loop
        assert link.transport is not None and loop is not None
        tid = self._tid = self._tid % 0xFFFF + 1  # 1..65535: 0 is what a careless device echoes
        want = self._want(request)
        if not self._pending:
            self._rx = b""  # bytes before a request cannot be its answer
        now = loop.time()
        future: asyncio.Future[ReadOutcome] = loop.create_future()
        pending = _Pending(tid, want, future, now, now + self.timeout)
        self._pending[tid] = pending
        link.transport.write(
            REQUEST.pack(tid, 0, 6, request.unit, want.function, request.address, request.count)
        )
        self.stats.requests += 1
        if self._timer is None:
            self._timer = loop.call_at(pending.deadline, self._expire)
        return future

    # --- receiving (protocol callbacks, on the event loop) --------------------------------------------
    def _received(self, data: bytes) -> None:
        buf = self._rx + data if self._rx else data
        end = len(buf)
        at = 0
        while end - at >= 8:
            tid, pid, length, unit = HEADER.unpack_from(buf, at)
            if pid != 0 or not 2 <= length <= MAX_LENGTH:
                self._garbage(buf[at:])
                return
            size = 6 + length
            if end - at < size:
                break
            self._frame(tid, unit, buf, at, size)
            at += size
        self._rx = buf[at:] if at else buf

    def _frame(self, tid: int, unit: int, buf: bytes, at: int, size: int) -> None:
        pending = self._pending.get(tid)
        if pending is None:
            self._unknown(tid, unit, buf[at : at + size])
            return
        want = pending.expected
        code = buf[at + 7]
        if (
            size == 9 + pending.byte_count  # first: a frame of 8 bytes has no byte count to look at
            and code == want.function
            and buf[at + 8] == pending.byte_count
            and (unit == want.unit or not want.unit)
        ):
            self._answered(pending, buf[at + 9 : at + size])
            return
        frame = buf[at : at + size]
        problem = want.mismatch(unit, frame[7:])
        if problem is None:
            if code & EXCEPTION_BIT:
                del self._pending[tid]
                self._unanswered = 0
                rtt = time.monotonic() - pending.started
                pending.settle(ReadOutcome(exception_code=frame[8], rtt=rtt, dropped=pending.dropped))
                return
            self._answered(pending, frame[9:])  # unit 0 (broadcast): any unit answers
            return
        kind, why = problem
        pending.dropped.append((kind, f"{why} (waiting for {want.describe()}): {_hex(frame)}"))

    def _answered(self, pending: _Pending, payload: bytes) -> None:
        del self._pending[pending.tid]
        self._unanswered = 0
        rtt = time.monotonic() - pending.started
        want = pending.expected
        if want.bits:
            count = want.count
            bits = [(payload[i >> 3] >> (i & 7)) & 1 for i in range(count)]
            pending.settle(ReadOutcome(words=bits, rtt=rtt, dropped=pending.dropped))
        else:
            pending.settle(ReadOutcome(data=payload, rtt=rtt, dropped=pending.dropped))

    def _unknown(self, tid: int, unit: int, frame: bytes) -> None:
        """A frame no request is waiting for: a late or repeated answer."""
        if not self._pending:
            self.stats.errors[STALE] += 1
            if self.on_stray is not None:
                self.on_stray(unit, STALE, f"answer while no request was waiting: {_hex(frame)}")
            return
        first = next(iter(self._pending.values()))
        if len(self._pending) == 1:
            why = f"transaction id {tid}, expected {first.tid}"
        else:
            why = f"transaction id {tid}, expected one of {', '.join(map(str, self._pending))}"
        first.dropped.append((STALE, f"{why}: {_hex(frame)}"))

    def _garbage(self, rx: bytes) -> None:
        """Bytes that are no MBAP frame: the stream has lost its frame boundaries; start it again."""
        detail = f"unusable answer {_hex(rx)}"
        self._rx = b""
        pending, self._pending = self._pending, {}
        for p in pending.values():
            p.fail(FRAMING, detail)
        self._drop()

    def _expire(self) -> None:
        """The timer: fail every request past its deadline, then wait for the next deadline."""
        self._timer = None
        pending = self._pending
        if not pending:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        while pending:
            tid, p = next(iter(pending.items()))
            if p.deadline > now:
                self._timer = loop.call_at(p.deadline, self._expire)
                break
            del pending[tid]
            if not p.future.done():  # not a cancelled read
                self._unanswered += 1
            if p.dropped:
                # The last frame dropped is why there is no answer, and leaves `dropped` (counted once).
                kind, why = p.dropped.pop()
                p.fail(kind, why)
            elif self._rx and not pending:
                rx, self._rx = self._rx, b""
                p.fail(FRAMING, f"unusable answer {_hex(rx)}")
            else:
                p.fail("timeout", self._silence)
        if self._unanswered >= UNANSWERED_LIMIT:
            self._unanswered = 0
            self._drop()

    # --- connection ------------------------------------------------------------------------------
    async def _ensure_connected(self) -> str | None:
        """None when connected, else why not."""
        async with self._connect_lock:
            if self._link is not None:
                return None
            now = time.monotonic()
            if now < self.next_connect:
                return "not connected (next attempt in %.1f s)" % (self.next_connect - now)
            loop = self._loop = asyncio.get_running_loop()
            link = _Link(self)
            try:
                async with asyncio.timeout(self.timeout):
                    await loop.create_connection(lambda: link, self.host, self.port)
                if link.lost:  # accepted and closed at once (e.g. a gateway at its connection limit)
                    raise ConnectionResetError("connection closed by the device as it was opened")
            except (OSError, TimeoutError) as exc:
                self.next_connect = time.monotonic() + self.connect_delay
                self.connect_delay = min(RECONNECT_MAX, self.connect_delay * 2)
                reason = str(exc) or type(exc).__name__
                if isinstance(exc, TimeoutError):
                    reason = f"no connection within {self.timeout:g} s"
                return f"{self.line.endpoint}: {reason}"
            self.connect_delay = RECONNECT_MIN
            self.ready_at = time.monotonic() + self.gap  # a fresh connection waits one pause first
            self._unanswered = 0
            self._link = link
            self._rx = b""
            self.on_change(self, True)
            return None

    def _drop(self) -> None:
        """Give the connection up now (the next request connects again); its connection_lost is ignored."""
        link = self._link
        if link is not None:
            self._lost(link, None)
            if link.transport is not None:
                link.transport.abort()

    def _lost(self, link: _Link, exc: Exception | None) -> None:
        if link is not self._link:
            return  # an earlier connection, already given up
        self._link = None
        self._rx = b""
        pending, self._pending = self._pending, {}
        detail = f"connection closed ({exc})" if exc else "connection closed"
        for p in pending.values():
            p.fail("connection", detail)
        self.on_change(self, False)

    def close(self) -> None:
        link = self._link
        if link is not None:
            self._lost(link, None)
            if link.transport is not None:
                link.transport.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
