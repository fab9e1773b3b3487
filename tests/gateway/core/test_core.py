from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.core.bus import Bus
from gateway.core.durations import format_duration, parse_duration
from gateway.core.once import OnceLog
from gateway.core.stats import Histogram
from gateway.core.types import DeviceStatus, Sample


def sample(n: int) -> Sample:
    return Sample(device="m1", ts=float(n), values={"voltage_l1": 230.0 + n})


async def test_blocking_subscriber_never_loses_and_slows_the_publisher() -> None:
    bus = Bus()
    durable = bus.subscribe("sink", maxsize=2, overflow="block")
    published = 0

    async def producer() -> None:
        nonlocal published
        for i in range(5):
            await bus.publish(sample(i))
            published += 1

    task = asyncio.create_task(producer())
    await asyncio.sleep(0.05)
    assert published == 2  # the third publish waits for the consumer
    got = [await durable.get() for _ in range(5)]
    await task
    assert [e.ts for e in got if isinstance(e, Sample)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert durable.dropped == 0


async def test_drop_oldest_subscriber_counts_drops_and_keeps_newest() -> None:
    bus = Bus()
    view = bus.subscribe("view", maxsize=2, overflow="drop_oldest")
    for i in range(5):
        await bus.publish(sample(i))
    assert view.dropped == 3
    got = [view.get_nowait(), view.get_nowait()]
    assert [e.ts for e in got if e is not None] == [3.0, 4.0]


async def test_get_until_returns_events_then_none_on_stop_or_timeout() -> None:
    bus = Bus()
    sub = bus.subscribe("consumer")
    stop = asyncio.Event()
    await bus.publish(Sample("m1", 1.0, {"v": 1.0}))
    got = await sub.get_until(stop, timeout=5)
    assert isinstance(got, Sample) and got.values == {"v": 1.0}
    assert await sub.get_until(stop, timeout=0.01) is None  # nothing queued
    waiter = asyncio.create_task(sub.get_until(stop))
    await asyncio.sleep(0)
    stop.set()
    assert await asyncio.wait_for(waiter, 5) is None
    await bus.publish(Sample("m1", 2.0, {"v": 2.0}))
    queued = await sub.get_until(stop)  # stop is set, but what is queued is still handed out
    assert isinstance(queued, Sample) and queued.ts == 2.0


async def test_get_until_wakes_on_each_put_and_a_cancelled_wait_loses_nothing() -> None:
    bus = Bus()
    sub = bus.subscribe("rules")
    stop = asyncio.Event()
    # woken by a publish, by a put_nowait from outside the bus, and many times in a row
    for n in range(50):
        waiting = asyncio.create_task(sub.get_until(stop))  # no timeout: only the put can end it
        await asyncio.sleep(0)  # the task is waiting now
        if n % 2:
            await bus.publish(sample(n))
        else:
            sub.queue.put_nowait(sample(n))
        got = await asyncio.wait_for(waiting, 10)  # a generous bound: an unwoken wait fails here
        assert isinstance(got, Sample) and got.ts == float(n)
    # a wait cancelled takes nothing: the event published after it is still there
    waiting = asyncio.create_task(sub.get_until(stop))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await bus.publish(sample(99))
    again = await asyncio.wait_for(sub.get_until(stop), 10)
    assert isinstance(again, Sample) and again.ts == 99.0


async def test_get_until_with_a_wake_event_set_and_cleared_over_and_over() -> None:
    """The detector passes an event it sets to be woken for a staff action and clears after each round."""
    sub = Bus().subscribe("rules")
    wake = asyncio.Event()
    for _ in range(20):
        wake.clear()
        waiting = asyncio.create_task(sub.get_until(wake))
        await asyncio.sleep(0)
        wake.set()
        assert await asyncio.wait_for(waiting, 10) is None
    wake.clear()
    assert await sub.get_until(wake, timeout=0.01) is None  # and a timeout still ends a wait


async def test_publish_nowait_refuses_when_a_durable_subscriber_is_full() -> None:
    bus = Bus()
    durable = bus.subscribe("sink", maxsize=1, overflow="block")
    assert bus.publish_nowait(sample(1))
    assert not bus.publish_nowait(sample(2))  # the caller keeps it and retries
    assert durable.queue.qsize() == 1
    assert bus.published == 1


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0), (3, 3.0), ("1.5", 1.5)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "-5s", -1, True, "5 minutes"])
def test_parse_duration_rejects_with_a_clear_message(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_format_duration() -> None:
    assert [format_duration(x) for x in (0.25, 10, 300, 7200)] == ["250ms", "10s", "5m", "2h"]


def test_once_log_logs_first_and_counts_all(caplog: pytest.LogCaptureFixture) -> None:
    once = OnceLog(logging.getLogger("test.once"))
    with caplog.at_level(logging.WARNING):
        assert once.warn(("m1", "json"), "bad json from %s", "m1")
        assert not once.warn(("m1", "json"), "bad json from %s", "m1")
        assert once.warn(("m2", "json"), "bad json from %s", "m2")
    assert len(caplog.records) == 2
    assert once.counts[("m1", "json")] == 2
    once.forget(("m1", "json"))
    assert once.warn(("m1", "json"), "bad json again")


def test_histogram_cumulative_buckets() -> None:
    h = Histogram()
    for v in (0.001, 0.02, 0.02, 3.0, 100.0):
        h.observe(v)
    cum = dict(h.cumulative())
    assert cum[0.005] == 1 and cum[0.025] == 3 and cum[5.0] == 4 and cum[float("inf")] == 5
    assert h.count == 5 and h.total == pytest.approx(103.041)


def test_events_are_immutable() -> None:
    st = DeviceStatus(device="m1", ts=1.0, up=False, reason="timeout")
    with pytest.raises(AttributeError):
        st.up = True  # type: ignore[misc]
