"""The outbox: every notice an incident owes, one row per channel, in the incident store's SQLite file.

Rows are written by `enqueue` inside the transaction of the incident transition that owes them (the store
runs it as one of a batch's writers), under the idempotency key `<owed key>/<channel>`: writing the same
owed notice twice (a retried batch, a transition replayed after a restart) changes nothing. The senders
(gateway/respond/sender.py, one per channel) read due rows and record each target's result; a row whose
every target succeeded is never sent again. The delivery log keeps each target's latest attempt.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from gateway.config.notify import Channel
from gateway.respond.model import Delivery, NoticeState, Owed, Stage
from gateway.respond.outbox_api import OutboxRow

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox(
    key TEXT PRIMARY KEY,
    owed_key TEXT NOT NULL,
    incident_id INTEGER NOT NULL,
    stage TEXT NOT NULL,
    channel TEXT NOT NULL,
    audience TEXT NOT NULL,
    language TEXT NOT NULL,
    context TEXT NOT NULL,
    due_at REAL NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    failed_targets TEXT,
    next_attempt_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(channel, state, next_attempt_at);
CREATE TABLE IF NOT EXISTS deliveries(
    notice_key TEXT NOT NULL,
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    at REAL NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY(notice_key, target)
);
CREATE TABLE IF NOT EXISTS response_state(key TEXT PRIMARY KEY, data TEXT NOT NULL);
"""

OPEN_STATES = (str(NoticeState.PENDING), str(NoticeState.PARTIAL))


def serves(channel: Channel, audience: str) -> bool:
    """Whether a channel carries notices for `audience`: named exactly, or a building's residents on a
    channel for all residents."""
    if audience in channel.audiences:
        return True
    return audience.startswith("residents:") and "residents" in channel.audiences


def create(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)


def enqueue(db: sqlite3.Connection, owed: Iterable[Owed], channels: Iterable[Channel], now: float) -> int:
    """One row per (owed notice, channel serving its audience); rows already there are left as they are.
    A channel for all residents gets one row per owed stage, not one per building. Returns rows added."""
    chans = list(channels)
    added = 0
    for o in owed:
        for ch in chans:
            if not serves(ch, o.audience):
                continue
            key = f"{o.key}/{ch.name}"
            if o.audience.startswith("residents:") and o.audience not in ch.audiences:
                # one message to a channel of all residents, however many buildings the incident touches
                key = f"{_all_residents_key(o)}/{ch.name}"
            cur = db.execute(
                "INSERT OR IGNORE INTO outbox(key, owed_key, incident_id, stage, channel, audience, language,"
                " context, due_at, created_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    o.key,
                    o.incident_id,
                    str(o.stage),
                    ch.name,
                    o.audience,
                    ch.language,
                    json.dumps(o.context, ensure_ascii=False),
                    o.due_at,
                    now,
                    str(NoticeState.PENDING),
                ),
            )
            added += cur.rowcount
    return added


def _all_residents_key(o: Owed) -> str:
    parts = o.key.split("/")
    return "/".join("residents" if p == o.audience else p for p in parts)


def cancel(db: sqlite3.Connection, owed_keys: Iterable[str]) -> None:
    """Drop owed notices not yet sent (an incident absorbed into another before its residents heard)."""
    db.executemany(
        "UPDATE outbox SET state = ? WHERE owed_key = ? AND state = ? AND attempts = 0",
        [(str(NoticeState.FAILED), k, str(NoticeState.PENDING)) for k in owed_keys],
    )


def save_state(db: sqlite3.Connection, key: str, data: dict[str, object]) -> None:
    db.execute(
        "INSERT INTO response_state(key, data) VALUES (?, ?)"
        " ON CONFLICT(key) DO UPDATE SET data=excluded.data",
        (key, json.dumps(data, sort_keys=True)),
    )


def load_state(db: sqlite3.Connection, key: str) -> dict[str, object] | None:
    row = db.execute("SELECT data FROM response_state WHERE key = ?", (key,)).fetchone()
    return None if row is None else dict(json.loads(row[0]))


class SqliteOutbox:
    """The senders' view of the outbox (gateway/respond/outbox_api.py), on a connection of its own: the
    senders' threads never share the store's connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        create(self._db)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def due(self, channel: str, now: float, limit: int) -> list[OutboxRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, incident_id, stage, channel, audience, language, context, due_at, attempts,"
                " failed_targets, next_attempt_at FROM outbox WHERE channel = ? AND state IN (?, ?)"
                " AND due_at <= ? AND COALESCE(next_attempt_at, 0) <= ? ORDER BY due_at, key LIMIT ?",
                (channel, *OPEN_STATES, now, now, limit),
            ).fetchall()
        return [
            OutboxRow(
                key=r[0],
                incident_id=int(r[1]),
                stage=Stage(r[2]),
                channel=r[3],
                audience=r[4],
                language=r[5],
                context=json.loads(r[6]),
                due_at=float(r[7]),
                attempts=int(r[8]),
                failed_targets=None if r[9] is None else list(json.loads(r[9])),
                next_attempt_at=r[10],
            )
            for r in rows
        ]

    def record(
        self,
        row_key: str,
        deliveries: list[Delivery],
        state: NoticeState,
        failed_targets: list[str],
        next_attempt_at: float | None,
    ) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE outbox SET state = ?, attempts = attempts + 1, failed_targets = ?,"
                    " next_attempt_at = ? WHERE key = ?",
                    (
                        str(state),
                        json.dumps(failed_targets) if failed_targets else None,
                        next_attempt_at,
                        row_key,
                    ),
                )
                self._db.executemany(
                    "INSERT INTO deliveries(notice_key, channel, target, status, attempts, at, detail)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(notice_key, target) DO UPDATE SET"
                    " status=excluded.status, attempts=excluded.attempts, at=excluded.at,"
                    " detail=excluded.detail",
                    [
                        (d.notice_key, d.channel, d.target, str(d.status), d.attempts, d.at, d.detail)
                        for d in deliveries
                    ],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def depth(self) -> tuple[int, float | None]:
        """Notices not yet delivered, and the creation time of the oldest (for the metrics)."""
        with self._lock:
            n, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE state IN (?, ?)", OPEN_STATES
            ).fetchone()
        return int(n), oldest

    def deliveries(self, incident_id: int) -> list[Delivery]:
        """The delivery log of one incident's notices, oldest first."""
        from gateway.respond.model import DeliveryStatus

        with self._lock:
            rows = self._db.execute(
                "SELECT d.notice_key, d.channel, d.target, d.status, d.attempts, d.at, d.detail"
                " FROM deliveries d JOIN outbox o ON o.key = d.notice_key WHERE o.incident_id = ?"
                " ORDER BY d.at",
                (incident_id,),
            ).fetchall()
        return [Delivery(r[0], r[1], r[2], DeliveryStatus(r[3]), int(r[4]), float(r[5]), r[6]) for r in rows]
