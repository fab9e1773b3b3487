"""One power outage written into a real incident store the way the daemon writes it, for the report's tests:
incident snapshots and timeline entries through IncidentStore.write, the notices owed through
outbox.enqueue as a writer of the same batch, each target's delivery through SqliteOutbox.record, and the
evidence the gateway would have kept (a separate dict, as StoreReader.evidence returns it).

    site = make_site(tmp_path)
    outage = Outage()                                  # its moments, all relative to T0
    write_outage(tmp_path / "incidents.sqlite", site, outage)
    evidence = outage_evidence(outage)

The outage (B1, 40 households, Asia/Shanghai): B1-main reads 0 V on every phase from T0 + 1.5 s; the
incident opens at T0 + 4 s and is dispatched at once; the residents' notice is delivered at T0 + 65 s; the
team's second robot fails three times; the desk acknowledges at T0 + 300 s, wang is on site at T0 + 900 s;
a note and the cause follow; supply is back at T0 + 1497 s and the incident resolves at T0 + 1500 s; the
all-clear goes out at T0 + 1502 s. The gateway was down (not a clean stop) from T0 + 600 s to T0 + 660 s.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.rules_live import write_live_site
from gateway.config import Site, load_site
from gateway.incidents.store import Batch, EvidenceWrite, IncidentStore
from gateway.respond import outbox
from gateway.respond.model import Delivery, DeliveryStatus, NoticeState, Owed, Stage
from rules.model import AlertKey, Incident, IncidentChange, IncidentEvent, IncidentState

T0 = 1_793_000_000.0  # 2026-10-26 15:33:20 in Asia/Shanghai
ID = 7

EXTRA = """
oncall:
  people:
    - {id: wang, name: 王工, phone: "13800000001"}
  shifts:
    - {oncall: wang}
notify:
  hotline: "400-800-1234"
  confirm_delay: {power_outage: 60s}
  channels:
    - {name: residents, url: "json://127.0.0.1:9/residents", audiences: [residents], language: zh}
    - {name: team, url: "json://127.0.0.1:9/a, json://127.0.0.1:9/b", audiences: [oncall], language: zh}
"""


def make_site(directory: Path) -> Site:
    """The live test site (bench/rules_live.py: B1 with B1-main and the line-powered B1-unit, B2) with an
    on-call roster and two channels."""
    return load_site(write_live_site(directory, extra=EXTRA))


@dataclass
class Outage:
    first_evidence: float = T0 + 1.5
    opened: float = T0 + 4.0
    dispatched: float = T0 + 4.0
    informed: float = T0 + 65.0
    acked: float | None = T0 + 300.0
    on_site: float | None = T0 + 900.0
    note: float = T0 + 1000.0
    cause: float = T0 + 1100.0
    back: float | None = T0 + 1497.0  # supply back (recovering)
    resolved: float | None = T0 + 1500.0
    all_clear: float = T0 + 1502.0
    down: tuple[float, float] | None = (T0 + 600.0, T0 + 660.0)
    note_text: str = "变压器跳闸 <script>alert(1)</script> | 已通知供电局"
    cause_text: str = "变压器过载跳闸，已复位"
    timeline: list[tuple[float, IncidentEvent, str]] = field(default_factory=list)

    def incident(self) -> Incident:
        state = IncidentState.RESOLVED if self.resolved is not None else IncidentState.FIRING
        inc = Incident(
            id=ID,
            key="power_outage/domain:B1-power",
            category="power_outage",
            scope="domain:B1-power",
            title="power outage: domain B1-power",
            severity="critical",
            event_code="003",
            audiences=["staff", "residents", "oncall"],
            households=40,
            state=state,
            opened_at=self.opened,
            first_evidence_at=self.first_evidence,
            updated_at=self.resolved or self.cause,
            resolved_at=self.resolved,
        )
        inc.symptoms = {"B1-main": ["power.outage"], "B1-unit": ["comm.absent"]}
        inc.alerts = [AlertKey("power.outage", "B1-main")]
        inc.evidence = ["main meter B1-main reads no voltage on any phase"]
        return inc

    def changes(self) -> list[IncidentChange]:
        steps: list[tuple[float | None, IncidentEvent, str]] = [
            (self.opened, IncidentEvent.OPENED, "2 devices"),
            (self.dispatched, IncidentEvent.DISPATCHED, "oncall: 王工"),
            (self.acked, IncidentEvent.ACKNOWLEDGED, "by desk"),
            (self.on_site, IncidentEvent.ON_SITE, "by wang"),
            (self.note, IncidentEvent.NOTE, f"desk: {self.note_text}"),
            (self.cause, IncidentEvent.CAUSE, f"desk: {self.cause_text}"),
            (self.back, IncidentEvent.RECOVERING, "fresh data shows the clear condition"),
            (self.resolved, IncidentEvent.RESOLVED, "after 1496s"),
        ]
        return [IncidentChange(t, ID, e, False, d) for t, e, d in steps if t is not None]


def _deliver(db_path: Path, key: str, channel: str, results: list[Delivery], state: NoticeState) -> None:
    ob = outbox.SqliteOutbox(db_path)
    try:
        ob.record(
            key, results, state, [d.target for d in results if d.status != DeliveryStatus.SUCCESS], None
        )
    finally:
        ob.close()


def write_outage(
    path: Path,
    site: Site,
    o: Outage,
    evidence: dict[str, dict[str, list[tuple[float, float]]]] | None = None,
    thinned: tuple[float, int] | None = None,
) -> Incident:
    """The outage in a new store at `path`, as the daemon would have left it; with `evidence`, those
    readings kept with it as the evidence keeper writes them (and `thinned`: the spacing it was thinned to
    and the readings that dropped)."""
    inc = o.incident()
    owed = [
        Owed(f"incident:{ID}/{Stage.DISPATCH}/oncall", ID, Stage.DISPATCH, "oncall", o.dispatched),
        Owed(f"incident:{ID}/{Stage.RESIDENTS_NOTICE}/residents", ID, Stage.RESIDENTS_NOTICE, "residents",
             o.opened + 60.0),
    ]  # fmt: skip
    if o.resolved is not None:
        owed.append(
            Owed(f"incident:{ID}/{Stage.ALL_CLEAR}/residents", ID, Stage.ALL_CLEAR, "residents", o.all_clear)
        )
    channels = site.config.notify.channels

    def notices(db: sqlite3.Connection) -> None:
        outbox.enqueue(db, owed, channels, o.opened)

    store = IncidentStore(path)
    outbox.SqliteOutbox(path).close()  # the outbox's tables, as the responder makes them at start
    try:
        writers: list[Callable[[sqlite3.Connection], None]] = [notices]
        if evidence is not None:
            rows = [(ID, d, q, t, v) for d, qs in evidence.items() for q, pts in qs.items() for t, v in pts]
            spacing, dropped = thinned if thinned is not None else (None, 0)
            writers.append(EvidenceWrite(rows, [], {ID: (spacing, dropped)}))
        store.write(Batch(incidents={ID: inc}, timeline=o.changes(), writers=writers))
        if o.down is not None:
            with sqlite3.connect(path) as db:  # what IncidentStore.start writes on the next start
                db.execute("INSERT INTO downtime(down_from, down_to, clean_stop) VALUES (?, ?, 0)", o.down)
    finally:
        store.close()
    ok, bad = DeliveryStatus.SUCCESS, DeliveryStatus.FAILURE
    dispatch = f"incident:{ID}/{Stage.DISPATCH}/oncall/team"
    _deliver(path, dispatch, "team", [
        Delivery(dispatch, "team", "json://127.0.0.1:9/a", ok, 1, o.dispatched + 0.5),
        Delivery(dispatch, "team", "json://127.0.0.1:9/b", bad, 3, o.dispatched + 36.0, "HTTP 500"),
    ], NoticeState.PARTIAL)  # fmt: skip
    notice = f"incident:{ID}/{Stage.RESIDENTS_NOTICE}/residents/residents"
    resident = "json://127.0.0.1:9/residents"
    _deliver(
        path,
        notice,
        "residents",
        [Delivery(notice, "residents", resident, ok, 1, o.informed)],
        NoticeState.SENT,
    )
    if o.resolved is not None:
        clear = f"incident:{ID}/{Stage.ALL_CLEAR}/residents/residents"
        delivered = [Delivery(clear, "residents", resident, ok, 1, o.all_clear)]
        _deliver(path, clear, "residents", delivered, NoticeState.SENT)
    return inc


def outage_evidence(o: Outage, step: float = 0.5) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """What the gateway keeps: 15 min before to 5 min after, every `step` seconds. B1-main's phases read
    0 V while the supply is off; B1-unit (line-powered) sends nothing then."""
    start, end = o.first_evidence - 900.0, (o.back or o.cause) + 300.0
    off_from, off_to = o.first_evidence, (o.back or float("inf"))
    times = [start + i * step for i in range(int((end - start) / step) + 1)]
    main: dict[str, list[tuple[float, float]]] = {q: [] for q in ("voltage_l1", "voltage_l2", "voltage_l3")}
    unit: list[tuple[float, float]] = []
    for t in times:
        off = off_from <= t < off_to
        for i, q in enumerate(main):
            main[q].append((t, 0.0 if off else 229.0 + i))
        if not off:
            unit.append((t, 228.5))
    return {"B1-main": main, "B1-unit": {"voltage": unit}}
