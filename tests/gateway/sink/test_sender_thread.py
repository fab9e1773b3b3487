"""The sender runs on a thread of its own: it peeks, writes and acks with no trip through the event loop per
batch (gateway/sink/forwarder.py, "Threads"), and stop still ends its waits at once."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from gateway.sink.spool import Spool
from tests.gateway.sink.test_errors import FakeInflux, fake_influx, publish, run_sink  # noqa: F401
from tests.helpers import eventually


async def test_the_sender_writes_and_acks_on_one_thread_that_is_not_the_event_loop(
    tmp_path: Path,
    fake_influx: FakeInflux,  # noqa: F811
) -> None:
    s = await run_sink(tmp_path, fake_influx.url, batch=50)
    writes: list[int] = []
    acks: list[int] = []
    write_body, ack = s.fw.writer.write_body, s.fw.buffer.ack

    def spy_write(body: str | bytes):  # type: ignore[no-untyped-def]
        writes.append(threading.get_ident())
        return write_body(body)

    def spy_ack(last_id: int) -> int:
        acks.append(threading.get_ident())
        return ack(last_id)

    s.fw.writer.write_body = spy_write  # type: ignore[method-assign]
    s.fw.buffer.ack = spy_ack  # type: ignore[method-assign]
    await publish(s.rt, 400)
    await eventually(lambda: len(fake_influx.accepted) == 400, what="every point written")
    await eventually(lambda: s.fw.buffer.stats.points == 0, what="every point acknowledged")
    await s.close()
    assert len(writes) >= 8  # a request per batch of 50 at most
    assert len(set(writes)) == 1 and set(acks) == set(writes)
    assert writes[0] != threading.get_ident()  # not the event loop's thread
    assert s.fw.stats.points_written == 400 and not s.fw.stats.write_errors


async def test_stop_ends_a_retry_after_wait_at_once_and_keeps_the_points(
    tmp_path: Path,
    fake_influx: FakeInflux,  # noqa: F811
) -> None:
    fake_influx.script = lambda n, _: (503, {"Retry-After": "600"}, "overloaded")
    s = await run_sink(tmp_path, fake_influx.url)
    await publish(s.rt, 7)
    await eventually(lambda: s.fw.stats.write_errors["retry"] == 1, what="the first refused write")
    s.stop.set()
    # the sender waits 600 s for Retry-After: stop must end that wait, not the timeout
    await asyncio.wait_for(asyncio.gather(*s.tasks), timeout=20)
    assert len(fake_influx.requests) == 1
    assert isinstance(s.fw.buffer, Spool)
    spool = Spool(s.fw.buffer.path, max_bytes=2**30, max_age=1e9)
    try:
        assert spool.stats.points == 7  # nothing acknowledged, nothing lost
    finally:
        spool.close()


async def test_the_sender_picks_up_a_batch_appended_while_it_waits_on_an_empty_spool(
    tmp_path: Path,
    fake_influx: FakeInflux,  # noqa: F811
) -> None:
    s = await run_sink(tmp_path, fake_influx.url)
    for round_ in range(5):  # each batch lands while the sender sleeps on an empty spool (up to 10 s)
        await publish(s.rt, 3, start=3 * round_)
        await eventually(
            lambda r=round_: len(fake_influx.accepted) == 3 * (r + 1), timeout=5, what="the batch written"
        )
    await s.close()
    assert s.fw.stats.points_written == 15
