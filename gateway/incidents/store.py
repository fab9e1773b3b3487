"""The incident store: SQLite (WAL, synchronous=FULL) with what the engine needs to continue after a restart.

Tables: `incidents` (one row per incident, its engine state as JSON), `alerts` (alert instances that are not
inactive), `kinds_state` (state some rule kinds carry, e.g. night-flow streaks), an append-only `timeline`
per incident (triggers refuse UPDATE and DELETE), an append-only `alert_log`, `downtime` (gaps between the
last heartbeat and a start) and `meta` (heartbeat, clean stop, schema version).

Every time is an absolute UTC epoch second, so a restored timer means the same instant it meant before.
A `Batch` holds whole engine steps and is written in ONE transaction: a step's transitions are never half
stored. The writer is single (the detector); readers (HTTP handlers, the CLI) open their own connections,
which WAL lets read while the writer writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rules.model import (
    OPEN_STATES,
    Alert,
    AlertChange,
    AlertKey,
    AlertState,
    Incident,
    IncidentChange,
    IncidentEvent,
    IncidentState,
)

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incidents(
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    opened_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_state ON incidents(state);
CREATE TABLE IF NOT EXISTS alerts(key TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kinds_state(rule TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS timeline(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id INTEGER NOT NULL,
    ts REAL NOT NULL,
    event TEXT NOT NULL,
    notify INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS timeline_incident ON timeline(incident_id, seq);
CREATE TRIGGER IF NOT EXISTS timeline_no_update BEFORE UPDATE ON timeline
    BEGIN SELECT RAISE(ABORT, 'the timeline is append-only'); END;
CREATE TRIGGER IF NOT EXISTS timeline_no_delete BEFORE DELETE ON timeline
    BEGIN SELECT RAISE(ABORT, 'the timeline is append-only'); END;
CREATE TABLE IF NOT EXISTS alert_log(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    key TEXT NOT NULL,
    rule TEXT NOT NULL,
    device TEXT NOT NULL,
    old TEXT NOT NULL,
    new TEXT NOT NULL,
    value REAL,
    note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS downtime(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    down_from REAL NOT NULL,
    down_to REAL NOT NULL,
    clean_stop INTEGER NOT NULL
);
"""

GATEWAY_DOWN = IncidentEvent.GATEWAY_DOWN


class StoreError(Exception):
    """The incident store cannot be opened or is not one (names the file and what is wrong)."""


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    seq: int
    incident: int
    ts: float
    event: str
    notify: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Downtime:
    down_from: float
    down_to: float
    clean_stop: bool

    @property
    def seconds(self) -> float:
        return self.down_to - self.down_from


@dataclass(slots=True)
class Loaded:
    """What a start finds in the store."""

    alerts: list[Alert]
    incidents: list[Incident]
    kinds_state: dict[str, dict[str, object]]
    max_incident_id: int
    last_heartbeat: float | None
    clean_stop: bool


@dataclass(slots=True)
class Batch:
    """Whole engine steps' worth of changes, written in one transaction."""

    incidents: dict[int, Incident] = field(default_factory=dict)
    alerts_upsert: dict[AlertKey, Alert] = field(default_factory=dict)
    alerts_delete: set[AlertKey] = field(default_factory=set)
    timeline: list[IncidentChange] = field(default_factory=list)
    alert_log: list[AlertChange] = field(default_factory=list)
    kinds_state: dict[str, dict[str, object]] | None = None
    heartbeat: float | None = None
    # writes of other parts that belong to the same transaction (the notices a transition owes)
    writers: list[Callable[[sqlite3.Connection], None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.writers
            or self.incidents
            or self.alerts_upsert
            or self.alerts_delete
            or self.timeline
            or self.alert_log
            or self.kinds_state is not None
            or self.heartbeat is not None
        )


def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class IncidentStore:
    """The single writer of the incident database; reads go through short-lived connections."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # one writer at a time even if called from a worker thread
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _connect(path)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed transition survives power loss, not only a process crash
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"{path}: cannot open the incident store: {exc}") from exc
        version = self._meta("schema_version")
        if version is None:
            self._set_meta_now("schema_version", SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            raise StoreError(
                f"{path}: incident store schema {version}, this version expects {SCHEMA_VERSION}"
            )

    # ---- startup -------------------------------------------------------------------------------------
    def load(self) -> Loaded:
        alerts = [Alert.from_dict(json.loads(d)) for (d,) in self._db.execute("SELECT data FROM alerts")]
        incidents = [
            Incident.from_dict(json.loads(d))
            for (d,) in self._db.execute("SELECT data FROM incidents ORDER BY id")
        ]
        kinds = {r: json.loads(d) for r, d in self._db.execute("SELECT rule, data FROM kinds_state")}
        max_id = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM incidents").fetchone()[0]
        hb = self._meta("heartbeat")
        return Loaded(
            alerts=alerts,
            incidents=incidents,
            kinds_state=kinds,
            max_incident_id=int(max_id),
            last_heartbeat=float(hb) if hb is not None else None,
            clean_stop=self._meta("clean_stop") == "1",
        )

    def start(self, now: float, open_incidents: Iterable[int], detail: str) -> Downtime | None:
        """Record this start: the downtime since the last heartbeat (on every open incident's timeline)
        and a fresh heartbeat, in one transaction. Returns the downtime, None on the very first start."""
        loaded_hb = self._meta("heartbeat")
        clean = self._meta("clean_stop") == "1"
        down: Downtime | None = None
        with self._lock, self._tx() as db:
            if loaded_hb is not None:
                down = Downtime(float(loaded_hb), max(now, float(loaded_hb)), clean)
                db.execute(
                    "INSERT INTO downtime(down_from, down_to, clean_stop) VALUES (?, ?, ?)",
                    (down.down_from, down.down_to, int(clean)),
                )
                for inc_id in open_incidents:
                    db.execute(
                        "INSERT INTO timeline(incident_id, ts, event, notify, detail) VALUES (?, ?, ?, 0, ?)",
                        (inc_id, now, str(GATEWAY_DOWN), detail),
                    )
            self._put_meta(db, "heartbeat", repr(now))
            self._put_meta(db, "clean_stop", "0")
        return down

    def stop(self, now: float) -> None:
        """A clean stop: the last heartbeat is now and the next start knows nothing was cut short."""
        with self._lock, self._tx() as db:
            self._put_meta(db, "heartbeat", repr(now))
            self._put_meta(db, "clean_stop", "1")

    def close(self) -> None:
        self._db.close()

    # ---- the writer ----------------------------------------------------------------------------------
    def write(self, batch: Batch) -> None:
        if not batch:
            return
        with self._lock, self._tx() as db:
            for inc in batch.incidents.values():
                db.execute(
                    "INSERT INTO incidents(id, key, state, opened_at, updated_at, data)"
                    " VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(id) DO UPDATE SET key=excluded.key, state=excluded.state,"
                    " opened_at=excluded.opened_at, updated_at=excluded.updated_at, data=excluded.data",
                    (
                        inc.id,
                        inc.key,
                        str(inc.state),
                        inc.opened_at,
                        inc.updated_at,
                        json.dumps(inc.to_dict()),
                    ),
                )
            for key in batch.alerts_delete:
                db.execute("DELETE FROM alerts WHERE key = ?", (str(key),))
            db.executemany(
                "INSERT INTO alerts(key, data) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET data=excluded.data",
                [(str(a.key), json.dumps(a.to_dict())) for a in batch.alerts_upsert.values()],
            )
            db.executemany(
                "INSERT INTO timeline(incident_id, ts, event, notify, detail) VALUES (?, ?, ?, ?, ?)",
                [(c.incident, c.ts, str(c.event), int(c.notify), c.detail) for c in batch.timeline],
            )
            db.executemany(
                "INSERT INTO alert_log(ts, key, rule, device, old, new, value, note)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (c.ts, str(c.key), c.rule, c.device, str(c.old), str(c.new), c.value, c.note)
                    for c in batch.alert_log
                ],
            )
            if batch.kinds_state is not None:
                db.execute("DELETE FROM kinds_state")
                db.executemany(
                    "INSERT INTO kinds_state(rule, data) VALUES (?, ?)",
                    [(r, json.dumps(st)) for r, st in batch.kinds_state.items()],
                )
            if batch.heartbeat is not None:
                self._put_meta(db, "heartbeat", repr(batch.heartbeat))
            for write in batch.writers:
                write(db)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @staticmethod
    def _put_meta(db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    def _set_meta_now(self, key: str, value: str) -> None:
        with self._tx() as db:
            self._put_meta(db, key, value)

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])


class StoreReader:
    """Read-only queries for the HTTP API and tools; safe to call from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = _connect(self.path, readonly=True)
        try:
            yield conn
        finally:
            conn.close()

    def incidents(self, state: str = "all", limit: int = 100) -> list[Incident]:
        """Newest first; state "open" = firing or recovering, "all" = everything but merged ones."""
        open_states = ", ".join(f"'{s}'" for s in OPEN_STATES)
        where = f"state IN ({open_states})" if state == "open" else f"state != '{IncidentState.MERGED}'"
        with self._conn() as db:
            rows = db.execute(f"SELECT data FROM incidents WHERE {where} ORDER BY id DESC LIMIT ?", (limit,))
            return [Incident.from_dict(json.loads(d)) for (d,) in rows]

    def incident(self, incident_id: int) -> Incident | None:
        with self._conn() as db:
            row = db.execute("SELECT data FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        return None if row is None else Incident.from_dict(json.loads(row[0]))

    def timeline(self, incident_id: int) -> list[TimelineEntry]:
        with self._conn() as db:
            rows = db.execute(
                "SELECT seq, incident_id, ts, event, notify, detail FROM timeline"
                " WHERE incident_id = ? ORDER BY seq",
                (incident_id,),
            ).fetchall()
        return [TimelineEntry(int(s), int(i), float(t), str(e), bool(n), str(d)) for s, i, t, e, n, d in rows]

    def downtimes(self) -> list[Downtime]:
        with self._conn() as db:
            rows = db.execute("SELECT down_from, down_to, clean_stop FROM downtime ORDER BY seq").fetchall()
        return [Downtime(float(a), float(b), bool(c)) for a, b, c in rows]

    def alert_log(self) -> list[AlertChange]:
        with self._conn() as db:
            rows = db.execute(
                "SELECT ts, key, rule, device, old, new, value, note FROM alert_log ORDER BY seq"
            ).fetchall()
        return [
            AlertChange(t, AlertKey.parse(k), r, d, AlertState(o), AlertState(n), v, note)
            for t, k, r, d, o, n, v, note in rows
        ]
