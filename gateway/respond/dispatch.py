"""Dispatch and escalation: the on-call team is sent, and called again up the chain until someone answers.

Pure, like the notice policy (gateway/respond/policy.py): no I/O, no clock; transitions and `tick(now)` in,
`Notices` out (notices owed under idempotency keys, and the response steps for the incident timeline).

    d = Dispatcher(site, roster, links)
    notices = d.feed(batch.timeline, incidents)      # incidents open, resolve, reopen, merge
    notices = d.tick(now)                            # the chain's timers
    notices = d.acknowledge(incident_id, who, now)   # staff: the chain stops
    notices = d.on_site(incident_id, who, now)       # staff: at the scene (acknowledges too)

What happens:

- An incident whose severity is in `oncall.dispatch_severities`, or any manual incident (a hotline report),
  is dispatched: step 0 of `oncall.escalation` (default the on-call person) gets a DISPATCH notice with
  'acknowledge' and 'on site' links signed for the person called. The dispatch is owed at the next tick
  after the opening, not inside it, so an incident absorbed at the instant a root cause opens hands its
  dispatch on instead of sending the team twice.
- While nobody has acknowledged, each later step is due `after` the dispatch: its roles get an ESCALATION
  notice; a step marked `target_missed` (default the manager's, at 30 min) also records TARGET_MISSED in
  the timeline and tells `staff` (once per incident). After the last step its roles are called again every
  `repeat_every`, at most `repeat_max` times.
- A role's notice goes to the channels of the role's audience (`oncall`, `backup`, `supervisor`,
  `manager`) and to those of `person:<id>` of whoever holds the role at that moment (gateway/respond/
  roster.py); with nobody named for a role, only the role's channels.
- Acknowledging stops the chain; the first acknowledgement counts, later ones change nothing. Acknowledged
  but nobody on site within `ack_timeout`: the chain starts again from step 0 (RETRIGGERED, round n+1,
  ESCALATION notices; the target is not missed a second time). On site stops that too.
- Resolved, the chain stops; reopened before anyone acknowledged, it resumes where it stood.
- Merged into a root cause's incident: the parent carries the child's response on (the dispatch, the steps
  taken, the acknowledgement); a parent dispatched already keeps its own chain and takes the child's
  acknowledgement.
- After a restart, the steps that came due while the daemon was down fire once, at the restart, as ONE
  notice per audience for the steps' roles together, not once per step missed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Site
from gateway.config.oncall import Role
from gateway.respond.context import incident_context
from gateway.respond.desk_api import Note, ResponseView
from gateway.respond.model import Owed, Stage
from gateway.respond.policy import Notices
from gateway.respond.replay_guard import ReplayGuard
from gateway.respond.roster import Roster
from rules.model import Incident, IncidentChange, IncidentEvent, IncidentState, Transition

# links(incident_id, who) -> {"ack": url, "on_site": url}; empty when the site has no links.base_url
LinkMaker = Callable[[int, str], dict[str, str]]
STATE_VERSION = 1


def cause_detail(who: str, cause: str, code: str) -> str:
    """The timeline's words for a cause: `who: [code] text` (the review reads the code back)."""
    return f"{who}: [{code}] {cause}" if code else f"{who}: {cause}"


# categories nobody is sent out for: a failing notice channel is the gateway's own trouble (staff hear)
NOT_DISPATCHED = frozenset({"notify_channel"})
_NEVER = -math.inf


@dataclass(slots=True)
class _Case:
    """The response to one incident."""

    id: int
    snap: dict[str, Any]
    opened_at: float
    state: str = str(IncidentState.FIRING)
    dispatched_at: float | None = None
    round: int = 0
    round_start: float | None = None  # the current round's step 0
    next_step: int = 0  # the chain's next step in this round (len(chain): only repeats are left)
    repeats: int = 0
    last_fired: float | None = None
    called: list[str] = field(default_factory=list)
    acked_at: float | None = None
    acked_by: str = ""
    on_site_at: float | None = None
    on_site_by: str = ""
    target_missed: bool = False
    escalations: int = 0  # escalation notices sent (steps after the dispatch, repeats, re-triggers)
    cause: str = ""
    cause_code: str = ""
    notes: list[list[Any]] = field(default_factory=list)  # [ts, who, text]
    resolved_at: float | None = None

    @property
    def manual(self) -> bool:
        return bool(self.snap.get("manual"))

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> _Case:
        case = _Case(id=int(d["id"]), snap=dict(d["snap"]), opened_at=float(d["opened_at"]))
        for name in _Case.__slots__:
            if name in d and name not in ("id", "snap", "opened_at"):
                setattr(case, name, d[name])
        case.called = [str(c) for c in case.called]
        case.notes = [list(n) for n in case.notes]
        return case


class Dispatcher:
    def __init__(self, site: Site, roster: Roster, links: LinkMaker | None = None) -> None:
        self.site = site
        self.cfg = site.config.oncall
        self.chain = list(self.cfg.escalation)
        self.roster = roster
        self.links = links
        self._keep_after_resolved = float(site.config.detection.reopen_window)
        self._cases: dict[int, _Case] = {}
        self._clock: float | None = None
        self._floor = _NEVER
        self._guard = ReplayGuard()
        self._owed: list[Owed] = []
        self._timeline: list[IncidentChange] = []

    # ---- the calls ------------------------------------------------------------------------------------
    def feed(self, changes: Iterable[Transition], incidents: Mapping[int, Incident]) -> Notices:
        for c in changes:
            if isinstance(c, IncidentChange) and self._guard.first_time(c):
                self._advance(c.ts, strictly_before=True)
                self._apply(c, incidents)
        return self._take()

    def tick(self, now: float) -> Notices:
        self._advance(now)
        return self._take()

    def next_due(self) -> float | None:
        times = [t for t, _ in self._timers()]
        return min(times) if times else None

    def acknowledge(self, incident_id: int, who: str, now: float, via: str = "") -> Notices:
        """KeyError: no such incident held; ValueError: it is resolved (nothing changes then)."""
        case = self._open_case(incident_id)
        self._advance(now)
        self._ack(case, who, now, via)
        return self._take()

    def on_site(self, incident_id: int, who: str, now: float, via: str = "") -> Notices:
        case = self._open_case(incident_id)
        self._advance(now)
        self._ack(case, who, now, via)
        if case.on_site_at is None:
            case.on_site_at, case.on_site_by = now, who
            self._record(now, case.id, IncidentEvent.ON_SITE, f"by {who}{via}")
        return self._take()

    def note(self, incident_id: int, who: str, text: str, now: float) -> Notices:
        case = self._case(incident_id)
        case.notes.append([now, who, text])
        self._record(now, case.id, IncidentEvent.NOTE, f"{who}: {text}")
        return self._take()

    def set_cause(self, incident_id: int, who: str, cause: str, now: float, code: str = "") -> Notices:
        case = self._case(incident_id)
        case.cause, case.cause_code = cause, code
        self._record(now, case.id, IncidentEvent.CAUSE, cause_detail(who, cause, code))
        return self._take()

    def record_eta(self, incident_id: int, who: str, eta_local: str | None, now: float) -> Notices:
        """The timeline line for an ETA staff set (the notice policy owns the ETA and its updates)."""
        case = self._case(incident_id)
        self._record(now, case.id, IncidentEvent.ETA, f"{who}: {eta_local or 'unknown'}")
        return self._take()

    def view(self, incident_id: int, eta: float | None = None) -> ResponseView | None:
        case = self._cases.get(incident_id)
        if case is None:
            return None
        return ResponseView(
            incident_id=case.id,
            dispatched_at=case.dispatched_at,
            target_at=None if case.dispatched_at is None else case.dispatched_at + self.cfg.target,
            target_missed=case.target_missed,
            step=case.escalations,
            called=list(case.called),
            acked_at=case.acked_at,
            acked_by=case.acked_by,
            on_site_at=case.on_site_at,
            on_site_by=case.on_site_by,
            eta=eta,
            cause=case.cause,
            cause_code=case.cause_code,
            manual=case.manual,
            notes=[Note(float(n[0]), str(n[1]), str(n[2])) for n in case.notes],
        )

    def holds(self, incident_id: int) -> bool:
        return incident_id in self._cases

    # ---- persistence ----------------------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "clock": self._clock,
            **self._guard.export(),
            "cases": [c.to_dict() for _, c in sorted(self._cases.items())],
            "overrides": [
                {"oncall": o.oncall, "backup": o.backup, "start": o.start, "end": o.end}
                for o in self.roster.overrides
            ],
        }

    def restore(self, state: Mapping[str, Any], now: float) -> None:
        """Take back an exported state at a restart at `now`: steps that came due meanwhile fire once, at
        `now`, on the next tick."""
        from gateway.respond.desk_api import OncallOverride

        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unknown dispatcher state version {state.get('version')!r}")
        clock = state.get("clock")
        self._clock = None if clock is None else float(clock)
        self._guard.restore(state)
        self._cases = {int(d["id"]): _Case.from_dict(d) for d in state.get("cases", [])}
        self.roster.restore_overrides(
            OncallOverride(
                oncall=str(o["oncall"]),
                backup=None if o.get("backup") is None else str(o["backup"]),
                start=float(o["start"]),
                end=float(o["end"]),
            )
            for o in state.get("overrides", [])
        )
        self._floor = now

    # ---- transitions ----------------------------------------------------------------------------------
    def _apply(self, c: IncidentChange, incidents: Mapping[int, Incident]) -> None:
        case = self._cases.get(c.incident)
        inc = incidents.get(c.incident)
        if case is None:
            if inc is None or c.event not in _LIFE:
                return  # a response step of our own, or an incident never seen open
            case = _Case(id=inc.id, snap=inc.to_dict(), opened_at=inc.opened_at)
            self._cases[inc.id] = case
        elif inc is not None:
            case.snap = inc.to_dict()
        ev = c.event
        if ev == IncidentEvent.RESOLVED:
            case.state, case.resolved_at = str(IncidentState.RESOLVED), c.ts
        elif ev == IncidentEvent.REOPENED:
            case.state, case.resolved_at = str(IncidentState.FIRING), None
        elif ev == IncidentEvent.MERGED:
            self._merged(case, c.ts, incidents)

    def _merged(self, case: _Case, t: float, incidents: Mapping[int, Incident]) -> None:
        del self._cases[case.id]
        parent_id = case.snap.get("merged_into")
        if parent_id is None:
            return
        parent = self._cases.get(int(parent_id))
        if parent is None:
            inc = incidents.get(int(parent_id))
            if inc is None:
                return
            parent = _Case(id=inc.id, snap=inc.to_dict(), opened_at=inc.opened_at)
            self._cases[inc.id] = parent
        if parent.dispatched_at is None and case.dispatched_at is not None:
            for name in ("dispatched_at", "round", "round_start", "next_step", "repeats", "last_fired"):
                setattr(parent, name, getattr(case, name))
            parent.called = list(case.called)
            parent.target_missed = case.target_missed
        if parent.acked_at is None and case.acked_at is not None:
            parent.acked_at, parent.acked_by = case.acked_at, case.acked_by
            detail = f"by {case.acked_by} via incident {case.id}"
            self._record(t, parent.id, IncidentEvent.ACKNOWLEDGED, detail)
        if parent.on_site_at is None and case.on_site_at is not None:
            parent.on_site_at, parent.on_site_by = case.on_site_at, case.on_site_by
        parent.notes.extend(case.notes)

    # ---- timers ---------------------------------------------------------------------------------------
    def _qualifies(self, case: _Case) -> bool:
        if case.snap.get("category") in NOT_DISPATCHED:
            return False
        return case.manual or str(case.snap.get("severity")) in self.cfg.dispatch_severities

    def _timers(self) -> list[tuple[float, int]]:
        out: list[tuple[float, int]] = []
        for case in self._cases.values():
            if case.resolved_at is not None:
                continue
            if case.dispatched_at is None:
                if self._qualifies(case):
                    out.append((case.opened_at, case.id))
            elif case.acked_at is None:
                assert case.round_start is not None
                if case.next_step < len(self.chain):
                    out.append((case.round_start + self.chain[case.next_step].after, case.id))
                elif self.cfg.repeat_every > 0 and case.repeats < self.cfg.repeat_max:
                    last = case.last_fired if case.last_fired is not None else case.round_start
                    out.append((last + self.cfg.repeat_every, case.id))
            elif case.on_site_at is None:
                out.append((case.acked_at + self.cfg.ack_timeout, case.id))
        return out

    def _advance(self, until: float, strictly_before: bool = False) -> None:
        while True:
            due = [(t, i) for t, i in self._timers() if (t < until if strictly_before else t <= until)]
            if not due:
                break
            t, case_id = min(due)
            self._fire(self._cases[case_id], max(t, self._floor), until, strictly_before)
        if not strictly_before and (self._clock is None or until > self._clock):
            self._clock = until
            self._forget(until)

    def _fire(self, case: _Case, t: float, until: float, strictly_before: bool) -> None:
        """Fire what is due on a case at `t`: the dispatch, the steps due by `until` (together), a repeat,
        or the acknowledgement's timeout."""
        if case.dispatched_at is None:
            case.dispatched_at, case.round_start, case.next_step = t, t, 0
        if case.acked_at is not None:  # acknowledged, nobody on site: the chain starts again
            case.round += 1
            case.round_start, case.next_step, case.repeats = t, 0, 0
            self._record(
                t, case.id, IncidentEvent.RETRIGGERED, f"acknowledged by {case.acked_by}, nobody on site"
            )
            case.acked_at, case.acked_by = None, ""
        assert case.round_start is not None
        if case.next_step >= len(self.chain):
            case.repeats += 1
            case.last_fired = t
            last = len(self.chain) - 1
            self._call(case, [last], t, f"{case.round}.{last}.{case.repeats}", repeat=case.repeats)
            return
        steps: list[int] = []
        while case.next_step < len(self.chain):
            at = case.round_start + self.chain[case.next_step].after
            if (at < until if strictly_before else at <= until) or not steps:
                steps.append(case.next_step)
                case.next_step += 1
            else:
                break
        case.last_fired = t
        if case.round == 0 and steps[0] == 0:
            self._call(case, [0], t, "", dispatch=True)
            steps = steps[1:]
        if steps:
            self._call(case, steps, t, f"{case.round}.{steps[-1]}")

    def _call(
        self,
        case: _Case,
        steps: list[int],
        t: float,
        n: str,
        dispatch: bool = False,
        repeat: int = 0,
    ) -> None:
        """Owe one notice per audience for the roles of `steps`, record the step, and the missed target."""
        roles: list[Role] = []
        for s in steps:
            roles.extend(r for r in self.chain[s].notify if r not in roles)
        holders = {role: self.roster.holder(role, t) for role in roles}
        team = []
        for role in roles:
            person = self.roster.person(holders[role])
            team.append(
                {"role": role, "name": person.name if person else "", "phone": person.phone if person else ""}
            )
            case.called.append(f"{role}:{holders[role] or '-'}")
        stage = Stage.DISPATCH if dispatch else Stage.ESCALATION
        step = steps[-1]
        audiences: dict[str, str] = {}  # audience -> who its links are for
        for role in roles:
            who = holders[role]
            audiences.setdefault(role, who or role)
            if who is not None:
                audiences.setdefault(f"person:{who}", who)
        inc = Incident.from_dict(case.snap)
        for aud, who in audiences.items():
            base = f"incident:{case.id}/{stage}/{aud}"
            key = f"{base}/{n}" if n else base
            links = self.links(case.id, who) if self.links is not None else {}
            ctx = incident_context(
                inc, self.site, t, audience=aud, step=step, links=links, team=team, round=case.round,
                repeat=repeat,
            )  # fmt: skip
            self._owed.append(Owed(key, case.id, stage, aud, t, ctx))
        names = ", ".join(f"{x['role']}: {x['name'] or '-'}" for x in team)
        if not dispatch:
            case.escalations += 1
        if dispatch:
            self._record(t, case.id, IncidentEvent.DISPATCHED, names)
        else:
            what = f"repeat {repeat} of step {step}" if repeat else f"step {step}"
            self._record(t, case.id, IncidentEvent.ESCALATED, f"{what}: {names}")
        if case.round == 0 and not case.target_missed and any(self.chain[s].target_missed for s in steps):
            case.target_missed = True
            minutes = round(self.cfg.target / 60)
            self._record(t, case.id, IncidentEvent.TARGET_MISSED, f"nobody acknowledged within {minutes} min")
            ctx = incident_context(inc, self.site, t, audience="staff", team=team)
            self._owed.append(Owed(f"incident:{case.id}/{Stage.TARGET_MISSED}/staff", case.id,
                                   Stage.TARGET_MISSED, "staff", t, ctx))  # fmt: skip

    def _forget(self, now: float) -> None:
        for case in list(self._cases.values()):
            if case.resolved_at is not None and now > case.resolved_at + self._keep_after_resolved:
                del self._cases[case.id]

    # ---- staff ----------------------------------------------------------------------------------------
    def _case(self, incident_id: int) -> _Case:
        return self._cases[incident_id]

    def _open_case(self, incident_id: int) -> _Case:
        case = self._cases[incident_id]
        if case.resolved_at is not None:
            raise ValueError(f"incident {incident_id} is resolved")
        return case

    def _ack(self, case: _Case, who: str, now: float, via: str) -> None:
        if case.acked_at is None:
            case.acked_at, case.acked_by = now, who
            self._record(now, case.id, IncidentEvent.ACKNOWLEDGED, f"by {who}{via}")

    def _record(self, t: float, incident_id: int, event: IncidentEvent, detail: str) -> None:
        self._timeline.append(IncidentChange(t, incident_id, event, False, detail))

    def _take(self) -> Notices:
        owed, timeline = self._owed, self._timeline
        self._owed, self._timeline = [], []
        return Notices(owed=owed, timeline=timeline)


# the transitions that start a case: the incident's life, not response steps
_LIFE = frozenset(
    {
        IncidentEvent.OPENED,
        IncidentEvent.SYMPTOM,
        IncidentEvent.ABSORBED,
        IncidentEvent.RECOVERING,
        IncidentEvent.REFIRED,
        IncidentEvent.FLAPPING,
        IncidentEvent.REOPENED,
    }
)
