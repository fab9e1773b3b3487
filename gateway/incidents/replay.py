"""Run a recorded trace through the site's rules in virtual time (`meterwatch replay`, gateway/cli/replay.py).

The engine is the one the daemon runs; only the clock differs. Between events the replay jumps straight to
the engine's next timer (next_wakeup), so hours of trace replay in milliseconds and give the same result as
ticking every second. A `tail` runs the timers past the last row (holds, calendar windows, correlation
waits), but the end of the recording is not evidence of silence: a device is judged silent only from what
the recording shows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.config import Site
from gateway.core.timefmt import local_iso
from gateway.core.types import DeviceStatus, Event, Sample
from gateway.incidents.site_model import build_engine
from rules.engine import Engine
from rules.model import Incident, IncidentChange, IncidentState, Transition


@dataclass
class ReplayResult:
    engine: Engine
    transitions: list[Transition]
    start: float
    end: float

    def incidents(self, include_merged: bool = False) -> list[Incident]:
        incs = sorted(self.engine.incidents.values(), key=lambda i: (i.opened_at, i.id))
        return [i for i in incs if include_merged or i.state != IncidentState.MERGED]

    def timeline(self, incident_id: int) -> list[IncidentChange]:
        return [t for t in self.transitions if isinstance(t, IncidentChange) and t.incident == incident_id]


def known_quantities(site: Site) -> dict[str, set[str]]:
    """Device -> the quantities its profile carries, for the devices that have one (an MQTT device without a
    profile may publish any quantity: nothing can be said of those)."""
    known: dict[str, set[str]] = {}
    for d in site.config.devices:
        prof = site.profiles.get(d.profile) if d.profile else None
        if prof is not None:
            known[d.id] = set(prof.quantities)
    return known


def scope_to_trace(site: Site, events: list[Event], strict: bool = False) -> tuple[Site, list[str]]:
    """The site as far as a recording can judge it, and what the caller should be warned of.

    A device the recording never mentions has no rows at all: the recorder did not capture it, so its
    silence is no evidence of anything (replaying it would invent an outage). Such devices are left out,
    unless `strict` (then every device of the site is judged). Quantities a device's profile does not have
    are named (a typo in a column mapping, e.g. voltge_l1, would otherwise silently feed nothing)."""
    warnings: list[str] = []
    mentioned = {e.device for e in events if isinstance(e, Sample | DeviceStatus)}
    missing = [d.id for d in site.config.devices if d.id not in mentioned]
    if missing and not strict:
        shown = ", ".join(missing[:10]) + (f" (+{len(missing) - 10})" if len(missing) > 10 else "")
        warnings.append(
            f"devices of the site the trace never mentions are left out (their silence proves nothing; "
            f"--strict judges them too): {shown}"
        )
        keep = [d for d in site.config.devices if d.id in mentioned]
        mains = site.config.gateway
        if mains.mains is not None and mains.mains.device not in mentioned:
            mains = mains.model_copy(update={"mains": None})
        cfg = site.config.model_copy(update={"devices": keep, "gateway": mains})
        site = Site(config=cfg, path=site.path, profiles=site.profiles)
    known = known_quantities(site)
    unknown_set: set[str] = set()
    for e in events:
        if isinstance(e, Sample) and e.device in known:
            unknown_set.update(q for q in e.values if q not in known[e.device])
    unknown = sorted(unknown_set)
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" (+{len(unknown) - 10})" if len(unknown) > 10 else "")
        warnings.append(
            f"quantities their device's profile does not have (typos?), ignored by the rules: {shown}"
        )
    return site, warnings


def run_replay(
    site: Site,
    events: Iterable[Event],
    tail: float = 0.0,
    start: float | None = None,
    engine_type: type[Engine] = Engine,  # a test replays with a subclass that checks every step
) -> ReplayResult:
    evs = list(events)
    t0 = start if start is not None else (evs[0].ts if evs else 0.0)
    engine = build_engine(site, start=t0, engine_type=engine_type)
    out: list[Transition] = []

    def advance(until: float, inclusive: bool) -> None:
        while True:
            w = engine.next_wakeup()
            if w is None or w > until or (w == until and not inclusive):
                return
            out.extend(engine.tick(w))

    i = 0
    while i < len(evs):
        ts = evs[i].ts
        advance(ts, inclusive=False)
        while i < len(evs) and evs[i].ts == ts:
            out.extend(engine.feed(evs[i]))
            i += 1
        out.extend(engine.tick(ts))
    last = evs[-1].ts if evs else t0
    engine.data_end = last  # the tail runs the timers on; the recording's end silences nobody
    end = last + tail
    advance(end, inclusive=True)
    out.extend(engine.tick(end))
    return ReplayResult(engine, out, t0, end)


def incident_record(inc: Incident, tz: str) -> dict[str, Any]:
    """An incident as `meterwatch replay --json` and the HTTP API show it: times in the zone `tz`."""

    def local_time(ts: float | None) -> str | None:
        return None if ts is None else local_iso(ts, tz)

    return {
        "id": inc.id,
        "category": inc.category,
        "scope": inc.scope,
        "title": inc.title,
        "state": str(inc.state),
        "severity": inc.severity,
        "event_code": inc.event_code,
        "audiences": list(inc.audiences),
        "opened_at": local_time(inc.opened_at),
        "first_evidence_at": local_time(inc.first_evidence_at),
        "resolved_at": local_time(inc.resolved_at),
        "households": inc.households,
        "symptoms": sorted(inc.symptoms),
        "flap_count": inc.flap_count,
        "flapping": inc.flapping,
        "reopen_count": inc.reopen_count,
        "absorbed": list(inc.absorbed),
        "merged_into": inc.merged_into,
        "evidence": list(inc.evidence),
    }
