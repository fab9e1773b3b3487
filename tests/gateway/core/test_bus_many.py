"""Subscription.get_many: a batching consumer takes what is queued in one call, oldest first, up to its
limit, and the publishers it had blocked go on; and the publisher's fast path (room in the queue, no
coroutine) keeps the bus's promises: order, blocking when full, shedding after `shed_after`."""

from __future__ import annotations

import asyncio

from gateway.core.bus import Bus, Subscription
from gateway.core.types import Event, Sample


def sample(n: int) -> Sample:
    return Sample(device="m1", ts=float(n), values={"voltage_l1": 230.0 + n})


def stamps(events: list[Event]) -> list[float]:
    return [e.ts for e in events if isinstance(e, Sample)]


async def test_get_many_takes_what_is_queued_oldest_first_up_to_the_limit() -> None:
    bus = Bus()
    sub = bus.subscribe("sink", maxsize=100, overflow="block")
    assert sub.get_many(10) == []
    for i in range(7):
        await bus.publish(sample(i))
    assert stamps(sub.get_many(3)) == [0.0, 1.0, 2.0]
    assert stamps(sub.get_many(10)) == [3.0, 4.0, 5.0, 6.0]
    assert sub.get_many(10) == [] and sub.queue.empty()
    assert sub.delivered == 7 and sub.dropped == 0


async def test_get_many_lets_blocked_publishers_go_on_and_loses_nothing() -> None:
    bus = Bus()
    sub = bus.subscribe("sink", maxsize=3, overflow="block")
    published = 0

    async def producer() -> None:
        nonlocal published
        for i in range(10):
            await bus.publish(sample(i))
            published += 1

    task = asyncio.create_task(producer())
    got: list[Event] = []
    deadline = asyncio.get_running_loop().time() + 10
    while len(got) < 10:
        assert asyncio.get_running_loop().time() < deadline, f"stuck after {stamps(got)}"
        await asyncio.sleep(0)  # let the producer fill the queue and block on it
        got.extend(sub.get_many(2))
    await task
    assert stamps(got) == [float(i) for i in range(10)]
    assert sub.dropped == 0


async def test_get_many_on_a_plain_queue() -> None:
    """A Subscription built on a plain asyncio.Queue (not the bus's own) still answers get_many."""
    queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=10)
    sub = Subscription("plain", queue, "block")
    for i in range(4):
        queue.put_nowait(sample(i))
    assert stamps(sub.get_many(3)) == [0.0, 1.0, 2.0]
    assert stamps(sub.get_many(3)) == [3.0]
    assert sub.get_many(3) == []


async def test_the_fast_path_still_sheds_after_shed_after_and_recovers_at_half() -> None:
    bus = Bus()
    sub = bus.subscribe("sink", maxsize=4, overflow="block")
    sub.shed_after = 0.05
    for i in range(4):
        await bus.publish(sample(i))
    await bus.publish(sample(4))  # full: waits shed_after, then sheds it
    assert sub.shedding and sub.dropped == 1
    sub.get_many(1)
    await bus.publish(sample(5))  # still above half: shed without waiting
    assert sub.dropped == 2
    sub.get_many(2)
    await bus.publish(sample(6))  # drained to half: taken again
    assert not sub.shedding and sub.dropped == 2
    assert stamps(sub.get_many(10)) == [3.0, 6.0]


async def test_get_until_is_woken_by_a_fast_path_publish() -> None:
    bus = Bus()
    sub = bus.subscribe("sink", maxsize=10, overflow="block")
    stop = asyncio.Event()
    waiting = asyncio.create_task(sub.get_until(stop, timeout=10))
    await asyncio.sleep(0.01)
    await bus.publish(sample(1))
    got = await asyncio.wait_for(waiting, 5)
    assert isinstance(got, Sample) and got.ts == 1.0
