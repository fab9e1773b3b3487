"""The detector hook on a real incident store, no broker: a round that failed to store and comes back longer
owes its first transitions once, not twice; the response so far (dispatched, acknowledged, escalations) is
read back from the store's timeline after a restart; a resolved incident clears its retained topic."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gateway.config import Site, load_site
from gateway.fleet.bridge import FleetBridge
from gateway.fleet.outbox import FleetOutbox
from gateway.incidents.manager import IncidentManager
from gateway.incidents.store import Batch, IncidentStore
from rules.model import Incident, IncidentChange, IncidentEvent, IncidentState

SITE = """\
site: {id: br, timezone: Asia/Shanghai}
buildings:
  - {id: B1, households: 10, domains: [{id: B1-power, kind: power}]}
fleet: {company: acme, broker: "mqtt://127.0.0.1:1", gateway: gw-b}
"""
EVENTS = "meterwatch/acme/br/events/gw-b"
STATE = "meterwatch/acme/br/incident/gw-b/1"


def site(tmp_path: Path) -> Site:
    p = tmp_path / "site.yaml"
    p.write_text(SITE, encoding="utf-8")
    return load_site(p)


def incident(state: IncidentState = IncidentState.FIRING, resolved_at: float | None = None) -> Incident:
    now = 1_796_000_000.0
    return Incident(
        id=1, key="power_outage/building:B1", category="power_outage", scope="building:B1",
        title="power outage", severity="critical", event_code="003", audiences=["staff"], households=10,
        state=state, opened_at=now, first_evidence_at=now, updated_at=now, resolved_at=resolved_at,
    )  # fmt: skip


def change(event: IncidentEvent, ts: float, detail: str = "") -> IncidentChange:
    return IncidentChange(ts, 1, event, False, detail)


def bridge_on(s: Site, path: Path) -> tuple[IncidentStore, FleetBridge]:
    store = IncidentStore(path)
    mgr = IncidentManager.open(s, store, time.time())
    assert s.config.fleet is not None
    first = Batch()  # the detector's first round: it owes the open incidents' state once more
    b = FleetBridge(s, s.config.fleet, mgr, path, time.time())
    b.on_batch(first, time.time())
    store.write(first)
    return store, b


def rows(path: Path) -> list[tuple[str, Any]]:
    box = FleetOutbox(path)
    try:
        return [(r.topic, json.loads(r.payload) if r.payload else None) for r in box.after(0, 1000)]
    finally:
        box.close()


def test_a_round_stored_late_owes_each_transition_once(tmp_path: Path) -> None:
    s = site(tmp_path)
    path = tmp_path / "incidents.sqlite"
    store, bridge = bridge_on(s, path)
    batch = Batch(incidents={1: incident()}, timeline=[change(IncidentEvent.OPENED, 1.0)])
    bridge.on_batch(batch, 1.0)
    # the store failed the round: the detector keeps the batch, the next round adds to it, and it is
    # handed to the hooks again before the next try
    batch.timeline.append(change(IncidentEvent.DISPATCHED, 2.0, "oncall: wang"))
    bridge.on_batch(batch, 2.0)
    store.write(batch)
    got = rows(path)
    events = [p["transition"] for t, p in got if t == EVENTS]
    assert events == ["opened", "dispatched"]
    assert [p["transition"] for t, p in got if t == STATE] == ["opened", "dispatched"]
    assert got[1][1]["incident"]["dispatched_at"] is None and got[3][1]["incident"]["escalation_step"] == 0


def test_the_response_so_far_is_read_back_after_a_restart(tmp_path: Path) -> None:
    s = site(tmp_path)
    path = tmp_path / "incidents.sqlite"
    store, bridge = bridge_on(s, path)
    batch = Batch(
        incidents={1: incident()},
        timeline=[
            change(IncidentEvent.OPENED, 1.0),
            change(IncidentEvent.DISPATCHED, 2.0),
            change(IncidentEvent.ESCALATED, 3.0, "backup: li"),
            change(IncidentEvent.ACKNOWLEDGED, 4.0, "li"),
        ],
    )
    bridge.on_batch(batch, 4.0)
    store.write(batch)
    store.close()
    # a new life: the open incident's state is owed again with the first round, response included
    store, bridge = bridge_on(s, path)
    snapshot = [p for t, p in rows(path) if t == STATE][-1]
    assert snapshot["transition"] == "snapshot"
    inc = snapshot["incident"]
    assert (inc["dispatched_at"], inc["escalation_step"], inc["acknowledged_at"]) == (2.0, 1, 4.0)
    assert inc["on_site_at"] is None
    done = Batch(
        incidents={1: incident(IncidentState.RESOLVED, 6.0)},
        timeline=[change(IncidentEvent.ON_SITE, 5.0), change(IncidentEvent.RESOLVED, 6.0)],
    )
    bridge.on_batch(done, 6.0)
    store.write(done)
    got = rows(path)
    last_event = [p for t, p in got if t == EVENTS][-1]
    assert last_event["transition"] == "resolved" and last_event["incident"]["on_site_at"] == 5.0
    assert last_event["incident"]["acknowledged_at"] == 4.0 and last_event["incident"]["resolved_at"] == 6.0
    assert got[-1] == (STATE, None)  # the retained topic cleared: an empty payload
