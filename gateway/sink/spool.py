"""The buffer between the bus and InfluxDB: a durable SQLite spool, or an in-memory best-effort buffer.

Durable mode (the default) makes "acknowledged" mean "on disk": the forwarder appends each batch of
encoded points in ONE transaction (group commit) and only then counts the samples as accepted; a separate
sender reads the spool oldest first and deletes what InfluxDB accepted.

Why synchronous=FULL with WAL: with NORMAL, a commit in WAL mode survives a killed process (kill -9) but
not a power cut, because the WAL is fsynced only at checkpoints. This gateway runs in buildings whose power
fails; losing the last seconds before the cut is exactly the data engineers want. FULL fsyncs the WAL on
each commit, and since we commit once per batch (not per point) that is a few fsyncs per second at most.

Rows are chunks: each append stores its batch as ONE row holding the batch's lines, UTF-8, joined by "\n"
(exactly the body of a write request), and the number of points in it. So a commit writes one row per
batch, and forwarding reads whole chunks and concatenates them, with no per-point Python object or SQL
row on the way (see `peek_chunks`). Every point still has its own id: a chunk's key `first` is the id of its
first line, the next lines follow (first + 1, ...), and ids are never reused (the next one is kept in
`meta`). Everything below that speaks of points (the bounds, in flight, ack up to an id, peek of N points)
holds per point, as with one row per point: where a bound, an ack or a peek ends inside a chunk, that chunk
is split in two rows first (`_split`), which only these rarer paths pay for. A line holding a newline (it
could not be sent in one body anyway) is stored as a chunk of its own.

A spool file from before chunks (table `points`, one row per point) is converted at open, in one
transaction: each old row becomes a chunk of one point with its id, so it is sent first and nothing of it
is lost or sent twice.

Cursor: the rows still in the table ARE the cursor, less those acknowledged since the last commit. An ack
that ends where a chunk ends (the sender's, after a whole batch was written) is recorded in memory
(`_acked`: every id up to it is forgotten at once: stats, peeks, bounds) and its rows are deleted by the
next transaction, the next append's first of all: one commit (one fsync) per batch instead of two. With no
append to carry it, the delete gets its own commit once it has waited ACK_DEFER seconds (and at close and
at each expire round). So a crash resends at most the batches acknowledged in the last ACK_DEFER seconds
and the one being written (InfluxDB overwrites identical points): a restart neither resends everything nor
loses anything, and nothing is deleted before InfluxDB took it.

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
PAGE_SIZE = 16384  # of a new spool file
# Between two checkpoints the WAL grows to about this many bytes (SQLite's default: 1000 pages of 4 KiB;
# wal_autocheckpoint is set to keep it whatever the file's page size): room the disk needs besides the bound.
WAL_ALLOWANCE = 1000 * 4096
ACK_DEFER = 1.0  # seconds an acknowledged batch may wait for the next commit to delete it

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Pending:
    id: int
    line: str


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive points (ids first .. first + n - 1) as one request body: lines joined by newlines."""

    first: int
    n: int
    nbytes: int  # what the points count against the byte bound
    body: bytes

    @property
    def last(self) -> int:
        return self.first + self.n - 1

    def pending(self) -> list[Pending]:
        """The points one by one (for splitting a refused batch)."""
        text = self.body.decode("utf-8")
        lines = [text] if self.n == 1 else text.split("\n")
        return [Pending(self.first + i, line) for i, line in enumerate(lines)]


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
    def append_body(self, body: bytes, n: int) -> None:
        """Like append, for n lines already joined by "\\n" (UTF-8, no line holding a newline)."""

    def append_bodies(self, bodies: Sequence[tuple[bytes, int]]) -> None:
        """append_body for several batches, in one transaction (each stays a chunk of its own)."""

    def peek(self, limit: int) -> list[Pending]:
        """The oldest `limit` points, now in flight: the byte bound spares them until ack() or release()."""

    def peek_chunks(self, limit: int) -> list[Chunk]:
        """Like peek, as whole chunks of at most `limit` points in all (at least one chunk, split when it
        alone holds more): the sender's path, with no per-point objects."""

    def ack(self, last_id: int) -> int:
        """Forget every row up to last_id (written or dead-lettered); nothing is in flight any more."""

    def release(self) -> None:
        """The write of the peeked rows ended without (full) success: they may be dropped again."""

    def expire(self) -> int: ...
    def close(self) -> None: ...


def _nbytes(line: str) -> int:
    return len(line.encode("utf-8")) + ROW_OVERHEAD


def _chunk_nbytes(body: bytes, n: int) -> int:
    """The byte-bound size of n points joined in `body`: the sum of _nbytes over its lines."""
    return len(body) - (n - 1) + ROW_OVERHEAD * n


def _join(lines: Sequence[bytes]) -> bytes:
    return b"\n".join(lines)


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

    def _hand_out_chunks(self, chunks: list[Chunk]) -> list[Chunk]:
        self._inflight = chunks[-1].last if chunks else 0
        self._inflight_bytes = sum(c.nbytes for c in chunks)
        return chunks

    def release(self) -> None:
        self._inflight = self._inflight_bytes = 0


class Spool(_InFlight):
    """SQLite spool (see the module docstring). Not thread-safe: the forwarder calls it from one thread at a
    time (the appends from its spool thread, peeks and acks from its sender thread, under one lock)."""

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
        self._next = 1  # the id of the next point appended (from the file at open)
        self._acked = 0  # every id up to this is acknowledged (forgotten), deleted by the next transaction
        self._purged = 0  # ... and every id up to this one is deleted in the file already
        self._purge_by: float | None = None  # monotonic time by which deferred deletes get their own commit
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
            # A new file only (SQLite keeps an existing file's page size): a batch's body takes a quarter as
            # many pages and WAL frames as at the default 4 KiB (-0.1 us a point of the spool's CPU).
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            page = int(db.execute("PRAGMA page_size").fetchone()[0])
            db.execute(
                f"PRAGMA wal_autocheckpoint={max(1, WAL_ALLOWANCE // page)}"
            )  # the WAL's bytes, any page
            # Debian's SQLite zeroes every deleted page (built with SECURE_DELETE): each ack would write its
            # batch's size again in zeros, to the WAL and then to the file (half the spool's I/O and a
            # third of its CPU). The points deleted were sent already: there is nothing to hide.
            db.execute("PRAGMA secure_delete=OFF")
            row = db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise SpoolCorrupt(f"quick_check: {row[0] if row else 'no answer'}")
            db.execute(
                "CREATE TABLE IF NOT EXISTS chunks ("
                " first INTEGER PRIMARY KEY, n INTEGER NOT NULL, enq REAL NOT NULL, nbytes INTEGER NOT NULL,"
                " body BLOB NOT NULL)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self._migrate(db)
            n, total, end = db.execute(
                "SELECT COALESCE(SUM(n), 0), COALESCE(SUM(nbytes), 0), COALESCE(MAX(first + n), 1)"
                " FROM chunks"
            ).fetchone()
            kept = db.execute("SELECT value FROM meta WHERE key = 'next'").fetchone()
            first = db.execute("SELECT enq FROM chunks ORDER BY first LIMIT 1").fetchone()
        except BaseException:
            db.close()
            raise
        self._next = max(int(end), int(kept[0]) if kept else 1)
        self._acked = self._purged = 0  # this file's rows are all unacknowledged
        self._purge_by = None
        self.stats.points, self.stats.bytes = int(n), int(total)
        self.stats.oldest_enqueued = float(first[0]) if first else None
        self.release()  # ids may start again in a new file
        if n:
            log.info(
                "spool holds points from before the restart; they are sent first",
                extra={"fields": {"path": str(self.path), "points": n, "bytes": total}},
            )
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        """A spool from before chunks (table `points`, a row per point): each row becomes a chunk of one
        point with the same id, in one transaction (a crash meanwhile leaves the old table whole)."""
        if (
            db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'points'").fetchone()
            is None
        ):
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            moved = db.execute(
                "INSERT INTO chunks (first, n, enq, nbytes, body)"
                " SELECT id, 1, enq, nbytes, CAST(line AS BLOB) FROM points ORDER BY id"
            ).rowcount
            seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'points'").fetchone()
            if seq is not None:  # ids handed out before stay used, even those already deleted
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('next', ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
                    (int(seq[0]) + 1,),
                )
            db.execute("DROP TABLE points")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise
        log.info(
            "spool converted from one row per point to chunks",
            extra={"fields": {"path": str(self.path), "points": moved}},
        )

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
        rows = self._chunk_rows(lines, self.clock())
        try:
            self._append_rows(rows)
        except sqlite3.DatabaseError as exc:  # corrupt: a new file takes the batch; else the caller's
            self._recover(exc)
            rows = self._chunk_rows(lines, rows[0][2])
            self._append_rows(rows)

    def append_body(self, body: bytes, n: int) -> None:
        """append() for n lines already joined: stored as they are, one chunk (the encoder's output)."""
        self.append_bodies([(body, n)])

    def append_bodies(self, bodies: Sequence[tuple[bytes, int]]) -> None:
        """append_body for several batches in one transaction: a chunk each."""
        bodies = [(body, n) for body, n in bodies if n > 0]
        if not bodies:
            return
        for body, n in bodies:
            held = body.count(b"\n") + 1
            if held != n:  # the chunk's ids are first .. first + n - 1: its lines must be exactly n
                raise ValueError(f"append_body: told {n} lines, the body holds {held}")
        now = self.clock()
        try:
            self._append_rows(self._body_rows(bodies, now))
        except sqlite3.DatabaseError as exc:  # corrupt: a new file takes the batches; else the caller's
            self._recover(exc)
            self._append_rows(self._body_rows(bodies, now))

    def _body_rows(
        self, bodies: Sequence[tuple[bytes, int]], now: float
    ) -> list[tuple[int, int, float, int, bytes]]:
        rows, first = [], self._next
        for body, n in bodies:
            rows.append((first, n, now, _chunk_nbytes(body, n), body))
            first += n
        return rows

    def _chunk_rows(self, lines: Sequence[str], now: float) -> list[tuple[int, int, float, int, bytes]]:
        """(first, n, enq, nbytes, body) rows for `lines`: one chunk, or a chunk per line when a line holds
        a newline (a body split at newlines must give the lines back)."""
        n = len(lines)
        body = "\n".join(lines).encode("utf-8")
        if body.count(b"\n") == n - 1:
            return [(self._next, n, now, _chunk_nbytes(body, n), body)]
        rows = []
        for i, line in enumerate(lines):
            raw = line.encode("utf-8")
            rows.append((self._next + i, 1, now, len(raw) + ROW_OVERHEAD, raw))
        return rows

    def _append_rows(self, rows: list[tuple[int, int, float, int, bytes]]) -> None:
        points = sum(r[1] for r in rows)
        added = sum(r[3] for r in rows)
        with self._transaction() as db:
            db.executemany("INSERT INTO chunks (first, n, enq, nbytes, body) VALUES (?, ?, ?, ?, ?)", rows)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('next', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (self._next + points,),
            )
            dropped = self._trim_bytes(db, self.stats.bytes + added)
        self._next += points
        self.stats.commits += 1
        self.stats.appended += points
        self.stats.points += points - dropped[0]
        self.stats.bytes += added - dropped[1]
        if dropped[0]:
            self._count_drop("bytes", dropped[0])
        if self.stats.oldest_enqueued is None or dropped[0]:
            self._refresh_oldest()

    def _trim_bytes(self, db: sqlite3.Connection, total: int) -> tuple[int, int]:
        """Inside the caller's transaction: drop the oldest points not in flight until `total` (without the
        points in flight) fits. Returns (points, bytes) dropped."""
        excess = total - self._inflight_bytes - self.max_bytes
        if excess <= 0:
            return 0, 0
        freed = points = 0
        cut = None  # the last whole chunk to go
        partial: tuple[int, int] | None = None  # (chunk, its points to go) when the bound ends inside it
        cur = db.execute(
            "SELECT first, n, nbytes FROM chunks WHERE first > ? ORDER BY first", (self._inflight,)
        )
        for first, n, nbytes in cur:
            if freed + nbytes <= excess:
                freed += nbytes
                points += n
                cut = first
                if freed == excess:
                    break
                continue
            partial = (first, n)
            break
        cur.close()
        if partial is not None:
            first, n = partial
            lines = self._lines(db, first)
            k = 0
            while freed < excess:
                freed += len(lines[k]) + ROW_OVERHEAD
                k += 1
            points += k
            if k < n:
                self._split(db, first, k)  # the first k points are a chunk of their own now
            cut = first
        if cut is not None:
            db.execute("DELETE FROM chunks WHERE first > ? AND first <= ?", (self._inflight, cut))
        return points, freed

    @staticmethod
    def _lines(db: sqlite3.Connection, first: int) -> list[bytes]:
        body = db.execute("SELECT body FROM chunks WHERE first = ?", (first,)).fetchone()[0]
        return bytes(body).split(b"\n")

    def _split(self, db: sqlite3.Connection, first: int, k: int) -> None:
        """Inside the caller's transaction: chunk `first` becomes two, its first k points and the rest (the
        rest keeps its ids: its key is first + k)."""
        enq = db.execute("SELECT enq FROM chunks WHERE first = ?", (first,)).fetchone()[0]
        lines = self._lines(db, first)
        head, tail = _join(lines[:k]), _join(lines[k:])
        db.execute(
            "UPDATE chunks SET n = ?, nbytes = ?, body = ? WHERE first = ?",
            (k, _chunk_nbytes(head, k), head, first),
        )
        rest = len(lines) - k
        db.execute(
            "INSERT INTO chunks (first, n, enq, nbytes, body) VALUES (?, ?, ?, ?, ?)",
            (first + k, rest, enq, _chunk_nbytes(tail, rest), tail),
        )

    def peek(self, limit: int) -> list[Pending]:
        chunks = self._peek(limit, exact=True)
        return self._hand_out([p for c in chunks for p in c.pending()])

    def peek_chunks(self, limit: int) -> list[Chunk]:
        return self._hand_out_chunks(self._peek(limit, exact=False))

    def _peek(self, limit: int, exact: bool) -> list[Chunk]:
        """The oldest chunks holding at most `limit` points. Exact: `limit` points when there are as many
        (the chunk the limit falls in is split); else whole chunks only, and the first is split only when
        it alone holds more than `limit`."""
        try:
            return self._read_chunks(limit, exact)
        except sqlite3.DatabaseError as exc:  # corrupt: a new, empty file; else the caller's
            self._recover(exc)
            return []

    def _read_chunks(self, limit: int, exact: bool) -> list[Chunk]:
        if limit <= 0:
            return []
        db = self.db
        out: list[Chunk] = []
        total = 0
        cur = db.execute(
            "SELECT first, n, nbytes, body FROM chunks WHERE first > ? ORDER BY first", (self._acked,)
        )
        straddles: tuple[int, int] | None = None
        for first, n, nbytes, body in cur:
            if total + n <= limit:
                out.append(Chunk(first, n, nbytes, bytes(body)))
                total += n
                if total == limit:
                    break
                continue
            if exact or not out:
                straddles = (first, limit - total)
            break
        cur.close()
        if straddles is not None:
            first, k = straddles
            with self._transaction() as tx:
                self._split(tx, first, k)
            row = db.execute("SELECT n, nbytes, body FROM chunks WHERE first = ?", (first,)).fetchone()
            out.append(Chunk(first, int(row[0]), int(row[1]), bytes(row[2])))
        return out

    def ack(self, last_id: int) -> int:
        """InfluxDB accepted (or the dead-letter file took) every point up to `last_id`: forget them. Where
        the ack ends with a chunk, its rows are deleted by the next transaction (see "Cursor" above)."""
        self.release()
        if last_id <= self._acked:
            return 0
        db = self.db
        row = db.execute(
            "SELECT first, n FROM chunks WHERE first <= ? AND first > ? ORDER BY first DESC LIMIT 1",
            (last_id, self._acked),
        ).fetchone()
        if row is None or row[0] + row[1] - 1 <= last_id:  # ends with a chunk: deferred
            n, nbytes = db.execute(
                "SELECT COALESCE(SUM(n), 0), COALESCE(SUM(nbytes), 0) FROM chunks"
                " WHERE first > ? AND first <= ?",
                (self._acked, last_id),
            ).fetchone()
            self._acked = last_id
            now = time.monotonic()
            if self._purge_by is None:
                self._purge_by = now + ACK_DEFER
            elif now >= self._purge_by:
                self._purge()
            forgotten = self._forget((int(n), int(nbytes)))
            self.stats.acked += forgotten
            self._refresh_oldest()
            return forgotten
        with self._transaction() as db:
            row = db.execute(
                "SELECT first, n FROM chunks WHERE first <= ? ORDER BY first DESC LIMIT 1", (last_id,)
            ).fetchone()
            if row is not None and row[0] + row[1] - 1 > last_id:  # the ack ends inside this chunk
                self._split(db, row[0], last_id - row[0] + 1)
            deleted = self._delete_in(db, "first <= ?", last_id)
        n = self._forget(deleted)
        self.stats.acked += n
        self._refresh_oldest()
        return n

    def expire(self) -> int:
        """Drop points older than max_age (oldest first). Returns how many."""
        cutoff = self.clock() - self.max_age
        if self.stats.oldest_enqueued is None or self.stats.oldest_enqueued >= cutoff:
            if self._acked > self._purged:  # no append came to carry the deletes: they get their own commit
                self._purge()
            return 0
        with self._transaction() as db:
            deleted = self._delete_in(db, "enq < ?", cutoff)
        n = self._forget(deleted)
        if n:
            self._count_drop("age", n)
        self._refresh_oldest()
        return n

    def close(self) -> None:
        if self._db is None:
            return
        with contextlib.suppress(sqlite3.Error):
            if self._acked > self._purged:
                self._purge()
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
        purge = self._acked if self._acked > self._purged else 0
        try:
            if purge:  # the deferred deletes of acknowledged rows (see "Cursor" above) go first
                db.execute("DELETE FROM chunks WHERE first <= ?", (purge,))
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise
        if purge:
            self._purged = purge
            self._purge_by = None

    def _purge(self) -> None:
        """A transaction of its own for the deferred deletes (_transaction makes them)."""
        with self._transaction():
            pass

    @staticmethod
    def _delete_in(db: sqlite3.Connection, where: str, arg: float) -> tuple[int, int]:
        """Inside the caller's transaction: delete the chunks matching `where` (one ? for `arg`). Returns
        (points, bytes) deleted, for the caller to take off the stats once committed."""
        n, nbytes = db.execute(
            f"SELECT COALESCE(SUM(n), 0), COALESCE(SUM(nbytes), 0) FROM chunks WHERE {where}", (arg,)
        ).fetchone()
        db.execute(f"DELETE FROM chunks WHERE {where}", (arg,))
        return int(n), int(nbytes)

    def _forget(self, deleted: tuple[int, int]) -> int:
        self.stats.points -= deleted[0]
        self.stats.bytes -= deleted[1]
        return deleted[0]

    def _refresh_oldest(self) -> None:
        row = self.db.execute(
            "SELECT enq FROM chunks WHERE first > ? ORDER BY first LIMIT 1", (self._acked,)
        ).fetchone()
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

    def append_body(self, body: bytes, n: int) -> None:
        if n > 0:
            self.append(body.decode("utf-8").split("\n"))

    def append_bodies(self, bodies: Sequence[tuple[bytes, int]]) -> None:
        for body, n in bodies:
            self.append_body(body, n)

    def peek(self, limit: int) -> list[Pending]:
        out: list[Pending] = []
        for rid, _, _, line in self._rows:
            if len(out) >= limit:
                break
            out.append(Pending(rid, line))
        return self._hand_out(out)

    def peek_chunks(self, limit: int) -> list[Chunk]:
        """The oldest points as chunks of consecutive ids (a drop of the byte bound may leave a gap)."""
        chunks: list[Chunk] = []
        run: list[tuple[int, float, int, str]] = []
        for taken, row in enumerate(self._rows):
            if taken >= limit:
                break
            # a line holding a newline is a chunk of its own (a chunk's body splits at newlines)
            if run and (row[0] != run[-1][0] + 1 or "\n" in row[3] or "\n" in run[-1][3]):
                chunks.append(_memory_chunk(run))
                run = []
            run.append(row)
        if run:
            chunks.append(_memory_chunk(run))
        return self._hand_out_chunks(chunks)

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


def _memory_chunk(rows: list[tuple[int, float, int, str]]) -> Chunk:
    return Chunk(
        rows[0][0], len(rows), sum(r[2] for r in rows), "\n".join(r[3] for r in rows).encode("utf-8")
    )
