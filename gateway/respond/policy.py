"""The notice policy: which notices the incidents owe, to whom and when.

Pure, like the rules engine: no I/O and no clock of its own. Time comes in as arguments: the transitions
carry theirs, `tick(now)` runs the timers (the residents' confirmation delay, the hourly update, the
all-clear after `verify_for`, the maintenance advance notices) up to `now`. Every call returns `Notices`:
the notices owed (gateway/respond/model.Owed, under idempotency keys) and the keys of owed notices to drop.
The per-incident state goes out with `export()` and comes back with `restore()`; the daemon writes it with
the owed notices in one transaction, so after a restart nothing is owed twice and nothing is lost.

    policy = NoticePolicy(site)
    notices = policy.feed(batch.timeline, batch.incidents)   # the transitions of an engine step
    notices = policy.tick(now)                                # timers; policy.next_due() says when
    notices = policy.set_eta(incident_id, eta_ts, now)        # staff's expected restoration (API)
    notices = policy.add_maintenance(window, now)             # planned works (API)

Who hears what:

- Staff (audience `staff`) hear of every incident at once (STAFF_OPEN, at the transition's time), once when
  it starts flapping (FLAPPING) and once when it resolves (RESOLVED). A reopening is no news (the engine's
  `notify` is False for it), so a reopened incident's second resolution sends nothing either.
- Residents hear of an incident whose audiences include `residents` and whose category has a
  `notify.confirm_delay`, one notice per building it touches (audience `residents:<building>`; the outbox
  sends one message per stage to a channel of all `residents`). The notice is owed at the first moment,
  from `opened_at + confirm_delay` on, when the incident is firing: an outage that is recovering at the end
  of the delay owes nothing unless it fires again before it resolves (a flapping supply is an outage the
  residents live through), and one that resolves within the delay owes nothing at all. A building that
  joins later (a new symptom) gets its notice then. Each residents' audience gets one notice per incident:
  a flap, a reopening, or an absorption never owe a second.
- While the incident fires, residents get an update every `update_every` after their notice (skipped
  while recovering), and one at once when staff set a new ETA. An all-clear is owed `verify_for` after the
  incident resolved, if it has not reopened by then, to the audiences that had the notice; after it the
  incident owes residents nothing more.
- The utility (`utility:power` or `utility:water`, by category) gets one UTILITY_REPORT when an incident
  whose audiences include `utility` is confirmed, on the residents' delay.
- A merged incident hands its parent what it owed: the audiences already told, the utility reports, the
  ETA, the earlier start; its resident notices still held (not yet due) are cancelled. Nothing is owed
  twice: the parent notifies only the audiences not yet told.
- Quiet hours (site time zone, `notify.quiet_hours`) hold the non-urgent notices until they end: residents'
  updates, all-clears and maintenance advance notices, and staff notices of incidents below major. The
  residents' first notice, utility reports and staff notices of critical or major incidents go at once.
- Planned maintenance (`notify.maintenance`, or `add_maintenance`): an incident of a window's category,
  opened while the window is in force in a building, owes that building's residents no notice until the
  window ends; still firing `confirm_delay` after the end, it owes the notice then, as unplanned. The
  utility report waits the same way when every building of the incident is covered. Staff still hear, with
  `planned: true`. Residents get an advance notice `notice_before` the start (incident id 0, keys
  `maintenance:<id>/residents_notice/residents:<building>`); a window learnt later than that gets it at
  once if it has not ended.

Dispatch, escalation and the response target are a later step: every staff notice goes through
`_owe_staff`, and `acknowledge()` records the acknowledgement the escalation chain will stop on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config import Site
from gateway.config.notify import MaintenanceWindow
from gateway.core.timefmt import local_iso
from gateway.respond.context import ADVICE, buildings_of, incident_context
from gateway.respond.model import Owed, Stage
from gateway.respond.replay_guard import ReplayGuard
from rules.model import Incident, IncidentChange, IncidentEvent, IncidentState, Transition

# Staff notices of incidents this severe are never held by quiet hours.
URGENT_SEVERITIES = frozenset({"critical", "major"})
# The incident id of a notice that belongs to no incident (a maintenance advance notice).
NO_INCIDENT = 0
STATE_VERSION = 1
_NEVER = -math.inf


@dataclass(frozen=True, slots=True)
class Notices:
    """What one call of the policy decided: notices owed, and keys of owed notices to drop if unsent."""

    owed: list[Owed] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    # response steps for the incident timeline (gateway/respond/dispatch.py: dispatched, acknowledged, ...)
    timeline: list[IncidentChange] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.owed or self.cancelled or self.timeline)


@dataclass(slots=True)
class _Window:
    """A maintenance window in epoch seconds."""

    spec: MaintenanceWindow
    start: float
    end: float
    from_api: bool
    known_at: float | None  # when the policy learnt of it: no advance notice is owed before

    def covers(self, category: str, building: str, t: float) -> bool:
        return (
            self.start <= t < self.end
            and category in self.spec.categories
            and (not self.spec.buildings or building in self.spec.buildings)
        )


@dataclass(slots=True)
class _Response:
    """What one incident has owed so far and what it may still owe."""

    id: int
    snap: dict[str, Any]  # the incident as last seen (Incident.to_dict)
    state: IncidentState  # from the transitions (the snapshot may be newer than the transition)
    confirm_from: float  # the confirmation delay runs from here (opened, or reopened before any notice)
    since: float  # the outage began (the earliest opening of it and of what merged into it)
    resolved_at: float | None = None
    # audience -> when its confirmation delay runs from, when earlier than confirm_from: inherited from a
    # merged incident (the residents of its buildings were out before the parent opened)
    started: dict[str, float] = field(default_factory=dict)
    notified: dict[str, float] = field(default_factory=dict)  # residents audience -> when its notice was due
    reported: dict[str, float] = field(default_factory=dict)  # utility audience -> when its report was due
    updates: int = 0  # residents' updates owed so far (the n of the next key is updates + 1)
    next_update: float | None = None
    eta: float | None = None
    all_clear_at: float | None = None
    closed: bool = False  # the all-clear is owed: residents hear nothing more of this incident
    keys: dict[str, float] = field(default_factory=dict)  # every key owed -> its due_at
    acked_at: float | None = None

    @property
    def category(self) -> str:
        return str(self.snap["category"])

    @property
    def severity(self) -> str:
        return str(self.snap["severity"])

    @property
    def audiences(self) -> list[str]:
        return [str(a) for a in self.snap.get("audiences") or []]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "snap": self.snap, "state": str(self.state), "confirm_from": self.confirm_from,
            "since": self.since, "resolved_at": self.resolved_at, "started": dict(self.started),
            "notified": dict(self.notified),
            "reported": dict(self.reported), "updates": self.updates, "next_update": self.next_update,
            "eta": self.eta, "all_clear_at": self.all_clear_at, "closed": self.closed,
            "keys": dict(self.keys), "acked_at": self.acked_at,
        }  # fmt: skip

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> _Response:
        def opt(name: str) -> float | None:
            v = d.get(name)
            return None if v is None else float(v)

        return _Response(
            id=int(d["id"]), snap=dict(d["snap"]), state=IncidentState(str(d["state"])),
            confirm_from=float(d["confirm_from"]), since=float(d["since"]), resolved_at=opt("resolved_at"),
            started={str(k): float(v) for k, v in d.get("started", {}).items()},
            notified={str(k): float(v) for k, v in d.get("notified", {}).items()},
            reported={str(k): float(v) for k, v in d.get("reported", {}).items()},
            updates=int(d.get("updates", 0)), next_update=opt("next_update"), eta=opt("eta"),
            all_clear_at=opt("all_clear_at"), closed=bool(d.get("closed")),
            keys={str(k): float(v) for k, v in d.get("keys", {}).items()}, acked_at=opt("acked_at"),
        )  # fmt: skip


def incident_key(incident_id: int, stage: Stage, audience: str, n: int | None = None) -> str:
    """The idempotency key of an incident's notice: incident:<id>/<stage>/<audience>[/<n>]."""
    key = f"incident:{incident_id}/{stage}/{audience}"
    return key if n is None else f"{key}/{n}"


def maintenance_key(window_id: str, stage: Stage, audience: str) -> str:
    return f"maintenance:{window_id}/{stage}/{audience}"


def _stage_of(key: str) -> str:
    return key.split("/", 2)[1]


def _hhmm(text: str) -> time:
    h, _, m = text.partition(":")
    return time(int(h), int(m))


class NoticePolicy:
    """Incident transitions and time in, notices owed out (see the module docstring for the rules)."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.cfg = site.config.notify
        self.tz = ZoneInfo(site.config.site.timezone)
        # an incident resolved longer than this ago can no longer reopen: its state is dropped
        self._keep_after_resolved = float(site.config.detection.reopen_window) + float(self.cfg.verify_for)
        self._incidents: dict[int, _Response] = {}
        self._windows: dict[str, _Window] = {
            w.id: self._window(w, from_api=False, known_at=None) for w in self.cfg.maintenance
        }
        self._announced: set[str] = set()  # maintenance windows whose advance notice is owed
        self._clock: float | None = None  # the timers have run up to here
        self._floor = _NEVER  # after a restore: timers that came due while down fire at the restart
        self._guard = ReplayGuard()
        self._owed: list[Owed] = []
        self._cancelled: list[str] = []

    # ---- the calls ------------------------------------------------------------------------------------
    def feed(self, changes: Iterable[Transition], incidents: Mapping[int, Incident]) -> Notices:
        """Apply the incident transitions of engine steps, in order (alert changes are ignored). `incidents`
        holds the incidents they concern, as the engine has them now (engine.incidents or a store batch's
        incidents); the policy takes their category, scope, audiences and severity from there and their
        state from the transitions. Timers due before each transition run first. A transition fed again
        (a replay after a restart) owes nothing."""
        for c in changes:
            if isinstance(c, IncidentChange) and self._guard.first_time(c):
                self._advance(c.ts)
                self._apply(c, incidents)
        return self._take()

    def tick(self, now: float) -> Notices:
        """Run the timers due up to `now`."""
        self._advance(now)
        return self._take()

    def next_due(self) -> float | None:
        """When `tick` will next owe something (None: nothing scheduled)."""
        times = [t for t, _ in self._timers()]
        return min(times) if times else None

    def set_eta(self, incident_id: int, eta_ts: float | None, now: float) -> Notices:
        """Staff's expected restoration time for an incident (None: unknown). A change owes the residents
        already told an update at once (held in quiet hours); before their notice it only goes into it.
        Raises KeyError for an incident the policy does not hold (unknown, merged, or long settled)."""
        self._advance(now)
        st = self._incidents[incident_id]
        if eta_ts == st.eta:
            return self._take()
        st.eta = eta_ts
        t = max(now, self._clock if self._clock is not None else now)
        if st.notified and not st.closed and st.state != IncidentState.RESOLVED:
            self._owe_update(st, t, eta_changed=True)
            st.next_update = t + self.cfg.update_every
        return self._take()

    def add_maintenance(self, window: MaintenanceWindow, now: float) -> Notices:
        """A window declared through the API: kept in the exported state; its advance notice is owed when
        due (at once if that time has passed and the window has not ended). The same window again is a
        no-op; another window under a known id raises ValueError."""
        self._advance(now)
        have = self._windows.get(window.id)
        if have is not None:
            if have.spec == window:
                return self._take()
            raise ValueError(f"maintenance window {window.id!r} exists already")
        self._windows[window.id] = self._window(window, from_api=True, known_at=now)
        self._advance(now)
        return self._take()

    def acknowledge(self, incident_id: int, now: float) -> Notices:
        """Staff took the incident on. Recorded for the dispatcher (a later step), whose escalation chain
        stops on it; owes nothing by itself. Raises KeyError for an incident the policy does not hold."""
        self._advance(now)
        st = self._incidents[incident_id]
        if st.acked_at is None:
            st.acked_at = now
        return self._take()

    def eta(self, incident_id: int) -> float | None:
        """The ETA set for an incident, if any (None also for an incident the policy does not hold)."""
        st = self._incidents.get(incident_id)
        return None if st is None else st.eta

    # ---- persistence ----------------------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        """The whole state as JSON-able values (the daemon writes it with the notices owed)."""
        return {
            "version": STATE_VERSION,
            "clock": self._clock,
            **self._guard.export(),
            "incidents": [st.to_dict() for _, st in sorted(self._incidents.items())],
            "maintenance": [w.spec.model_dump(mode="json") for w in self._windows.values() if w.from_api],
            "announced": sorted(self._announced),
        }

    def restore(self, state: Mapping[str, Any], now: float) -> None:
        """Take back an exported state at a restart at `now`. Timers that came due while the daemon was
        down fire once, at `now`, on the next `tick` (a missed hourly update is one update, not one per
        hour missed)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unknown notice policy state version {state.get('version')!r}")
        clock = state.get("clock")
        self._clock = None if clock is None else float(clock)
        self._guard.restore(state)
        self._incidents = {}
        for d in state.get("incidents", []):
            st = _Response.from_dict(d)
            self._incidents[st.id] = st
        for d in state.get("maintenance", []):
            spec = MaintenanceWindow.model_validate(d)
            if spec.id not in self._windows:  # the site file wins over a window of the same id
                self._windows[spec.id] = self._window(spec, from_api=True, known_at=now)
        for w in self._windows.values():
            w.known_at = now if w.known_at is None else w.known_at
        self._announced = {str(s) for s in state.get("announced", [])}
        self._floor = now

    # ---- transitions ----------------------------------------------------------------------------------
    def _adopt(self, incident_id: int, incidents: Mapping[int, Incident]) -> _Response | None:
        """The state of an incident, its snapshot refreshed. One first seen after its opening (the policy
        started after it) is taken on from its snapshot: no staff notice for an opening it did not see; its
        confirmation delay runs from its opening (the keys are those it would have had, so the outbox
        drops what it already holds)."""
        st = self._incidents.get(incident_id)
        inc = incidents.get(incident_id)
        if st is not None:
            if inc is not None:
                st.snap = inc.to_dict()
            return st
        if inc is None:
            return None
        st = _Response(
            id=inc.id,
            snap=inc.to_dict(),
            state=inc.state,
            confirm_from=inc.opened_at,
            since=inc.opened_at,
            resolved_at=inc.resolved_at,
        )
        self._incidents[inc.id] = st
        return st

    def _apply(self, c: IncidentChange, incidents: Mapping[int, Incident]) -> None:
        known = c.incident in self._incidents
        st = self._adopt(c.incident, incidents)
        if st is None:
            return
        t = c.ts
        ev = c.event
        if ev == IncidentEvent.OPENED:
            st.state, st.resolved_at = IncidentState.FIRING, None
            if not known:
                st.confirm_from = st.since = float(st.snap["opened_at"])
                windows = self._planned_by(st)
                self._owe_staff(st, Stage.STAFF_OPEN, t, planned=bool(windows), maintenance=windows)
        elif ev == IncidentEvent.RECOVERING:
            st.state = IncidentState.RECOVERING
        elif ev == IncidentEvent.REFIRED:
            st.state = IncidentState.FIRING
        elif ev == IncidentEvent.FLAPPING:
            self._owe_staff(st, Stage.FLAPPING, t)
        elif ev == IncidentEvent.RESOLVED:
            self._resolved(st, t)
        elif ev == IncidentEvent.REOPENED:
            self._reopened(st, t)
        elif ev == IncidentEvent.MERGED:
            self._merged(st, t, incidents)
            return
        # SYMPTOM and ABSORBED change only the snapshot (buildings); GATEWAY_DOWN is the store's own record
        self._confirm(st, t)

    def _resolved(self, st: _Response, t: float) -> None:
        st.state, st.resolved_at = IncidentState.RESOLVED, t
        self._owe_staff(st, Stage.RESOLVED, t, duration_s=round(t - st.since))
        st.next_update = None
        self._cancel_held(st, t, {Stage.RESIDENTS_UPDATE})  # an update held for the morning is stale now
        if st.notified and not st.closed:
            st.all_clear_at = t + self.cfg.verify_for

    def _reopened(self, st: _Response, t: float) -> None:
        """The same incident is back within the reopen window: no news for anyone; the pending all-clear
        is off, updates resume, and one that never got as far as a notice starts its delay again."""
        st.state, st.resolved_at, st.all_clear_at = IncidentState.FIRING, None, None
        if st.closed and self._cancel_held(st, t, {Stage.ALL_CLEAR}):
            st.closed = False  # its all-clear was still held for the morning: it never went out
        if not st.notified and not st.reported:
            st.confirm_from, st.started = t, {}
        if st.notified and not st.closed:
            st.next_update = t + self.cfg.update_every

    def _merged(self, st: _Response, t: float, incidents: Mapping[int, Incident]) -> None:
        """Absorbed into the incident of a root cause: the parent carries on with what this one owed."""
        del self._incidents[st.id]
        self._cancel_held(st, t, {Stage.RESIDENTS_NOTICE, Stage.RESIDENTS_UPDATE, Stage.ALL_CLEAR})
        parent_id = st.snap.get("merged_into")
        parent = self._adopt(int(parent_id), incidents) if parent_id is not None else None
        if parent is None:
            return
        for aud, at in st.notified.items():  # a residents' notice is never held: these went out
            parent.notified.setdefault(aud, at)
        for aud, at in st.reported.items():
            parent.reported.setdefault(aud, at)
        if parent.eta is None:
            parent.eta = st.eta
        if self._owes_outside(st):  # its audiences' delay keeps running from when their outage began
            utility = self._utility_audience(st)
            for aud in self._resident_audiences(st) + ([utility] if utility else []):
                frm = min(st.started.get(aud, st.confirm_from), parent.started.get(aud, math.inf))
                if frm < parent.confirm_from:
                    parent.started[aud] = frm
            parent.since = min(parent.since, st.since)
        if parent.notified and parent.next_update is None and parent.state != IncidentState.RESOLVED:
            parent.next_update = st.next_update if st.next_update is not None else t + self.cfg.update_every
        self._confirm(parent, t)

    # ---- timers ---------------------------------------------------------------------------------------
    def _timers(self) -> list[tuple[float, Any]]:
        """Every scheduled timer as (time, what fires it). Each firing makes progress (marks the audience
        told, moves or clears the timer), so running them to a time always ends."""
        out: list[tuple[float, Any]] = []
        for st in self._incidents.values():
            dues = self._confirm_dues(st)
            if dues:
                out.append((min(dues.values()), ("confirm", st.id)))
            if st.next_update is not None:
                out.append((st.next_update, ("update", st.id)))
            if st.all_clear_at is not None:
                out.append((st.all_clear_at, ("all_clear", st.id)))
        for w in self._windows.values():
            if w.spec.id not in self._announced and w.known_at is not None:
                out.append((max(w.start - w.spec.notice_before, w.known_at), ("announce", w.spec.id)))
        return out

    def _advance(self, until: float) -> None:
        for w in self._windows.values():
            if w.known_at is None:  # a window of the site file: known from the first time the policy runs
                w.known_at = until
        while True:
            due = [(t, what) for t, what in self._timers() if t <= until]
            if not due:
                break
            t, (kind, ref) = min(due, key=lambda x: (x[0], x[1]))
            t = max(t, self._floor)
            if kind == "announce":
                self._announce(self._windows[ref], t)
                continue
            st = self._incidents[ref]
            if kind == "confirm":
                self._confirm(st, t)
            elif kind == "update":
                assert st.next_update is not None
                if st.state == IncidentState.FIRING and st.notified and not st.closed:
                    self._owe_update(st, t, eta_changed=False)
                # a gap (the daemon was down, no tick for hours) owes one update, not one per period missed
                nxt = t + self.cfg.update_every
                st.next_update = nxt if nxt > until else until + self.cfg.update_every
            elif kind == "all_clear":
                st.all_clear_at = None
                if st.state == IncidentState.RESOLVED and not st.closed:
                    self._owe_all_clear(st, t)
        if self._clock is None or until > self._clock:
            self._clock = until
        self._forget(until)

    def _forget(self, now: float) -> None:
        """Drop incidents nothing can change any more: resolved for longer than the reopen window (and the
        all-clear delay) and owing nothing."""
        for st in list(self._incidents.values()):
            if (
                st.state == IncidentState.RESOLVED
                and st.resolved_at is not None
                and st.all_clear_at is None
                and now > st.resolved_at + self._keep_after_resolved
            ):
                del self._incidents[st.id]

    # ---- residents and utility ------------------------------------------------------------------------
    def _buildings(self, st: _Response) -> list[str]:
        return buildings_of(self._incident(st), self.site)

    def _resident_audiences(self, st: _Response) -> list[str]:
        """residents:<building> for each building the incident touches (a rule may name buildings itself);
        plain `residents` when it touches none the site knows."""
        auds = st.audiences
        named = sorted(a for a in auds if a.startswith("residents:"))
        if "residents" in auds:
            found = [f"residents:{b}" for b in self._buildings(st)] or ["residents"]
            named = sorted(set(named) | set(found))
        return named

    def _utility_audience(self, st: _Response) -> str | None:
        auds = st.audiences
        named = next((a for a in auds if a.startswith("utility:")), None)
        if named is not None:
            return named
        supply = ADVICE.get(st.category)
        return f"utility:{supply}" if "utility" in auds and supply else None

    def _planned_until(self, category: str, building: str, t: float) -> float:
        """The end of the maintenance covering `building`'s `category` at `t` (−inf: none)."""
        ends = [w.end for w in self._windows.values() if w.covers(category, building, t)]
        return max(ends, default=_NEVER)

    def _planned_by(self, st: _Response) -> list[str]:
        """The maintenance windows in force for the incident's category in any of its buildings."""
        t = st.confirm_from
        return sorted(
            w.spec.id
            for w in self._windows.values()
            if any(w.covers(st.category, b, t) for b in self._buildings(st))
        )

    def _owes_outside(self, st: _Response) -> bool:
        """Whether an incident owes anyone but staff: residents or the utility, on a confirmation delay."""
        return st.category in self.cfg.confirm_delay and (
            bool(self._resident_audiences(st)) or self._utility_audience(st) is not None
        )

    def _confirm_dues(self, st: _Response) -> dict[str, float]:
        """Residents and utility audiences not yet told, and when each is owed its notice (only while the
        incident fires: recovering or resolved, nothing is confirmed)."""
        delay = self.cfg.confirm_delay.get(st.category)
        if delay is None or st.state != IncidentState.FIRING:
            return {}
        out: dict[str, float] = {}
        plans: list[float] = []
        for aud in [] if st.closed else self._resident_audiences(st):
            b = aud.partition(":")[2]
            frm = st.started.get(aud, st.confirm_from)
            plan = self._planned_until(st.category, b, frm) if b else _NEVER
            plans.append(plan)
            if aud not in st.notified:
                out[aud] = max(frm, plan) + delay
        utility = self._utility_audience(st)
        if utility is not None and utility not in st.reported:
            frm = st.started.get(utility, st.confirm_from)
            if not plans:
                plans = [self._planned_until(st.category, b, frm) for b in self._buildings(st)]
            # planned only when every building it touches is under maintenance
            out[utility] = max(frm, min(plans, default=_NEVER)) + delay
        return out

    def _confirm(self, st: _Response, t: float) -> None:
        """Owe the notices whose confirmation delay has passed by `t` while the incident fires."""
        first = not st.notified
        told: list[str] = []
        for aud, due in sorted(self._confirm_dues(st).items()):
            if due > t:
                continue
            if aud.startswith("utility:"):
                st.reported[aud] = t
                self._owe(st, Stage.UTILITY_REPORT, aud, t, t, supply=aud.partition(":")[2])
            else:
                st.notified[aud] = t
                told.append(aud)
                self._owe(st, Stage.RESIDENTS_NOTICE, aud, t, t, **self._eta_ctx(st))
        if first and told:
            st.next_update = t + self.cfg.update_every

    def _owe_update(self, st: _Response, t: float, eta_changed: bool) -> None:
        """The next numbered update to every residents' audience told; one still held replaces nothing
        but is cancelled: residents get the newest, not a pile of them in the morning."""
        self._cancel_held(st, t, {Stage.RESIDENTS_UPDATE})
        st.updates += 1
        due = self._held_until(t) or t
        for aud in sorted(st.notified):
            self._owe(
                st,
                Stage.RESIDENTS_UPDATE,
                aud,
                due,
                t,
                n=st.updates,
                update=st.updates,
                eta_changed=eta_changed,
                elapsed_s=round(t - st.since),
                **self._eta_ctx(st),
            )

    def _owe_all_clear(self, st: _Response, t: float) -> None:
        st.closed = True
        resolved = st.resolved_at if st.resolved_at is not None else t
        due = self._held_until(t) or t
        for aud in sorted(st.notified):
            self._owe(st, Stage.ALL_CLEAR, aud, due, t, duration_s=round(resolved - st.since))

    def _eta_ctx(self, st: _Response) -> dict[str, Any]:
        if st.eta is None:
            return {"eta": None, "eta_local": None}
        return {"eta": st.eta, "eta_local": local_iso(st.eta, self.tz)}

    # ---- staff ----------------------------------------------------------------------------------------
    def _owe_staff(self, st: _Response, stage: Stage, t: float, **extra: Any) -> None:
        """Every staff notice goes through here (the dispatcher's seam: on-call, escalation and the
        response target will be owed next to these). Held by quiet hours below major severity."""
        held = None if st.severity in URGENT_SEVERITIES else self._held_until(t)
        self._owe(st, stage, "staff", held or t, t, **extra)

    # ---- maintenance ----------------------------------------------------------------------------------
    def _window(self, w: MaintenanceWindow, from_api: bool, known_at: float | None) -> _Window:
        start = w.start.replace(tzinfo=self.tz).timestamp()
        end = w.end.replace(tzinfo=self.tz).timestamp()
        return _Window(w, start, end, from_api, known_at)

    def _announce(self, w: _Window, t: float) -> None:
        """The advance notice of a window to the residents of its buildings (none once it has ended)."""
        self._announced.add(w.spec.id)
        if t >= w.end:
            return
        held = self._held_until(t)
        due = min(held, max(w.start, t)) if held is not None else t
        names = {b.id: (b.name or b.id) for b in self.site.config.buildings}
        buildings = list(w.spec.buildings) or [b.id for b in self.site.config.buildings]
        cfg = self.site.config.site
        ctx: dict[str, Any] = {
            "site": {
                "id": cfg.id,
                "name": cfg.name or cfg.id,
                "timezone": cfg.timezone,
                "hotline": self.cfg.hotline,
            },
            "planned": True,
            "maintenance": {
                "id": w.spec.id,
                "start": w.start,
                "end": w.end,
                "start_local": local_iso(w.start, self.tz),
                "end_local": local_iso(w.end, self.tz),
                "categories": list(w.spec.categories),
                "note": w.spec.note,
            },
            "buildings": [{"id": b, "name": names.get(b, b)} for b in buildings],
            "advice": next((ADVICE[c] for c in w.spec.categories if c in ADVICE), None),
            "now_local": local_iso(t, self.tz),
        }
        if due > t:  # held by quiet hours: it goes in the morning digest with the others held
            ctx["held_until_local"] = local_iso(due, self.tz)
        for b in buildings:
            aud = f"residents:{b}"
            key = maintenance_key(w.spec.id, Stage.RESIDENTS_NOTICE, aud)
            self._owed.append(
                Owed(key, NO_INCIDENT, Stage.RESIDENTS_NOTICE, aud, due, dict(ctx, audience=aud))
            )

    # ---- quiet hours ----------------------------------------------------------------------------------
    def _held_until(self, t: float) -> float | None:
        """The end of the quiet hours `t` falls in (site time zone), or None outside them."""
        qh = self.cfg.quiet_hours
        if qh is None:
            return None
        start, end = _hhmm(qh.start), _hhmm(qh.end)
        if start == end:
            return None
        local = datetime.fromtimestamp(t, self.tz)
        tod = local.time()
        day = local.date()
        if start < end:
            if not start <= tod < end:
                return None
        elif tod >= start:
            day += timedelta(days=1)
        elif tod >= end:
            return None
        return datetime.combine(day, end, tzinfo=self.tz).timestamp()

    # ---- owing ----------------------------------------------------------------------------------------
    def _incident(self, st: _Response) -> Incident:
        """The incident as the templates should see it: the snapshot with the state of the transitions."""
        inc = Incident.from_dict(st.snap)
        inc.state, inc.resolved_at = st.state, st.resolved_at
        return inc

    def _owe(
        self,
        st: _Response,
        stage: Stage,
        audience: str,
        due: float,
        t: float,
        n: int | None = None,
        **extra: Any,
    ) -> None:
        key = incident_key(st.id, stage, audience, n)
        if key in st.keys:
            return
        st.keys[key] = due
        ctx = incident_context(self._incident(st), self.site, t, audience=audience, **extra)
        if due > t:
            ctx["held_until_local"] = local_iso(due, self.tz)
        self._owed.append(Owed(key, st.id, stage, audience, due, ctx))

    def _cancel_held(self, st: _Response, t: float, stages: set[Stage]) -> bool:
        """Cancel this incident's notices of `stages` not yet due at `t` (held by quiet hours); True when
        there were any."""
        held = [key for key, due in st.keys.items() if due > t and _stage_of(key) in stages]
        for key in held:
            del st.keys[key]
            self._cancelled.append(key)
        return bool(held)

    def _take(self) -> Notices:
        """What the call owed and cancelled; a notice owed and cancelled within it is neither."""
        gone = set(self._cancelled)
        owed = [o for o in self._owed if o.key not in gone]
        fresh = {o.key for o in self._owed}
        cancelled = [k for k in dict.fromkeys(self._cancelled) if k not in fresh]
        self._owed, self._cancelled = [], []
        return Notices(owed, cancelled)
