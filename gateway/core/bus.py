"""A bounded in-process publish/subscribe bus between sources and consumers.

Each subscriber has its own bounded queue. A durable consumer (the InfluxDB spool, the rules engine) uses
`overflow="block"`: a full queue slows the publisher down instead of losing an event. A best-effort
consumer (the live terminal view) uses `overflow="drop_oldest"` and its drops are counted.

A blocking subscriber may set `shed_after` (seconds): a publisher then waits at most that long for room
in its queue; past it the event is shed for that subscriber alone (counted in `dropped`) and, until the
queue has drained to half, further events are shed without waiting. The sink does this (see
gateway/sink/shedding.py): storage that stalls costs the sources one bounded wait, and every other
subscriber, the rules engine first, keeps getting every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from gateway.core.types import Event

Overflow = Literal["block", "drop_oldest"]


class WakingQueue(asyncio.Queue[Event]):
    """A queue that also wakes the one future its consumer waits on in `Subscription.get_until`.

    Waiting there used to cost two futures and an `asyncio.wait` per call, and a consumer that keeps up
    waits once per event: at 800 meters polled every second that was about a tenth of the gateway's CPU.
    `_put` is the hook every put goes through (put, put_nowait), so no event can slip past the waiter.
    """

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.waiter: asyncio.Future[None] | None = None

    def _put(self, item: Event) -> None:
        super()._put(item)  # the hook Queue subclasses override (PriorityQueue, LifoQueue)
        _wake(self.waiter)

    # asyncio.Queue's own state, which `offer` and `take` use directly (typeshed does not declare it)
    if TYPE_CHECKING:
        _queue: deque[Event]
        _maxsize: int
        _putters: deque[asyncio.Future[None]]
        _getters: deque[asyncio.Future[None]]
        _unfinished_tasks: int
        _finished: asyncio.Event

        def _wakeup_next(self, waiters: deque[asyncio.Future[None]]) -> None: ...

    def offer(self, item: Event) -> bool:
        """put_nowait that answers False when full instead of raising: the publisher's hot path (one
        event per poll and subscriber), with what put_nowait does inlined."""
        items = self._queue
        if 0 < self._maxsize <= len(items):
            return False
        items.append(item)
        waiter = self.waiter  # _wake, inlined
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._unfinished_tasks += 1
        self._finished.clear()
        if self._getters:
            self._wakeup_next(self._getters)
        return True

    def take(self, limit: int) -> list[Event]:
        """Up to `limit` queued events, oldest first, without waiting: as many get_nowait calls would
        return, and waking as many blocked putters, in one call."""
        items = self._queue
        if len(items) <= limit:
            out = list(items)
            items.clear()
        else:
            pop = items.popleft
            out = [pop() for _ in range(limit)]
        putters, wake = self._putters, len(out)
        while putters and wake:
            self._wakeup_next(putters)
            wake -= 1
        return out


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


@dataclass
class Subscription:
    name: str
    queue: asyncio.Queue[Event]
    overflow: Overflow
    dropped: int = 0
    delivered: int = 0
    shed_after: float | None = None  # "block" only: longest wait for room before shedding (None: no limit)
    shedding: bool = False  # shed_after passed and the queue has not drained to half since
    # get_until sleeps until `pace` seconds after its last return before it waits for an event (0: never),
    # so a consumer that keeps up wakes once per pace with what came meanwhile, not once per event
    pace: float = 0.0
    _woke: float = field(default=-math.inf, repr=False)
    # stop event -> the task that wakes get_until's waiter when it is set (one per stop event, not per call)
    _stop_watches: dict[tuple[asyncio.Event, asyncio.AbstractEventLoop], asyncio.Task[None]] = field(
        default_factory=dict, repr=False
    )

    async def get(self) -> Event:
        return await self.queue.get()

    def get_nowait(self) -> Event | None:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def get_many(self, limit: int) -> list[Event]:
        """Up to `limit` events already queued (oldest first; none when the queue is empty), without
        waiting. A consumer that batches (the sink) takes a batch in one call rather than one per event."""
        queue = self.queue
        if isinstance(queue, WakingQueue):
            return queue.take(limit)
        out: list[Event] = []
        while len(out) < limit:
            try:
                out.append(queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return out

    async def get_until(self, stop: asyncio.Event, timeout: float | None = None) -> Event | None:
        """The next event, or None once `stop` is set or `timeout` passes with nothing queued.

        Nothing is taken from the queue while waiting, so a consumer cancelled in the wait loses no event:
        a durable consumer relies on every event it was handed.
        """
        ev = self.get_nowait()
        if ev is not None or stop.is_set():
            return ev
        queue = self.queue
        if not isinstance(queue, WakingQueue):
            return await self._get_until_slow(stop, timeout)
        loop = asyncio.get_running_loop()
        if self.pace:
            rest = self._woke + self.pace - loop.time()
            if rest > 0:
                if timeout is not None and timeout <= rest:
                    await asyncio.sleep(timeout)
                    self._woke = loop.time()
                    return self.get_nowait()
                await asyncio.sleep(rest)
                ev = self.get_nowait()
                if ev is not None or stop.is_set():
                    self._woke = loop.time()
                    return ev
                if timeout is not None:
                    timeout -= rest
        waiter: asyncio.Future[None] = loop.create_future()
        queue.waiter = waiter
        self._watch(stop, loop)
        timer = None if timeout is None else loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            queue.waiter = None
            if timer is not None:
                timer.cancel()
        self._woke = loop.time()
        return self.get_nowait()

    def _watch(self, stop: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure a task wakes this subscription's waiter once `stop` is set."""
        key = (stop, loop)
        task = self._stop_watches.get(key)
        if task is None or task.done():
            self._stop_watches[key] = loop.create_task(self._wake_on(stop), name=f"bus-stop-{self.name}")

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        if isinstance(self.queue, WakingQueue):
            _wake(self.queue.waiter)

    async def _get_until_slow(self, stop: asyncio.Event, timeout: float | None) -> Event | None:
        """get_until for a subscription built on a plain asyncio.Queue."""
        getter = asyncio.ensure_future(self.queue.get())
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({getter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await getter
        if not getter.cancelled() and getter.exception() is None:
            return getter.result()
        return None

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()


@dataclass
class Bus:
    subscriptions: list[Subscription] = field(default_factory=list)
    published: int = 0

    def subscribe(
        self, name: str, maxsize: int = 10_000, overflow: Overflow = "block", pace: float = 0.0
    ) -> Subscription:
        sub = Subscription(name=name, queue=WakingQueue(maxsize=maxsize), overflow=overflow, pace=pace)
        self.subscriptions.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscriptions.remove(sub)

    async def publish(self, event: Event) -> None:
        self.published += 1
        for sub in self.subscriptions:
            if sub.overflow == "block":
                queue = sub.queue
                if not sub.shedding and isinstance(queue, WakingQueue) and queue.offer(event):
                    pass  # room in the queue: what put or _put_or_shed would do first, without a coroutine
                elif sub.shed_after is None:
                    await sub.queue.put(event)
                elif not await self._put_or_shed(sub, event):
                    continue
            else:
                self._put_dropping(sub, event)
            sub.delivered += 1

    def publish_nowait(self, event: Event) -> bool:
        """For callers outside the event loop's coroutines (e.g. a paho callback thread hands over via
        `loop.call_soon_threadsafe`). Returns False when a blocking subscriber is full (and not shedding):
        the caller must keep the event and retry, so nothing is lost."""
        full = [s for s in self.subscriptions if s.overflow == "block" and s.queue.full()]
        if any(not s.shedding for s in full):
            return False
        self.published += 1
        for sub in self.subscriptions:
            if sub in full:
                sub.dropped += 1
                continue
            self._put_dropping(sub, event)
            sub.delivered += 1
        return True

    @staticmethod
    async def _put_or_shed(sub: Subscription, event: Event) -> bool:
        """Queue `event` for a subscriber with `shed_after`; False when it was shed instead."""
        queue = sub.queue
        if sub.shedding and queue.qsize() > queue.maxsize // 2:
            sub.dropped += 1  # still draining: waiting again would only slow every source down again
            return False
        sub.shedding = False
        try:
            queue.put_nowait(event)
            return True
        except asyncio.QueueFull:
            pass
        try:
            await asyncio.wait_for(queue.put(event), sub.shed_after)
        except TimeoutError:
            sub.shedding = True
            sub.dropped += 1
            return False
        return True

    @staticmethod
    def _put_dropping(sub: Subscription, event: Event) -> None:
        while True:
            try:
                sub.queue.put_nowait(event)
                return
            except asyncio.QueueFull:
                try:
                    sub.queue.get_nowait()
                    sub.dropped += 1
                except asyncio.QueueEmpty:  # pragma: no cover - raced empty
                    pass
