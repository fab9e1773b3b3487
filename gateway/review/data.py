"""What a review reads of an incident, from the incident store alone (never the time-series database, which
may be down in the very outage): the incident, its append-only timeline, the notices it owed with each
target's delivery, the gateway's downtime, and the residents' votes.

    reader = ReviewReader(store_path)
    rec = reader.record(42)                         # IncidentRecord | None
    recs = reader.records_between(start, end)       # incidents opened in [start, end), oldest first

Read-only: a reader opens the SQLite file read-only per call, so it is safe beside the running daemon.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gateway.incidents.store import Downtime, TimelineEntry
from gateway.respond.model import Delivery, DeliveryStatus
from rules.model import Incident


@dataclass(frozen=True, slots=True)
class NoticeRecord:
    """One notice row of the outbox (one stage to one channel) and its targets' latest attempts."""

    key: str
    stage: str
    channel: str
    audience: str
    due_at: float
    created_at: float
    state: str  # pending, partial, sent, failed (gateway/respond/model.NoticeState)
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def delivered_at(self) -> float | None:
        """When the first target took it (None: none did)."""
        done = [d.at for d in self.deliveries if d.status == DeliveryStatus.SUCCESS]
        return min(done) if done else None


@dataclass(frozen=True, slots=True)
class Vote:
    incident_id: int
    rating: str  # satisfied, neutral, unsatisfied
    at: float
    comment: str = ""


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    incident: Incident
    timeline: list[TimelineEntry]
    notices: list[NoticeRecord]
    downtimes: list[Downtime]  # the gateway's downtime overlapping the incident
    votes: list[Vote] = field(default_factory=list)
    planned: bool = False  # opened inside a planned maintenance window (its staff notice says so)

    def first(self, event: str) -> TimelineEntry | None:
        return next((e for e in self.timeline if e.event == event), None)

    def events(self, event: str) -> list[TimelineEntry]:
        return [e for e in self.timeline if e.event == event]


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


class ReviewReader:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no incident store here (is this the daemon's state dir?)")
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30.0)
        try:
            yield db
        finally:
            db.close()

    def record(self, incident_id: int) -> IncidentRecord | None:
        with self._conn() as db:
            row = db.execute("SELECT data FROM incidents WHERE id = ?", (incident_id,)).fetchone()
            if row is None:
                return None
            return self._record(db, Incident.from_dict(json.loads(row[0])))

    def records_between(self, start: float, end: float) -> list[IncidentRecord]:
        """Incidents opened in [start, end), oldest first; merged ones are left out (their parent counts)."""
        with self._conn() as db:
            rows = db.execute(
                "SELECT data FROM incidents WHERE opened_at >= ? AND opened_at < ? AND state != 'merged'"
                " ORDER BY opened_at, id",
                (start, end),
            ).fetchall()
            return [self._record(db, Incident.from_dict(json.loads(r[0]))) for r in rows]

    def _record(self, db: sqlite3.Connection, inc: Incident) -> IncidentRecord:
        timeline = [
            TimelineEntry(seq, inc.id, ts, event, bool(notify), detail)
            for seq, ts, event, notify, detail in db.execute(
                "SELECT seq, ts, event, notify, detail FROM timeline WHERE incident_id = ? ORDER BY seq",
                (inc.id,),
            )
        ]
        notices: list[NoticeRecord] = []
        if _has_table(db, "outbox"):
            rows = db.execute(
                "SELECT key, stage, channel, audience, due_at, created_at, state FROM outbox"
                " WHERE incident_id = ? ORDER BY due_at, key",
                (inc.id,),
            ).fetchall()
            for key, stage, channel, audience, due_at, created_at, state in rows:
                deliveries = [
                    Delivery(key, ch, target, DeliveryStatus(status), int(attempts), float(at), detail)
                    for ch, target, status, attempts, at, detail in db.execute(
                        "SELECT channel, target, status, attempts, at, detail FROM deliveries"
                        " WHERE notice_key = ? ORDER BY at",
                        (key,),
                    )
                ]
                notices.append(
                    NoticeRecord(key, stage, channel, audience, due_at, created_at, state, deliveries)
                )
        end = inc.resolved_at if inc.resolved_at is not None else float("inf")
        downtimes = [
            Downtime(float(a), float(b), bool(c))
            for a, b, c in db.execute("SELECT down_from, down_to, clean_stop FROM downtime ORDER BY seq")
            if float(b) > inc.first_evidence_at and float(a) < end
        ]
        planned = False
        if _has_table(db, "outbox"):
            for (ctx,) in db.execute(
                "SELECT context FROM outbox WHERE incident_id = ? AND stage = 'staff_open'", (inc.id,)
            ):
                planned = planned or bool(json.loads(ctx).get("planned"))
        votes: list[Vote] = []
        if _has_table(db, "votes"):
            votes = [
                Vote(inc.id, str(rating), float(at), str(comment or ""))
                for rating, at, comment in db.execute(
                    "SELECT rating, at, comment FROM votes WHERE incident_id = ? ORDER BY at", (inc.id,)
                )
            ]
        return IncidentRecord(inc, timeline, notices, downtimes, votes, planned)
