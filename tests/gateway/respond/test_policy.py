"""The notice policy in virtual time: who is owed what, when, from real engine runs (run_replay) and from
incidents built by hand. Nothing here starts a service or sleeps.

Times: T0 is 2025-10-09 16:53:20 in Asia/Shanghai (the test sites' zone), outside the quiet hours.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.config import Site, load_site
from gateway.config.notify import MaintenanceWindow
from gateway.core.types import Sample
from gateway.incidents.replay import ReplayResult, run_replay
from gateway.respond.model import Owed, Stage
from gateway.respond.policy import NO_INCIDENT, NoticePolicy, Notices
from rules.model import Incident, IncidentChange, IncidentEvent, IncidentState

T0 = 1_760_000_000.0
SHANGHAI = ZoneInfo("Asia/Shanghai")

SITE = """\
site: {{id: pol, timezone: Asia/Shanghai}}
buildings:
  - {{id: B1, households: 40, domains: [{{id: B1-power, kind: power}}, {{id: B1-water, kind: water}}]}}
  - {{id: B2, households: 30, domains: [{{id: B2-power, kind: power}}]}}
{extra}
devices:
  - {{id: gw-ups, building: B1, source: mqtt, expected_interval: 1s}}
  - {{id: B1-main, building: B1, domain: B1-power, role: main_power, households: 40, source: mqtt,
     expected_interval: 1s}}
  - {{id: B2-main, building: B2, domain: B2-power, role: main_power, households: 30, source: mqtt,
     expected_interval: 1s}}
  - {{id: B1-p, building: B1, domain: B1-water, role: zone_pressure, source: mqtt, expected_interval: 1s}}
notify:
  hotline: "400-000"
{notify}
"""


def make_site(tmp_path: Path, notify: str = "", extra: str = "") -> Site:
    path = tmp_path / "site.yaml"
    path.write_text(SITE.format(notify=notify, extra=extra), encoding="utf-8")
    return load_site(path)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


def local(text: str) -> float:
    """A Shanghai wall-clock time as epoch seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI).timestamp()


# ---- traces through the real engine ------------------------------------------------------------------------
def v3(v: float) -> dict[str, float]:
    return {"voltage_l1": v, "voltage_l2": v, "voltage_l3": v}


def trace(
    seconds: int,
    b1_off: Callable[[int], bool] = lambda i: False,
    b2_off: Callable[[int], bool] = lambda i: False,
    mains_off: Callable[[int], bool] = lambda i: False,
    water_off: Callable[[int], bool] = lambda i: False,
    start: float = T0,
) -> list[Sample]:
    """Every device reports each second: the main meters 0 V while off (else 230 V), the gateway's mains
    sensor 0 while off, the B1 water pressure 0.2 bar while off (else 3 bar)."""
    out = []
    for i in range(seconds):
        t = start + i
        out.append(Sample("B1-main", t, v3(0.0 if b1_off(i) else 230.0)))
        out.append(Sample("B2-main", t, v3(0.0 if b2_off(i) else 230.0)))
        out.append(Sample("gw-ups", t, {"mains_present": 0.0 if mains_off(i) else 1.0}))
        out.append(Sample("B1-p", t, {"pressure": 0.2 if water_off(i) else 3.0}))
    return out


def between(*spans: tuple[int, int]) -> Callable[[int], bool]:
    return lambda i: any(a <= i < b for a, b in spans)


@dataclass
class Log:
    """Everything a policy owed and cancelled, in order."""

    owed: list[Owed] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def add(self, n: Notices) -> Notices:
        self.owed.extend(n.owed)
        self.cancelled.extend(n.cancelled)
        return n

    def of(self, stage: Stage | None = None) -> list[str]:
        return [o.key for o in self.owed if stage is None or o.stage == stage]

    def one(self, key: str) -> Owed:
        [o] = [o for o in self.owed if o.key == key]
        return o


def replay(site: Site, samples: list[Sample], tail: float = 0.0) -> ReplayResult:
    return run_replay(site, samples, tail=tail)


def drive(policy: NoticePolicy, result: ReplayResult, until: float, log: Log | None = None) -> Log:
    """Feed the run's transitions up to `until` step by step (one feed per engine instant, as the daemon's
    batches), then tick on to `until`."""
    log = log or Log()
    changes = [t for t in result.transitions if isinstance(t, IncidentChange) and t.ts <= until]
    i = 0
    while i < len(changes):
        ts = changes[i].ts
        step = []
        while i < len(changes) and changes[i].ts == ts:
            step.append(changes[i])
            i += 1
        log.add(policy.tick(ts))
        log.add(policy.feed(step, result.engine.incidents))
    log.add(policy.tick(until))
    return log


def opened(result: ReplayResult, category: str = "power_outage") -> Incident:
    [inc] = [i for i in result.incidents(include_merged=True) if i.category == category and not i.merged_into]
    return inc


# ---- incidents by hand -------------------------------------------------------------------------------------
class Hand:
    """Transitions of hand-made incidents fed to a policy, as the engine would send them."""

    def __init__(self, policy: NoticePolicy) -> None:
        self.policy = policy
        self.incidents: dict[int, Incident] = {}
        self.log = Log()

    def open(
        self,
        ts: float,
        inc_id: int = 1,
        category: str = "power_outage",
        scope: str = "domain:B1-power",
        severity: str = "critical",
        audiences: tuple[str, ...] = ("residents", "staff", "utility"),
    ) -> Incident:
        inc = Incident(
            id=inc_id, key=f"{category}/{scope}", category=category, scope=scope, title=f"{category} {scope}",
            severity=severity, event_code="001", audiences=list(audiences), households=40,
            state=IncidentState.FIRING, opened_at=ts, first_evidence_at=ts - 5, updated_at=ts,
        )  # fmt: skip
        self.incidents[inc_id] = inc
        self.send(ts, inc_id, IncidentEvent.OPENED)
        return inc

    def send(self, ts: float, inc_id: int, event: IncidentEvent, detail: str = "") -> Notices:
        inc = self.incidents[inc_id]
        if event in (IncidentEvent.REFIRED, IncidentEvent.REOPENED):
            inc.state, inc.resolved_at = IncidentState.FIRING, None
        elif event == IncidentEvent.RECOVERING:
            inc.state = IncidentState.RECOVERING
        elif event == IncidentEvent.RESOLVED:
            inc.state, inc.resolved_at = IncidentState.RESOLVED, ts
        elif event == IncidentEvent.MERGED:
            inc.state = IncidentState.MERGED
        self.log.add(self.policy.tick(ts))
        return self.log.add(
            self.policy.feed([IncidentChange(ts, inc_id, event, False, detail)], self.incidents)
        )

    def tick(self, ts: float) -> Notices:
        return self.log.add(self.policy.tick(ts))


# ---- staff and the residents' first notice -----------------------------------------------------------------
def test_staff_hear_at_once_residents_and_utility_after_three_minutes_of_power_outage(site: Site) -> None:
    result = replay(site, trace(900, b1_off=between((20, 600))))
    inc = opened(result)
    assert inc.scope == "domain:B1-power"
    policy = NoticePolicy(site)
    log = drive(policy, result, inc.opened_at + 179.0)
    staff = log.one(f"incident:{inc.id}/staff_open/staff")
    assert staff.due_at == inc.opened_at
    assert staff.context["planned"] is False
    assert staff.context["incident"]["state"] == "firing"  # as it was then, not as the run ended
    assert staff.context["incident"]["resolved_local"] is None
    assert log.of(Stage.RESIDENTS_NOTICE) == []  # not before the delay
    log.add(policy.tick(inc.opened_at + 180.0))
    [notice] = [o for o in log.owed if o.stage == Stage.RESIDENTS_NOTICE]
    assert notice.key == f"incident:{inc.id}/residents_notice/residents:B1"  # B1 only: B2 has power
    assert notice.due_at == inc.opened_at + 180.0
    assert notice.context["incident"]["id"] == inc.id
    assert notice.context["site"]["hotline"] == "400-000"
    report = log.one(f"incident:{inc.id}/utility_report/utility:power")
    assert report.due_at == inc.opened_at + 180.0
    json.dumps([o.context for o in log.owed])  # every context is JSON-able


def test_water_outage_reaches_residents_after_five_minutes(site: Site) -> None:
    result = replay(site, trace(900, water_off=between((30, 800))))
    inc = opened(result, "water_supply")
    policy = NoticePolicy(site)
    log = drive(policy, result, inc.opened_at + 299.0)
    assert log.of(Stage.RESIDENTS_NOTICE) == []
    log.add(policy.tick(inc.opened_at + 300.0))
    assert log.of(Stage.RESIDENTS_NOTICE) == [f"incident:{inc.id}/residents_notice/residents:B1"]
    assert log.of(Stage.UTILITY_REPORT) == [f"incident:{inc.id}/utility_report/utility:water"]


def test_an_outage_over_within_the_delay_tells_only_staff(site: Site) -> None:
    result = replay(site, trace(600, b1_off=between((20, 100))))  # opens at 25 s, back at 100 s
    inc = opened(result)
    assert inc.state == IncidentState.RESOLVED
    log = drive(NoticePolicy(site), result, T0 + 5000)
    assert sorted(log.of()) == [f"incident:{inc.id}/resolved/staff", f"incident:{inc.id}/staff_open/staff"]
    assert inc.resolved_at is not None
    resolved = log.one(f"incident:{inc.id}/resolved/staff")
    assert resolved.context["duration_s"] == round(inc.resolved_at - inc.opened_at)


def test_an_outage_recovering_at_the_end_of_the_delay_owes_residents_nothing(tmp_path: Path) -> None:
    # a long clear hold: back at 150 s, recovering through the deadline (205 s), resolved at 450 s
    rules = (
        "rules:\n  - {id: power.outage, kind: polyphase, check: outage, category: power_outage, "
        "severity: critical, audiences: [staff, residents, utility], match: {roles: [main_power]}, "
        "for: 5s, clear_for: 5m}"
    )
    site = make_site(tmp_path, extra=rules)
    result = replay(site, trace(800, b1_off=between((20, 150))))
    inc = opened(result)
    assert inc.resolved_at == T0 + 450
    log = drive(NoticePolicy(site), result, T0 + 5000)
    assert log.of(Stage.RESIDENTS_NOTICE) == [] and log.of(Stage.UTILITY_REPORT) == []
    assert log.of(Stage.ALL_CLEAR) == []
    assert log.of(Stage.RESOLVED) == [f"incident:{inc.id}/resolved/staff"]


def test_a_recovering_outage_that_fires_again_after_the_delay_is_confirmed_then(tmp_path: Path) -> None:
    rules = (
        "rules:\n  - {id: power.outage, kind: polyphase, check: outage, category: power_outage, "
        "severity: critical, audiences: [staff, residents, utility], match: {roles: [main_power]}, "
        "for: 5s, clear_for: 5m}"
    )
    site = make_site(tmp_path, extra=rules)
    result = replay(site, trace(900, b1_off=between((20, 150), (300, 600))))
    inc = opened(result)
    log = drive(NoticePolicy(site), result, T0 + 900)
    refired = [c.ts for c in result.timeline(inc.id) if c.event == IncidentEvent.REFIRED]
    assert refired and refired[0] > inc.opened_at + 180
    notice = log.one(f"incident:{inc.id}/residents_notice/residents:B1")
    assert notice.due_at == refired[0]


# ---- flaps, reopenings, absorption -------------------------------------------------------------------------
def test_a_flapping_outage_owes_one_notice_one_all_clear_and_staff_one_flapping(site: Site) -> None:
    off = between((20, 300), (310, 400), (410, 500), (510, 600))
    result = replay(site, trace(1000, b1_off=off))
    inc = opened(result)
    events = [c.event for c in result.timeline(inc.id)]
    assert events.count(IncidentEvent.REFIRED) == 3 and IncidentEvent.FLAPPING in events
    log = drive(NoticePolicy(site), result, T0 + 4000)
    assert log.of(Stage.RESIDENTS_NOTICE) == [f"incident:{inc.id}/residents_notice/residents:B1"]
    assert log.of(Stage.FLAPPING) == [f"incident:{inc.id}/flapping/staff"]
    assert inc.resolved_at is not None
    [clear] = [o for o in log.owed if o.stage == Stage.ALL_CLEAR]
    assert clear.due_at == inc.resolved_at + 600
    assert clear.context["duration_s"] == round(inc.resolved_at - inc.opened_at)


def test_a_reopening_before_the_all_clear_owes_no_second_notice_and_delays_the_all_clear(site: Site) -> None:
    # out 20-400 s (resolved at 460 s), back out at 700 s (within verify_for of 600 s), resolved again
    result = replay(site, trace(2000, b1_off=between((20, 400), (700, 1000))))
    inc = opened(result)
    timeline = result.timeline(inc.id)
    assert [c.event for c in timeline].count(IncidentEvent.REOPENED) == 1
    first_resolved = next(c.ts for c in timeline if c.event == IncidentEvent.RESOLVED)
    policy = NoticePolicy(site)
    log = drive(policy, result, first_resolved + 600 + 1)
    assert log.of(Stage.RESIDENTS_NOTICE) == [f"incident:{inc.id}/residents_notice/residents:B1"]
    assert log.of(Stage.ALL_CLEAR) == []  # it reopened before its all-clear
    assert inc.resolved_at is not None and inc.resolved_at > first_resolved
    log.add(policy.tick(inc.resolved_at + 599))
    assert log.of(Stage.ALL_CLEAR) == []
    log.add(policy.tick(inc.resolved_at + 600))
    assert log.of(Stage.ALL_CLEAR) == [f"incident:{inc.id}/all_clear/residents:B1"]
    assert log.of(Stage.RESIDENTS_NOTICE) == [f"incident:{inc.id}/residents_notice/residents:B1"]
    assert len(log.of(Stage.STAFF_OPEN)) == 1 and len(log.of(Stage.RESOLVED)) == 1


def test_a_reopening_after_the_all_clear_owes_residents_nothing_more(site: Site) -> None:
    # resolved at 460 s, all-clear at 1060 s, back out at 1200 s: within the reopen window (30 min)
    result = replay(site, trace(2200, b1_off=between((20, 400), (1200, 1500))))
    inc = opened(result)
    assert inc.reopen_count == 1
    log = drive(NoticePolicy(site), result, T0 + 6000)
    assert log.of(Stage.RESIDENTS_NOTICE) == [f"incident:{inc.id}/residents_notice/residents:B1"]
    [clear] = [o for o in log.owed if o.stage == Stage.ALL_CLEAR]
    assert clear.due_at == T0 + 460 + 600


def test_a_reopening_of_an_outage_residents_never_heard_of_runs_the_delay_from_the_reopening(
    site: Site,
) -> None:
    hand = Hand(NoticePolicy(site))
    hand.open(T0)
    hand.send(T0 + 100, 1, IncidentEvent.RESOLVED)  # over within the delay: residents never heard
    hand.send(T0 + 400, 1, IncidentEvent.REOPENED, "recurrence #1")
    assert hand.log.of(Stage.RESIDENTS_NOTICE) == []  # not at once, although opened_at + 180 s is past
    hand.tick(T0 + 579)
    assert hand.log.of(Stage.RESIDENTS_NOTICE) == []
    hand.tick(T0 + 580)
    assert hand.log.one("incident:1/residents_notice/residents:B1").due_at == T0 + 580


MAINS = "gateway:\n  mains: {device: gw-ups, quantity: mains_present, below: 0.5}"


def test_an_absorbed_incident_never_notifies_its_parent_carries_on(tmp_path: Path) -> None:
    # B1 out from 20 s (its domain outage opens at 25 s), the site's mains lost at 100 s: the site outage
    # absorbs B1's before B1's residents' delay ends
    site = make_site(tmp_path, extra=MAINS)
    off = between((20, 600))
    result = replay(site, trace(900, b1_off=off, b2_off=between((100, 600)), mains_off=between((100, 600))))
    child = next(i for i in result.incidents(include_merged=True) if i.state == IncidentState.MERGED)
    parent = opened(result)
    assert child.merged_into == parent.id and parent.scope == "site"
    log = drive(NoticePolicy(site), result, T0 + 3000)
    notices = log.of(Stage.RESIDENTS_NOTICE)
    assert not [k for k in log.of() if k.startswith(f"incident:{child.id}/residents")]
    assert sorted(notices) == [
        f"incident:{parent.id}/residents_notice/residents:B1",
        f"incident:{parent.id}/residents_notice/residents:B2",
    ]
    # B1 has been out since the child opened: its delay runs from then, B2's from the site outage
    assert log.one(notices[0]).due_at == child.opened_at + 180
    assert log.one(f"incident:{parent.id}/residents_notice/residents:B2").due_at == parent.opened_at + 180
    assert len(log.of(Stage.UTILITY_REPORT)) == 1
    assert sorted(log.of(Stage.ALL_CLEAR)) == [
        f"incident:{parent.id}/all_clear/residents:B1",
        f"incident:{parent.id}/all_clear/residents:B2",
    ]


def test_a_merged_incident_has_its_held_update_cancelled_and_the_parent_owes_no_second_notice(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path, notify="  quiet_hours: {start: '22:00', end: '07:00'}")
    hand = Hand(NoticePolicy(site))
    t_open = local("2025-10-09T21:40:00")
    hand.open(t_open, inc_id=1)  # B1's domain outage: residents told at 21:43, before the quiet hours
    hand.tick(t_open + 180)
    assert hand.log.of(Stage.RESIDENTS_NOTICE) == ["incident:1/residents_notice/residents:B1"]
    hand.tick(t_open + 180 + 3600)  # 22:43: the hourly update is held for the morning
    [update] = [o for o in hand.log.owed if o.stage == Stage.RESIDENTS_UPDATE]
    assert update.key == "incident:1/residents_update/residents:B1/1"
    assert update.due_at == local("2025-10-10T07:00:00")
    t_merge = t_open + 4000
    hand.open(t_merge, inc_id=2, scope="site")
    hand.incidents[1].merged_into = 2
    n = hand.send(t_merge, 1, IncidentEvent.MERGED, "into incident 2")
    assert n.cancelled == [update.key]
    hand.send(t_merge, 2, IncidentEvent.ABSORBED)
    hand.tick(t_merge + 180)
    # the site outage tells B2 (new), not B1 again; its updates go to both
    assert hand.log.of(Stage.RESIDENTS_NOTICE) == [
        "incident:1/residents_notice/residents:B1",
        "incident:2/residents_notice/residents:B2",
    ]
    hand.send(t_merge + 600, 2, IncidentEvent.RESOLVED)
    hand.tick(t_merge + 1200)
    assert sorted(hand.log.of(Stage.ALL_CLEAR)) == [
        "incident:2/all_clear/residents:B1",
        "incident:2/all_clear/residents:B2",
    ]


# ---- updates and the all-clear -----------------------------------------------------------------------------
def test_hourly_updates_and_an_eta_change_owes_one_at_once(site: Site) -> None:
    hand = Hand(NoticePolicy(site))
    hand.open(T0)
    hand.tick(T0 + 180)
    hand.tick(T0 + 180 + 3599)
    assert hand.log.of(Stage.RESIDENTS_UPDATE) == []
    hand.tick(T0 + 180 + 3600)
    assert hand.log.of(Stage.RESIDENTS_UPDATE) == ["incident:1/residents_update/residents:B1/1"]
    eta = T0 + 5 * 3600
    n = hand.log.add(hand.policy.set_eta(1, eta, T0 + 4000))
    [up] = n.owed
    assert up.key == "incident:1/residents_update/residents:B1/2" and up.due_at == T0 + 4000
    assert up.context["eta"] == eta and up.context["eta_changed"] is True
    assert up.context["eta_local"] == datetime.fromtimestamp(eta, SHANGHAI).isoformat(timespec="seconds")
    assert not hand.policy.set_eta(1, eta, T0 + 4001)  # the same ETA again is no change
    hand.tick(T0 + 4000 + 3599)  # the hour runs from the ETA update now
    assert len(hand.log.of(Stage.RESIDENTS_UPDATE)) == 2
    hand.tick(T0 + 4000 + 3600)
    assert hand.log.of(Stage.RESIDENTS_UPDATE)[-1] == "incident:1/residents_update/residents:B1/3"
    assert hand.log.one("incident:1/residents_update/residents:B1/3").context["eta_changed"] is False


def test_no_update_while_recovering_and_none_after_resolution(site: Site) -> None:
    hand = Hand(NoticePolicy(site))
    hand.open(T0)
    hand.tick(T0 + 180)
    hand.send(T0 + 3000, 1, IncidentEvent.RECOVERING)
    hand.tick(T0 + 3800)  # the update was due at 3780 s: recovering, skipped
    assert hand.log.of(Stage.RESIDENTS_UPDATE) == []
    hand.send(T0 + 3900, 1, IncidentEvent.REFIRED, "flap #1")
    hand.tick(T0 + 180 + 2 * 3600)
    assert hand.log.of(Stage.RESIDENTS_UPDATE) == ["incident:1/residents_update/residents:B1/1"]
    assert hand.log.of(Stage.RESIDENTS_NOTICE) == ["incident:1/residents_notice/residents:B1"]  # no second
    hand.send(T0 + 8000, 1, IncidentEvent.RESOLVED)
    hand.tick(T0 + 8000 + 3 * 3600)
    assert len(hand.log.of(Stage.RESIDENTS_UPDATE)) == 1
    assert hand.log.of(Stage.ALL_CLEAR) == ["incident:1/all_clear/residents:B1"]


def test_all_clear_at_resolution_plus_verify_for_and_none_without_a_notice(site: Site) -> None:
    hand = Hand(NoticePolicy(site))
    hand.open(T0)
    hand.tick(T0 + 200)
    hand.send(T0 + 1000, 1, IncidentEvent.RESOLVED)
    hand.tick(T0 + 1599)
    assert hand.log.of(Stage.ALL_CLEAR) == []
    hand.tick(T0 + 1600)
    [clear] = [o for o in hand.log.owed if o.stage == Stage.ALL_CLEAR]
    assert (clear.due_at, clear.context["duration_s"]) == (T0 + 1600, 1000)
    # a staff-only incident (no residents audience) never owes an all-clear
    hand.open(T0 + 2000, inc_id=2, category="comm_fault", scope="device:B2-main", audiences=("staff",))
    hand.tick(T0 + 2500)
    hand.send(T0 + 2600, 2, IncidentEvent.RESOLVED)
    hand.tick(T0 + 9000)
    assert [k for k in hand.log.of() if k.startswith("incident:2/")] == [
        "incident:2/staff_open/staff",
        "incident:2/resolved/staff",
    ]


# ---- quiet hours -------------------------------------------------------------------------------------------
@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The daemon host's own zone is elsewhere: nothing may depend on it."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york")
def test_quiet_hours_hold_a_minor_staff_notice_to_the_morning_never_a_critical_one(tmp_path: Path) -> None:
    site = make_site(tmp_path, notify="  quiet_hours: {start: '22:00', end: '07:00'}")
    assert time.strftime("%Z", time.localtime(T0)) in ("EDT", "EST")
    hand = Hand(NoticePolicy(site))
    night = local("2025-10-09T23:30:00")
    hand.open(night, inc_id=1, category="comm_fault", scope="device:B2-main", severity="minor",
              audiences=("staff",))  # fmt: skip
    hand.open(night, inc_id=2, severity="critical")
    minor = hand.log.one("incident:1/staff_open/staff")
    assert minor.due_at == local("2025-10-10T07:00:00")
    assert minor.context["held_until_local"] == "2025-10-10T07:00:00+08:00"
    assert hand.log.one("incident:2/staff_open/staff").due_at == night
    hand.tick(night + 180)  # the residents' first notice goes at once, quiet hours or not
    assert hand.log.one("incident:2/residents_notice/residents:B1").due_at == night + 180
    hand.send(night + 600, 2, IncidentEvent.RESOLVED)
    hand.tick(night + 1200)  # the all-clear is no emergency: it waits for the morning
    assert hand.log.one("incident:2/all_clear/residents:B1").due_at == local("2025-10-10T07:00:00")
    # after the quiet hours nothing is held
    hand.open(local("2025-10-10T07:00:00"), inc_id=3, category="comm_fault", scope="device:B1-p",
              severity="minor", audiences=("staff",))  # fmt: skip
    assert hand.log.one("incident:3/staff_open/staff").due_at == local("2025-10-10T07:00:00")


@pytest.mark.usefixtures("new_york")
def test_quiet_hours_within_one_evening_and_an_eta_update_held(tmp_path: Path) -> None:
    site = make_site(tmp_path, notify="  quiet_hours: {start: '01:00', end: '06:30'}")
    hand = Hand(NoticePolicy(site))
    t = local("2025-10-10T00:50:00")
    hand.open(t)
    hand.tick(t + 180)
    n = hand.policy.set_eta(1, t + 7200, local("2025-10-10T02:00:00"))
    [up] = n.owed
    assert up.due_at == local("2025-10-10T06:30:00")
    n = hand.policy.set_eta(1, t + 9000, local("2025-10-10T02:30:00"))
    # the newer update replaces the one still held: residents get one in the morning
    assert n.cancelled == [up.key]
    [newer] = n.owed
    assert newer.due_at == local("2025-10-10T06:30:00") and newer.context["eta"] == t + 9000


# ---- maintenance windows -----------------------------------------------------------------------------------
WINDOW = """\
  maintenance:
    - {id: feeder-work, start: 2025-10-09T17:00:00, end: '2025-10-09T17:10', buildings: [B1],
       notice_before: 1h, note: feeder replacement}
"""


@pytest.mark.usefixtures("new_york")
def test_a_maintenance_window_sends_its_advance_notice_and_suppresses_the_outage_notice(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path, notify=WINDOW)
    start, end = local("2025-10-09T17:00:00"), local("2025-10-09T17:10:00")
    policy = NoticePolicy(site)
    log = Log()
    log.add(policy.tick(start - 7200))
    assert log.owed == []
    assert policy.next_due() == start - 3600
    log.add(policy.tick(start - 3600))
    [advance] = log.owed
    assert advance.key == "maintenance:feeder-work/residents_notice/residents:B1"
    assert (advance.incident_id, advance.stage, advance.due_at) == (
        NO_INCIDENT,
        Stage.RESIDENTS_NOTICE,
        start - 3600,
    )
    assert advance.context["planned"] is True
    assert advance.context["maintenance"]["start_local"] == "2025-10-09T17:00:00+08:00"
    assert advance.context["maintenance"]["end_local"] == "2025-10-09T17:10:00+08:00"
    assert advance.context["maintenance"]["note"] == "feeder replacement"
    assert advance.context["advice"] == "power"
    # B1 out from 17:01 to 17:08: within the window, the residents and the utility hear nothing
    samples = trace(1800, b1_off=between((60, 480)), start=start)
    result = replay(site, samples)
    inc = opened(result)
    drive(policy, result, start + 1800, log)
    staff = log.one(f"incident:{inc.id}/staff_open/staff")
    assert staff.context["planned"] is True and staff.context["maintenance"] == ["feeder-work"]
    assert log.of(Stage.RESIDENTS_NOTICE) == [advance.key]
    assert log.of(Stage.UTILITY_REPORT) == [] and log.of(Stage.ALL_CLEAR) == []
    assert end < start + 1800
    assert len(log.of(Stage.RESIDENTS_NOTICE)) == 1  # and the advance notice only once


@pytest.mark.usefixtures("new_york")
def test_supply_still_out_after_the_window_is_an_unplanned_outage_from_its_end(tmp_path: Path) -> None:
    site = make_site(tmp_path, notify=WINDOW)
    start, end = local("2025-10-09T17:00:00"), local("2025-10-09T17:10:00")
    result = replay(site, trace(1800, b1_off=between((60, 1500)), start=start))
    inc = opened(result)
    assert inc.opened_at < end
    log = drive(NoticePolicy(site), result, end + 179)
    assert not [k for k in log.of(Stage.RESIDENTS_NOTICE) if k.startswith("incident:")]
    log2 = drive(NoticePolicy(site), result, end + 180)
    notice = log2.one(f"incident:{inc.id}/residents_notice/residents:B1")
    assert notice.due_at == end + 180
    assert log2.one(f"incident:{inc.id}/utility_report/utility:power").due_at == end + 180


def test_a_window_of_one_building_leaves_the_others_notices_alone(tmp_path: Path) -> None:
    site = make_site(tmp_path, notify=WINDOW)
    start = local("2025-10-09T17:00:00")
    hand = Hand(NoticePolicy(site))
    hand.open(start + 60, scope="site")
    hand.incidents[1].symptoms = {"B1-main": ["power.outage"], "B2-main": ["power.outage"]}
    hand.send(start + 61, 1, IncidentEvent.SYMPTOM, "B2-main")
    hand.tick(start + 60 + 180)
    assert [k for k in hand.log.of(Stage.RESIDENTS_NOTICE) if k.startswith("incident:")] == [
        "incident:1/residents_notice/residents:B2"
    ]
    assert hand.log.of(Stage.UTILITY_REPORT) == ["incident:1/utility_report/utility:power"]


def test_a_window_over_before_the_policy_first_runs_owes_no_advance_notice(tmp_path: Path) -> None:
    site = make_site(tmp_path, notify=WINDOW)
    policy = NoticePolicy(site)
    assert not policy.tick(local("2025-10-09T17:10:00"))  # its end: too late to announce it
    site = make_site(tmp_path, notify=WINDOW)
    n = NoticePolicy(site).tick(local("2025-10-09T17:09:59"))  # still on: announced late, at once
    assert [(o.key, o.due_at) for o in n.owed] == [
        ("maintenance:feeder-work/residents_notice/residents:B1", local("2025-10-09T17:09:59"))
    ]


def test_add_maintenance_late_owes_the_advance_notice_at_once_and_is_exported(site: Site) -> None:
    policy = NoticePolicy(site)
    window = MaintenanceWindow.model_validate(
        {"id": "pump", "start": "2025-10-09T18:00", "end": "2025-10-09T19:00", "categories": ["water_supply"]}
    )
    now = local("2025-10-09T17:30:00")  # the notice was due a day before the start: owed now
    n = policy.add_maintenance(window, now)
    assert sorted(o.audience for o in n.owed) == ["residents:B1", "residents:B2"]
    assert {o.due_at for o in n.owed} == {now}
    assert not policy.add_maintenance(window, now + 1)  # the same window again: nothing
    with pytest.raises(ValueError, match="exists"):
        policy.add_maintenance(window.model_copy(update={"note": "other"}), now + 2)
    again = NoticePolicy(site)
    again.restore(json.loads(json.dumps(policy.export())), now + 10)
    assert not again.tick(now + 20)  # announced already
    hand = Hand(again)
    hand.open(local("2025-10-09T18:05:00"), category="water_supply", scope="domain:B1-water")
    hand.tick(local("2025-10-09T18:59:00"))
    assert hand.log.of(Stage.RESIDENTS_NOTICE) == []  # the restored window still covers B1's water


# ---- idempotency and restarts ------------------------------------------------------------------------------
def test_the_same_transitions_fed_again_owe_nothing(site: Site) -> None:
    result = replay(site, trace(900, b1_off=between((20, 600))))
    policy = NoticePolicy(site)
    log = drive(policy, result, T0 + 900)
    assert len(log.of(Stage.RESIDENTS_NOTICE)) == 1 and len(log.of(Stage.STAFF_OPEN)) == 1
    assert not policy.feed(result.transitions, result.engine.incidents)
    restored = NoticePolicy(site)
    restored.restore(json.loads(json.dumps(policy.export())), T0 + 900)
    assert not restored.feed(result.transitions, result.engine.incidents)
    assert [o.stage for o in restored.tick(T0 + 3 * 3600).owed] == [Stage.ALL_CLEAR]
    # long settled, the incident is forgotten: a replay of its transitions still owes nothing
    assert restored.export()["incidents"] == []
    assert not restored.feed(result.transitions, result.engine.incidents)


def test_a_restart_after_a_downtime_fires_overdue_timers_once(site: Site) -> None:
    hand = Hand(NoticePolicy(site))
    hand.open(T0)
    hand.open(T0, inc_id=2, scope="domain:B2-power")
    hand.tick(T0 + 100)
    saved = json.loads(json.dumps(hand.policy.export()))  # down from T0 + 100 for five hours
    back = T0 + 100 + 5 * 3600
    policy = NoticePolicy(site)
    policy.restore(saved, back)
    assert policy.next_due() == T0 + 180
    n = policy.tick(back)
    # the confirmation delays passed while down: each notice once, at the restart
    assert sorted(o.key for o in n.owed) == [
        "incident:1/residents_notice/residents:B1",
        "incident:1/utility_report/utility:power",
        "incident:2/residents_notice/residents:B2",
        "incident:2/utility_report/utility:power",
    ]
    assert {o.due_at for o in n.owed} == {back}
    saved = policy.export()
    policy = NoticePolicy(site)
    policy.restore(saved, back + 10 * 3600)  # down another ten hours: one update each, not ten
    n = policy.tick(back + 10 * 3600 + 5)
    assert sorted(o.key for o in n.owed) == [
        "incident:1/residents_update/residents:B1/1",
        "incident:2/residents_update/residents:B2/1",
    ]
    assert not policy.tick(back + 10 * 3600 + 3599)
    assert len(policy.tick(back + 10 * 3600 + 3600).owed) == 2  # then an hour after the restart


def test_an_all_clear_due_while_down_goes_once_and_a_reopened_one_never(site: Site) -> None:
    hand = Hand(NoticePolicy(site))
    hand.open(T0)
    hand.tick(T0 + 180)
    hand.send(T0 + 1000, 1, IncidentEvent.RESOLVED)
    saved = hand.policy.export()
    policy = NoticePolicy(site)
    policy.restore(saved, T0 + 8000)
    assert [o.key for o in policy.tick(T0 + 8000).owed] == ["incident:1/all_clear/residents:B1"]
    assert not policy.tick(T0 + 20000)
    # restored before the all-clear, the incident reopens first: no all-clear
    policy = NoticePolicy(site)
    policy.restore(saved, T0 + 1100)
    hand.policy = policy
    hand.send(T0 + 1200, 1, IncidentEvent.REOPENED, "recurrence #1")
    assert not [o for o in hand.tick(T0 + 5000).owed if o.stage == Stage.ALL_CLEAR]


def test_restore_refuses_an_unknown_state_version(site: Site) -> None:
    with pytest.raises(ValueError, match="version"):
        NoticePolicy(site).restore({"version": 99}, T0)


def test_maintenance_times_must_be_local_and_in_order(tmp_path: Path) -> None:
    from gateway.config import ConfigError

    bad = "  maintenance:\n    - {id: w, start: '2025-10-09T17:00:00+08:00', end: '2025-10-09T18:00'}\n"
    with pytest.raises(ConfigError, match="without an offset"):
        make_site(tmp_path, notify=bad)
    bad = "  maintenance:\n    - {id: w, start: '2025-10-09T17:00', end: '2025-10-09T16:00'}\n"
    with pytest.raises(ConfigError, match="must be after start"):
        make_site(tmp_path, notify=bad)
