"""What the gateway owes the fleet, decided where the incidents change: a detector hook (`on_batch`).

Each detection round, after the respond side added its response steps (dispatched, escalated, acknowledged,
...) to the round's timeline, every new transition becomes an `events/<gateway>` message and each touched
incident's current state its retained `incident/<gateway>/<id>` message (or the clearing of that topic once
it is no longer open). They are added to the round's batch as a writer, so they are committed in the same
transaction as the transitions: a transition stored is a transition owed, and a round that failed to store
owes nothing yet (it is retried whole). Payloads: gateway/fleet/topics.py and docs/fleet-topics.md.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import Site
from gateway.config.fleet import FleetConfig
from gateway.config.shard import supply_path
from gateway.fleet import outbox
from gateway.fleet.outbox import Owed
from gateway.fleet.topics import VERSION, Topics, dumps
from gateway.incidents.manager import IncidentManager
from gateway.incidents.store import Batch
from gateway.respond.context import buildings_of
from rules.model import Incident, IncidentChange, IncidentEvent

_RESPONSE = (
    IncidentEvent.DISPATCHED,
    IncidentEvent.ESCALATED,
    IncidentEvent.ACKNOWLEDGED,
    IncidentEvent.ON_SITE,
    IncidentEvent.RETRIGGERED,
)


@dataclass(slots=True)
class Response:
    """The response so far to one incident, from its timeline (the incident itself does not hold it)."""

    dispatched_at: float | None = None
    acknowledged_at: float | None = None
    on_site_at: float | None = None
    escalation_step: int | None = None  # 0 at the dispatch, +1 each escalation; None: not dispatched

    def feed(self, event: str, ts: float) -> None:
        if event in (IncidentEvent.DISPATCHED, IncidentEvent.RETRIGGERED):
            if self.dispatched_at is None:
                self.dispatched_at = ts
            self.escalation_step = 0
        elif event == IncidentEvent.ESCALATED:
            self.escalation_step = (self.escalation_step or 0) + 1
        elif event == IncidentEvent.ACKNOWLEDGED and self.acknowledged_at is None:
            self.acknowledged_at = ts
        elif event == IncidentEvent.ON_SITE and self.on_site_at is None:
            self.on_site_at = ts


def devices_of(inc: Incident) -> list[str]:
    """The devices an incident names: its symptoms and a device scope (symptom keys with a colon name other
    things, e.g. a failing channel)."""
    found = {d for d in inc.symptoms if ":" not in d}
    kind, _, ref = inc.scope.partition(":")
    if kind == "device" and ref:
        found.add(ref)
    return sorted(found)


def supply_of(inc: Incident, site: Site) -> tuple[list[str], str | None]:
    """The supply path of an incident on a supply domain (the domain and its ancestors by `parent`, from
    the whole compound: e.g. ["B1-power", "T1"]) and that domain's kind; ([], None) for other scopes (a
    device, a line, a building, the site), which the fleet view never links."""
    scope_kind, _, ref = inc.scope.partition(":")
    if scope_kind != "domain":
        return [], None
    domains = site.supply_domains()
    dom = domains.get(ref)
    if dom is None:
        return [], None
    return supply_path(domains, ref), dom.kind


def summary(inc: Incident, response: Response, site: Site) -> dict[str, Any]:
    """An incident as the fleet sees it: on its retained topic and in every transition's event."""
    path, supply_kind = supply_of(inc, site)
    return {
        "id": inc.id,
        "title": inc.title,
        "kind": inc.category,
        "severity": inc.severity,
        "event_code": inc.event_code,
        "scope": inc.scope,
        "state": str(inc.state),
        "buildings": buildings_of(inc, site),
        "devices": devices_of(inc),
        "households": inc.households,
        "opened_at": inc.opened_at,
        "first_evidence_at": inc.first_evidence_at,
        "dispatched_at": response.dispatched_at,
        "acknowledged_at": response.acknowledged_at,
        "on_site_at": response.on_site_at,
        "escalation_step": response.escalation_step,
        "resolved_at": inc.resolved_at,
        "merged_into": inc.merged_into,
        "drill": inc.drill,
        "manual": inc.manual,
        "shard": site.shard.id if site.shard is not None else None,
        "supply_path": path,
        "supply_kind": supply_kind,
    }


class FleetBridge:
    """The detector hook owing fleet messages; the publisher (gateway/fleet/publisher.py) sends them."""

    def __init__(
        self, site: Site, cfg: FleetConfig, manager: IncidentManager, store_path: Path, now: float
    ) -> None:
        self.site = site
        self.cfg = cfg
        self.manager = manager
        self.store_path = store_path
        self.topics = Topics(cfg.company, site.config.site.id, cfg.gateway_id)
        self.bound = cfg.buffer
        self.owed = 0  # messages written to the outbox by rounds since start
        self.dropped = 0  # rows the rounds' writes dropped past the bound since start
        self._batch: Batch | None = None  # the batch last seen, and how much of its timeline was taken:
        self._taken = 0  # a batch that failed to store comes back longer, and only its new part is owed
        self._snapshot_owed = True  # each open incident's state once more, with the first round
        db = sqlite3.connect(store_path, timeout=30.0)
        try:
            outbox.create(db)
            self.responses = self._restore(db)
        finally:
            db.close()

    def _restore(self, db: sqlite3.Connection) -> dict[int, Response]:
        """The response so far to each open incident, from the store's timeline."""
        open_ids = sorted(i.id for i in self.manager.engine.incidents.values() if i.is_open)
        out: dict[int, Response] = {i: Response() for i in open_ids}
        if not open_ids:
            return out
        marks = ",".join("?" * len(open_ids))
        events = ",".join(f"'{e}'" for e in _RESPONSE)
        for inc_id, ts, event in db.execute(
            f"SELECT incident_id, ts, event FROM timeline WHERE incident_id IN ({marks})"
            f" AND event IN ({events}) ORDER BY seq",
            open_ids,
        ):
            out[int(inc_id)].feed(str(event), float(ts))
        return out

    # ---- payloads ------------------------------------------------------------------------------------------
    def _incident_message(self, inc: Incident, transition: str, at: float, detail: str | None) -> str:
        payload: dict[str, Any] = {
            "v": VERSION,
            "type": "incident",
            "site": self.topics.site,
            "gateway": self.topics.gateway,
            "incident": summary(inc, self.responses.get(inc.id) or Response(), self.site),
            "transition": transition,
            "at": at,
        }
        if detail is not None:
            payload["detail"] = detail
        return dumps(payload)

    def _state(self, inc: Incident, transition: str, at: float) -> Owed:
        """The retained state of one incident: its summary while open, cleared (empty) once it is not."""
        if not inc.is_open:
            return Owed(self.topics.incident(inc.id), "", True)
        return Owed(self.topics.incident(inc.id), self._incident_message(inc, transition, at, None), True)

    def snapshot(self, incidents: dict[int, Incident], now: float) -> list[Owed]:
        """The retained state of every open incident, owed with the first round after a start (a broker
        that lost its retained messages, or incidents opened before the fleet section was added, are
        covered). In the round's own transaction, so no older state can be sent after a newer one."""
        return [self._state(inc, "snapshot", now) for _, inc in sorted(incidents.items()) if inc.is_open]

    # ---- the detector hook ------------------------------------------------------------------------------
    def on_batch(self, batch: Batch, now: float) -> None:
        start = self._taken if batch is self._batch else 0
        self._batch, self._taken = batch, len(batch.timeline)
        changes = batch.timeline[start:]
        if not changes and not self._snapshot_owed:
            return
        incidents = {**self.manager.engine.incidents, **batch.incidents}
        owed: list[Owed] = []
        if self._snapshot_owed:
            self._snapshot_owed = False
            owed.extend(self.snapshot(incidents, now))
        last: dict[int, IncidentChange] = {}
        for ch in changes:
            inc = incidents.get(ch.incident)
            if inc is None:
                continue
            response = self.responses.setdefault(inc.id, Response())
            response.feed(str(ch.event), ch.ts)
            owed.append(
                Owed(self.topics.events, self._incident_message(inc, str(ch.event), ch.ts, ch.detail), False)
            )
            last[inc.id] = ch
        for inc_id, ch in last.items():
            inc = incidents[inc_id]
            owed.append(self._state(inc, str(ch.event), ch.ts))
            if not inc.is_open:
                self.responses.pop(inc_id, None)
        if not owed:
            return
        self.owed += len(owed)
        bound = self.bound

        def write(db: sqlite3.Connection) -> None:
            self.dropped += outbox.enqueue(db, owed, now, bound)

        batch.writers.append(write)


class NoticeEvents:
    """A notice's outcome as an `events/<gateway>` message (outbox.NoticeMaker): `sent` once every target
    took it, `failed` for each attempt some target refused (`final` when it is given up on)."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics

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
    ) -> tuple[str, Owed] | None:
        if state == "sent":
            outcome, final = "sent", True
        elif state in ("partial", "failed"):
            outcome, final = "failed", state == "failed"
        else:
            return None  # pending: not tried yet, or its attempt is not recorded yet
        payload = {
            "v": VERSION,
            "type": "notice",
            "site": self.topics.site,
            "gateway": self.topics.gateway,
            "incident": incident_id,
            "notice": key,
            "stage": stage,
            "audience": audience,
            "channel": channel,
            "state": outcome,
            "final": final,
            "attempts": attempts,
            "at": at,
        }
        return f"{key}#{state}#{attempts}", Owed(self.topics.events, dumps(payload), False)
