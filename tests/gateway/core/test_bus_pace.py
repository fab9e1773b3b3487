"""A paced subscription: get_until does not wait for the next event until `pace` seconds after its last
return, so what is published in between is taken together (one wake-up, not one per event); nothing is
lost, the caller's timeout and its stop event still hold."""

from __future__ import annotations

import asyncio

from gateway.core.bus import Bus, Subscription
from gateway.core.types import Sample


def sample(n: int) -> Sample:
    return Sample(device="m1", ts=float(n), values={"voltage_l1": 230.0 + n})


async def trickle(bus: Bus, n: int, first: int = 0) -> None:
    """n events, each on its own turn of the loop (as poll answers arrive)."""
    for i in range(first, first + n):
        await bus.publish(sample(i))
        await asyncio.sleep(0)


async def woken(bus: Bus, sub: Subscription, stop: asyncio.Event) -> None:
    """A wait that an event ended: the pace runs from here."""
    waiting = asyncio.create_task(sub.get_until(stop, timeout=30))
    await asyncio.sleep(0)
    await bus.publish(sample(-1))
    got = await asyncio.wait_for(waiting, 10)
    assert got is not None and got.ts == -1.0


async def test_events_published_within_the_pace_are_taken_together() -> None:
    bus = Bus()
    sub = bus.subscribe("rules", maxsize=100, overflow="block", pace=0.3)
    stop = asyncio.Event()
    await woken(bus, sub, stop)
    waiting = asyncio.create_task(sub.get_until(stop, timeout=30))
    await asyncio.sleep(0)  # it finds the queue empty and sleeps out the pace
    await trickle(bus, 5)
    for _ in range(20):  # many turns of the loop: an unpaced wait would have returned at the first event
        await asyncio.sleep(0)
    assert not waiting.done()
    got = await asyncio.wait_for(waiting, 10)
    assert got is not None and got.ts == 0.0
    assert [e.ts for e in sub.get_many(10)] == [1.0, 2.0, 3.0, 4.0]
    assert sub.delivered == 6 and sub.dropped == 0


async def test_without_a_pace_the_first_event_wakes_the_wait() -> None:
    bus = Bus()
    sub = bus.subscribe("rules", maxsize=100, overflow="block")
    stop = asyncio.Event()
    await woken(bus, sub, stop)
    waiting = asyncio.create_task(sub.get_until(stop, timeout=30))
    await asyncio.sleep(0)
    await bus.publish(sample(0))
    got = await asyncio.wait_for(waiting, 10)
    assert got is not None and got.ts == 0.0


async def test_a_paced_wait_ends_on_its_timeout_and_on_stop() -> None:
    bus = Bus()
    sub = bus.subscribe("rules", maxsize=100, overflow="block", pace=0.2)
    stop = asyncio.Event()
    await woken(bus, sub, stop)
    assert await asyncio.wait_for(sub.get_until(stop, timeout=0.05), 10) is None  # nothing queued
    await woken(bus, sub, stop)
    waiting = asyncio.create_task(sub.get_until(stop))
    stop.set()
    assert await asyncio.wait_for(waiting, 10) is None
