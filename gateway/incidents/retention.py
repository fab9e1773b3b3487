"""Retention: resolved incidents older than `review.retention` (default 2 years, by when they resolved) go,
with their timeline, evidence, notices and delivery log, and votes; the alert log and downtime records older
than every incident left go too (IncidentStore.prune says exactly what).

A daemon component: it prunes at start and then every `every` seconds (a day). Which incidents it must leave
alone is asked inside a detector round (`Detector.call`), where the engine is consistent: those the engine
still holds (open, or closed recently enough to reopen) and those whose evidence is still being collected.
An incident the engine does not hold at that moment can never come back to it (ids are never reused and the
engine forgets only settled incidents), so the deletes that follow in a worker thread, under the store's
writer lock, cannot pull a row from under it. Open incidents are never touched whatever the engine says:
the store checks their state in the very transaction that deletes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from gateway.incidents.store import IncidentStore, Pruned

log = logging.getLogger("meterwatch.incidents.retention")

DAY = 86400.0
RETRY_AFTER = 3600.0  # a pruning that failed (store busy or broken) is tried again this soon

HeldCall = Callable[[Callable[[float], frozenset[int]]], Awaitable[frozenset[int]]]


class Retention:
    """Prunes the incident store at start and daily; counts what it removed for /metrics."""

    name = "retention"

    def __init__(
        self,
        store: IncidentStore,
        keep_for: float,
        held: Callable[[], set[int]],
        call: HeldCall,
        every: float = DAY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.keep_for = keep_for
        self.held = held  # run inside a detector round: the incident ids the daemon still works on
        self.call = call  # Detector.call
        self.every = every
        self.clock = clock
        self.runs = 0
        self.failures = 0
        self.pruned = Pruned()  # totals since start, by table
        self.last_run: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            done = await self.prune_once()
            wait = self.every if done is not None else min(self.every, RETRY_AFTER)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def prune_once(self) -> Pruned | None:
        """One pruning; None when it failed (logged, tried again later)."""
        try:
            keep = await self.call(lambda _now: frozenset(self.held()))
            now = self.clock()
            out = await asyncio.to_thread(self.store.prune, now - self.keep_for, keep)
        except Exception as exc:
            self.failures += 1
            log.error(
                "cannot prune the incident store; tried again later", extra={"fields": {"error": str(exc)}}
            )
            return None
        self.runs += 1
        self.last_run = now
        for name, n in asdict(out).items():
            setattr(self.pruned, name, getattr(self.pruned, name) + n)
        if out.incidents or out.alert_log or out.downtime:
            log.info(
                "incident store pruned",
                extra={"fields": {"older_than_s": self.keep_for, **asdict(out)}},
            )
        return out
