"""The sink component: bus -> encoder -> buffer (spool) -> InfluxDB, with retries, splits and dead letters.

Two loops share one buffer:
- intake reads the bus (a blocking subscription: a full queue slows the sources, never loses a sample),
  gathers up to `batch_size` samples or `flush_interval` seconds (what is queued taken in one call,
  Subscription.get_many), encodes them together into one request body and appends it in ONE spool
  transaction. With a backlog queued (BACKLOG_BATCHES batches or more) several whole batches go in one
  transaction, each still its own chunk and request.
  In durable mode a sample counts as acknowledged only after that commit.
- send reads the buffer oldest first, up to `batch_size` points as whole chunks (the appended batches, kept
  as request bodies: gateway/sink/spool.py), rate-limited to `replay_rate` points/s, writes their
  concatenation in one request and acks (deletes) what InfluxDB took, taking the next batch under the
  same hold of the spool's lock. Only a batch InfluxDB refuses is
  taken apart point by point, to find the points it refuses. What InfluxDB refuses for good goes to
  the dead-letter file; everything else stays and is retried with backoff (Retry-After honoured).

When the spool itself fails (a full disk, an I/O error) the sink never holds the bus: a failing append is
retried for at most `shed_after` seconds, then its batch is shed and counted by reason, and the sink's bus
subscription sheds after the same bounded wait if the spool stalls (gateway/sink/shedding.py,
gateway/core/bus.py). Stop is honoured throughout: no retry outlives it.

Threads: the intake's appends (SQLite commits) run on a spool thread, so an fsync never blocks the event
loop. The sender is a thread of its own that peeks from the spool, writes over HTTP, acks and peeks again
with no trip through the event loop: a trip between threads costs ~0.3 ms of CPU on the 2-core VM the
benches run on (thread wake-ups), and the old sender made ~1.25 of them a batch. The two threads take turns
on the spool's SQLite connection under one lock (the sender holds it only to peek and ack, never during
HTTP, so a slow InfluxDB never delays the spool commits). The append wakes the sender straight from the
spool thread; the event loop hears from the sender only of storage failures (call_soon_threadsafe), and
reads its counters (SinkStats, written by that thread alone) for the metrics. Stop sets a threading.Event
the sender's waits (backoff, Retry-After, the rate limit, an empty spool) return on at once; a request in
progress ends within the client's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from gateway.core.bus import Subscription
from gateway.core.stats import Histogram
from gateway.core.types import Event, Sample
from gateway.sink.deadletter import DeadLetter, DeadLetters
from gateway.sink.influx import WriteOutcome
from gateway.sink.lineproto import LineEncoder
from gateway.sink.shedding import StorageHealth
from gateway.sink.spool import Buffer, Chunk, Pending
from gateway.sink.storage_errors import SpoolOpenError

log = logging.getLogger("meterwatch.sink")

WRITE_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BACKOFF_START = 1.0
# A down database is probed at least this often, so a backlog starts draining within ~10 s of its return.
BACKOFF_MAX = 10.0
RETRY_AFTER_MAX = 600.0
EXPIRE_EVERY = 10.0
# A failing append is retried this long before its batch is shed; the sink's bus subscription waits as
# long for room before shedding. Short against systemd's watchdog and stop timeouts (30 s in our unit).
SHED_AFTER = 2.0
# The sender's pause after a spool error (a full disk cannot even delete the points InfluxDB took).
STORAGE_RETRY = 5.0
DEAD_LOG_EVERY = 60.0  # seconds between two log lines about dead letters
# What a failing spool raises; anything else is a bug and fails the component loudly.
STORAGE_ERRORS = (sqlite3.Error, OSError, SpoolOpenError)
# With this many batches queued or more, the intake appends whole batches several to a transaction: one trip
# to the spool thread (~0.3 ms of CPU here) and one fsync for all of them. Each stays one chunk, one request.
BACKLOG_BATCHES = 4

T = TypeVar("T")


class Writer(Protocol):
    def write(self, lines: Sequence[str]) -> WriteOutcome: ...
    def write_body(self, body: str | bytes) -> WriteOutcome: ...
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
    spool_errors: int = 0  # failed spool calls (appends, reads, deletes) and dead-letter writes


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
        shed_after: float = SHED_AFTER,
    ) -> None:
        self.sub = sub
        self.sub.shed_after = shed_after  # the sink's queue never holds the sources longer than this
        self.shed_after = shed_after
        self.encoder = encoder
        self.buffer = buffer
        self.writer = writer
        self.dead = dead
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.bucket = TokenBucket(rate=replay_rate, burst=max(float(batch_size), replay_rate))
        self.stats = SinkStats()
        self.storage = StorageHealth(getattr(buffer, "path", None))
        if buffer.unavailable is not None:  # the spool's disk was full at start
            self.storage.failed(buffer.unavailable, "open")
        self._last_dead_log = -1e9
        self._spool_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        # the sender: peeks, writes over HTTP and acks on this one thread (see _send_loop)
        self._send_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-send")
        self._spool_lock = threading.Lock()  # the spool is not thread-safe: its two threads take turns
        self._wake = threading.Event()  # set after each append: the sender has a batch to send
        self._halt = threading.Event()  # set at stop: the sender thread ends, its waits return at once
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backoff = BACKOFF_START

    @property
    def accepting(self) -> bool:
        """The buffer takes new points (no failing episode)."""
        self.storage.settle()
        return not self.storage.failing

    # -- running ------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._halt.clear()
        intake = asyncio.create_task(self._intake(stop), name="sink-intake")
        sender = loop.run_in_executor(self._send_thread, self._send_loop)
        halt = asyncio.create_task(self._halt_on(stop), name="sink-halt")
        try:
            done, _ = await asyncio.wait({intake, sender}, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:  # a bug in either loop fails the component loudly, not at the next stop
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            await intake
            await sender
        finally:
            intake.cancel()
            halt.cancel()
            self._halt.set()
            self._wake.set()
            await asyncio.wait({sender})  # the sender thread uses the spool: it ends before the spool closes
            if not self.buffer.durable:
                await loop.run_in_executor(self._send_thread, self._final_flush)
            if self.storage.failing:
                log.warning(
                    "stopping while the spool cannot store samples",
                    extra={"fields": {"error": self.storage.failing, "shed": dict(self.storage.shed)}},
                )
            await self._on_spool(self.buffer.close)
            await loop.run_in_executor(self._send_thread, self.writer.close)
            self._spool_thread.shutdown(wait=True)
            self._send_thread.shutdown(wait=True)

    async def _halt_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._halt.set()
        self._wake.set()

    async def _on_spool(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._spool_thread, self._locked, fn, *args)

    def _locked(self, fn: Callable[..., T], *args: object) -> T:
        """On the spool thread: the sender thread uses the spool between these calls."""
        with self._spool_lock:
            return fn(*args)

    def _appended(self, store: Callable[..., None], *args: object) -> None:
        """On the spool thread (the loop's, for the memory buffer): append, then wake the sender straight from
        here (no trip via the loop)."""
        with self._spool_lock:
            store(*args)
        self._wake.set()

    # -- intake -------------------------------------------------------------------------------------------
    async def _intake(self, stop: asyncio.Event) -> None:
        while True:
            samples = await self._gather(stop)
            if samples:
                backlog = self.batch_size * (BACKLOG_BATCHES - 1)
                if len(samples) >= self.batch_size and self.sub.queue.qsize() >= backlog:
                    more = [e for e in self.sub.get_many(backlog) if isinstance(e, Sample)]
                    self.stats.samples_in += len(more)
                    samples += more  # whole batches behind the first: appended with it
                await self._store(samples, stop)
            elif stop.is_set() and self.sub.queue.empty():
                return

    async def _store(self, samples: list[Sample], stop: asyncio.Event) -> None:
        """Encode the samples a batch (batch_size) at a time and append the batches in one transaction."""
        step = self.batch_size
        bodies: list[tuple[bytes, int]] = []
        for i in range(0, len(samples), step):
            encoded = self.encoder.encode_body(samples[i : i + step])
            if encoded is None:  # a line holds a newline: the spool stores such lines one by one
                if bodies:
                    await self._append(sum(n for _, n in bodies), stop, self.buffer.append_bodies, bodies)
                    bodies = []
                lines = self.encoder.encode_many(samples[i : i + step])
                await self._append(len(lines), stop, self.buffer.append, lines)
            elif encoded[1]:
                bodies.append(encoded)
        if bodies:
            await self._append(sum(n for _, n in bodies), stop, self.buffer.append_bodies, bodies)

    async def _gather(self, stop: asyncio.Event) -> list[Sample]:
        """Up to batch_size samples: the events queued now, then more until flush_interval has passed. They
        are encoded together (LineEncoder.encode_body: one C call for all their numbers) and taken from the
        queue a batch at a time (Subscription.get_many), not one call per event."""
        samples: list[Sample] = []
        ev = await self._next_event(stop, None)
        if ev is None:
            return samples
        if isinstance(ev, Sample):  # device and source status are not stored as time series
            samples.append(ev)
        deadline = time.monotonic() + self.flush_interval
        take, batch_size = self.sub.get_many, self.batch_size
        try:
            while len(samples) < batch_size:
                events = take(batch_size - len(samples))
                if events:
                    samples.extend([e for e in events if isinstance(e, Sample)])
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or stop.is_set():
                    break
                ev = await self._next_event(stop, left)
                if ev is None:
                    break
                if isinstance(ev, Sample):
                    samples.append(ev)
        finally:
            self.stats.samples_in += len(samples)
        return samples

    async def _next_event(self, stop: asyncio.Event, timeout: float | None) -> Event | None:
        return await self.sub.get_until(stop, timeout)

    async def _append(
        self, points: int, stop: asyncio.Event, store: Callable[..., None], *args: object
    ) -> None:
        """Store the batch of `points` (store(*args) on the spool thread), or shed it. A healthy spool that
        fails is retried for up to `shed_after` seconds (a passing hiccup sheds nothing); during a failing
        episode each batch gets one attempt.
        Neither outlives stop: at stop a failing batch is shed at once, and while storage fails the batches
        still queued at stop are shed without an attempt (a locked file costs seconds per attempt)."""
        if stop.is_set() and self.storage.failing:
            self.storage.shed_samples(points)
            return
        retry_until = None if self.storage.failing else time.monotonic() + self.shed_after
        delay = 0.1
        while True:
            try:
                if self.buffer.durable:
                    await asyncio.get_running_loop().run_in_executor(
                        self._spool_thread, self._appended, store, *args
                    )
                else:  # memory: no I/O to keep off the loop, and a trip to a thread costs more than it
                    self._appended(store, *args)
            except STORAGE_ERRORS as exc:  # a full disk, an I/O error, a file locked meanwhile
                self.stats.spool_errors += 1
                self.storage.failed(exc, "append")
                if retry_until is None or stop.is_set() or time.monotonic() + delay > retry_until:
                    self.storage.shed_samples(points)
                    return
                await _sleep_or_stop(stop, delay)
                delay *= 2
                continue
            self.storage.succeeded()
            self.stats.points_in += points
            return

    # -- sending (on the sender thread) ---------------------------------------------------------------------
    def _send_loop(self) -> None:
        """The sender thread's loop: peek, write, ack and peek again with no trip through the event loop (a
        trip between threads costs ~0.3 ms of CPU here). The spool is shared with the intake's appends under
        _spool_lock; the loop hears of storage failures only, through call_soon_threadsafe."""
        next_expire = 0.0
        peeked: list[Chunk] | None = None  # the next batch, handed out with the last ack
        while not self._halt.is_set():
            if self.storage.failing:  # an episode ends also when no sample comes after the last success
                self._to_loop(self.storage.settle)
            try:
                if time.monotonic() >= next_expire:
                    peeked = None  # expire may drop what a peek handed out: peek again after it
                    with self._spool_lock:
                        self._expire()
                    next_expire = time.monotonic() + EXPIRE_EVERY
                peeked = self._send_step(peeked)
            except STORAGE_ERRORS as exc:  # a full disk cannot even delete what InfluxDB took
                peeked = None
                self._to_loop(self._storage_failed, exc, "send")
                with self._spool_lock:
                    self.buffer.release()
                if self._halt.wait(STORAGE_RETRY):
                    return

    def _to_loop(self, fn: Callable[..., object], *args: object) -> None:
        """Run fn on the event loop (StorageHealth and the spool error count belong to it)."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the daemon is gone
            self._loop.call_soon_threadsafe(fn, *args)

    def _storage_failed(self, exc: BaseException, during: str) -> None:
        self.stats.spool_errors += 1
        self.storage.failed(exc, during)

    def _expire(self) -> int:
        self.buffer.release()
        return self.buffer.expire()

    def _send_step(self, chunks: list[Chunk] | None) -> list[Chunk] | None:
        """Send the oldest batch (`chunks`, when the last ack handed it out) or wait for one; returns the
        next batch when this one's ack handed it out."""
        self._wake.clear()
        if not chunks:  # none handed out with the last ack; an empty answer may predate an append: ask again
            with self._spool_lock:
                chunks = self.buffer.peek_chunks(self.batch_size)
        if not chunks:
            self._wake.wait(EXPIRE_EVERY)
            return None
        points = sum(c.n for c in chunks)
        delay = self.bucket.delay_for(points)
        if delay > 0 and self._halt.wait(delay):
            return None
        first = self._write_chunks(chunks, points)
        if first.kind == "ok":
            with self._spool_lock:
                self.buffer.ack(chunks[-1].last)
                return self.buffer.peek_chunks(self.batch_size)
        pending: list[Pending] = []
        settled = 0
        outcome: WriteOutcome | None = first
        if first.kind in ("too_large", "rejected"):  # point by point from here: which points are refused?
            pending = [p for c in chunks for p in c.pending()]
            settled, outcome = self._deliver(pending, first)
        with self._spool_lock:
            if settled:
                self.buffer.ack(pending[settled - 1].id)
            if outcome is not None:
                self.buffer.release()  # the unsettled rows may be dropped again
        if outcome is not None and outcome.kind != "ok":
            self._halt.wait(self._retry_delay(outcome))
        return None

    def _deliver(
        self, rows: list[Pending], answered: WriteOutcome | None = None
    ) -> tuple[int, WriteOutcome | None]:
        """Write rows (`answered`: the answer to writing them all, when that was just tried); returns how
        many leading rows are settled (written or dead-lettered) and the outcome that stopped the rest
        (None when all settled)."""
        refused: list[tuple[int, WriteOutcome]] = []  # (index in rows, answer): refused for good
        settled, outcome = self._settle(rows, 0, refused, answered)
        if not refused:
            return settled, outcome
        letters = [DeadLetter(rows[i].line, o.status, o.message, o.kind) for i, o in refused]
        try:
            self.dead.add(letters)
        except OSError as exc:  # not in the dead-letter file: these rows stay in the spool
            self._to_loop(self._storage_failed, exc, "dead-letter file")
            return refused[0][0], WriteOutcome("retry", None, None, f"dead-letter file: {exc}")
        self._log_dead(letters)
        return settled, outcome

    def _settle(
        self,
        rows: list[Pending],
        offset: int,
        refused: list[tuple[int, WriteOutcome]],
        answered: WriteOutcome | None = None,
    ) -> tuple[int, WriteOutcome | None]:
        """_deliver's recursion: halves a refused batch until each refused point stands alone and is
        noted in `refused` (settled, once the dead-letter file has it)."""
        outcome = answered if answered is not None else self._write([r.line for r in rows])
        if outcome.kind == "ok":
            return len(rows), None
        if outcome.kind in ("too_large", "rejected"):
            if len(rows) > 1:
                half = len(rows) // 2
                n1, out1 = self._settle(rows[:half], offset, refused)
                if out1 is not None:
                    return n1, out1
                n2, out2 = self._settle(rows[half:], offset + half, refused)
                return half + n2, out2
            refused.append((offset, outcome))
            return 1, None
        return 0, outcome

    def _log_dead(self, letters: list[DeadLetter]) -> None:
        """One line per minute at most: a stream of bad points must not flood the log (the metric counts)."""
        now = time.monotonic()
        if now - self._last_dead_log < DEAD_LOG_EVERY:
            return
        self._last_dead_log = now
        log.warning(
            "InfluxDB refused points for good; moved to the dead-letter file "
            "(meterwatch deadletter replay sends them again once the cause is fixed)",
            extra={
                "fields": {
                    "points": len(letters),
                    "status": letters[0].status,
                    "reason": letters[0].reason,
                    "file": str(self.dead.path),
                    "total": self.dead.counts.total(),
                }
            },
        )

    def _write(self, lines: list[str]) -> WriteOutcome:
        return self._write_body("\n".join(lines), len(lines))

    def _write_chunks(self, chunks: list[Chunk], points: int) -> WriteOutcome:
        body = chunks[0].body if len(chunks) == 1 else b"\n".join(c.body for c in chunks)
        return self._write_body(body, points)

    def _write_body(self, body: str | bytes, points: int) -> WriteOutcome:
        """On the sender thread: one request; the stats it updates are written by this thread only."""
        t0 = time.perf_counter()
        outcome = self.writer.write_body(body)
        self.stats.write_requests += 1
        self.stats.write_latency.observe(time.perf_counter() - t0)
        if outcome.kind == "ok":
            self.stats.points_written += points
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
                    "InfluxDB refuses our writes: fix the influx section (url, token, org or bucket); "
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

    def _final_flush(self) -> None:
        """Best-effort mode only, on the sender thread once its loop ended: one last attempt, then what is
        left is lost (and said so)."""
        pending = self.buffer.peek(self.batch_size)
        while pending:
            settled, outcome = self._deliver(pending)
            if settled:
                self.buffer.ack(pending[settled - 1].id)
            if outcome is not None:
                self.buffer.release()
                break
            pending = self.buffer.peek(self.batch_size)


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> bool:
    """Sleep `delay` seconds; True when stop was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except TimeoutError:
        return False
    return True
