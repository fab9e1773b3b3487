"""The incident store: SQLite (WAL, synchronous=FULL) with what the engine needs to continue after a restart.

Tables: `incidents` (one row per incident, its engine state as JSON), `alerts` (alert instances that are not
inactive), `kinds_state` (state some rule kinds carry, e.g. night-flow streaks), an append-only `timeline`
per incident (triggers refuse UPDATE and DELETE), an append-only `alert_log`, `downtime` (gaps between the
last heartbeat and a start), `meta` (heartbeat, clean stop, schema version), and `evidence` (the affected
devices' readings kept with an incident, gateway/incidents/evidence.py) with `evidence_meta` (how far each
incident's evidence was thinned to stay within its bound).

Every time is an absolute UTC epoch second, so a restored timer means the same instant it meant before.
A `Batch` holds whole engine steps and is written in ONE transaction: a step's transitions are never half
stored. The writer is single (the detector); readers (HTTP handlers, the CLI) open their own connections,
which WAL lets read while the writer writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
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

log = logging.getLogger("meterwatch.incidents")

SCHEMA_VERSION = "1"  # the evidence tables came later: CREATE IF NOT EXISTS adds them to an older store

# The timeline's append-only guards, also re-created by `IncidentStore.prune` (the one deliberate deletion).
TIMELINE_NO_UPDATE = """CREATE TRIGGER IF NOT EXISTS timeline_no_update BEFORE UPDATE ON timeline
    BEGIN SELECT RAISE(ABORT, 'the timeline is append-only'); END;"""
TIMELINE_NO_DELETE = """CREATE TRIGGER IF NOT EXISTS timeline_no_delete BEFORE DELETE ON timeline
    BEGIN SELECT RAISE(ABORT, 'the timeline is append-only'); END;"""

_SCHEMA = f"""
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
{TIMELINE_NO_UPDATE}
{TIMELINE_NO_DELETE}
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
CREATE TABLE IF NOT EXISTS evidence(
    incident_id INTEGER NOT NULL,
    device TEXT NOT NULL,
    quantity TEXT NOT NULL,
    ts REAL NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY(incident_id, device, quantity, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evidence_meta(
    incident_id INTEGER PRIMARY KEY,
    spacing REAL,
    thinned INTEGER NOT NULL
);
"""

GATEWAY_DOWN = IncidentEvent.GATEWAY_DOWN
_OPEN_SQL = ", ".join(f"'{s}'" for s in OPEN_STATES)
PRUNE_CHUNK = 200  # incidents per pruning transaction: the detector waits for the store's lock meanwhile
_LOG_CHUNK = 5000  # alert log and downtime rows per pruning transaction


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


@dataclass(frozen=True, slots=True)
class EvidenceInfo:
    """What an incident's evidence holds: its readings, and the spacing it was thinned to (seconds between the
    kept readings of one quantity; None while every reading is kept) with how many readings that dropped."""

    points: int
    spacing: float | None
    thinned: int


@dataclass(frozen=True, slots=True)
class EvidenceWrite:
    """One round's evidence, a batch writer (Batch.writers): readings added, readings a thinning dropped, and
    each touched incident's (spacing, thinned). Writing it twice changes nothing (a retried batch)."""

    inserts: list[tuple[int, str, str, float, float]]  # incident, device, quantity, ts, value
    deletes: list[tuple[int, str, str, float]]  # incident, device, quantity, ts
    meta: dict[int, tuple[float | None, int]]

    def __call__(self, db: sqlite3.Connection) -> None:
        db.executemany(
            "DELETE FROM evidence WHERE incident_id = ? AND device = ? AND quantity = ? AND ts = ?",
            self.deletes,
        )
        db.executemany(
            "INSERT OR IGNORE INTO evidence(incident_id, device, quantity, ts, value) VALUES (?, ?, ?, ?, ?)",
            self.inserts,
        )
        db.executemany(
            "INSERT INTO evidence_meta(incident_id, spacing, thinned) VALUES (?, ?, ?)"
            " ON CONFLICT(incident_id) DO UPDATE SET spacing=excluded.spacing, thinned=excluded.thinned",
            [(i, sp, n) for i, (sp, n) in self.meta.items()],
        )


@dataclass(frozen=True, slots=True)
class StoredEvidence:
    """An incident's evidence as the keeper needs it after a restart: the kept instants of each series."""

    times: dict[tuple[str, str], list[float]]  # (device, quantity) -> sorted instants
    spacing: float | None
    thinned: int


@dataclass(slots=True)
class Pruned:
    """What one pruning removed, by table."""

    incidents: int = 0
    timeline: int = 0
    evidence: int = 0
    alert_log: int = 0
    outbox: int = 0
    deliveries: int = 0
    votes: int = 0
    downtime: int = 0


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
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:
                # SQLite would silently start afresh: say that the history this file held is gone
                log.warning(
                    "the incident store file is empty (0 bytes): the incident history it held is gone; "
                    "starting a new one",
                    extra={"fields": {"path": str(path)}},
                )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _connect(path)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed transition survives power loss, not only a process crash
            self._db.execute("PRAGMA synchronous=FULL")
            self._check_pages()
            self._db.executescript(_SCHEMA)
        except StoreError:
            raise
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"{path}: cannot open the incident store: {exc}") from exc
        version = self._meta("schema_version")
        if version is None:
            self._set_meta_now("schema_version", SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            raise StoreError(
                f"{path}: incident store schema {version}, this version expects {SCHEMA_VERSION}"
            )

    def _check_pages(self) -> None:
        """Refuse a damaged file with one clear error rather than fail later mid-round (the file is left as
        it is: it may be the only copy of the history)."""
        rows = [str(r[0]) for r in self._db.execute("PRAGMA quick_check(5)")]
        if rows != ["ok"]:
            self._db.close()
            raise StoreError(
                f"{self.path}: the incident store is damaged ({'; '.join(rows)[:300]}); it is left as it "
                "is: move it aside (or restore a backup copy of it) and start again"
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
        with self._lock:
            # everything into the main file: after a clean stop, a copy of the .sqlite alone is a backup
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

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

    # ---- evidence after a restart ---------------------------------------------------------------------
    def stored_evidence(self, incident_ids: Iterable[int]) -> dict[int, StoredEvidence]:
        """The evidence already stored for these incidents (the keeper goes on from it after a restart)."""
        out: dict[int, StoredEvidence] = {}
        with self._lock:
            for inc_id in incident_ids:
                times: dict[tuple[str, str], list[float]] = {}
                for dev, q, ts in self._db.execute(
                    "SELECT device, quantity, ts FROM evidence WHERE incident_id = ?"
                    " ORDER BY device, quantity, ts",
                    (inc_id,),
                ):
                    times.setdefault((str(dev), str(q)), []).append(float(ts))
                row = self._db.execute(
                    "SELECT spacing, thinned FROM evidence_meta WHERE incident_id = ?", (inc_id,)
                ).fetchone()
                spacing = None if row is None or row[0] is None else float(row[0])
                out[inc_id] = StoredEvidence(times, spacing, 0 if row is None else int(row[1]))
        return out

    # ---- retention -------------------------------------------------------------------------------------
    def prune(self, cutoff: float, keep: Collection[int] = ()) -> Pruned:
        """Delete the incidents that ended (resolved, or merged) before `cutoff` with everything of theirs:
        timeline, evidence, outbox rows and their deliveries, votes. An open incident is never touched, nor
        one in `keep` (those the running engine or the evidence keeper still hold: deleting them under it
        would let its next write bring back a row without its timeline). A merged incident goes with the
        incident it was merged into. Then the alert log and the downtime older than both the cutoff and the
        first evidence of every incident left: no report can need them.

        Each chunk of incidents is one transaction, so the detector's rounds (waiting for the store's lock)
        are held up briefly and a crash leaves whole incidents, never half of one. The file does not shrink
        (SQLite reuses the freed pages), it stops growing."""
        doomed = self._prunable(cutoff, set(keep))
        out = Pruned()
        ids = sorted(doomed)
        for start in range(0, len(ids), PRUNE_CHUNK):
            with self._lock, self._tx() as db:
                self._prune_chunk(db, ids[start : start + PRUNE_CHUNK], out)
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(CAST(json_extract(data, '$.first_evidence_at') AS REAL)) FROM incidents"
            ).fetchone()
        horizon = cutoff if row is None or row[0] is None else min(cutoff, float(row[0]))
        for table, ts_col, attr in (("alert_log", "ts", "alert_log"), ("downtime", "down_to", "downtime")):
            while True:
                with self._lock, self._tx() as db:
                    n = db.execute(
                        f"DELETE FROM {table} WHERE seq IN"
                        f" (SELECT seq FROM {table} WHERE {ts_col} < ? LIMIT {_LOG_CHUNK})",
                        (horizon,),
                    ).rowcount
                setattr(out, attr, getattr(out, attr) + n)
                if n < _LOG_CHUNK:
                    break
        return out

    def _prunable(self, cutoff: float, keep: set[int]) -> set[int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, state, json_extract(data, '$.resolved_at'), updated_at,"
                f" json_extract(data, '$.merged_into') FROM incidents WHERE state NOT IN ({_OPEN_SQL})"
            ).fetchall()
            open_ids = {
                int(i) for (i,) in self._db.execute(f"SELECT id FROM incidents WHERE state IN ({_OPEN_SQL})")
            }
        ended: dict[int, float] = {}
        merged_into: dict[int, int] = {}
        for inc_id, state, resolved_at, updated_at, into in rows:
            ended[int(inc_id)] = float(resolved_at if resolved_at is not None else updated_at)
            if state == str(IncidentState.MERGED) and into is not None:
                merged_into[int(inc_id)] = int(into)
        old = {i for i, t in ended.items() if t < cutoff and i not in keep}

        def goes(inc_id: int, depth: int = 0) -> bool:
            if inc_id not in old:
                return False
            root = merged_into.get(inc_id)
            if root is None or depth > 50:  # not merged (or a chain that loops: judge it by itself)
                return True
            if root in open_ids or root in keep:
                return False
            return root not in ended or goes(root, depth + 1)

        return {i for i in old if goes(i)}

    @staticmethod
    def _prune_chunk(db: sqlite3.Connection, ids: list[int], out: Pruned) -> None:
        marks = ",".join("?" * len(ids))
        # checked again inside the transaction: whatever reopened meanwhile stays
        ids = [
            int(i)
            for (i,) in db.execute(
                f"SELECT id FROM incidents WHERE id IN ({marks}) AND state NOT IN ({_OPEN_SQL})", ids
            )
        ]
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        tables = {str(n) for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        # The timeline is append-only (its triggers refuse UPDATE and DELETE) so that nothing rewrites what
        # happened; retention is the one deliberate exception. The delete guard is dropped and re-created
        # inside this same write transaction: no other connection can write in between (the transaction
        # holds SQLite's write lock), and a crash rolls the DROP back with the deletes, so the guard is never
        # missing outside it.
        db.execute("DROP TRIGGER IF EXISTS timeline_no_delete")
        out.timeline += db.execute(f"DELETE FROM timeline WHERE incident_id IN ({marks})", ids).rowcount
        db.execute(TIMELINE_NO_DELETE)
        out.evidence += db.execute(f"DELETE FROM evidence WHERE incident_id IN ({marks})", ids).rowcount
        db.execute(f"DELETE FROM evidence_meta WHERE incident_id IN ({marks})", ids)
        if "outbox" in tables:
            if "deliveries" in tables:
                out.deliveries += db.execute(
                    "DELETE FROM deliveries WHERE notice_key IN"
                    f" (SELECT key FROM outbox WHERE incident_id IN ({marks}))",
                    ids,
                ).rowcount
            out.outbox += db.execute(f"DELETE FROM outbox WHERE incident_id IN ({marks})", ids).rowcount
        if "votes" in tables:
            out.votes += db.execute(f"DELETE FROM votes WHERE incident_id IN ({marks})", ids).rowcount
        out.incidents += db.execute(f"DELETE FROM incidents WHERE id IN ({marks})", ids).rowcount

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

    def evidence(self, incident_id: int) -> dict[str, dict[str, list[tuple[float, float]]]]:
        """The readings kept with an incident: device -> quantity -> [(ts, value)] sorted by time."""
        out: dict[str, dict[str, list[tuple[float, float]]]] = {}
        with self._conn() as db:
            rows = db.execute(
                "SELECT device, quantity, ts, value FROM evidence WHERE incident_id = ?"
                " ORDER BY device, quantity, ts",
                (incident_id,),
            ).fetchall()
        for dev, q, ts, value in rows:
            out.setdefault(str(dev), {}).setdefault(str(q), []).append((float(ts), float(value)))
        return out

    def evidence_info(self, incident_id: int) -> EvidenceInfo:
        """How much evidence an incident holds and whether it was thinned to stay within its bound."""
        with self._conn() as db:
            (points,) = db.execute(
                "SELECT COUNT(*) FROM evidence WHERE incident_id = ?", (incident_id,)
            ).fetchone()
            row = db.execute(
                "SELECT spacing, thinned FROM evidence_meta WHERE incident_id = ?", (incident_id,)
            ).fetchone()
        if row is None:
            return EvidenceInfo(int(points), None, 0)
        return EvidenceInfo(int(points), None if row[0] is None else float(row[0]), int(row[1]))
