"""The buffer between the bus and InfluxDB: a durable SQLite spool, or an in-memory best-effort buffer.

Durable mode (the default) makes "acknowledged" mean "on disk": the forwarder appends each batch of
encoded points in ONE transaction (group commit) and only then counts the samples as accepted; a separate
sender reads the spool oldest first and deletes what InfluxDB accepted.

Why synchronous=FULL with WAL: with NORMAL, a commit in WAL mode survives a killed process (kill -9) but
not a power cut, because the WAL is fsynced only at checkpoints. This gateway runs in buildings whose power
fails; losing the last seconds before the cut is exactly the data engineers want. FULL fsyncs the WAL on
each commit, and since we commit once per batch (not per point) that is a few fsyncs per second at most.

Cursor: the rows still in the table ARE the cursor. The sender deletes rows up to the last id InfluxDB
accepted, in one transaction, after the write returned. A crash between the write and the delete resends
at most that one batch (InfluxDB overwrites identical points), so a restart neither resends everything nor
loses anything.

Bounds: `max_bytes` bounds the spooled payload (line-protocol bytes plus a fixed per-row overhead, which
approximates the file size; freed pages are reused, so the file stops growing at about that size) and
`max_age` the time a point may wait. Past either bound the OLDEST points are dropped and counted by
reason ("bytes", "age"); they are logged once per episode, never silently.

In flight: the rows the sender peeked and is writing right now are neither dropped by the byte bound nor
counted against it (they are about to go). Otherwise a row could be counted as dropped and still reach
InfluxDB, and the drop counter would say more than was lost. So the spool may exceed `max_bytes` by at
most one batch, until the write ends: `ack` forgets the rows, `release` (the write failed) makes them the
oldest rows again, the first to go at the next append over the bound.

Corruption: a file SQLite says is not a database or malformed, or that fails `quick_check`, is renamed
`<name>.corrupt-<UTC time>` (kept for manual recovery) and a fresh spool is created, instead of refusing to
start. Nothing else is taken for corruption (gateway/sink/storage_errors.py): a file locked by another
process, a read-only or missing directory, an I/O error stop the start with one line (SpoolOpenError), so a
healthy backlog is never moved aside.

A full disk: a spool that cannot be opened because its disk is full starts unavailable (`unavailable` holds
the error) and every call tries to open it again, so the daemon keeps detecting while the forwarder sheds
samples (gateway/sink/shedding.py) until there is room. At start the byte bound is compared with the free
space of the spool's disk and a bound the disk cannot hold is WARNED about (not refused: a gateway that
refuses to start detects nothing), see `check_room`.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gateway.sink.storage_errors import (
    SpoolCorrupt,
    classify,
    describe,
    free_bytes,
    open_error,
)

log = logging.getLogger("meterwatch.spool")

DROP_LOG_EVERY = 60.0  # seconds between two log lines about drops of the same reason
ROW_OVERHEAD = 32  # bytes per row besides the line itself (rowid, enqueue time, length, b-tree cell)

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Pending:
    id: int
    line: str


@dataclass
class BufferStats:
    points: int = 0
    bytes: int = 0
    oldest_enqueued: float | None = None
    appended: int = 0
    acked: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    quarantined: int = 0
    commits: int = 0


class Buffer(Protocol):
    """What the forwarder needs from a spool. Every method is called from one thread at a time."""

    stats: BufferStats
    durable: bool
    max_bytes: int
    unavailable: BaseException | None  # set while the spool cannot be opened (its disk is full)

    def append(self, lines: Sequence[str]) -> None: ...
    def peek(self, limit: int) -> list[Pending]:
        """The oldest rows, now in flight: the byte bound spares them until ack() or release()."""

    def ack(self, last_id: int) -> int:
        """Forget every row up to last_id (written or dead-lettered); nothing is in flight any more."""

    def release(self) -> None:
        """The write of the peeked rows ended without (full) success: they may be dropped again."""

    def expire(self) -> int: ...
    def close(self) -> None: ...


def _nbytes(line: str) -> int:
    return len(line.encode("utf-8")) + ROW_OVERHEAD


class _InFlight:
    """The rows the last peek() handed out (see "In flight" above): the byte bound spares them and does
    not count them until ack() or release()."""

    def __init__(self) -> None:
        self._inflight = 0  # rows with id <= this are being written
        self._inflight_bytes = 0

    def _hand_out(self, rows: list[Pending]) -> list[Pending]:
        self._inflight = rows[-1].id if rows else 0
        self._inflight_bytes = sum(_nbytes(p.line) for p in rows)
        return rows

    def release(self) -> None:
        self._inflight = self._inflight_bytes = 0


class Spool(_InFlight):
    """SQLite spool (see the module docstring). Not thread-safe: the forwarder calls it from one thread."""

    durable = True

    def __init__(self, path: Path, max_bytes: int, max_age: float, clock: Clock = time.time) -> None:
        super().__init__()
        self.path = path
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.clock = clock
        self.stats = BufferStats()
        self.unavailable: BaseException | None = None  # why the file could not be opened (a full disk)
        self._last_drop_log: dict[str, float] = {}
        self._db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise open_error(exc, self.path) from None
        try:
            self._db = self._open()
        except (sqlite3.Error, OSError) as exc:
            self.unavailable = exc  # only a full disk gets here: _open raises the rest as SpoolOpenError
        check_room(self)

    @property
    def db(self) -> sqlite3.Connection:
        """The open database; opened again first when the disk was full (raises while it still is)."""
        if self._db is None:
            try:
                self._db = self._open()
            except (sqlite3.Error, OSError) as exc:
                self.unavailable = exc
                raise
            self.unavailable = None
        return self._db

    # -- opening, corruption -------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        """Open the file; a corrupt one is moved aside first. A full disk raises its own error (the spool
        stays unavailable); anything else raises SpoolOpenError."""
        try:
            return self._connect()
        except (sqlite3.Error, OSError) as exc:
            kind = classify(exc, self.path)
            if kind == "disk_full":
                raise
            if kind != "corrupt":
                raise open_error(exc, self.path) from None
            self._quarantine(describe(exc, self.path))
        try:
            return self._connect()
        except (sqlite3.Error, OSError) as exc:
            if classify(exc, self.path) == "disk_full":
                raise
            raise open_error(exc, self.path) from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            row = db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise SpoolCorrupt(f"quick_check: {row[0] if row else 'no answer'}")
            db.execute(
                "CREATE TABLE IF NOT EXISTS points ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT, enq REAL NOT NULL, nbytes INTEGER NOT NULL,"
                " line TEXT NOT NULL)"
            )
            n, total = db.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM points").fetchone()
            first = db.execute("SELECT enq FROM points ORDER BY id LIMIT 1").fetchone()
        except BaseException:
            db.close()
            raise
        self.stats.points, self.stats.bytes = int(n), int(total)
        self.stats.oldest_enqueued = float(first[0]) if first else None
        self.release()  # ids may start again in a new file
        if n:
            log.info(
                "spool holds points from before the restart; they are sent first",
                extra={"fields": {"path": str(self.path), "points": n, "bytes": total}},
            )
        return db

    def _quarantine(self, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(str(target) + suffix))
        self.stats.quarantined += 1
        log.error(
            "spool file is corrupt: moved aside, starting a new spool",
            extra={"fields": {"path": str(self.path), "moved_to": str(target), "reason": reason}},
        )

    def _recover(self, exc: sqlite3.DatabaseError) -> None:
        """The open file turned out corrupt: move it aside and go on with a new one. Any other error is the
        caller's to handle (re-raised here)."""
        if classify(exc, self.path) != "corrupt":
            raise exc
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        self._quarantine(describe(exc, self.path))
        self.stats.points = self.stats.bytes = 0
        self.stats.oldest_enqueued = None
        self._db = self._connect()

    def disk_free(self) -> int | None:
        """Free bytes on the spool's disk (for the metrics)."""
        return free_bytes(self.path)

    # -- the buffer protocol ---------------------------------------------------------------------------
    def append(self, lines: Sequence[str]) -> None:
        """Store a batch in one transaction; returns only once it is on disk."""
        if not lines:
            return
        now = self.clock()
        rows = [(now, _nbytes(line), line) for line in lines]
        try:
            self._append_rows(rows)
        except sqlite3.DatabaseError as exc:  # corrupt: a new file takes the batch; else the caller's
            self._recover(exc)
            self._append_rows(rows)

    def _append_rows(self, rows: list[tuple[float, int, str]]) -> None:
        with self._transaction() as db:
            db.executemany("INSERT INTO points (enq, nbytes, line) VALUES (?, ?, ?)", rows)
            added = sum(r[1] for r in rows)
            dropped = self._trim_bytes(self.stats.bytes + added)
        self.stats.commits += 1
        self.stats.appended += len(rows)
        self.stats.points += len(rows) - dropped[0]
        self.stats.bytes += added - dropped[1]
        if dropped[0]:
            self._count_drop("bytes", dropped[0])
        if self.stats.oldest_enqueued is None or dropped[0]:
            self._refresh_oldest()

    def _trim_bytes(self, total: int) -> tuple[int, int]:
        """Inside the caller's transaction: drop the oldest rows not in flight until `total` (without the
        rows in flight) fits. Returns (rows, bytes) dropped."""
        excess = total - self._inflight_bytes - self.max_bytes
        if excess <= 0:
            return 0, 0
        freed = rows = 0
        cut = None
        cur = self.db.execute("SELECT id, nbytes FROM points WHERE id > ? ORDER BY id", (self._inflight,))
        while freed < excess:
            chunk = cur.fetchmany(512)
            if not chunk:
                break
            for rid, nbytes in chunk:
                freed += nbytes
                rows += 1
                cut = rid
                if freed >= excess:
                    break
        cur.close()
        if cut is not None:
            self.db.execute("DELETE FROM points WHERE id > ? AND id <= ?", (self._inflight, cut))
        return rows, freed

    def peek(self, limit: int) -> list[Pending]:
        try:
            cur = self.db.execute("SELECT id, line FROM points ORDER BY id LIMIT ?", (limit,))
            rows = [Pending(int(r[0]), str(r[1])) for r in cur]
        except sqlite3.DatabaseError as exc:  # corrupt: a new, empty file; else the caller's
            self._recover(exc)
            return []
        return self._hand_out(rows)

    def ack(self, last_id: int) -> int:
        """InfluxDB accepted (or the dead-letter file took) every point up to `last_id`: forget them."""
        self.release()
        n = self._delete("id <= ?", last_id)
        self.stats.acked += n
        self._refresh_oldest()
        return n

    def expire(self) -> int:
        """Drop points older than max_age (oldest first). Returns how many."""
        cutoff = self.clock() - self.max_age
        if self.stats.oldest_enqueued is None or self.stats.oldest_enqueued >= cutoff:
            return 0
        n = self._delete("enq < ?", cutoff)
        if n:
            self._count_drop("age", n)
        self._refresh_oldest()
        return n

    def close(self) -> None:
        if self._db is None:
            return
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        self._db = None

    # -- helpers ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; ROLLBACK when anything escapes (the commit included) and re-raise.

        The error that escaped is the one re-raised: SQLite rolls a transaction back by itself on some
        errors (SQLITE_FULL, SQLITE_IOERR), and a ROLLBACK then would fail with "no transaction is active"
        and hide the disk-full error that mattered."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def _delete(self, where: str, arg: float) -> int:
        """Delete the rows matching `where` (one ? for `arg`) in one transaction and take them off the
        stats. Returns how many."""
        with self._transaction() as db:
            n, nbytes = db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM points WHERE {where}", (arg,)
            ).fetchone()
            db.execute(f"DELETE FROM points WHERE {where}", (arg,))
        self.stats.points -= int(n)
        self.stats.bytes -= int(nbytes)
        return int(n)

    def _refresh_oldest(self) -> None:
        row = self.db.execute("SELECT enq FROM points ORDER BY id LIMIT 1").fetchone()
        self.stats.oldest_enqueued = float(row[0]) if row else None

    def _count_drop(self, reason: str, n: int) -> None:
        self.stats.dropped[reason] += n
        now = time.monotonic()
        if now - self._last_drop_log.get(reason, -1e9) < DROP_LOG_EVERY:
            return  # counted in the metric; the log says it again at most once a minute
        self._last_drop_log[reason] = now
        log.warning(
            "spool bound reached: dropped the oldest points",
            extra={"fields": {"reason": reason, "points": n, "dropped_total": self.stats.dropped[reason]}},
        )


# Between two checkpoints the WAL grows to about 1000 pages (SQLite's default auto-checkpoint): room the
# disk needs besides the bound itself.
WAL_ALLOWANCE = 1000 * 4096


def spool_files_size(path: Path) -> int:
    """Bytes the spool's files take now (the database, its WAL and WAL index): space it can reuse."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += Path(str(path) + suffix).stat().st_size
    return total


def check_room(spool: Spool) -> None:
    """At start: warn (and go on) when the byte bound is more than the spool's disk can hold. The bound
    drops the OLDEST points to make room; a disk that fills first makes the forwarder shed the NEWEST
    samples instead, and the spool cannot even delete rows until there is room again. Warning, not
    refusing: a gateway that refuses to start detects nothing, and the disk may be freed later."""
    free = free_bytes(spool.path)
    if free is None:
        return
    room = free + spool_files_size(spool.path)
    if spool.max_bytes + WAL_ALLOWANCE <= room:
        return
    fits = max(0, room - WAL_ALLOWANCE) * 8 // 10  # leave a fifth to the logs and the incident store
    log.warning(
        "spool.max_bytes is more than the spool's disk can hold: starting anyway, but when the disk "
        "fills new samples are shed (not stored) instead of the oldest being dropped; lower "
        "spool.max_bytes or free space on that disk",
        extra={
            "fields": {
                "path": str(spool.path),
                "max_bytes": spool.max_bytes,
                "room_bytes": room,
                "suggested_max_bytes": fits,
            }
        },
    )


class MemoryBuffer(_InFlight):
    """Best-effort mode: the same bounds and drop-oldest policy, in memory; lost if the process dies."""

    durable = False
    unavailable: BaseException | None = None

    def __init__(self, max_bytes: int, max_age: float, clock: Clock = time.time) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.clock = clock
        self.stats = BufferStats()
        self._rows: deque[tuple[int, float, int, str]] = deque()
        self._next_id = 1

    def append(self, lines: Sequence[str]) -> None:
        now = self.clock()
        for line in lines:
            n = _nbytes(line)
            self._rows.append((self._next_id, now, n, line))
            self._next_id += 1
            self.stats.bytes += n
        self.stats.points += len(lines)
        self.stats.appended += len(lines)
        dropped = 0
        if self.stats.bytes - self._inflight_bytes > self.max_bytes:
            spared: list[tuple[int, float, int, str]] = []
            while self._rows and self._rows[0][0] <= self._inflight:
                spared.append(self._rows.popleft())  # still counted in stats: they stay
            while self.stats.bytes - self._inflight_bytes > self.max_bytes and self._rows:
                self._pop()
                dropped += 1
            self._rows.extendleft(reversed(spared))
        if dropped:
            self.stats.dropped["bytes"] += dropped
        self._refresh()

    def peek(self, limit: int) -> list[Pending]:
        out: list[Pending] = []
        for rid, _, _, line in self._rows:
            if len(out) >= limit:
                break
            out.append(Pending(rid, line))
        return self._hand_out(out)

    def ack(self, last_id: int) -> int:
        self.release()
        n = self._pop_while(lambda row: row[0] <= last_id)
        self.stats.acked += n
        self._refresh()
        return n

    def expire(self) -> int:
        cutoff = self.clock() - self.max_age
        n = self._pop_while(lambda row: row[1] < cutoff)
        if n:
            self.stats.dropped["age"] += n
        self._refresh()
        return n

    def close(self) -> None:
        if self._rows:
            log.warning(
                "best-effort buffer discarded at shutdown", extra={"fields": {"points": len(self._rows)}}
            )

    def _pop(self) -> None:
        _, _, n, _ = self._rows.popleft()
        self.stats.points -= 1
        self.stats.bytes -= n

    def _pop_while(self, oldest_goes: Callable[[tuple[int, float, int, str]], bool]) -> int:
        """Drop the oldest rows while `oldest_goes` holds for them; returns how many."""
        n = 0
        while self._rows and oldest_goes(self._rows[0]):
            self._pop()
            n += 1
        return n

    def _refresh(self) -> None:
        self.stats.oldest_enqueued = self._rows[0][1] if self._rows else None
