"""Retention (issue 10, item 6): resolved incidents older than `review.retention` go with everything of
theirs (timeline, evidence, notices and their delivery log, votes; the alert log and downtime older than
every incident left), open and recent ones stay, and the timeline stays append-only otherwise.

- The store's pruning on a real SQLite file holding the respond side's tables (gateway/respond/outbox.py)
  and the votes (gateway/web/vote_store.py), written by their own code where it exists.
- The component through a real detector in virtual time: an incident the engine still holds (it could
  reopen) stays however old; once the engine lets it go, it goes; an open one never does.
- Through the real daemon: an old incident in the store is pruned at start; the metrics say so.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bench.rules_live import LiveSite
from gateway.core.bus import Bus
from gateway.incidents.detector import Detector
from gateway.incidents.retention import Retention
from gateway.incidents.store import Batch, EvidenceWrite, IncidentStore, Pruned, StoreReader
from gateway.respond import outbox
from gateway.web.vote_store import VoteStore
from rules.model import (
    AlertChange,
    AlertKey,
    AlertState,
    Incident,
    IncidentChange,
    IncidentEvent,
    IncidentState,
)
from tests.gateway.incidents.test_detector import Clock, make
from tests.gateway.incidents.test_store import T0, volts
from tests.helpers import wait_until

DAY = 86400.0
YEAR = 365 * DAY
KEEP = 730 * DAY  # the default: 2 years
NOW = T0 + 5 * YEAR


def incident(
    inc_id: int,
    opened: float,
    resolved: float | None,
    state: IncidentState = IncidentState.RESOLVED,
    merged_into: int | None = None,
) -> Incident:
    return Incident(
        id=inc_id, key=f"power_outage/domain:B1-power/{inc_id}", category="power_outage",
        scope="domain:B1-power", title="B1 power outage", severity="critical", event_code="003",
        audiences=["staff", "residents"], households=40, state=state, opened_at=opened + 3,
        first_evidence_at=opened, updated_at=resolved if resolved is not None else opened + 3,
        resolved_at=resolved if state == IncidentState.RESOLVED else None, merged_into=merged_into,
        symptoms={"B1-main": ["power.outage"]},
    )  # fmt: skip


def add(store: IncidentStore, inc: Incident) -> None:
    """An incident with what the daemon keeps of it: timeline, evidence, alert log, notices delivered to two
    targets, a vote."""
    t = inc.first_evidence_at
    key = AlertKey("power.outage", "B1-main")
    changes = [IncidentChange(t + 3, inc.id, IncidentEvent.OPENED, True, inc.title)]
    if inc.resolved_at is not None:
        changes.append(IncidentChange(inc.resolved_at, inc.id, IncidentEvent.RESOLVED, True))
    batch = Batch(
        incidents={inc.id: inc},
        timeline=changes,
        alert_log=[AlertChange(t, key, key.rule, key.device, AlertState.INACTIVE, AlertState.PENDING, 0.0)],
    )
    batch.writers.append(
        EvidenceWrite(
            [(inc.id, "B1-main", "voltage_l1", t + i, 0.0) for i in range(5)], [], {inc.id: (2.0, 7)}
        )
    )

    def notices(db: sqlite3.Connection) -> None:
        for stage in ("opened", "all_clear"):
            nk = f"{inc.id}/{stage}/staff"
            db.execute(
                "INSERT INTO outbox(key, owed_key, incident_id, stage, channel, audience, language, context,"
                " due_at, created_at, state) VALUES (?, ?, ?, ?, 'staff', 'staff', 'zh', '{}', ?, ?, 'sent')",
                (nk, f"{inc.id}/{stage}", inc.id, stage, t, t),
            )
            for target in ("robot", "mail"):
                db.execute(
                    "INSERT INTO deliveries(notice_key, channel, target, status, attempts, at, detail)"
                    " VALUES (?, 'staff', ?, 'sent', 1, ?, '')",
                    (nk, target, t),
                )

    batch.writers.append(notices)
    store.write(batch)
    VoteStore(store.path).cast(f"token-{inc.id}", inc.id, "satisfied", "", t + 4)


def create_respond_tables(path: Path) -> None:
    """The outbox's tables, as the responder creates them on its own connection at start."""
    db = sqlite3.connect(path)
    try:
        outbox.create(db)
    finally:
        db.close()


def rows(path: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return list(db.execute(sql, args).fetchall())
    finally:
        db.close()


def per_incident(path: Path, table: str, column: str = "incident_id") -> dict[int, int]:
    counts = rows(path, f"SELECT {column}, COUNT(*) FROM {table} GROUP BY {column}")
    return {int(i): int(n) for i, n in counts}


def triggers(path: Path) -> list[tuple[Any, ...]]:
    return rows(path, "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name")


@pytest.fixture
def store(tmp_path: Path) -> IncidentStore:
    s = IncidentStore(tmp_path / "incidents.sqlite")
    create_respond_tables(s.path)
    # 1: resolved four years ago; 2: resolved yesterday after a long life; 3: open since three years
    # 4: merged into 1 long ago; 5: merged into 3 long ago; 6: resolved long ago but held (keep)
    add(s, incident(1, NOW - 4 * YEAR, NOW - 4 * YEAR + 3600))
    add(s, incident(2, NOW - 2.5 * YEAR, NOW - DAY))
    add(s, incident(3, NOW - 3 * YEAR, None, IncidentState.FIRING))
    add(s, incident(4, NOW - 4 * YEAR + 60, NOW - 4 * YEAR + 120, IncidentState.MERGED, merged_into=1))
    add(s, incident(5, NOW - 3 * YEAR + 60, NOW - 3 * YEAR + 120, IncidentState.MERGED, merged_into=3))
    add(s, incident(6, NOW - 4 * YEAR, NOW - 4 * YEAR + 60))
    with s._lock, s._tx() as db:  # the downtime the store records on a start: one long ago, one recent
        for a, b in ((NOW - 4 * YEAR, NOW - 4 * YEAR + 600), (NOW - DAY, NOW - DAY + 60)):
            db.execute("INSERT INTO downtime(down_from, down_to, clean_stop) VALUES (?, ?, 1)", (a, b))
    return s


def test_old_resolved_incidents_go_with_everything_of_theirs(store: IncidentStore) -> None:
    path = store.path
    guards = triggers(path)
    out = store.prune(NOW - KEEP, keep={6})
    reader = StoreReader(path)

    assert sorted(int(i) for (i,) in rows(path, "SELECT id FROM incidents")) == [2, 3, 5, 6]
    assert reader.incident(1) is None and reader.incident(4) is None
    assert reader.incident(3) is not None and reader.incident(3).is_open  # type: ignore[union-attr]
    for table in ("timeline", "evidence", "evidence_meta", "outbox", "votes"):
        assert set(per_incident(path, table)) == {2, 3, 5, 6}, table
    assert reader.timeline(2) and reader.evidence(3) and reader.evidence_info(6).thinned == 7
    delivered = {str(k).split("/")[0] for (k,) in rows(path, "SELECT notice_key FROM deliveries")}
    assert delivered == {"2", "3", "5", "6"}
    # the alert log and downtime older than every incident left (6, held, started four years ago) stay
    assert len(reader.alert_log()) == 6 and len(reader.downtimes()) == 2
    assert out == Pruned(
        incidents=2, timeline=3, evidence=10, alert_log=0, outbox=4, deliveries=8, votes=2, downtime=0
    )
    assert triggers(path) == guards, "the timeline's guards are back, unchanged"

    # once 6 is no longer held it goes too, and with it the last reason to keep the oldest log
    out = store.prune(NOW - KEEP)
    assert sorted(int(i) for (i,) in rows(path, "SELECT id FROM incidents")) == [2, 3, 5]
    assert out.incidents == 1 and out.votes == 1
    assert sorted(c.ts for c in reader.alert_log()) == [NOW - 3 * YEAR, NOW - 3 * YEAR + 60, NOW - 2.5 * YEAR]
    assert out.alert_log == 3 and out.downtime == 1
    assert [d.down_from for d in reader.downtimes()] == [NOW - DAY]
    assert store.prune(NOW - KEEP) == Pruned(), "nothing left to prune"
    store.close()


def test_the_timeline_stays_append_only(store: IncidentStore) -> None:
    store.prune(NOW - KEEP)
    db = sqlite3.connect(store.path)
    try:
        for sql in ("DELETE FROM timeline WHERE incident_id = 2", "UPDATE timeline SET detail = 'x'"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(sql)
    finally:
        db.close()
    store.close()


def test_a_pruning_that_fails_changes_nothing(store: IncidentStore) -> None:
    path = store.path
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TRIGGER votes_locked BEFORE DELETE ON votes BEGIN SELECT RAISE(ABORT, 'votes locked'); END"
    )
    db.close()
    before = {t: per_incident(path, t) for t in ("timeline", "evidence", "outbox", "votes")}
    with pytest.raises(sqlite3.IntegrityError, match="votes locked"):
        store.prune(NOW - KEEP)
    assert {t: per_incident(path, t) for t in before} == before, "the chunk's transaction rolled back whole"
    assert sorted(int(i) for (i,) in rows(path, "SELECT id FROM incidents")) == [1, 2, 3, 4, 5, 6]
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM timeline WHERE incident_id = 1")  # the dropped guard came back with it
    db.close()
    store.close()


def test_a_store_without_the_respond_tables(tmp_path: Path) -> None:
    s = IncidentStore(tmp_path / "incidents.sqlite")
    inc = incident(1, NOW - 4 * YEAR, NOW - 4 * YEAR + 60)
    opened = IncidentChange(inc.opened_at, 1, IncidentEvent.OPENED, True)
    s.write(Batch(incidents={1: inc}, timeline=[opened]))
    assert s.prune(NOW - KEEP).incidents == 1
    assert StoreReader(s.path).timeline(1) == []
    s.close()


# ---- the component, with a real detector in virtual time ---------------------------------------------------


async def feed(det: Detector, bus: Bus, clock: Clock, until: float, b1: float, b2: float) -> None:
    """Both main meters every 0.5 s up to `until`, a detector round every 5 s (its queue holds 100)."""
    while clock.t < until:
        clock.t = round(clock.t + 0.5, 3)
        await bus.publish(volts("B1-main", clock.t, b1))
        await bus.publish(volts("B2-main", clock.t, b2))
        if clock.t % 5 == 0:
            await det.round()
    await det.round()


async def test_what_the_engine_holds_stays_and_open_incidents_never_go(tmp_path: Path) -> None:
    bus, det, store, clock = make(tmp_path)  # reopen window 10 s, heartbeat 5 s
    reader = StoreReader(store.path)
    ret = Retention(store, 1.0, lambda: set(det.mgr.engine.incidents), det.call, clock=clock)

    async def prune() -> Pruned:
        task = asyncio.create_task(ret.prune_once())
        await asyncio.sleep(0)  # let it queue its call: the next round answers it
        await det.round()
        out = await task
        assert out is not None
        return out

    await feed(det, bus, clock, T0 + 2, 230.0, 230.0)
    await feed(det, bus, clock, T0 + 6, 0.0, 0.0)  # both buildings cut: two incidents open
    await feed(det, bus, clock, T0 + 14, 230.0, 0.0)  # B1 back: its incident resolves, B2's stays open
    b1 = next(i for i in reader.incidents("all") if i.scope == "domain:B1-power")
    b2 = next(i for i in reader.incidents("all") if i.scope == "domain:B2-power")
    assert b1.state == IncidentState.RESOLVED and b2.is_open
    assert (await prune()).incidents == 0, "resolved more than 1 s ago, but it could still reopen"
    assert reader.incident(b1.id) is not None

    await feed(det, bus, clock, T0 + 40, 230.0, 0.0)  # past the reopen window: the engine lets B1's go
    assert b1.id not in det.mgr.engine.incidents
    entries = len(reader.timeline(b1.id))  # opened, recovering, resolved
    out = await prune()
    assert out.incidents == 1 and out.timeline == entries >= 2
    assert reader.incident(b1.id) is None and reader.timeline(b1.id) == []
    assert reader.incident(b2.id) is not None and reader.timeline(b2.id), "open: never touched"
    assert ret.pruned.incidents == 1 and ret.runs == 2 and ret.last_run == clock.t
    store.close()


# ---- through the daemon ------------------------------------------------------------------------------------


def test_the_daemon_prunes_at_start(tmp_path: Path) -> None:
    live = LiveSite(tmp_path)
    now = time.time()
    store = IncidentStore(tmp_path / "state" / "incidents.sqlite")
    create_respond_tables(store.path)
    add(store, incident(1, now - 3 * YEAR, now - 3 * YEAR + 600))
    add(store, incident(2, now - 10 * DAY, now - 10 * DAY + 600))
    store.close()
    reader = StoreReader(tmp_path / "state" / "incidents.sqlite")
    with live:
        wait_until(lambda: reader.incident(1) is None, 30.0, what="the old incident pruned at start")
        metrics = urllib.request.urlopen(live.daemon.url + "/metrics", timeout=5).read().decode()
        api = live.daemon.api()
    assert reader.incident(2) is not None and reader.timeline(2)
    assert [i["id"] for i in api["incidents"]] == [2]
    assert re.search(r"^meterwatch_incidents_pruned_total 1\.0$", metrics, re.M)
    assert re.search(r'^meterwatch_incident_store_pruned_rows_total\{table="votes"\} 1\.0$', metrics, re.M)
    assert re.search(r"^meterwatch_incident_store_bytes [1-9]", metrics, re.M)
