"""The incident manager: the engine plus its store, kept in step.

    mgr = IncidentManager.open(site, store, now)   # restores the engine, writes the downtime
    mgr.feed(event); mgr.tick(now)                  # engine steps; transitions are logged and collected
    batch = mgr.take_batch(now)                     # whole steps since the last batch
    store.write(batch); mgr.committed()            # one transaction, then readers see it

Readers on other threads (the metrics collector, HTTP handlers) never touch the engine: they get the
snapshot of open incidents taken after the last commit, or read the store.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar
from zoneinfo import ZoneInfo

from gateway.config import Site
from gateway.core.timefmt import local_iso
from gateway.core.types import Event
from gateway.incidents.site_model import build_engine
from gateway.incidents.store import Batch, Downtime, IncidentStore, StoreReader
from rules.engine import Engine
from rules.model import Alert, AlertChange, AlertKey, Incident, IncidentChange, IncidentEvent, Transition

# correlator runs a detector round makes one event at a time before it defers the rest (feed_many)
CORRELATE_PER_ROUND = 20
log = logging.getLogger("meterwatch.incidents")

_Arg = TypeVar("_Arg")


def _copy(inc: Incident) -> Incident:
    return Incident.from_dict(inc.to_dict())


def _duration(seconds: float) -> str:
    """A measured span to the second, 1h02m05s (not gateway/core/durations.format_duration: that writes a
    setting the way a site file does, 5m or 1.5h, and rounds to the unit)."""
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class IncidentManager:
    def __init__(self, site: Site, engine: Engine, store: IncidentStore, heartbeat_every: float) -> None:
        self.site = site
        self.tz = ZoneInfo(site.config.site.timezone)
        self.engine = engine
        self.store = store
        self.reader = StoreReader(store.path)
        self.heartbeat_every = heartbeat_every
        self.downtime: Downtime | None = None
        self.errors = 0  # engine steps that raised (a bug, logged); the daemon goes on
        self._batch = Batch()
        self._alert_keys: set[AlertKey] = set()
        self._incident_ids: set[int] = set()
        self._written: dict[int, str] = {}
        self._stored_alerts: set[AlertKey] = set()
        self._kinds_json = ""
        self._last_heartbeat = 0.0
        self._open: list[Incident] = []

    @classmethod
    def open(cls, site: Site, store: IncidentStore, now: float) -> IncidentManager:
        """Build the engine, restore what the store holds and record this start (downtime, heartbeat)."""
        engine = build_engine(site, start=now)
        loaded = store.load()
        engine.restore(loaded.alerts, loaded.incidents, loaded.kinds_state, now)
        # ids are never reused, even of incidents the engine no longer holds
        engine.corr.reserve_ids(loaded.max_incident_id + 1)
        mgr = cls(site, engine, store, float(site.config.incidents.heartbeat))
        mgr._written = {i.id: json.dumps(i.to_dict()) for i in loaded.incidents}
        mgr._stored_alerts = {a.key for a in loaded.alerts}
        mgr._kinds_json = json.dumps(loaded.kinds_state, sort_keys=True)
        open_ids = sorted(i.id for i in engine.incidents.values() if i.is_open)
        detail = ""
        if loaded.last_heartbeat is not None:
            gap = max(0.0, now - loaded.last_heartbeat)
            how = "clean stop" if loaded.clean_stop else "no clean stop: killed or power lost"
            detail = (
                f"gateway down from {mgr.local(loaded.last_heartbeat)} to {mgr.local(now)}"
                f" ({_duration(gap)}, {how}); no evidence in between, so nothing resolves before fresh data"
            )
        mgr.downtime = store.start(now, open_ids, detail)
        mgr._last_heartbeat = now
        mgr._open = [_copy(engine.incidents[i]) for i in open_ids]
        mgr._forget_settled(now)
        log.info(
            "incident store opened",
            extra={
                "fields": {
                    "path": str(store.path),
                    "incidents": len(loaded.incidents),
                    "open": len(open_ids),
                    "alerts": len(loaded.alerts),
                    "downtime_s": round(mgr.downtime.seconds, 1) if mgr.downtime else "",
                    "clean_stop": mgr.downtime.clean_stop if mgr.downtime else "",
                }
            },
        )
        return mgr

    def local(self, ts: float) -> str:
        return local_iso(ts, self.tz)

    # ---- engine steps ----------------------------------------------------------------------------------
    def feed(self, event: Event) -> Sequence[Transition]:
        return self._step("feed", self.engine.feed, event)

    def feed_many(self, events: Sequence[Event]) -> None:
        """A round's events, each correlated at its own time as a replay does, until the round has run the
        correlator CORRELATE_PER_ROUND times: then the rest are fed with it deferred and correlated once
        after them (Engine.correlate), so that thousands of devices answering at once cost one run, not
        one each (quadratic). A round holds what came in RULES_PACE (50 ms) or a backlog: in normal
        operation few of its events move a root and every incident time is its event's own."""
        engine = self.engine
        start = engine.correlations
        try:
            for event in events:
                if not engine.deferring and engine.correlations - start >= CORRELATE_PER_ROUND:
                    engine.deferring = True
                self._step("feed", engine.feed, event)
        finally:
            engine.deferring = False
        self._step("correlate", lambda _: engine.correlate(), None)

    def tick(self, now: float) -> Sequence[Transition]:
        return self._step("tick", self.engine.tick, now)

    def _step(
        self, name: str, step: Callable[[_Arg], Sequence[Transition]], arg: _Arg
    ) -> Sequence[Transition]:
        try:
            out = step(arg)
        except Exception:
            self.errors += 1
            # one line per failure would flood the log if a bug hits every sample
            if self.errors <= 3 or self.errors % 1000 == 0:
                log.exception(
                    "engine step failed", extra={"fields": {"step": name, "arg": arg, "count": self.errors}}
                )
            return ()
        self._absorb(out)
        return out

    # ---- staff's own steps (between rounds, from the desk) -----------------------------------------------
    def open_manual(self, proto: Incident, now: float) -> Incident:
        """Open an incident staff reported; it goes into the next batch like a detected one."""
        out = self.engine.open_manual(proto, now)
        self._absorb(out)
        return self.engine.incidents[proto.id]

    def resolve_manual(self, incident_id: int, now: float, detail: str) -> None:
        """Resolve a manual incident. KeyError: the engine does not hold it; ValueError: not manual or not
        open (nothing changes then)."""
        self._absorb(self.engine.resolve_manual(incident_id, now, detail))

    def _absorb(self, transitions: Sequence[Transition]) -> None:
        for t in transitions:
            if isinstance(t, AlertChange):
                self._batch.alert_log.append(t)
                self._alert_keys.add(t.key)
            elif isinstance(t, IncidentChange):
                self._batch.timeline.append(t)
                self._incident_ids.add(t.incident)
                self.log_change(t)

    def log_change(self, t: IncidentChange) -> None:
        inc = self.engine.incidents.get(t.incident)
        fields: dict[str, object] = {"id": t.incident, "event": t.event}
        if inc is not None:
            fields.update(category=inc.category, scope=inc.scope, state=inc.state, severity=inc.severity)
            if t.event == IncidentEvent.OPENED:
                fields.update(title=inc.title, households=inc.households)
        fields.update(at=self.local(t.ts), notify=t.notify)
        if t.detail:
            fields["detail"] = t.detail
        # An incident opening or coming back is what the operator must not miss, even at --log-level warning.
        loud = (IncidentEvent.OPENED, IncidentEvent.REOPENED, IncidentEvent.REFIRED)
        level = logging.WARNING if t.event in loud else logging.INFO
        log.log(level, f"incident {t.event}", extra={"fields": fields})

    # ---- persistence ------------------------------------------------------------------------------------
    def take_batch(self, now: float) -> Batch:
        """Everything the steps since the last batch changed (plus the heartbeat when due)."""
        b = self._batch
        eng = self.engine
        beat = now - self._last_heartbeat >= self.heartbeat_every
        if beat:
            b.heartbeat = now
            alert_keys = set(eng.alerts) | self._stored_alerts
            kinds = eng.export_kinds()
            kinds_json = json.dumps(kinds, sort_keys=True)
            if kinds_json != self._kinds_json:
                b.kinds_state = kinds
        else:
            alert_keys = self._alert_keys
        for key in alert_keys:
            a = eng.alerts.get(key)
            if a is not None:
                b.alerts_upsert[key] = Alert.from_dict(a.to_dict())
                b.alerts_delete.discard(key)
            elif key in self._stored_alerts:
                b.alerts_delete.add(key)
                b.alerts_upsert.pop(key, None)
        if self._incident_ids or beat or b.alert_log:
            for inc in eng.incidents.values():
                if inc.id in self._incident_ids or inc.is_open or inc.id not in self._written:
                    js = json.dumps(inc.to_dict())
                    if self._written.get(inc.id) != js:
                        b.incidents[inc.id] = _copy(inc)
        self._alert_keys = set()
        self._incident_ids = set()
        return b

    def committed(self, batch: Batch) -> None:
        """The batch is in the store: remember what it holds and publish the new snapshot."""
        for inc in batch.incidents.values():
            self._written[inc.id] = json.dumps(inc.to_dict())
        self._stored_alerts.update(batch.alerts_upsert)
        self._stored_alerts.difference_update(batch.alerts_delete)
        if batch.kinds_state is not None:
            self._kinds_json = json.dumps(batch.kinds_state, sort_keys=True)
        if batch.heartbeat is not None:
            self._last_heartbeat = batch.heartbeat
            self._forget_settled(batch.heartbeat)
        if batch.incidents:
            self._open = [
                _copy(i) for i in sorted(self.engine.incidents.values(), key=lambda i: i.id) if i.is_open
            ]
        self._batch = Batch()

    def _forget_settled(self, now: float) -> None:
        """Let the engine drop the settled incidents whose last state the store holds: the store and the
        API keep them, and without this a daemon running for years would hold every incident it ever saw."""
        for inc_id in self.engine.settled_incidents(now):
            inc = self.engine.incidents[inc_id]
            if self._written.get(inc_id) == json.dumps(inc.to_dict()):
                self.engine.forget_incident(inc_id)
                del self._written[inc_id]

    def failed(self, batch: Batch) -> None:
        """The write failed: keep every change for the next attempt (the heartbeat only if still newer)."""
        self._batch = batch

    # ---- readers (any thread) ---------------------------------------------------------------------------
    def open_incidents(self) -> list[Incident]:
        return list(self._open)

    def all_incidents(self, limit: int = 100) -> list[Incident]:
        return self.reader.incidents("all", limit)
