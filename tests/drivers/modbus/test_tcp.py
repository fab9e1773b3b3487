"""The built-in Modbus TCP client's framing, matching, timer, pipelining and reconnects, over real sockets.

A scripted device (an asyncio server in the test's loop) decides byte by byte what the client receives:
frames split across packets, two frames in one packet, frames for transaction ids nobody waits for.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from drivers.modbus.planner import ReadRequest
from drivers.modbus.poller import ReadOutcome
from drivers.modbus.spec import LineSpec
from drivers.modbus.tcp import RECONNECT_MIN, TcpConnection
from gateway.core.stats import LineStats
from tests.helpers import eventually as until
from tests.helpers import free_port

HOLDING = ReadRequest(1, "holding", 100, 3, ())
INPUT = ReadRequest(1, "input", 0, 2, ())
COILS = ReadRequest(1, "coil", 0, 11, ())


@dataclass
class Request:
    tid: int
    unit: int
    function: int
    address: int
    count: int


@dataclass
class Device:
    """The server side: requests as they arrive, and the writer to answer them with."""

    requests: asyncio.Queue[Request] = field(default_factory=asyncio.Queue)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    connections: int = 0
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def writer(self) -> asyncio.StreamWriter:
        return self.writers[-1]

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


def words(address: int, count: int) -> bytes:
    return b"".join(((address + i) & 0xFFFF).to_bytes(2, "big") for i in range(count))


def frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def answer(r: Request) -> bytes:
    data = words(r.address, r.count)
    return frame(r.tid, r.unit, bytes([r.function, len(data)]) + data)


@asynccontextmanager
async def device() -> AsyncIterator[tuple[Device, LineSpec]]:
    dev = Device()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        dev.handlers.add(task)
        dev.connections += 1
        dev.writers.append(writer)
        try:
            while True:
                tid, _pid, _length, unit, function, address, count = struct.unpack(
                    ">HHHBBHH", await reader.readexactly(12)
                )
                dev.requests.put_nowait(Request(tid, unit, function, address, count))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield dev, LineSpec(id="t", transport="tcp", host="127.0.0.1", port=port, timeout=0.5)
    finally:
        for w in dev.writers:
            w.close()
        await asyncio.gather(*dev.handlers, return_exceptions=True)
        server.close()
        await server.wait_closed()


Strays = list[tuple[int, str, str]]


def client(line: LineSpec, strays: Strays | None = None, **changes: object) -> TcpConnection:
    from dataclasses import replace

    line = replace(line, **changes)  # type: ignore[arg-type]
    stats = LineStats(line=line.id, transport=line.transport)
    strays = strays if strays is not None else []
    return TcpConnection(line, stats, "t#0", lambda c, up: None, lambda *a: strays.append(a))


def registers_of(outcome: ReadOutcome) -> list[int] | None:
    assert outcome.words is None  # the built-in path hands registers on as bytes
    return outcome.registers()


# ---------------------------------------------------------------------------------------------------------
# framing


async def test_a_frame_split_across_packets_is_put_together() -> None:
    async with device() as (dev, line):
        conn = client(line)
        try:
            read = asyncio.create_task(conn.read(HOLDING))
            req = await dev.requests.get()
            whole = answer(req)
            for cut in ((0, 5), (5, 10), (10, len(whole))):  # in the header, in the data, the rest
                await dev.send(whole[cut[0] : cut[1]])
                held = cut[1]
                if held < len(whole):
                    await until(lambda: len(conn._rx) == held, 5, f"{held} bytes held")  # noqa: B023
            outcome = await read
        finally:
            conn.close()
    assert outcome.failure is None and outcome.dropped == []
    assert registers_of(outcome) == [100, 101, 102]
    assert outcome.data == words(100, 3)


async def test_two_frames_in_one_packet_answer_two_pipelined_requests_by_transaction_id() -> None:
    async with device() as (dev, line):
        conn = client(line, pipeline=2)
        try:
            reads = [asyncio.create_task(conn.read(r)) for r in (HOLDING, INPUT)]
            first, second = await dev.requests.get(), await dev.requests.get()
            assert first.tid != second.tid
            await dev.send(answer(second) + answer(first))  # one write, the later answer first
            a, b = await asyncio.gather(*reads)
        finally:
            conn.close()
    assert registers_of(a) == [100, 101, 102] and registers_of(b) == [0, 1]
    assert a.dropped == [] and b.dropped == []


async def test_a_frame_for_an_unknown_transaction_id_is_stale_and_the_request_waits() -> None:
    async with device() as (dev, line):
        conn = client(line)
        try:
            read = asyncio.create_task(conn.read(HOLDING))
            req = await dev.requests.get()
            wrong = Request(req.tid + 100, req.unit, req.function, req.address, req.count)
            await dev.send(answer(wrong))
            await until(lambda: conn._pending[req.tid].dropped, 5, "the wrong frame dropped")
            assert not read.done()
            await dev.send(answer(req))
            outcome = await read
        finally:
            conn.close()
    assert registers_of(outcome) == [100, 101, 102]
    ((kind, why),) = outcome.dropped
    assert kind == "stale"
    assert why.startswith(f"transaction id {req.tid + 100}, expected {req.tid}: ")
    assert conn.stats.errors == {"stale": 1}


async def test_an_answer_while_no_request_waits_is_reported_as_stray() -> None:
    strays: Strays = []
    async with device() as (dev, line):
        conn = client(line, strays)
        try:
            read = asyncio.create_task(conn.read(HOLDING))
            req = await dev.requests.get()
            await dev.send(answer(req))
            await read
            await dev.send(answer(req))  # the same answer again
            await until(lambda: strays, 5, "the copy reported")
        finally:
            conn.close()
    ((unit, kind, detail),) = strays
    assert (unit, kind) == (1, "stale")
    assert detail.startswith("answer while no request was waiting: ")
    assert conn.stats.errors == {"stale": 1}


async def test_bits_and_exception_answers() -> None:
    async with device() as (dev, line):
        conn = client(line)
        try:
            read = asyncio.create_task(conn.read(COILS))
            req = await dev.requests.get()
            await dev.send(frame(req.tid, 1, bytes([1, 2, 0b1010_0101, 0b0000_0110])))
            bits = await read
            read = asyncio.create_task(conn.read(INPUT))
            req = await dev.requests.get()
            await dev.send(frame(req.tid, 1, bytes([0x84, 0x02])))
            exception = await read
        finally:
            conn.close()
    assert bits.words == [1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 1] and bits.data is None
    assert exception.exception_code == 2 and exception.failure is None


# ---------------------------------------------------------------------------------------------------------
# the timer, pipelining, reconnects


async def test_one_timer_serves_every_request_of_a_connection() -> None:
    async with device() as (dev, line):
        conn = client(line, timeout=1.5)  # the six round trips well within the first deadline
        try:
            read = asyncio.create_task(conn.read(HOLDING))
            await dev.send(answer(await dev.requests.get()))
            await read
            timer = conn._timer
            assert timer is not None
            for _ in range(5):  # answered before the first deadline: no new timer
                read = asyncio.create_task(conn.read(INPUT))
                await dev.send(answer(await dev.requests.get()))
                assert registers_of(await read) == [0, 1]
            assert conn._timer is timer
            silent = await conn.read(HOLDING)  # nobody answers: the timer re-armed for it fails it
        finally:
            conn.close()
    assert (silent.failure, silent.detail) == ("timeout", "no answer within 1.5 s")
    assert conn.stats.errors == {"timeout": 1} and conn.stats.requests == 7


@pytest.mark.parametrize("pipeline", [1, 2])
async def test_the_inter_request_delay_separates_requests(pipeline: int) -> None:
    """As on the pymodbus path: a pause after connecting, after each answer, and between pipelined sends."""
    async with device() as (dev, line):
        conn = client(line, inter_request_delay=0.15, pipeline=pipeline)
        arrived: list[float] = []

        async def answering() -> None:
            while True:
                req = await dev.requests.get()
                arrived.append(time.monotonic())
                await dev.send(answer(req))

        server = asyncio.create_task(answering())
        try:
            started = time.monotonic()
            outcomes = await asyncio.gather(*(conn.read(INPUT) for _ in range(3)))
        finally:
            server.cancel()
            conn.close()
    assert all(registers_of(o) == [0, 1] for o in outcomes)
    gaps = [b - a for a, b in zip([started, *arrived], arrived, strict=False)]
    assert len(arrived) == 3 and min(gaps) >= 0.14, gaps


async def test_pipelining_keeps_at_most_pipeline_requests_outstanding() -> None:
    async with device() as (dev, line):
        conn = client(line, pipeline=2)
        try:
            reads = [asyncio.create_task(conn.read(INPUT)) for _ in range(5)]
            first, second = await dev.requests.get(), await dev.requests.get()
            await asyncio.sleep(0.05)  # a third request would have arrived by now; none may
            assert dev.requests.empty()
            await dev.send(answer(second))
            third = await dev.requests.get()  # one answered: one more goes out
            assert dev.requests.empty()
            await dev.send(answer(first) + answer(third))
            for _ in range(2):
                await dev.send(answer(await dev.requests.get()))
            outcomes = await asyncio.gather(*reads)
        finally:
            conn.close()
    assert [registers_of(o) for o in outcomes] == [[0, 1]] * 5


async def test_one_at_a_time_by_default() -> None:
    async with device() as (dev, line):
        conn = client(line)
        try:
            reads = [asyncio.create_task(conn.read(INPUT)) for _ in range(3)]
            for _ in range(3):
                req = await dev.requests.get()
                await asyncio.sleep(0.02)
                assert dev.requests.empty()  # the next request waits for this answer
                await dev.send(answer(req))
            outcomes = await asyncio.gather(*reads)
        finally:
            conn.close()
    assert all(o.failure is None for o in outcomes)


async def test_a_read_cancelled_while_it_waits_for_its_turn_gives_its_turn_on() -> None:
    async with device() as (dev, line):
        conn = client(line)
        try:
            reads = [asyncio.create_task(conn.read(INPUT)) for _ in range(3)]
            first = await dev.requests.get()
            reads[1].cancel()  # waiting for the first to end
            await dev.send(answer(first))
            await dev.send(answer(await dev.requests.get()))  # the third goes out next
            outcomes = await asyncio.gather(reads[0], reads[2])
            assert reads[1].cancelled()
        finally:
            conn.close()
    assert [registers_of(o) for o in outcomes] == [[0, 1], [0, 1]]
    assert conn._inflight == 0 and not conn._waiters and conn.stats.requests == 2


async def test_the_answer_to_a_cancelled_read_is_dropped_quietly() -> None:
    """A line that stops cancels its reads: their answers are not the device's fault (no stale count)."""
    strays: Strays = []
    async with device() as (dev, line):
        conn = client(line, strays)
        try:
            read = asyncio.create_task(conn.read(HOLDING))
            req = await dev.requests.get()
            read.cancel()
            with pytest.raises(asyncio.CancelledError):
                await read
            assert conn._inflight == 0
            await dev.send(answer(req))
            await until(lambda: not conn._pending, 5, "the cancelled read's answer taken")
            read = asyncio.create_task(conn.read(INPUT))
            await dev.send(answer(await dev.requests.get()))
            assert registers_of(await read) == [0, 1]
            abandoned = asyncio.create_task(conn.read(HOLDING))  # never answered: its deadline ends it
            await dev.requests.get()
            abandoned.cancel()
            await until(lambda: not conn._pending, 5, "the cancelled read's deadline passed")
        finally:
            conn.close()
    assert conn.stats.errors == {} and strays == []


async def test_a_refused_connection_backs_off_and_a_closed_one_reconnects() -> None:
    line = LineSpec(id="t", transport="tcp", host="127.0.0.1", port=free_port(), timeout=0.5)
    conn = client(line)
    refused = await conn.read(INPUT)
    assert refused.failure == "connection" and f"127.0.0.1:{line.port}" in refused.detail
    again = await conn.read(INPUT)  # at once: not tried again before the backoff
    assert again.failure == "connection" and "next attempt in" in again.detail
    assert conn.connect_delay == 2 * RECONNECT_MIN
    conn.close()

    async with device() as (dev, line):
        changes: list[bool] = []
        conn = TcpConnection(
            line, LineStats(line="t", transport="tcp"), "t#0", lambda c, up: changes.append(up)
        )
        try:
            read = asyncio.create_task(conn.read(INPUT))
            await dev.requests.get()
            dev.writer.close()  # the device hangs up on a request
            lost = await read
            assert lost.failure == "connection" and not conn.connected
            read = asyncio.create_task(conn.read(INPUT))  # reconnects
            await dev.send(answer(await dev.requests.get()))
            assert registers_of(await read) == [0, 1]
        finally:
            conn.close()
    assert dev.connections == 2
    assert changes == [True, False, True, False]


async def test_read_many_sends_the_group_at_once_and_answers_in_request_order() -> None:
    async with device() as (dev, line):
        conn = client(line, pipeline=3)
        try:
            first = asyncio.create_task(conn.read(INPUT))  # connects: a group goes out on an open connection
            await dev.send(answer(await dev.requests.get()))
            await first
            group = asyncio.create_task(conn.read_many([HOLDING, INPUT, HOLDING]))
            got = [await dev.requests.get() for _ in range(3)]  # all three out before any answer
            await dev.send(answer(got[2]) + answer(got[0]) + answer(got[1]))
            outcomes = await group
        finally:
            conn.close()
    assert [registers_of(o) for o in outcomes] == [[100, 101, 102], [0, 1], [100, 101, 102]]
    assert conn.stats.requests == 4 and sum(conn.stats.errors.values()) == 0


async def test_read_many_ends_at_the_first_read_without_an_answer() -> None:
    async with device() as (dev, line):
        conn = client(line, pipeline=3, timeout=0.3)
        try:
            first = asyncio.create_task(conn.read(INPUT))
            await dev.send(answer(await dev.requests.get()))
            await first
            group = asyncio.create_task(conn.read_many([INPUT, HOLDING, INPUT]))
            got = [await dev.requests.get() for _ in range(3)]
            await dev.send(answer(got[0]) + answer(got[2]))  # the second never answered
            outcomes = await group
        finally:
            conn.close()
    assert [o.failure for o in outcomes] == [None, "timeout"]
    assert registers_of(outcomes[0]) == [0, 1]
    assert conn.stats.errors["timeout"] == 1


async def test_read_many_beyond_the_pipeline_goes_one_by_one() -> None:
    async with device() as (dev, line):
        conn = client(line)  # pipeline 1
        try:
            first = asyncio.create_task(conn.read(INPUT))
            await dev.send(answer(await dev.requests.get()))
            await first
            group = asyncio.create_task(conn.read_many([INPUT, HOLDING]))
            req = await dev.requests.get()
            await asyncio.sleep(0.05)
            assert dev.requests.empty()  # the second waits for the first's answer
            await dev.send(answer(req))
            await dev.send(answer(await dev.requests.get()))
            outcomes = await group
        finally:
            conn.close()
    assert [registers_of(o) for o in outcomes] == [[0, 1], [100, 101, 102]]
