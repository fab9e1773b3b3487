"""The sink component: bus -> encoder -> buffer (spool) -> InfluxDB, with retries, splits and dead letters.

Two loops share one buffer:
- intake reads the bus (a blocking subscription: a full queue slows the sources, never loses a sample),
  gathers up to `batch_size` points or `flush_interval` seconds and appends them in ONE spool transaction.
  In durable mode a sample counts as acknowledged only after that commit.
- send reads the buffer oldest first, up to `batch_size` points, rate-limited to `replay_rate` points/s,
  writes them synchronously and acks (deletes) what InfluxDB took. What InfluxDB refuses for good goes to
  the dead-letter file; everything else stays and is retried with backoff (Retry-After honoured).

SQLite calls run on one dedicated thread and HTTP writes on another, so neither blocks the event loop and
a slow InfluxDB never delays the spool commits.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from gateway.core.bus import Subscription
from gateway.core.stats import Histogram
from gateway.core.types import Event, Sample
from gateway.sink.deadletter import DeadLetters
from gateway.sink.influx import WriteOutcome
from gateway.sink.lineproto import LineEncoder
from gateway.sink.spool import Buffer, Pending

log = logging.getLogger("meterwatch.sink")

WRITE_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BACKOFF_START = 1.0
# A down database is probed at least this often, so a backlog starts draining within ~10 s of its return.
BACKOFF_MAX = 10.0
RETRY_AFTER_MAX = 600.0
EXPIRE_EVERY = 10.0

T = TypeVar("T")


class Writer(Protocol):
    def write(self, lines: Sequence[str]) -> WriteOutcome: ...
    def close(self) -> None: ...


@dataclass
class SinkStats:
    samples_in: int = 0
    points_in: int = 0
    points_written: int = 0
    write_requests: int = 0
    write_latency: Histogram = field(
        default_factory=lambda: Histogram(WRITE_BUCKETS, [0] * (len(WRITE_BUCKETS) + 1))
    )
    write_errors: Counter[str] = field(default_factory=Counter)  # outcome kind -> failed requests
    last_success: float | None = None
    config_error: int = 0  # HTTP status of a 401/403/404 still unresolved, else 0
    reachable: bool = False
    last_error: str = ""
    spool_errors: int = 0


@dataclass
class TokenBucket:
    """Points per second; a batch larger than the burst waits for its whole cost."""

    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def delay_for(self, cost: float) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= cost
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class Forwarder:
    name = "sink"

    def __init__(
        self,
        sub: Subscription,
        encoder: LineEncoder,
        buffer: Buffer,
        writer: Writer,
        dead: DeadLetters,
        batch_size: int = 1000,
        flush_interval: float = 1.0,
        replay_rate: float = 5000.0,
    ) -> None:
        self.sub = sub
        self.encoder = encoder
        self.buffer = buffer
        self.writer = writer
        self.dead = dead
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.bucket = TokenBucket(rate=replay_rate, burst=max(float(batch_size), replay_rate))
        self.stats = SinkStats()
        self.accepting = True  # the buffer takes new points (the last append succeeded)
        self._spool_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._http_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="influx")
        self._wake = asyncio.Event()
        self._backoff = BACKOFF_START

    # -- running ------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        intake = asyncio.create_task(self._intake(stop), name="sink-intake")
        sender = asyncio.create_task(self._send_loop(stop), name="sink-send")
        try:
            await intake
            await sender
        finally:
            for t in (intake, sender):
                t.cancel()
            if not self.buffer.durable:
                await self._final_flush()
            await self._on_spool(self.buffer.close)
            await asyncio.to_thread(self.writer.close)
            self._spool_thread.shutdown(wait=True)
            self._http_thread.shutdown(wait=False)

    async def _on_spool(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._spool_thread, fn, *args)

    # -- intake -------------------------------------------------------------------------------------------
    async def _intake(self, stop: asyncio.Event) -> None:
        while True:
            lines = await self._gather(stop)
            if lines:
                await self._append(lines, stop)
            elif stop.is_set() and self.sub.queue.empty():
                return

    async def _gather(self, stop: asyncio.Event) -> list[str]:
        lines: list[str] = []
        first = await self._next_event(stop, None)
        if first is None:
            return lines
        self._take(first, lines)
        deadline = time.monotonic() + self.flush_interval
        while len(lines) < self.batch_size:
            ev = self.sub.get_nowait()
            if ev is None:
                left = deadline - time.monotonic()
                if left <= 0 or stop.is_set():
                    break
                ev = await self._next_event(stop, left)
                if ev is None:
                    break
            self._take(ev, lines)
        return lines

    async def _next_event(self, stop: asyncio.Event, timeout: float | None) -> Event | None:
        return await self.sub.get_until(stop, timeout)

    def _take(self, ev: Event, lines: list[str]) -> None:
        if not isinstance(ev, Sample):
            return  # device and source status are not stored as time series
        self.stats.samples_in += 1
        line = self.encoder.encode(ev)
        if line is not None:
            lines.append(line)

    async def _append(self, lines: list[str], stop: asyncio.Event) -> None:
        delay = 0.5
        while True:
            try:
                await self._on_spool(self.buffer.append, lines)
            except Exception as exc:  # disk full, I/O error: keep the batch, the bus backs up meanwhile
                self.accepting = False
                self.stats.spool_errors += 1
                log.error("spool append failed, retrying", extra={"fields": {"error": str(exc)}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.accepting = True
            self.stats.points_in += len(lines)
            self._wake.set()
            return

    # -- sending ------------------------------------------------------------------------------------------
    async def _send_loop(self, stop: asyncio.Event) -> None:
        next_expire = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_expire:
                await self._on_spool(self.buffer.expire)
                next_expire = time.monotonic() + EXPIRE_EVERY
            self._wake.clear()
            pending = await self._on_spool(self.buffer.peek, self.batch_size)
            if not pending:
                await _wait(self._wake, stop, EXPIRE_EVERY)
                continue
            delay = self.bucket.delay_for(len(pending))
            if delay > 0 and await _sleep_or_stop(stop, delay):
                return
            settled, outcome = await self._deliver(pending)
            if settled:
                await self._on_spool(self.buffer.ack, pending[settled - 1].id)
            if outcome is not None:
                await self._on_spool(self.buffer.release)  # the unsettled rows may be dropped again
            if outcome is not None and outcome.kind != "ok":
                wait = self._retry_delay(outcome)
                if await _sleep_or_stop(stop, wait):
                    return

    async def _deliver(self, rows: list[Pending]) -> tuple[int, WriteOutcome | None]:
        """Write rows; returns how many leading rows are settled (written or dead-lettered) and the
        outcome that stopped the rest (None when all settled)."""
        outcome = await self._write([r.line for r in rows])
        if outcome.kind == "ok":
            return len(rows), None
        if outcome.kind in ("too_large", "rejected"):
            if len(rows) > 1:
                half = len(rows) // 2
                n1, out1 = await self._deliver(rows[:half])
                if out1 is not None:
                    return n1, out1
                n2, out2 = await self._deliver(rows[half:])
                return half + n2, out2
            await self._on_spool(self.dead.add, [rows[0].line], outcome.status, outcome.message, outcome.kind)
            log.warning(
                "InfluxDB refused a point; moved to the dead-letter file",
                extra={
                    "fields": {"status": outcome.status, "reason": outcome.message, "file": self.dead.path}
                },
            )
            return 1, None
        return 0, outcome

    async def _write(self, lines: list[str]) -> WriteOutcome:
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(self._http_thread, self.writer.write, lines)
        self.stats.write_requests += 1
        self.stats.write_latency.observe(time.perf_counter() - t0)
        if outcome.kind == "ok":
            self.stats.points_written += len(lines)
            self.stats.last_success = time.time()
            if not self.stats.reachable or self.stats.config_error:
                log.info("InfluxDB accepts writes", extra={"fields": {"backlog": self.buffer.stats.points}})
            self.stats.reachable = True
            self.stats.config_error = 0
            self._backoff = BACKOFF_START
        else:
            self._note_failure(outcome)
        return outcome

    def _note_failure(self, outcome: WriteOutcome) -> None:
        self.stats.write_errors[outcome.kind] += 1
        first = outcome.message != self.stats.last_error
        self.stats.last_error = outcome.message
        if outcome.kind == "unreachable":
            if self.stats.reachable or first:
                log.warning(
                    "InfluxDB unreachable; points wait in the spool",
                    extra={"fields": {"error": outcome.message, "backlog": self.buffer.stats.points}},
                )
            self.stats.reachable = False
        elif outcome.kind == "config":
            self.stats.reachable = True
            if self.stats.config_error != outcome.status:
                log.error(
                    "InfluxDB refuses our credentials or bucket (fix the influx section or the token); "
                    "points are kept and retried",
                    extra={"fields": {"status": outcome.status, "error": outcome.message}},
                )
            self.stats.config_error = outcome.status or 0
        elif first:
            log.warning(
                "InfluxDB asks us to slow down or failed; retrying",
                extra={"fields": {"status": outcome.status, "retry_after": outcome.retry_after}},
            )

    def _retry_delay(self, outcome: WriteOutcome) -> float:
        if outcome.retry_after is not None:
            return min(outcome.retry_after, RETRY_AFTER_MAX)
        delay = self._backoff * random.uniform(0.8, 1.2)
        cap = 60.0 if outcome.kind == "config" else BACKOFF_MAX
        self._backoff = min(self._backoff * 2, cap)
        return delay

    async def _final_flush(self) -> None:
        """Best-effort mode only: one last attempt, then what is left is lost (and said so)."""
        pending = self.buffer.peek(self.batch_size)
        while pending:
            settled, outcome = await self._deliver(pending)
            if settled:
                self.buffer.ack(pending[settled - 1].id)
            if outcome is not None:
                self.buffer.release()
                break
            pending = self.buffer.peek(self.batch_size)


async def _wait(event: asyncio.Event, stop: asyncio.Event, timeout: float) -> None:
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> bool:
    """Sleep `delay` seconds; True when stop was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except TimeoutError:
        return False
    return True
