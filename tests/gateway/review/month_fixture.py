"""A month of synthetic incidents (November 2026, Asia/Shanghai) written into a real incident store the way
the daemon writes them: each moment's incident snapshots and timeline entries through IncidentStore.write
with a Batch, the notices owed through outbox.enqueue as one of that batch's writers, each target's
delivery through SqliteOutbox.record (the rows found with SqliteOutbox.due, as a sender finds them), and
the residents' votes through VoteStore.cast (the rating page's writer: a link that voted counts once).

Every scenario says its own truth (first evidence, opening, dispatch, acknowledgement, on site,
resolution, each notice's attempts per target, the votes), so a test can compute the month's figures from
the scenarios alone and compare them with the review's.

    site = make_site(tmp_path)
    month = november()                     # list[Scenario], ids in opening order
    write_month(site, tmp_path / "incidents.db", month)

The month: 35 real incidents across buildings B1, B2, B3 (power and water outages, some informed late or
never, a phase loss, pumps, sensors, communication faults, a fire and complaints reported on the
hotline, a failing notice channel, one nobody acknowledged, one still open at the month's end, one
running into December), two drills, one incident of 31 October running into November (October's, not
November's) and one merged into the site-wide outage of 17 November (its parent counts).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from gateway.config import Site, load_site
from gateway.incidents.store import Batch, IncidentStore
from gateway.respond import outbox
from gateway.respond.model import Delivery, DeliveryStatus, NoticeState, Owed, Stage
from gateway.web.vote_store import VoteStore
from rules.model import Incident, IncidentChange, IncidentEvent, IncidentState

TZ = "Asia/Shanghai"
ZONE = ZoneInfo(TZ)
MONTH = "2026-11"
HOUSEHOLDS = {"B1": 120, "B2": 80, "B3": 60}
CONFIRM_DELAY = {"power_outage": 180.0, "water_supply": 300.0}  # the site file's notify.confirm_delay
VERIFY_FOR = 600.0  # notify.verify_for: the all-clear this long after the resolution
CHAIN = (600.0, 1200.0, 1800.0)  # escalation steps after the dispatch: backup, supervisor, manager
CHAIN_ROLES = ("backup", "supervisor", "manager")
TARGET = 1800.0  # oncall.target: the step at 30 min records the target missed

SITE_YAML = """\
site: {id: garden, name: 翠园小区, timezone: Asia/Shanghai}
buildings:
  - {id: B1, name: 1号楼, households: 120,
     domains: [{id: B1-power, kind: power}, {id: B1-water, kind: water}]}
  - {id: B2, name: 2号楼, households: 80,
     domains: [{id: B2-power, kind: power}, {id: B2-water, kind: water}]}
  - {id: B3, name: 3号楼, households: 60,
     domains: [{id: B3-power, kind: power}, {id: B3-water, kind: water}]}
devices:
DEVICES
notify:
  hotline: "400-800-1234"
  confirm_delay: {power_outage: 3m, water_supply: 5m}
  verify_for: 10m
  channels:
    - {name: wecom-res, url: "json://127.0.0.1:9/res", audiences: [residents]}
    - {name: sms-b1, url: "json://127.0.0.1:9/sms", audiences: ["residents:B1"]}
    - {name: staff-bot, url: "json://127.0.0.1:9/staff",
       audiences: [staff, oncall, backup, supervisor, manager]}
oncall:
  people: [{id: wang, name: 王工}, {id: li, name: 李工}, {id: zhao, name: 赵主管}, {id: chen, name: 陈经理}]
  shifts: [{oncall: wang, backup: li}]
  supervisor: zhao
  manager: chen
  target: 30m
review: {inform_within: 15m, inform_share: 0.9, response_share: 0.9, satisfaction: 0.85}
"""


def _device_lines() -> str:
    lines = []
    for b, hh in HOUSEHOLDS.items():
        common = f"building: {b}, source: mqtt, expected_interval: 5s"
        lines += [
            f"  - {{id: {b}-main, domain: {b}-power, role: main_power, households: {hh}, {common}}}",
            f"  - {{id: {b}-m1, domain: {b}-power, role: unit_power, {common}}}",
            f"  - {{id: {b}-m2, domain: {b}-power, role: unit_power, {common}}}",
            f"  - {{id: {b}-p, domain: {b}-water, role: zone_pressure, {common}}}",
            f"  - {{id: {b}-pump, domain: {b}-water, role: pump, {common}}}",
        ]
    return "\n".join(lines)


def make_site(directory: Path) -> Site:
    path = directory / "site.yaml"
    path.write_text(SITE_YAML.replace("DEVICES", _device_lines()), encoding="utf-8")
    return load_site(path)


# Targets of each channel as the delivery log names them (apprise's privacy form of the URL).
TARGETS = {
    "wecom-res": ("json://127.0.0.1:9/res",),
    "sms-b1": ("sms://138****0001", "sms://138****0002"),
    "staff-bot": ("json://127.0.0.1:9/staff",),
}
SUCCESS, FAILURE, TIMEOUT = DeliveryStatus.SUCCESS, DeliveryStatus.FAILURE, DeliveryStatus.TIMEOUT


def local(text: str) -> float:
    """`2026-11-03 08:15` (site time) as epoch seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=ZONE).timestamp()


# ---- the scenario: what happened, with its own known times ----------------------------------------------
@dataclass(frozen=True)
class Attempt:
    at: float
    results: dict[str, DeliveryStatus]  # target -> what this attempt got (the targets tried)


@dataclass(frozen=True)
class Notice:
    """A notice owed at `owed_at` to `audiences`, and, per channel that serves them, its attempts."""

    stage: Stage
    audiences: tuple[str, ...]
    owed_at: float
    attempts: dict[str, tuple[Attempt, ...]]  # channel -> attempts, oldest first

    def final(self) -> list[tuple[str, str, DeliveryStatus]]:
        """(channel, target, latest status): what the delivery log keeps."""
        out = []
        for ch, tries in self.attempts.items():
            latest: dict[str, DeliveryStatus] = {}
            for a in tries:
                latest.update(a.results)
            out += [(ch, t, s) for t, s in latest.items()]
        return out

    def first_success(self) -> float | None:
        done = [a.at for tries in self.attempts.values() for a in tries for s in a.results.values()
                if s == SUCCESS]  # fmt: skip
        return min(done) if done else None


@dataclass(frozen=True)
class Vote:
    """A resident's tap on the all-clear's rating link `token`; a link that voted already counts once."""

    at: float
    rating: str
    token: str
    comment: str = ""


@dataclass(frozen=True)
class Scenario:
    name: str
    category: str
    event_code: str
    severity: str
    scope: str
    buildings: tuple[str, ...]  # what the incident touches (a site-wide one: every building)
    devices: tuple[str, ...]  # its symptom devices
    households: int
    audiences: tuple[str, ...]
    first_evidence: float
    opened: float
    resolved: float | None
    dispatched: float | None = None
    acked: float | None = None
    on_site: float | None = None
    escalations: tuple[float, ...] = ()
    target_missed: float | None = None
    notices: tuple[Notice, ...] = ()
    votes: tuple[Vote, ...] = ()
    manual: bool = False
    drill: bool = False
    merged_into: str | None = None  # the name of the scenario it was merged into
    cause: str = ""
    id: int = 0  # set by november(): opening order


# ---- building a scenario from a row of the month ----------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    category: str
    event_code: str
    severity: str
    detect_s: float  # first evidence to opening
    audiences: tuple[str, ...]
    dispatched: bool
    manual: bool = False


KINDS = {
    "power": Kind("power_outage", "003", "critical", 45, ("residents", "staff", "utility"), True),
    "water": Kind("water_supply", "003", "major", 120, ("residents", "staff"), True),
    "phase": Kind("phase_loss", "003", "major", 60, ("staff",), True),
    "comm": Kind("comm_fault", "003", "minor", 300, ("staff",), False),
    "pump": Kind("pump_fault", "003", "major", 30, ("staff",), True),
    "sensor": Kind("sensor_fault", "003", "minor", 600, ("staff",), False),
    "fire": Kind("fire", "002", "critical", 0, ("staff",), True, manual=True),
    "complaint": Kind("complaint", "005", "major", 0, ("staff",), True, manual=True),
    "channel": Kind("notify_channel", "006", "major", 0, ("staff",), False, manual=True),
}
ACK_S, ON_SITE_S, RESTORE_S = 13.0, 41.0, 29.0  # seconds past the row's whole minutes: times are not round


def _where(kind: str, where: str) -> tuple[str, tuple[str, ...], tuple[str, ...], int]:
    """(scope, buildings, symptom devices, households) of a kind of incident at `where` (a building, a
    device, `site`, or devices joined by +)."""
    if where == "site":
        return "site", tuple(HOUSEHOLDS), tuple(f"{b}-main" for b in HOUSEHOLDS), sum(HOUSEHOLDS.values())
    if kind == "power":
        return (
            f"domain:{where}-power",
            (where,),
            (f"{where}-main", f"{where}-m1", f"{where}-m2"),
            HOUSEHOLDS[where],
        )
    if kind == "water":
        return f"domain:{where}-water", (where,), (f"{where}-p",), HOUSEHOLDS[where]
    if kind == "phase":
        return f"domain:{where}-power", (where,), (f"{where}-main",), HOUSEHOLDS[where] // 3
    if kind in ("fire", "complaint"):
        return f"building:{where}", (where,), (), HOUSEHOLDS[where]
    if kind == "channel":
        return "site", tuple(HOUSEHOLDS), (f"channel:{where}",), 0
    if "+" in where:  # a communication fault of several devices: the connection they share
        devices = tuple(where.split("+"))
        return "source:mqtt", tuple(sorted({d.split("-")[0] for d in devices})), devices, 0
    return f"device:{where}", (where.split("-")[0],), (where,), 0


def _staff(stage: Stage, audience: str, at: float, tries: tuple[Attempt, ...] = ()) -> Notice:
    target = TARGETS["staff-bot"][0]
    return Notice(stage, (audience,), at, {"staff-bot": tries or (Attempt(at + 3, {target: SUCCESS}),)})


def _residents_notice(plan: str, buildings: tuple[str, ...], owed: float, first: float) -> Notice:
    """The residents' first notice, per channel serving the buildings: `ok` delivered at once, `late`
    delivered only after retries past 15 min, `failed` never delivered, `partial` one SMS number failing."""
    res, sms = TARGETS["wecom-res"][0], TARGETS["sms-b1"]
    attempts: dict[str, tuple[Attempt, ...]] = {}
    if plan in ("ok", "partial"):
        attempts["wecom-res"] = (Attempt(owed + 20, {res: SUCCESS}),)
    elif plan == "late":
        attempts["wecom-res"] = (Attempt(owed + 20, {res: TIMEOUT}), Attempt(first + 1260, {res: SUCCESS}))
    elif plan == "failed":
        attempts["wecom-res"] = tuple(Attempt(owed + d, {res: FAILURE}) for d in (20, 80, 200))
    if "B1" in buildings:
        if plan == "ok":
            attempts["sms-b1"] = (Attempt(owed + 30, dict.fromkeys(sms, SUCCESS)),)
        elif plan == "partial":
            attempts["sms-b1"] = (
                Attempt(owed + 30, {sms[0]: SUCCESS, sms[1]: FAILURE}),
                Attempt(owed + 150, {sms[1]: FAILURE}),
            )
        elif plan == "late":
            attempts["sms-b1"] = (
                Attempt(owed + 25, dict.fromkeys(sms, FAILURE)),
                Attempt(first + 1100, dict.fromkeys(sms, SUCCESS)),
            )
        elif plan == "failed":
            attempts["sms-b1"] = (Attempt(owed + 25, dict.fromkeys(sms, FAILURE)),)
    return Notice(Stage.RESIDENTS_NOTICE, tuple(f"residents:{b}" for b in buildings), owed, attempts)


def _all_clear(buildings: tuple[str, ...], at: float) -> Notice:
    attempts: dict[str, tuple[Attempt, ...]] = {
        "wecom-res": (Attempt(at + 10, {TARGETS["wecom-res"][0]: SUCCESS}),)
    }
    if "B1" in buildings:
        attempts["sms-b1"] = (Attempt(at + 15, dict.fromkeys(TARGETS["sms-b1"], SUCCESS)),)
    return Notice(Stage.ALL_CLEAR, tuple(f"residents:{b}" for b in buildings), at, attempts)


_RATINGS = {"s": "satisfied", "n": "neutral", "u": "unsatisfied"}


def scenario(
    when: str,
    kind: str,
    where: str,
    ack_min: float | None = None,
    on_site_min: float | None = None,
    restore_min: float | None = None,
    plan: str = "",
    votes: str = "",
    *,
    drill: bool = False,
    title: str = "",
) -> Scenario:
    """One incident from a row of the month: `when` its first evidence (`11-05 10:30`, or a full date),
    the acknowledgement and on-site minutes after the dispatch, the restoration minutes after the first
    evidence (None: still open), the residents' notice plan (see _residents_notice), the votes (s/n/u)."""
    k = KINDS[kind]
    first = local(when if when.startswith("20") else f"2026-{when}")
    opened = first + k.detect_s
    scope, buildings, devices, households = _where(kind, where)
    resolved = None if restore_min is None else first + restore_min * 60 + RESTORE_S
    dispatched = opened if (k.dispatched or drill) else None
    acked = on_site = None
    if dispatched is not None and ack_min is not None:
        acked = dispatched + ack_min * 60 + ACK_S
    if dispatched is not None and on_site_min is not None:
        on_site = dispatched + on_site_min * 60 + ON_SITE_S
    escalations: tuple[float, ...] = ()
    missed = None
    if dispatched is not None:
        stop = acked if acked is not None else (resolved if resolved is not None else float("inf"))
        escalations = tuple(dispatched + s for s in CHAIN if dispatched + s < stop)
        missed = dispatched + TARGET if dispatched + TARGET < stop else None
    notices = [_staff(Stage.STAFF_OPEN, "staff", opened)]
    if dispatched is not None:
        notices.append(_staff(Stage.DISPATCH, "oncall", dispatched))
        notices += [
            _staff(Stage.ESCALATION, role, t) for t, role in zip(escalations, CHAIN_ROLES, strict=False)
        ]
    if missed is not None:
        notices.append(_staff(Stage.TARGET_MISSED, "staff", missed))
    told = False
    if plan and not drill and k.category in CONFIRM_DELAY:
        owed = opened + CONFIRM_DELAY[k.category]
        if resolved is None or resolved > owed:  # the policy owes nothing to an outage over by then
            notices.append(_residents_notice(plan, buildings, owed, first))
            told = True
    vote_list: list[Vote] = []
    if resolved is not None:
        notices.append(_staff(Stage.RESOLVED, "staff", resolved))
        if told:
            clear = resolved + VERIFY_FOR
            notices.append(_all_clear(buildings, clear))
            vote_list = [Vote(clear + 300 + 420 * i, _RATINGS[c], f"{when}/{i}") for i, c in enumerate(votes)]
    name = f"{when} {kind} {where}" + (" drill" if drill else "")
    return Scenario(
        name=name, category=k.category, event_code=k.event_code, severity=k.severity, scope=scope,
        buildings=buildings, devices=devices, households=households,
        audiences=("staff",) if drill else k.audiences, first_evidence=first, opened=opened,
        resolved=resolved, dispatched=dispatched, acked=acked, on_site=on_site, escalations=escalations,
        target_missed=missed, notices=tuple(notices), votes=tuple(vote_list), manual=k.manual or drill,
        drill=drill, cause=title,
    )  # fmt: skip


def november() -> list[Scenario]:
    """The month, ids given in opening order (as the engine numbers incidents)."""
    rows = [
        # the end of October: runs into November, counts in October
        scenario("2026-10-31 23:30", "power", "B2", 5, 20, 90, "ok", "s"),
        scenario("11-01 07:42", "power", "B1", 4, 18, 95, "ok", "ssn"),
        scenario("11-02 14:10", "water", "B2", 9, 26, 140, "ok", "ss"),
        scenario("11-03 03:25", "comm", "B3-m2", restore_min=35),
        scenario("11-04 19:05", "power", "B3", 6, 21, 62, "ok", "sss"),
        scenario("11-05 10:30", "complaint", "B1", 12, 40, 180),
        scenario("11-06 22:48", "phase", "B2", 15, 33, 75),
        scenario("11-07 08:05", "water", "B1", 3, 15, 210, "late", "nu"),
        scenario("11-08 16:20", "pump", "B3-pump", 22, 48, 130),
        scenario("11-09 02:10", "power", "B2", 29, 55, 150, "ok", "su"),
        scenario("11-10 11:45", "sensor", "B1-p", restore_min=300),
        scenario("11-11 09:00", "power", "B1", 1, 10, 2, "ok"),  # over before the residents' delay
        scenario("11-12 10:00", "power", "B1", 5, 14, 30, drill=True),
        scenario("11-12 13:30", "water", "B3", 5, 30, 95, "failed", "u"),
        scenario("11-13 18:15", "comm", "B2-m1", restore_min=20),
        scenario("11-14 07:00", "fire", "B2", 2, 9, 65),
        scenario("11-15 20:40", "power", "B3", 8, 24, 48, "ok", "ss"),
        scenario("11-16 05:55", "water", "B2", 28, 52, 260, "late", "nnu"),
        scenario("11-17 12:12", "power", "site", 5, 20, 85, "partial", "sssnu"),
        scenario("11-17 12:12:30", "power", "B2", 6, 21, 84),  # merged into the site-wide outage
        scenario("11-18 09:35", "pump", "B1-pump", 11, 35, 90),
        scenario("11-19 03:00", "pump", "B3-pump", restore_min=50),  # nobody acknowledged: the chain ran out
        scenario("11-19 23:10", "comm", "B1-m2", restore_min=15),
        scenario("11-20 15:00", "water", "B3", 7, 22, 120, "ok", "ss"),
        scenario("11-21 04:30", "power", "B2", 45, 70, 160, "ok", "u"),
        scenario("11-22 10:05", "phase", "B1", 10, 25, 55),
        scenario("11-23 17:50", "power", "B1", 6, 19, 70, "ok", "ssss"),
        scenario("11-24 08:40", "sensor", "B2-p", restore_min=45),
        scenario("11-25 13:25", "water", "B1", 14, 31, 100, "ok", "sn"),
        scenario("11-25 21:00", "complaint", "B3", 20, 45, 90),
        scenario("11-26 06:15", "power", "B3", 4, 17, 58, "ok", "s"),
        scenario("11-26 15:00", "water", "B3", 12, 25, 40, drill=True),
        scenario("11-27 11:10", "comm", "B1-m1+B1-m2+B2-m1", restore_min=25),
        scenario("11-27 19:45", "water", "B2", 17, 38, 75, "failed"),
        scenario("11-28 09:20", "pump", "B2-pump", 26, 50, 110),
        scenario("11-28 22:05", "power", "B2", 3, 16, 40, "ok", "ss"),
        scenario("11-29 14:50", "comm", "B3-m1"),  # still open
        scenario("11-29 16:00", "channel", "sms-b1", restore_min=30),
        scenario("11-30 23:40", "power", "B1", 7, 22, 70, "ok", "sn"),  # resolved in December
    ]
    ordered = sorted(rows, key=lambda s: (s.opened, s.name))
    out = [replace(s, id=i) for i, s in enumerate(ordered, start=1)]
    merged = next(s for s in out if s.name == "11-17 12:12:30 power B2")
    parent = next(s for s in out if s.name == "11-17 12:12 power site")
    # a resident taps the same link again an hour later, changing their mind: the first vote stands
    first = parent.votes[0]
    again = Vote(first.at + 3600, "unsatisfied", first.token, "still no lift")
    out = [replace(s, votes=(*s.votes, again)) if s is parent else s for s in out]
    # merged 20 s after it opened: it never got further than the staff's first notice
    absorbed = replace(
        merged, merged_into=parent.name, dispatched=None, acked=None, on_site=None, escalations=(),
        target_missed=None, resolved=None, notices=merged.notices[:1], votes=(),
    )  # fmt: skip
    return [absorbed if s is merged else s for s in out]


# ---- writing it as the daemon does ------------------------------------------------------------------------
@dataclass
class _Writer:
    site: Site
    store: IncidentStore
    senders: outbox.SqliteOutbox
    incidents: dict[int, Incident] = field(default_factory=dict)

    def batch(self, t: float, inc: Incident | None = None, timeline: list[IncidentChange] | None = None,
              owed: list[Owed] | None = None) -> None:  # fmt: skip
        channels = self.site.config.notify.channels
        b = Batch(timeline=list(timeline or []), heartbeat=t)
        if inc is not None:
            inc.updated_at = t
            b.incidents[inc.id] = inc
        if owed:

            def enqueue(db: sqlite3.Connection) -> None:
                outbox.enqueue(db, owed, channels, t)

            b.writers.append(enqueue)
        self.store.write(b)

    def attempt(
        self, s: Scenario, n: Notice, channel: str, a: Attempt, last: bool, following: float | None
    ) -> None:
        """One sender's try at one row: the row as the sender finds it due, each tried target's result."""
        rows = [
            r for r in self.senders.due(channel, a.at, 1000)
            if r.incident_id == s.id and r.stage == n.stage and r.audience in n.audiences
        ]  # fmt: skip
        assert len(rows) == 1, f"{s.name}: {n.stage} on {channel} at {a.at}: due rows {rows}"
        row = rows[0]
        done = {d.target: d for d in self.senders.deliveries(s.id) if d.notice_key == row.key}
        deliveries = [
            Delivery(row.key, channel, target, status, (done[target].attempts if target in done else 0) + 1,
                     a.at, "" if status == SUCCESS else f"{status} from the channel")
            for target, status in a.results.items()
        ]  # fmt: skip
        latest = {t: d.status for t, d in done.items()} | dict(a.results)
        failed = sorted(t for t, st in latest.items() if st != SUCCESS)
        if not failed:
            state, nxt = NoticeState.SENT, None
        elif last:
            state, nxt = NoticeState.FAILED, None  # given up on (the notice expired)
        else:
            state, nxt = NoticeState.PARTIAL, following
        self.senders.record(row.key, deliveries, state, failed, nxt)


def _owed(s: Scenario, n: Notice) -> list[Owed]:
    return [
        Owed(f"incident:{s.id}/{n.stage}/{aud}", s.id, n.stage, aud, n.owed_at, {"incident": {"id": s.id}})
        for aud in n.audiences
    ]


def _incident(s: Scenario) -> Incident:
    return Incident(
        id=s.id, key=f"manual/{s.id}" if s.manual else f"{s.category}/{s.scope}", category=s.category,
        scope=s.scope, title=s.cause or f"{s.category.replace('_', ' ')}: {s.scope}", severity=s.severity,
        event_code=s.event_code, audiences=list(s.audiences), households=s.households,
        state=IncidentState.FIRING, opened_at=s.opened, first_evidence_at=s.first_evidence,
        updated_at=s.opened, symptoms={d: [f"{s.category}.rule"] for d in s.devices}, manual=s.manual,
        drill=s.drill, evidence=[f"synthetic scenario {s.name}"],
    )  # fmt: skip


def write_month(site: Site, path: Path, scenarios: list[Scenario]) -> None:
    """Write every scenario into the store at `path`, moment by moment in time order across all of them."""
    store = IncidentStore(path)
    store.start(min(s.first_evidence for s in scenarios) - 3600, [], "started")
    senders = outbox.SqliteOutbox(path)  # creates the respond side's tables, as the daemon's start does
    w = _Writer(site, store, senders)
    by_name = {s.name: s for s in scenarios}
    steps: list[tuple[float, int, Callable[[], object]]] = []

    def at(t: float, fn: Callable[[], object]) -> None:
        steps.append((t, len(steps), fn))

    for s in scenarios:
        inc = _incident(s)
        w.incidents[s.id] = inc
        _plan(s, inc, w, at, by_name)
    votes = VoteStore(path)
    for s in scenarios:
        for v in s.votes:
            at(v.at, functools.partial(votes.cast, v.token, s.id, v.rating, v.comment, v.at))
    try:
        for _, _, fn in sorted(steps, key=lambda x: (x[0], x[1])):
            fn()
    finally:
        senders.close()
        store.close()


def _plan(
    s: Scenario,
    inc: Incident,
    w: _Writer,
    at: Callable[[float, Callable[[], object]], None],
    by_name: dict[str, Scenario],
) -> None:
    """Every moment of one scenario as a write of the daemon's."""
    notices = {n.stage: n for n in s.notices if n.stage in (Stage.STAFF_OPEN, Stage.DISPATCH)}

    def change(t: float, event: IncidentEvent, detail: str = "", notify: bool = False) -> IncidentChange:
        return IncidentChange(t, s.id, event, notify, detail)

    def open_() -> None:
        tl = [change(s.opened, IncidentEvent.OPENED, inc.title, True)]
        owed = _owed(s, notices[Stage.STAFF_OPEN])
        if s.dispatched == s.opened:  # the dispatcher answers the opening in the same round
            tl.append(change(s.opened, IncidentEvent.DISPATCHED, "oncall: 王工"))
            owed += _owed(s, notices[Stage.DISPATCH])
        w.batch(s.opened, inc, tl, owed)

    at(s.opened, open_)
    for n in s.notices:
        if n.stage in (Stage.RESIDENTS_NOTICE, Stage.ALL_CLEAR):  # owed by the policy's timers
            at(n.owed_at, functools.partial(w.batch, n.owed_at, owed=_owed(s, n)))
        for channel, tries in n.attempts.items():
            for i, a in enumerate(tries):
                last = i == len(tries) - 1
                following = None if last else tries[i + 1].at
                at(a.at, functools.partial(w.attempt, s, n, channel, a, last, following))
    escalation = [n for n in s.notices if n.stage == Stage.ESCALATION]
    for step, (t, n) in enumerate(zip(s.escalations, escalation, strict=True), start=1):
        escalated = change(t, IncidentEvent.ESCALATED, f"step {step}: {n.audiences[0]}")
        at(t, functools.partial(w.batch, t, timeline=[escalated], owed=_owed(s, n)))
    missed = next((n for n in s.notices if n.stage == Stage.TARGET_MISSED), None)
    if s.target_missed is not None and missed is not None:
        t_m = s.target_missed
        missed_change = change(t_m, IncidentEvent.TARGET_MISSED, "nobody acknowledged within 30 min")
        at(t_m, lambda: w.batch(t_m, timeline=[missed_change], owed=_owed(s, missed)))
    if s.acked is not None:
        t_a = s.acked
        at(t_a, lambda: w.batch(t_a, timeline=[change(t_a, IncidentEvent.ACKNOWLEDGED, "by wang via link")]))
    if s.on_site is not None:
        t_o = s.on_site
        at(t_o, lambda: w.batch(t_o, timeline=[change(t_o, IncidentEvent.ON_SITE, "by wang")]))
    if s.merged_into is not None:
        parent = by_name[s.merged_into]
        t_g = s.opened + 20  # the correlator finds the site-wide root a moment later

        def merge() -> None:
            inc.state, inc.merged_into = IncidentState.MERGED, parent.id
            w.batch(t_g, inc, [change(t_g, IncidentEvent.MERGED, f"into incident {parent.id}")])
            up = w.incidents[parent.id]
            up.absorbed.append(s.id)
            w.batch(
                t_g, up, [IncidentChange(t_g, parent.id, IncidentEvent.ABSORBED, False, f"incident {s.id}")]
            )

        at(t_g, merge)
        return
    if s.resolved is not None:
        t_r = s.resolved
        resolved = next(n for n in s.notices if n.stage == Stage.RESOLVED)

        def resolve() -> None:
            inc.state, inc.resolved_at = IncidentState.RESOLVED, t_r
            w.batch(t_r, inc, [change(t_r, IncidentEvent.RESOLVED, "supply back", True)], _owed(s, resolved))

        at(t_r, resolve)
