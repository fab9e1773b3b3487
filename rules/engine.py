"""The detection engine: pure, with no clock and no I/O. Time comes in with the events and with tick(now).

    engine = Engine(topology, evaluators, settings, start=t0)
    engine.feed(sample_or_status) -> [transitions]      # AlertChange / IncidentChange
    engine.tick(now)              -> [transitions]      # timers: holds, silence, calendar windows

Alert states: inactive -> pending -> firing -> recovering -> resolved. Holds (`for`, `clear_for`) are measured
on evidence time and need continuous evidence: a gap in the data restarts them, and only fresh samples can
clear anything, so data that stops never resolves an alert. Silence is judged from the device inventory
(every device is expected from `start` on), not from having seen a device before.

Besides its `for`, a pending alert fires only once `confirm_samples` pieces of trigger evidence in a row
have shown it (2 for a critical rule by default), so one bad reading never opens a critical incident. A
reading's trigger that the next reading clears is a glitch: counted in `glitches` per device and rule, and
nothing else (no firing, no incident). Absence is judged by the clock, never by samples: it needs none.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable

from gateway.core.types import DeviceStatus, Event, Sample, SourceStatus
from rules.correlate import SILENT, VOLTS, Correlator
from rules.kinds import Absence, Context, Kind, Polyphase, device_gaps
from rules.model import (
    MAINS_RULE,
    Alert,
    AlertChange,
    AlertKey,
    AlertState,
    DetectionSettings,
    Incident,
    RuleInfo,
    Transition,
)
from rules.topology import Topology

INF = math.inf
# kinds whose evidence is one reading's value: a trigger the next reading clears is a glitch of that device
# (a sequence's running pump before its response comes, or a calendar's window, is no such reading)
_READING_KINDS = frozenset({"threshold", "polyphase", "rate"})


class Engine:
    def __init__(
        self,
        topology: Topology,
        kinds: list[Kind],
        settings: DetectionSettings | None = None,
        start: float = 0.0,
    ) -> None:
        self.topo = topology
        self.settings = settings or DetectionSettings()
        self.kinds = kinds
        self.infos: dict[str, RuleInfo] = {k.info.id: k.info for k in kinds}
        self.by_device: dict[str, list[Kind]] = {d: [] for d in topology.devices}
        self.absence: dict[str, list[Absence]] = {d: [] for d in topology.devices}
        dark_reason: dict[str, str] = {}  # rule id -> how its alert says the device is dark
        for k in kinds:
            if isinstance(k, Absence):
                dark_reason[k.info.id] = SILENT
                for d in k.devices:
                    self.absence[d].append(k)
                continue
            if isinstance(k, Polyphase) and k.check == "outage":
                dark_reason[k.info.id] = VOLTS
            for d in k.devices:
                self.by_device[d].append(k)
        self._timed = [k for k in kinds if type(k).wakeup is not Kind.wakeup]
        self.gap = device_gaps(kinds, topology)
        self.alerts: dict[AlertKey, Alert] = {}
        # pending alert -> trigger evidence in a row so far, counted against its rule's confirm_samples
        self.streak: dict[AlertKey, int] = {}
        # (device, rule) -> readings whose trigger the next reading cleared: glitches, not alerts
        self.glitches: dict[tuple[str, str], int] = {}
        self.last_seen: dict[str, float] = dict.fromkeys(topology.devices, start)
        self.down: set[str] = set()
        self.ctx = Context(topology)
        for k in kinds:
            for q, span in k.windows().items():
                self.ctx.windows[q] = max(self.ctx.windows.get(q, 0.0), span)
        self.corr = Correlator(topology, self.infos, dark_reason, self.settings)
        self.unknown_devices = 0
        self.now = start
        # the last instant the data could have told anything (a replayed recording's end): silence after it
        # is the recorder stopping, not the meters, so it is not judged; None in the live daemon
        self.data_end: float | None = None
        self._dirty = False
        # set by the live detector while it feeds a round's events: correlate() runs the correlator after them
        self.deferring = False
        self.correlations = 0  # correlator runs so far (feed_many counts a round's)
        # next_wakeup must not scan every device and alert: at high MQTT rates the detector asks for it on
        # every round, and a scan was a fifth of all CPU. Both timers live in heaps instead, with lazy
        # invalidation: an entry is checked against the live state when it reaches the top, so the hot
        # paths only update dicts and push when something new becomes due.
        # device -> its shortest absence stale_after (devices no absence rule watches are not here)
        self._stale: dict[str, float] = {
            d: min(ab.stale_after[d] for ab in rules) for d, rules in self.absence.items() if rules
        }
        # one entry per device in _abs_queued, keyed at or before its due time (last_seen + _stale): a
        # sample only moves last_seen on, and the entry is re-keyed when it reaches the top. A device that
        # is down, or whose due time has passed (engine time never goes back), leaves the heap until it
        # comes up or is seen again (_seen).
        self._abs_heap: list[tuple[float, str]] = [(start + st, d) for d, st in self._stale.items()]
        heapq.heapify(self._abs_heap)
        self._abs_queued: set[str] = set(self._stale)
        # pending, confirmed alerts' fire times (since + for_); an entry is valid while its alert is still
        # the pending, confirmed one with that due time. _pend_due: key -> the latest due time pushed, so an
        # unchanged alert is not pushed again (an entry with that time is in the heap while it is set).
        self._pend_heap: list[tuple[float, AlertKey]] = []
        self._pend_due: dict[AlertKey, float] = {}

    # ---------------------------------------------------------------------------------------------------
    @property
    def incidents(self) -> dict[int, Incident]:
        return self.corr.incidents

    def settled_incidents(self, now: float) -> list[int]:
        """Closed incidents nothing can change any more: resolved (or merged) longer than the reopen window
        ago, so a recurrence opens a new incident instead of reopening them."""
        horizon = now - self.settings.reopen_window
        return [
            inc.id
            for inc in self.corr.incidents.values()
            if not inc.is_open
            and (inc.resolved_at if inc.resolved_at is not None else inc.updated_at) < horizon
        ]

    def open_manual(self, proto: Incident, now: float) -> list[Transition]:
        """Open an incident staff reported (see Correlator.open_manual)."""
        return list(self.corr.open_manual(proto, now))

    def resolve_manual(self, incident_id: int, now: float, detail: str) -> list[Transition]:
        """Resolve an incident staff opened (KeyError, ValueError: see Correlator.resolve_manual)."""
        return list(self.corr.resolve_manual(incident_id, now, detail))

    def forget_incident(self, incident_id: int) -> None:
        """Drop a settled incident from memory (the live daemon, once its store holds it: otherwise every
        incident ever opened would stay here). A replay keeps them all, to report them."""
        self.corr.forget(incident_id)

    def feed(self, event: Event) -> list[Transition]:
        out: list[Transition] = []
        if isinstance(event, Sample):
            self._sample(event, out)
        elif isinstance(event, DeviceStatus):
            if event.device not in self.topo.devices:
                self.unknown_devices += 1
                return out
            if event.up:
                self._seen(event.device)
            else:
                self.down.add(event.device)
                self._silent(event.device, event.ts, out)
        elif isinstance(event, SourceStatus):
            if event.connected:
                self.corr.source_back(event.source)
            else:
                devs = frozenset(d for d in event.devices if d in self.topo.devices)
                self.corr.source_lost(event.source, devs)
                for d in devs:
                    self.down.add(d)
                    self._silent(d, event.ts, out)
            self._dirty = True
        self.now = max(self.now, event.ts)
        if self._dirty and not self.deferring:
            self._dirty = False
            self.correlations += 1
            out.extend(self.corr.run(self.alerts, self.now))
        return out

    def correlate(self) -> list[Transition]:
        """What the correlator makes of the events fed while `deferring` (nothing when none changed it).

        The correlator looks at every active alert and line, so running it after each event that may move a
        root is quadratic when thousands of devices answer at once (a gateway starting, a site's power
        back): at 4,000 meters the detector never caught up. So the live detector defers it within a round
        once the round has correlated often (IncidentManager.feed_many) and correlates once after the
        round's events; the incidents' times are then the round's latest event's, not each event's own."""
        if not self._dirty:
            return []
        self._dirty = False
        self.correlations += 1
        return list(self.corr.run(self.alerts, self.now))

    def _sample(self, s: Sample, out: list[Transition]) -> None:
        node = self.topo.devices.get(s.device)
        if node is None:
            self.unknown_devices += 1
            return
        if s.quality == "stale" or not s.values:
            return  # a repeated (retained) value proves nothing about now
        # One C-level sum instead of a test per value: a NaN or an infinity makes it non-finite (so does a sum
        # past the float range, which the filter then finds to be none of them)
        if not math.isfinite(sum(s.values.values())):
            s = Sample(s.device, s.ts, {k: v for k, v in s.values.items() if math.isfinite(v)}, s.quality)
        d = s.device
        if s.ts > self.last_seen[d]:
            self.last_seen[d] = s.ts
        self._seen(d)
        if self.corr.answered(d, s.ts):
            self._dirty = True
        self.ctx.last_values[d] = s.values
        self.ctx.last_ts[d] = s.ts
        if self.ctx.windows:
            self.ctx.record(s)
        for ab in self.absence[d]:
            if AlertKey(ab.info.id, d) in self.alerts:
                self._apply(ab.info, d, "", False, None, s.ts, out)
        for k in self.by_device[d]:
            for sub, cond, value in k.on_sample(node, s, self.ctx):
                self._apply(k.info, d, sub, cond, value, s.ts, out)

    def _seen(self, d: str) -> None:
        """`d` is up (a sample, or its source says so): its absence timer runs again from last_seen."""
        self.down.discard(d)
        if d not in self._abs_queued and d in self._stale:
            self._abs_queued.add(d)
            heapq.heappush(self._abs_heap, (self.last_seen[d] + self._stale[d], d))

    def _silent(self, d: str, ts: float, out: list[Transition]) -> None:
        self.corr.went_silent(d)
        for ab in self.absence[d]:
            self._absent(ab, d, ts, out)

    def _absent(self, ab: Absence, d: str, ts: float, out: list[Transition]) -> None:
        """Evidence for an absence rule that `d` is silent. A firing absence alert takes none: silence is
        continuous, and fed again at every tick it would only restart the alert's clock."""
        a = self.alerts.get(AlertKey(ab.info.id, d))
        if a is None or a.state != AlertState.FIRING:
            self._apply(ab.info, d, "", True, None, ts, out)

    def tick(self, now: float) -> list[Transition]:
        out: list[Transition] = []
        if now < self.now:
            now = self.now  # time never runs backwards inside the engine
        self.now = now
        for k in self._timed:
            for d, sub, cond, value in k.on_tick(now):
                self._apply(k.info, d, sub, cond, value, now, out)
        for d, abs_rules in self.absence.items():
            if not abs_rules:
                continue
            seen = self.last_seen[d]
            down = d in self.down
            judged = now if self.data_end is None else min(now, self.data_end)
            for ab in abs_rules:
                if down or judged - seen >= ab.stale_after[d]:
                    self.corr.went_silent(d)
                    self._absent(ab, d, now, out)
        for a in [a for a in self.alerts.values() if a.state == AlertState.PENDING]:
            info = self.infos[a.rule]
            if (
                info.kind != "absence"
                and now - a.since >= info.for_
                and now - a.last_evidence <= self.gap[a.device]
                and self._confirmed(a, info)
            ):
                self._set(a, AlertState.FIRING, now, out)
        hold = self.corr.hold_deadline()
        if self._dirty or (hold is not None and now >= hold):
            self._dirty = False
            out.extend(self.corr.run(self.alerts, now))
        return out

    def next_wakeup(self) -> float | None:
        """The earliest time a tick could change something, for replay in virtual time and the detector's
        sleep. Exactly what _scan_wakeup (the full scan it replaces) returns, from the heaps."""
        now = self.now
        best = INF
        heap, last_seen, stale, down = self._abs_heap, self.last_seen, self._stale, self.down
        while heap:
            due, d = heap[0]
            if d in down:  # no absence timer while down; _seen queues it again
                heapq.heappop(heap)
                self._abs_queued.discard(d)
                continue
            cur = last_seen[d] + stale[d]
            if due != cur:  # seen since it was queued: re-key, it may no longer be the earliest
                heapq.heapreplace(heap, (cur, d))
                continue
            if cur <= now:  # passed, and engine time never goes back: only a new sample makes it due again
                heapq.heappop(heap)
                self._abs_queued.discard(d)
                continue
            # the earliest of all: if it falls after the recording's end, every other one does too
            if self.data_end is None or cur <= self.data_end:
                best = cur
            break
        pend = self._pend_heap
        while pend:
            due, key = pend[0]
            a = self.alerts.get(key)
            if a is not None and due > now and a.state == AlertState.PENDING:
                info = self.infos[a.rule]
                if a.since + info.for_ == due and self._confirmed(a, info):
                    best = min(best, due)
                    break
            heapq.heappop(pend)  # stale (fired, dropped, restarted, unconfirmed) or passed
            if self._pend_due.get(key) == due:
                del self._pend_due[key]
        for k in self._timed:
            w = k.wakeup()
            if w is not None and now < w < best:
                best = w
        hold = self.corr.hold_deadline()
        if hold is not None and now < hold < best:
            best = hold
        return None if best == INF else best

    def _track(self, a: Alert, info: RuleInfo) -> None:
        """Queue a pending alert's fire time once it is confirmed, and again whenever its hold restarts."""
        if a.state == AlertState.PENDING and self._confirmed(a, info):
            due = a.since + info.for_
            if self._pend_due.get(a.key) != due:
                self._pend_due[a.key] = due
                heapq.heappush(self._pend_heap, (due, a.key))

    # ---------------------------------------------------------------------------------------------------
    def _apply(
        self,
        info: RuleInfo,
        device: str,
        sub: str,
        cond: bool | None,
        value: float | None,
        ts: float,
        out: list[Transition],
    ) -> None:
        key = AlertKey(info.id, device, sub)
        a = self.alerts.get(key)
        if a is None:
            if cond is True:
                a = Alert(key, info.id, device, AlertState.PENDING, ts, ts, ts, value)
                self.alerts[key] = a
                self.streak[key] = 1
                out.append(
                    AlertChange(ts, key, info.id, device, AlertState.INACTIVE, AlertState.PENDING, value)
                )
                if info.for_ <= 0 and self._confirmed(a, info):
                    self._set(a, AlertState.FIRING, ts, out)
                else:
                    self._track(a, info)
            return
        if ts < a.last_evidence:
            return  # late, out-of-order evidence cannot rewrite what is already decided
        # silence is continuous by nature; everything else needs evidence without gaps
        gap_limit = INF if (info.kind == "absence" and cond is True) else self.gap[device]
        gap = ts - a.last_evidence > gap_limit
        a.last_evidence = ts
        if value is not None:
            a.value = value
        if cond is True:
            if a.state == AlertState.PENDING:
                self.streak[key] = 1 if gap else self.streak.get(key, 0) + 1
                if _held(a, ts, gap, info.for_) and self._confirmed(a, info):
                    self._set(a, AlertState.FIRING, ts, out)
                else:
                    self._track(a, info)  # newly confirmed, or its hold restarted after a gap
            elif a.state == AlertState.RECOVERING:
                a.flaps += 1
                self._set(a, AlertState.FIRING, ts, out, "flap")
        elif cond is False:
            if a.state == AlertState.PENDING:
                if not gap and self.streak.get(key) == 1 and info.kind in _READING_KINDS:
                    self.glitches[(device, info.id)] = self.glitches.get((device, info.id), 0) + 1
                self._drop(a, AlertState.INACTIVE, ts, out)
            elif a.state == AlertState.FIRING:
                self._set(a, AlertState.RECOVERING, ts, out)
                if info.clear_for <= 0:
                    self._drop(a, AlertState.RESOLVED, ts, out)
            elif a.state == AlertState.RECOVERING and _held(a, ts, gap, info.clear_for):
                self._drop(a, AlertState.RESOLVED, ts, out)
        elif a.state == AlertState.PENDING:
            self._drop(a, AlertState.INACTIVE, ts, out)
        elif a.state == AlertState.RECOVERING:
            self._set(a, AlertState.FIRING, ts, out, "back in the hysteresis band")

    def _confirmed(self, a: Alert, info: RuleInfo) -> bool:
        """Whether enough trigger evidence in a row has shown the pending alert for it to fire."""
        return info.kind == "absence" or self.streak.get(a.key, 0) >= info.confirm_samples

    def _set(self, a: Alert, state: AlertState, ts: float, out: list[Transition], note: str = "") -> None:
        out.append(AlertChange(ts, a.key, a.rule, a.device, a.state, state, a.value, note))
        if state != AlertState.PENDING:
            self.streak.pop(a.key, None)
        a.state = state
        a.since = ts
        if state == AlertState.FIRING and a.fired_at is None:
            a.fired_at = ts
        self._dirty = True

    def _drop(self, a: Alert, state: AlertState, ts: float, out: list[Transition]) -> None:
        out.append(AlertChange(ts, a.key, a.rule, a.device, a.state, state, a.value))
        del self.alerts[a.key]
        self.streak.pop(a.key, None)
        if state == AlertState.RESOLVED:
            self._dirty = True

    # ---------------------------------------------------------------------------------------------------
    def export_kinds(self) -> dict[str, dict[str, object]]:
        return {k.info.id: st for k in self.kinds if (st := k.export())}

    def restore(
        self,
        alerts: Iterable[Alert],
        incidents: Iterable[Incident],
        kinds_state: dict[str, dict[str, object]] | None = None,
        now: float | None = None,
    ) -> None:
        """Continue after a restart. Running holds need new evidence: the time we were down proves nothing."""
        now = self.now if now is None else now
        self.now = max(self.now, now)
        for a in alerts:
            if a.rule not in self.infos or a.device not in self.topo.devices:
                continue  # the rule or device left the site file; its incident keeps its history
            if a.state in (AlertState.PENDING, AlertState.RECOVERING):
                a.last_evidence = -INF
            self.alerts[a.key] = a
            self._track(a, self.infos[a.rule])
        for inc in incidents:
            self.corr.restore_incident(inc)
        for k in self.kinds:
            st = (kinds_state or {}).get(k.info.id)
            if st:
                k.restore(st)
        for d in self.last_seen:
            self.last_seen[d] = max(self.last_seen[d], self.now)
            if d in self._stale and d not in self._abs_queued and d not in self.down:
                self._abs_queued.add(d)  # its timer restarts from now, also if it had passed
                heapq.heappush(self._abs_heap, (self.last_seen[d] + self._stale[d], d))
        self._dirty = True


def _held(a: Alert, ts: float, gap: bool, hold: float) -> bool:
    """Whether the alert's running hold (`for` while pending, `clear_for` while recovering) has lasted
    `hold` by this evidence. A gap in the evidence restarts it from here: a hold needs continuous proof."""
    if gap:
        a.since = ts
        return False
    return ts - a.since >= hold


def _scan_wakeup(eng: Engine) -> float | None:
    """The full scan Engine.next_wakeup replaced (every device, every alert): the reference it must equal
    in every state, kept for the test that checks so (tests/rules/test_wakeup.py) and the bench's before."""
    cands: list[float] = []
    for d, abs_rules in eng.absence.items():
        if abs_rules and d not in eng.down:
            due = eng.last_seen[d] + min(ab.stale_after[d] for ab in abs_rules)
            if eng.data_end is None or due <= eng.data_end:
                cands.append(due)
    for a in eng.alerts.values():
        if a.state == AlertState.PENDING and eng._confirmed(a, eng.infos[a.rule]):
            cands.append(a.since + eng.infos[a.rule].for_)  # unconfirmed: only a sample can fire it
    for k in eng._timed:
        w = k.wakeup()
        if w is not None:
            cands.append(w)
    hold = eng.corr.hold_deadline()
    if hold is not None:
        cands.append(hold)
    future = [c for c in cands if c > eng.now]
    return min(future) if future else None


__all__ = ["MAINS_RULE", "Engine"]
