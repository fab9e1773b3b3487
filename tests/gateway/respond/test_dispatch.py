"""Dispatch and escalation in virtual time: the on-call roster, the chain's steps, acknowledgement, the ack
timeout, a restart, a merge. Incidents are built by hand; nothing here starts a service or sleeps.

T0 is Thursday 2025-10-09 16:53:20 in Asia/Shanghai: inside the day shift (08:00-20:00, wang on call, li
backup); the night shift (20:00-08:00) has zhao on call and wang as backup.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.config import Site, load_site
from gateway.respond.desk_api import OncallOverride
from gateway.respond.dispatch import Dispatcher
from gateway.respond.links import LinkSigner, link_url
from gateway.respond.model import Owed, Stage
from gateway.respond.policy import Notices
from gateway.respond.roster import Roster
from rules.model import Incident, IncidentChange, IncidentEvent, IncidentState

T0 = 1_760_000_000.0
SHANGHAI = ZoneInfo("Asia/Shanghai")
MIN = 60.0

SITE = """\
site: {id: dsp, timezone: Asia/Shanghai}
buildings:
  - {id: B1, households: 40, domains: [{id: B1-power, kind: power}]}
devices:
  - {id: B1-main, building: B1, domain: B1-power, role: main_power, households: 40, source: mqtt,
     expected_interval: 1s}
oncall:
  people:
    - {id: wang, name: 王工, phone: "13800000001"}
    - {id: li, name: 李工}
    - {id: zhao, name: 赵工}
    - {id: zhang, name: 张主管}
    - {id: chen, name: 陈经理}
  shifts:
    - {days: [mon, tue, wed, thu, fri, sat, sun], start: "08:00", end: "20:00", oncall: wang, backup: li}
    - {days: [mon, tue, wed, thu, fri, sat, sun], start: "20:00", end: "08:00", oncall: zhao, backup: wang}
  supervisor: zhang
  manager: chen
"""


@pytest.fixture
def site(tmp_path: Path) -> Site:
    path = tmp_path / "site.yaml"
    path.write_text(SITE, encoding="utf-8")
    return load_site(path)


SECRET = b"s" * 32


def make(site: Site) -> Dispatcher:
    roster = Roster(site.config.oncall, SHANGHAI)
    signer = LinkSigner(SECRET, clock=lambda: T0)

    def links(incident_id: int, who: str) -> dict[str, str]:
        return {
            a: link_url("https://gw.example", a, signer.make(a, incident_id, who, 3600.0))
            for a in ("ack", "on_site")
        }

    return Dispatcher(site, roster, links)


def incident(inc_id: int = 1, severity: str = "critical", at: float = T0, **kw: Any) -> Incident:
    return Incident(
        id=inc_id, key=f"power_outage/building:B1#{inc_id}", category="power_outage", scope="building:B1",
        title="power outage: B1", severity=severity, event_code="003", audiences=["staff"], households=40,
        state=IncidentState.FIRING, opened_at=at, first_evidence_at=at, updated_at=at, **kw,
    )  # fmt: skip


def opened(inc: Incident) -> IncidentChange:
    return IncidentChange(inc.opened_at, inc.id, IncidentEvent.OPENED, True, inc.title)


class Log:
    def __init__(self) -> None:
        self.owed: list[Owed] = []
        self.timeline: list[IncidentChange] = []

    def add(self, n: Notices) -> None:
        self.owed.extend(n.owed)
        self.timeline.extend(n.timeline)

    def all_keys(self, stage: Stage | None = None) -> list[str]:
        return [o.key for o in self.owed if stage is None or o.stage == stage]

    def events(self) -> list[str]:
        return [f"{c.event}:{c.detail}" for c in self.timeline]


def run(d: Dispatcher, log: Log, until: float, step: float = 1.0, start: float = T0) -> None:
    t = start
    while t <= until:
        log.add(d.tick(t))
        t += step


def test_a_critical_incident_dispatches_the_person_on_call_with_signed_links(site: Site) -> None:
    d, log = make(site), Log()
    inc = incident()
    log.add(d.feed([opened(inc)], {1: inc}))
    assert log.owed == []  # owed at the tick after the opening, not inside it
    log.add(d.tick(T0))
    assert log.all_keys() == ["incident:1/dispatch/oncall", "incident:1/dispatch/person:wang"]
    person = log.owed[1]
    assert person.stage == Stage.DISPATCH and person.due_at == T0
    assert person.context["team"] == [{"role": "oncall", "name": "王工", "phone": "13800000001"}]
    token = person.context["links"]["ack"].rsplit("/", 1)[1]
    claim = LinkSigner(SECRET, clock=lambda: T0).verify(token, "ack")
    assert (claim.incident_id, claim.who) == (1, "wang")
    assert log.events() == ["dispatched:oncall: 王工"]
    view = d.view(1)
    assert view is not None and view.dispatched_at == T0 and view.target_at == T0 + 30 * MIN
    assert view.called == ["oncall:wang"]


def test_nobody_answers_the_chain_climbs_to_the_manager_and_the_target_is_missed_once(site: Site) -> None:
    d, log = make(site), Log()
    inc = incident()
    log.add(d.feed([opened(inc)], {1: inc}))
    run(d, log, T0 + 75 * MIN, step=30.0)
    assert log.all_keys(Stage.ESCALATION) == [
        "incident:1/escalation/backup/0.1",
        "incident:1/escalation/person:li/0.1",
        "incident:1/escalation/supervisor/0.2",
        "incident:1/escalation/person:zhang/0.2",
        "incident:1/escalation/manager/0.3",
        "incident:1/escalation/person:chen/0.3",
        # then the last step again every 10 min, at most 3 times
        "incident:1/escalation/manager/0.3.1",
        "incident:1/escalation/person:chen/0.3.1",
        "incident:1/escalation/manager/0.3.2",
        "incident:1/escalation/person:chen/0.3.2",
        "incident:1/escalation/manager/0.3.3",
        "incident:1/escalation/person:chen/0.3.3",
    ]
    due = {o.key: o.due_at - T0 for o in log.owed}
    assert due["incident:1/escalation/backup/0.1"] == 10 * MIN
    assert due["incident:1/escalation/supervisor/0.2"] == 20 * MIN
    assert due["incident:1/escalation/manager/0.3"] == 30 * MIN
    assert due["incident:1/escalation/manager/0.3.3"] == 60 * MIN
    assert log.all_keys(Stage.TARGET_MISSED) == ["incident:1/target_missed/staff"]
    assert due["incident:1/target_missed/staff"] == 30 * MIN
    assert [e.split(":")[0] for e in log.events()] == [
        "dispatched", "escalated", "escalated", "escalated", "target_missed",
        "escalated", "escalated", "escalated",
    ]  # fmt: skip
    view = d.view(1)
    assert view is not None and view.target_missed and view.step == 6


def test_an_acknowledgement_stops_the_chain_and_nobody_on_site_starts_it_again(site: Site) -> None:
    d, log = make(site), Log()
    inc = incident()
    log.add(d.feed([opened(inc)], {1: inc}))
    run(d, log, T0 + 5 * MIN)
    log.add(d.acknowledge(1, "wang", T0 + 5 * MIN))
    log.add(d.acknowledge(1, "li", T0 + 6 * MIN))  # the first acknowledgement counts
    run(d, log, T0 + 24 * MIN, start=T0 + 5 * MIN)
    assert log.all_keys(Stage.ESCALATION) == []
    view = d.view(1)
    assert view is not None and view.acked_by == "wang" and view.acked_at == T0 + 5 * MIN
    # ack_timeout (20 min) passes with nobody on site: the chain starts again from the on-call person
    run(d, log, T0 + 36 * MIN, start=T0 + 24 * MIN)
    assert log.all_keys(Stage.ESCALATION) == [
        "incident:1/escalation/oncall/1.0",
        "incident:1/escalation/person:wang/1.0",
        "incident:1/escalation/backup/1.1",
        "incident:1/escalation/person:li/1.1",
    ]
    assert {o.due_at - T0 for o in log.owed if o.key.endswith("/1.0")} == {25 * MIN}
    assert "retriggered:acknowledged by wang, nobody on site" in log.events()
    assert log.all_keys(Stage.TARGET_MISSED) == []  # answered within the target: not missed on a re-trigger
    # on site: everything stops for good
    log.add(d.on_site(1, "li", T0 + 36 * MIN))
    before = len(log.owed)
    run(d, log, T0 + 3 * 3600, step=60.0, start=T0 + 36 * MIN)
    assert len(log.owed) == before
    view = d.view(1)
    assert view is not None and view.on_site_by == "li" and view.acked_by == "li"


def test_minor_incidents_are_not_dispatched_but_manual_ones_always_are(site: Site) -> None:
    d, log = make(site), Log()
    minor = incident(1, severity="minor")
    manual = incident(2, severity="warning", manual=True)
    log.add(d.feed([opened(minor), opened(manual)], {1: minor, 2: manual}))
    run(d, log, T0 + 11 * MIN, step=60.0)
    assert [k for k in log.all_keys() if k.startswith("incident:1/")] == []
    assert "incident:2/dispatch/person:wang" in log.all_keys()
    # staff can still take a minor incident on, note it and name its cause
    log.add(d.acknowledge(1, "desk", T0 + 12 * MIN))
    log.add(d.note(1, "desk", "breaker reset", T0 + 12 * MIN))
    log.add(d.set_cause(1, "desk", "tripped breaker", T0 + 12 * MIN))
    view = d.view(1)
    assert view is not None and view.dispatched_at is None and view.cause == "tripped breaker"
    assert [n.text for n in view.notes] == ["breaker reset"]


def test_the_night_shift_and_an_override_decide_who_is_called(site: Site) -> None:
    night = datetime(2025, 10, 9, 23, 30, tzinfo=SHANGHAI).timestamp()
    early = datetime(2025, 10, 10, 7, 59, tzinfo=SHANGHAI).timestamp()
    d = make(site)
    assert d.roster.holder("oncall", night) == "zhao" and d.roster.holder("backup", night) == "wang"
    assert d.roster.holder("oncall", early) == "zhao"  # the overnight shift that began the evening before
    assert d.roster.holder("oncall", early + 60) == "wang"
    d.roster.add_override(OncallOverride(oncall="li", start=night - 3600, end=night + 3600))
    assert d.roster.holder("oncall", night) == "li" and d.roster.holder("backup", night) == "wang"
    assert d.roster.view(night).override
    with pytest.raises(ValueError, match="unknown person 'nobody'"):
        d.roster.add_override(OncallOverride(oncall="nobody", start=night, end=night + 1))
    log = Log()
    inc = incident(at=night)
    log.add(d.feed([opened(inc)], {1: inc}))
    log.add(d.tick(night))
    assert "incident:1/dispatch/person:li" in log.all_keys()


def test_after_a_restart_the_missed_steps_fire_once_together(site: Site) -> None:
    d, log = make(site), Log()
    inc = incident()
    log.add(d.feed([opened(inc)], {1: inc}))
    run(d, log, T0 + 60)
    state = d.export()
    # down for 34 minutes: steps 1, 2 and 3 came due meanwhile
    back = T0 + 35 * MIN
    d2, log2 = make(site), Log()
    d2.restore(state, back)
    log2.add(d2.tick(back))
    assert log2.all_keys() == [
        "incident:1/escalation/backup/0.3",
        "incident:1/escalation/person:li/0.3",
        "incident:1/escalation/supervisor/0.3",
        "incident:1/escalation/person:zhang/0.3",
        "incident:1/escalation/manager/0.3",
        "incident:1/escalation/person:chen/0.3",
        "incident:1/target_missed/staff",
    ]
    assert {o.due_at for o in log2.owed} == {back}
    team = log2.owed[0].context["team"]
    assert [m["role"] for m in team] == ["backup", "supervisor", "manager"]
    log2.add(d2.tick(back + 1))
    assert len(log2.owed) == 7  # nothing more until the first repeat, 10 minutes on
    # what was owed before the restart is not owed again: the state says step 0 went out
    assert not any(k.startswith("incident:1/dispatch/") for k in log2.all_keys())


def test_resolution_stops_the_chain_and_a_reopening_before_any_answer_resumes_it(site: Site) -> None:
    d, log = make(site), Log()
    inc = incident()
    log.add(d.feed([opened(inc)], {1: inc}))
    run(d, log, T0 + 5 * MIN, step=60.0)
    log.add(d.feed([IncidentChange(T0 + 5 * MIN, 1, IncidentEvent.RESOLVED, True, "")], {1: inc}))
    run(d, log, T0 + 15 * MIN, step=60.0, start=T0 + 5 * MIN)
    assert log.all_keys(Stage.ESCALATION) == []
    with pytest.raises(ValueError, match="resolved"):
        d.acknowledge(1, "wang", T0 + 15 * MIN)
    log.add(d.feed([IncidentChange(T0 + 16 * MIN, 1, IncidentEvent.REOPENED, False, "")], {1: inc}))
    log.add(d.tick(T0 + 16 * MIN))
    assert log.all_keys(Stage.ESCALATION) == [
        "incident:1/escalation/backup/0.1",
        "incident:1/escalation/person:li/0.1",
    ]
    with pytest.raises(KeyError):
        d.acknowledge(99, "wang", T0)


def test_an_incident_absorbed_as_its_root_opens_hands_its_response_on(site: Site) -> None:
    d, log = make(site), Log()
    child = incident(1)
    log.add(d.feed([opened(child)], {1: child}))
    log.add(d.tick(T0))
    log.add(d.acknowledge(1, "wang", T0 + 60))
    t = T0 + 120
    parent = incident(2, at=t)
    child.state, child.merged_into = IncidentState.MERGED, 2
    log.add(
        d.feed(
            [opened(parent), IncidentChange(t, 1, IncidentEvent.MERGED, False, "into incident 2")],
            {1: child, 2: parent},
        )
    )
    log.add(d.tick(t))
    assert not any(k.startswith("incident:2/dispatch") for k in log.all_keys())  # the team is not sent twice
    view = d.view(2)
    assert view is not None and view.dispatched_at == T0 and view.acked_by == "wang"
    assert d.view(1) is None
    run(d, log, t + 15 * MIN, step=60.0, start=t)
    assert log.all_keys(Stage.ESCALATION) == []


def test_a_cause_code_is_kept_beside_the_words_and_read_back_by_the_review(site: Site) -> None:
    from gateway.review.measures import _cause

    d, log = make(site), Log()
    inc = incident()
    log.add(d.feed([opened(inc)], {1: inc}))
    log.add(d.set_cause(1, "desk", "变压器过载跳闸", T0 + 60, code="overload"))
    view = d.view(1)
    assert view is not None and (view.cause, view.cause_code) == ("变压器过载跳闸", "overload")
    [entry] = [c for c in log.timeline if c.event == IncidentEvent.CAUSE]
    assert entry.detail == "desk: [overload] 变压器过载跳闸"
    assert _cause(entry.detail) == ("overload", "变压器过载跳闸")
    assert _cause("desk: no code here") == ("", "no code here")
