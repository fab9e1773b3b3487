"""The daemon component that runs detection live: bus -> engine -> store, with timers from the engine.

It reads a blocking bus subscription (a full queue slows the sources, nothing is dropped), feeds every
event to the engine, ticks at the engine's next wakeup and at least every `tick_every` seconds, and writes
each round's steps in one transaction before taking more events. SQLite runs in a worker thread so the
event loop keeps polling meanwhile; the engine is not touched until the write is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from gateway.core.bus import Subscription
from gateway.incidents.manager import IncidentManager
from gateway.incidents.store import Batch

log = logging.getLogger("meterwatch.incidents")

MAX_EVENTS_PER_ROUND = 2000  # bounds the time between ticks when the queue is deep
RETRY_MAX = 30.0


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

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.round()
        finally:
            # what is queued was acknowledged by the bus: feed and store it before stopping
            while (ev := self.sub.get_nowait()) is not None:
                self.mgr.feed(ev)
            now = self.clock()
            self.mgr.tick(now)
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
        if event is None and due > now:
            with contextlib.suppress(TimeoutError):
                event = await asyncio.wait_for(self.sub.get(), timeout=due - now)
        if event is not None:
            self.mgr.feed(event)
            for _ in range(MAX_EVENTS_PER_ROUND):
                more = self.sub.get_nowait()
                if more is None:
                    break
                self.mgr.feed(more)
        now = self.clock()
        if now >= due:
            self.mgr.tick(now)
        await self._write(now)
        self.rounds += 1

    async def _write(self, now: float, force: bool = False) -> None:
        batch = self.mgr.take_batch(now)
        if self.on_batch is not None:
            try:
                self.on_batch(batch, now)
            except Exception:  # a bug on the respond side must not stop detection or its store
                log.exception("the respond side failed on a round of transitions; detection goes on")
        if not batch or (not force and now < self._retry_at):
            if batch:
                self.mgr.failed(batch)  # still waiting to retry: keep accumulating
            return
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
            return
        self._backoff = 1.0
        self._retry_at = 0.0
        self.mgr.committed(batch)
        if self.on_commit is not None and batch.writers:
            self.on_commit()
