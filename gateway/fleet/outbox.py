"""The fleet outbox: what this gateway owes the company's broker, in the incident store's SQLite file.

Incident transitions are written by the detector's round (gateway/fleet/bridge.py adds a batch writer), so
an event exists exactly when the transition that owes it is committed. Notices sent or failed are found by
the publisher's thread in the respond side's delivery log and written here in transactions of its own;
`fleet_seen` remembers which were taken, so a notice outcome is owed once however often the log is read.

Rows are sent in `seq` order and deleted only when the broker acknowledged them (PUBACK). The table never
holds more than `bound` rows: a write past it drops the oldest and adds them to the `dropped` count kept in
`fleet_meta`. `seq` comes from AUTOINCREMENT, so it never repeats in one store file, and the outbox's
`epoch` (the second it was made, in `fleet_meta`) tells two store files apart: the event id
`<site>/<gateway>/<epoch>-<seq>` is unique and stays the same on every redelivery.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_outbox(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    retain INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_seen(key TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO fleet_meta(key, value) VALUES ('epoch', CAST(strftime('%s', 'now') AS TEXT));
"""

SEEN_KEEP = 7 * 86400.0  # a notice outcome is looked for at most NOTICE_MARGIN back: a week is plenty
NOTICE_MARGIN = 60.0  # the delivery log is read this far behind the last read (a sender's late commit)


@dataclass(frozen=True, slots=True)
class Owed:
    """One message owed: the payload as stored (its id is added when sent, see topics.with_id)."""

    topic: str
    payload: str
    retain: bool


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    topic: str
    payload: str
    retain: bool


def create(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)


def _meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM fleet_meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute(
        "INSERT INTO fleet_meta(key, value) VALUES (?, ?)"
        " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
        (key, value),
    )


def enqueue(db: sqlite3.Connection, owed: Sequence[Owed], now: float, bound: int) -> int:
    """Add `owed` in order, then keep the newest `bound` rows. Returns how many rows were dropped."""
    db.executemany(
        "INSERT INTO fleet_outbox(topic, payload, retain, created_at) VALUES (?, ?, ?, ?)",
        [(o.topic, o.payload, int(o.retain), now) for o in owed],
    )
    return trim(db, bound)


def trim(db: sqlite3.Connection, bound: int) -> int:
    # seqs are unique, so at most `bound` rows have seq > max - bound, whatever was acknowledged between
    cur = db.execute(
        "DELETE FROM fleet_outbox WHERE seq <= (SELECT COALESCE(MAX(seq), 0) FROM fleet_outbox) - ?", (bound,)
    )
    dropped = max(cur.rowcount, 0)
    if dropped:
        _set_meta(db, "dropped", str(int(_meta(db, "dropped") or 0) + dropped))
    return dropped


class FleetOutbox:
    """The publisher's side of the outbox, on a connection of its own (one thread uses it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        create(self._db)
        self._lock = threading.Lock()
        self._indexed = False

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def epoch(self) -> int:
        with self._lock:
            return int(_meta(self._db, "epoch") or 0)

    def dropped(self) -> int:
        with self._lock:
            return int(_meta(self._db, "dropped") or 0)

    def after(self, seq: int, limit: int) -> list[Row]:
        """Rows after `seq`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload, retain FROM fleet_outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        return [Row(int(r[0]), r[1], r[2], bool(r[3])) for r in rows]

    def acked(self, seqs: Iterable[int]) -> None:
        with self._lock, _tx(self._db):  # one transaction (one fsync) for a whole run of PUBACKs
            self._db.executemany("DELETE FROM fleet_outbox WHERE seq = ?", [(s,) for s in seqs])

    def pending(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM fleet_outbox").fetchone()[0])

    def take_notices(self, make: NoticeMaker, now: float, bound: int) -> tuple[int, int]:
        """Notice outcomes the delivery log holds since the last read and not yet owed, owed now. Read
        first, written (one transaction) only when there is something new: an idle gateway's disk is not
        written every few seconds. Returns (owed, dropped)."""
        with self._lock:
            db = self._db
            if not self._deliveries_indexed():
                return 0, 0  # no notice was ever written to this store
            since = float(_meta(db, "notices_read_to") or 0.0)
            rows = db.execute(
                "SELECT o.key, o.incident_id, o.stage, o.channel, o.audience, o.state, o.attempts, MAX(d.at)"
                " FROM deliveries d JOIN outbox o ON o.key = d.notice_key WHERE d.at > ?"
                " GROUP BY o.key ORDER BY MAX(d.at), o.key",
                (since - NOTICE_MARGIN,),
            ).fetchall()
            outcomes: list[tuple[str, Owed]] = []
            for key, incident_id, stage, channel, audience, state, attempts, at in rows:
                outcome = make(str(key), int(incident_id), str(stage), str(channel), str(audience),
                               str(state), int(attempts), float(at))  # fmt: skip
                if outcome is not None:
                    outcomes.append(outcome)
            newest = max((float(r[7]) for r in rows), default=since)
            fresh = [
                o
                for o in outcomes
                if db.execute("SELECT 1 FROM fleet_seen WHERE key = ?", (o[0],)).fetchone() is None
            ]
            if not fresh and newest <= since:
                return 0, 0
            with _tx(db):
                owed: list[Owed] = []
                for seen_key, message in fresh:
                    cur = db.execute(
                        "INSERT OR IGNORE INTO fleet_seen(key, at) VALUES (?, ?)", (seen_key, now)
                    )
                    if cur.rowcount == 1:
                        owed.append(message)
                _set_meta(db, "notices_read_to", repr(max(since, newest)))
                db.execute("DELETE FROM fleet_seen WHERE at < ?", (now - SEEN_KEEP,))
                dropped = enqueue(db, owed, now, bound) if owed else 0
            return len(owed), dropped

    def _deliveries_indexed(self) -> bool:
        """Whether the respond side's delivery log exists, with an index on its time (added here once: the
        log is read by time every few seconds and may hold years of rows)."""
        if self._indexed:
            return True
        if not (_has_table(self._db, "deliveries") and _has_table(self._db, "outbox")):
            return False
        self._db.execute("CREATE INDEX IF NOT EXISTS fleet_deliveries_at ON deliveries(at)")
        self._indexed = True
        return True


class NoticeMaker(Protocol):
    """Turns one notice row's latest attempt into (its seen key, the message owed), or None when there is
    nothing to tell (a notice still pending); gateway/fleet/bridge.py has the one in use."""

    def __call__(
        self,
        key: str,
        incident_id: int,
        stage: str,
        channel: str,
        audience: str,
        state: str,
        attempts: int,
        at: float,
    ) -> tuple[str, Owed] | None: ...


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


class _tx:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error (the connection is in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
