"""The daemon component that runs detection live: bus -> engine -> store, with timers from the engine.

It reads a blocking bus subscription (a full queue slows the sources, nothing is dropped), feeds every
event to the engine, ticks at the engine's next wakeup and at least every `tick_every` seconds, and writes
each round's steps in one transaction before taking more events. SQLite runs in a worker thread so the
event loop keeps polling meanwhile; the engine is not touched until the write is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.core.bus import Subscription
from gateway.incidents.manager import IncidentManager
from gateway.incidents.store import Batch

log = logging.getLogger("meterwatch.incidents")

MAX_EVENTS_PER_ROUND = 2000  # bounds the time between ticks when the queue is deep
RETRY_MAX = 30.0

T = TypeVar("T")


class NotStored(Exception):
    """A call was applied but the incident store could not take the round: it stays in memory and is
    retried with the next rounds, so the caller should not repeat it."""


class Detector:
    name = "detect"

    def __init__(
        self,
        manager: IncidentManager,
        sub: Subscription,
        tick_every: float = 1.0,
        clock: Callable[[], float] = time.time,
        on_batch: Callable[[Batch, float], None] | None = None,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.mgr = manager
        # the respond side adds the notices a round's transitions owe to the same transaction (on_batch)
        # and is told when they are committed, so its senders pick them up at once (on_commit)
        self.on_batch = on_batch
        self.on_commit = on_commit
        self.sub = sub
        self.tick_every = tick_every
        self.clock = clock
        self.write_failures = 0
        self.rounds = 0
        self._retry_at = 0.0
        self._backoff = 1.0
        # staff's actions (gateway/respond/desk.py), applied between rounds, answered once committed
        self._calls: list[tuple[Callable[[float], Any], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()

    async def call(self, fn: Callable[[float], T]) -> T:
        """Run `fn(now)` in the next round, where the engine may be changed, and return its result once the
        round is committed (NotStored when the store failed it). `fn` must change nothing when it raises:
        its exception is the caller's answer."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.append((fn, fut))
        self._wake.set()
        return await fut

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.round()
        finally:
            # what is queued was acknowledged by the bus: feed and store it before stopping
            while events := self.sub.get_many(MAX_EVENTS_PER_ROUND):
                self.mgr.feed_many(events)  # as a round does: a deep queue costs no correlator run per event
            now = self.clock()
            self.mgr.tick(now)
            for _, fut in self._calls:
                if not fut.done():
                    fut.set_exception(NotStored("the daemon is stopping"))
            self._calls = []
            await self._write(now, force=True)
            try:
                self.mgr.store.stop(self.clock())
            except Exception:
                log.exception("cannot record the clean stop in the incident store")

    async def round(self) -> None:
        now = self.clock()
        wake = self.mgr.engine.next_wakeup()
        due = now + self.tick_every if wake is None else min(wake, now + self.tick_every)
        event = self.sub.get_nowait()
        if event is None and due > now and not self._calls:
            self._wake.clear()
            event = await self.sub.get_until(self._wake, timeout=due - now)
        if event is not None:
            events = [event, *self.sub.get_many(MAX_EVENTS_PER_ROUND)]
            self.mgr.feed_many(events)
        now = self.clock()
        if now >= due:
            self.mgr.tick(now)
        answered = self._run_calls(now)
        stored = await self._write(now)
        for fut, result in answered:
            if fut.done():  # the caller went away (its request was cancelled)
                continue
            if stored:
                fut.set_result(result)
            else:
                fut.set_exception(NotStored("the incident store cannot write now; kept and retried"))
        self.rounds += 1

    def _run_calls(self, now: float) -> list[tuple[asyncio.Future[Any], Any]]:
        calls, self._calls = self._calls, []
        answered: list[tuple[asyncio.Future[Any], Any]] = []
        for fn, fut in calls:
            try:
                result = fn(now)
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(exc)
                continue
            answered.append((fut, result))
        return answered

    async def _write(self, now: float, force: bool = False) -> bool:
        """Write the round; False when the store failed it (kept in memory and retried)."""
        batch = self.mgr.take_batch(now)
        if self.on_batch is not None:
            try:
                self.on_batch(batch, now)
            except Exception:  # a bug on the respond side must not stop detection or its store
                log.exception("the respond side failed on a round of transitions; detection goes on")
        if not batch or (not force and now < self._retry_at):
            if batch:
                self.mgr.failed(batch)  # still waiting to retry: keep accumulating
                return False
            return True
        try:
            await asyncio.to_thread(self.mgr.store.write, batch)
        except Exception as exc:
            self.write_failures += 1
            self.mgr.failed(batch)
            self._retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, RETRY_MAX)
            log.error(
                "cannot write to the incident store; changes kept in memory and retried",
                extra={
                    "fields": {"error": str(exc), "failures": self.write_failures, "retry_in": self._backoff}
                },
            )
            return False
        self._backoff = 1.0
        self._retry_at = 0.0
        self.mgr.committed(batch)
        if self.on_commit is not None and batch.writers:
            self.on_commit()
        return True
