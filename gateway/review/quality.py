"""How far an incident's evidence can be trusted: gaps in each device's readings, devices that fell silent or
sent nothing, readings whose times look wrong, and the gateway's own downtime.

    q = assess(evidence, site, incident, downtimes)
    q.gaps, q.silent, q.problems     # plain data; the report turns them into words

Evidence is what the incident store keeps with the incident (device -> quantity -> [(ts, value)]). A gap is a
stretch where a device sent no reading for longer than `GAP_POLLS` of its expected intervals (its
poll_interval, an MQTT device's expected_interval, else the median spacing of its own readings). A device is
silent when it belongs to the incident but has no reading at all, or its readings stop before the evidence
ends; a device powered by the supply that failed is expected to go silent, and is marked so.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.config import Site
from gateway.incidents.store import Downtime
from gateway.respond.context import ADVICE
from rules.model import AlertKey, Incident

Points = Sequence[tuple[float, float]]
Evidence = Mapping[str, Mapping[str, Points]]

GAP_POLLS = 3  # missed expected readings in a row before the silence is a gap
MIN_GAP = 2.0  # seconds: shorter silences are never gaps (scheduling jitter on a busy gateway)
CLOCK_SLACK = 86400.0  # readings further than this from the incident are taken as a clock problem


@dataclass(frozen=True, slots=True)
class Gap:
    device: str
    start: float  # the last reading before it
    end: float  # the first reading after it
    expected: bool = False  # the device is powered by the supply that failed

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Silent:
    device: str
    since: float | None  # its last reading; None: no reading at all
    expected: bool  # powered by the supply that failed: its silence is part of the outage


@dataclass(frozen=True, slots=True)
class Quality:
    has_evidence: bool
    devices: int  # devices with at least one reading
    samples: int
    start: float | None  # the evidence's first and last reading
    end: float | None
    gaps: list[Gap] = field(default_factory=list)
    silent: list[Silent] = field(default_factory=list)
    downtimes: list[Downtime] = field(default_factory=list)
    dropped: int = 0  # readings left out: not a finite number
    unordered: list[str] = field(default_factory=list)  # "device/quantity" whose times go backwards
    far: list[str] = field(default_factory=list)  # "device/quantity" with readings far from the incident
    starts_late: bool = False  # the evidence begins after the incident's first evidence


def clean(evidence: Evidence) -> tuple[dict[str, dict[str, list[tuple[float, float]]]], int]:
    """The evidence with every reading a finite (time, value) pair, sorted by time; and how many were not."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    dropped = 0
    for device, quantities in evidence.items():
        for quantity, points in quantities.items():
            kept = []
            for p in points:
                try:
                    ts, value = float(p[0]), float(p[1])
                except (TypeError, ValueError, IndexError):
                    dropped += 1
                    continue
                if math.isfinite(ts) and math.isfinite(value):
                    kept.append((ts, value))
                else:
                    dropped += 1
            if kept:
                out.setdefault(str(device), {})[str(quantity)] = sorted(kept)
    return out, dropped


def incident_devices(inc: Incident) -> list[str]:
    """The devices an incident names: its symptoms' and its alerts', in that order, each once."""
    seen = dict.fromkeys(inc.symptoms)
    for key in inc.alerts:
        seen.setdefault(AlertKey.parse(str(key)).device, None)
    return list(seen)


def expected_interval(site: Site, device: str, times: Sequence[float]) -> float:
    """How often a device's readings come in the evidence: its configured interval (poll_interval, an MQTT
    device's expected_interval) or its readings' median spacing, whichever is longer (evidence may be
    kept thinner than the device is polled)."""
    steps = [b - a for a, b in itertools.pairwise(times) if b > a]
    own = statistics.median(steps) if steps else 0.0
    try:
        dev = site.device(device)
    except KeyError:
        return own
    configured = 0.0
    if dev.source == "mqtt" and dev.expected_interval is not None:
        configured = float(dev.expected_interval)
    elif dev.source == "modbus":
        configured = float(dev.poll_interval)
    return max(configured, own)


def gap_limit(site: Site, device: str, times: Sequence[float]) -> float:
    """The longest silence of a device that is not a gap (seconds)."""
    return max(GAP_POLLS * expected_interval(site, device, times), MIN_GAP)


def silenced_by_outage(site: Site, inc: Incident, device: str) -> bool:
    """Whether the supply that failed also powers the device (a line-powered meter in its own outage)."""
    try:
        dev = site.device(device)
    except KeyError:
        return False
    domain = dev.power_domain
    if domain is None or ADVICE.get(inc.category) != "power":
        return False
    kind, _, ref = inc.scope.partition(":")
    if kind == "domain":
        return ref == domain
    if kind == "building":
        return ref == dev.building
    return kind == "site" or device in inc.symptoms


def _times(quantities: Mapping[str, Points]) -> list[float]:
    return sorted({ts for points in quantities.values() for ts, _ in points})


def _unordered(evidence: Evidence) -> list[str]:
    found = []
    for device, quantities in evidence.items():
        for quantity, points in quantities.items():
            times = [p[0] for p in points if isinstance(p[0], int | float)]
            if any(b < a for a, b in itertools.pairwise(times)):
                found.append(f"{device}/{quantity}")
    return found


def assess(evidence: Evidence, site: Site, inc: Incident, downtimes: Iterable[Downtime]) -> Quality:
    ordered = _unordered(evidence)  # before clean() sorts them
    data, dropped = clean(evidence)
    downs = list(downtimes)
    if not data:
        none = [Silent(d, None, silenced_by_outage(site, inc, d)) for d in incident_devices(inc)]
        return Quality(False, 0, 0, None, None, silent=none, downtimes=downs, dropped=dropped)
    per_device = {device: _times(q) for device, q in data.items()}
    start = min(t[0] for t in per_device.values())
    end = max(t[-1] for t in per_device.values())
    gaps: list[Gap] = []
    silent: list[Silent] = []
    for device, times in per_device.items():
        limit = gap_limit(site, device, times)
        powered = silenced_by_outage(site, inc, device)
        gaps.extend(Gap(device, a, b, powered) for a, b in itertools.pairwise(times) if b - a > limit)
        if end - times[-1] > limit:
            silent.append(Silent(device, times[-1], powered))
    for device in incident_devices(inc):
        if device not in per_device:
            silent.append(Silent(device, None, silenced_by_outage(site, inc, device)))
    lo = inc.first_evidence_at - CLOCK_SLACK
    hi = (inc.resolved_at if inc.resolved_at is not None else inc.updated_at) + CLOCK_SLACK
    far = [
        f"{device}/{quantity}"
        for device, quantities in data.items()
        for quantity, points in quantities.items()
        if points[0][0] < lo or points[-1][0] > hi
    ]
    return Quality(
        has_evidence=True,
        devices=len(data),
        samples=sum(len(p) for q in data.values() for p in q.values()),
        start=start,
        end=end,
        gaps=sorted(gaps, key=lambda g: (g.start, g.device)),
        silent=silent,
        downtimes=downs,
        dropped=dropped,
        unordered=ordered,
        far=far,
        starts_late=start > inc.first_evidence_at,
    )
