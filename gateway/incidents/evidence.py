"""Evidence kept with an incident: its devices' key readings from before it opened until after it resolved,
in the incident store, so a report never needs the time-series database (which may be down in the very
outage).

The keeper reads the bus through its own dropping subscription (`overflow="drop_oldest"`: it never slows the
sources or the rules; what it loses is counted by the bus as `meterwatch_bus_dropped_events{subscriber=
"evidence"}`) and holds, per device, a ring of the configured quantities over `evidence.before` (at least
RING_MIN_SPAN, at most RING_SLOTS readings: a faster device is kept at one reading per before/RING_SLOTS s).

The detector calls `on_batch(batch, now)` before each round's write. The keeper follows the engine's
incidents there: while one is open, and until `evidence.after` past its resolution, the rings of its devices
(those of its symptoms and of its scope: a building, a supply domain and the domains below it, a line, a
device, the whole site) go into the round's transaction as a batch writer: first everything since
`evidence.before` ahead of its first evidence, then each new reading. Readings ride along with the rounds
the detector writes anyway, and at least every FLUSH_EVERY seconds (so a crash loses at most that much);
an incident opening, a device joining it or the daemon stopping flushes at once.

Bound: at most `evidence.max_points` readings per incident. Past it the incident's readings are thinned
evenly to a lower rate: each quantity keeps only the first reading in every slot of 2^k seconds, k raised
until the incident holds at most three quarters of the bound, and new readings are kept at that same rate.
Slots of 2^(k+1) s are unions of slots of 2^k s, so the result is exactly as if the lower rate had applied
from the start: the charts stay even over the whole incident. Dropped readings are counted (`thinned`,
per incident in `evidence_meta` and in total for /metrics).

A restart: what was written is in SQLite and the keeper goes on from it for the incidents still open (or
still inside their after window); the rings start empty, so the readings while the gateway was down and
the `before` window of an incident opening right after a start are missing (the timeline's gateway_down
entry says why).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from itertools import pairwise

from gateway.config import Site
from gateway.config.incidents import EvidenceConfig
from gateway.core.bus import Subscription
from gateway.core.types import Event, Sample
from gateway.incidents.store import Batch, EvidenceWrite, IncidentStore, StoredEvidence
from rules.model import Incident, IncidentState

log = logging.getLogger("meterwatch.incidents.evidence")

QUEUE = 10_000  # events; past this the oldest are dropped (and counted by the bus)
RING_SLOTS = 3600  # readings per device at most: 0.25 s apart over the default 15 min
RING_MIN_SPAN = 60.0  # the ring holds at least this long, so readings not yet flushed are never evicted
FLUSH_EVERY = 5.0  # seconds between evidence writes when no round is written anyway
GRACE = 30.0  # readings stamped inside an after window may still be queued this long after it ends
K_MIN, K_MAX = -6, 26  # thinning slots from 1/64 s to about two years
FILL = 0.75  # a thinning leaves room for new readings: the incident then holds at most this share

Series = tuple[str, str]  # (device, quantity)
Entry = tuple[float, tuple[str, ...], tuple[float, ...]]  # ts, quantities, values


class Ring:
    """One device's recent readings of the kept quantities: at most `slots` over `span` seconds.

    Readings come in time order; one that is older than the newest, or closer to it than span/slots, is not
    kept (a device polled faster than that is kept at that rate)."""

    __slots__ = ("entries", "min_gap", "span")

    def __init__(self, span: float, slots: int = RING_SLOTS) -> None:
        self.span = span
        self.min_gap = span / slots
        self.entries: deque[Entry] = deque()

    def add(self, ts: float, keys: tuple[str, ...], values: tuple[float, ...]) -> bool:
        if self.entries and ts < self.entries[-1][0] + self.min_gap:
            return False
        self.entries.append((ts, keys, values))
        horizon = ts - self.span
        while self.entries[0][0] < horizon:
            self.entries.popleft()
        return True

    def since(self, after: float) -> list[Entry]:
        """The readings newer than `after`, oldest first."""
        out: list[Entry] = []
        for entry in reversed(self.entries):
            if entry[0] <= after:
                break
            out.append(entry)
        out.reverse()
        return out

    def __len__(self) -> int:
        return len(self.entries)


def affected_devices(inc: Incident, site: Site) -> set[str]:
    """The site's devices an incident concerns: its symptoms' and those of its scope (a building, a supply
    domain with the domains below it, a line, a device; every device for a detected site-wide incident) and
    of a manual incident's buildings."""
    devices = site.config.devices
    known = {d.id for d in devices}
    out = {d for d in inc.symptoms if d in known}
    if inc.buildings:
        out |= {d.id for d in devices if d.building in inc.buildings}
    kind, _, ref = inc.scope.partition(":")
    if kind == "building":
        out |= {d.id for d in devices if d.building == ref}
    elif kind == "domain":
        doms = _domain_and_below(ref, site)
        out |= {d.id for d in devices if d.domain in doms or d.powered_by in doms}
    elif kind == "line":
        out |= {d.id for d in site.devices_on(ref)}
    elif kind == "device" and ref in known:
        out.add(ref)
    elif kind == "site" and not inc.manual:  # a manual one names its buildings (a failing channel: none)
        out |= known
    return out


def _domain_and_below(ref: str, site: Site) -> set[str]:
    children: dict[str, list[str]] = {}
    for _, dom in site.domains().values():
        if dom.parent is not None:
            children.setdefault(dom.parent, []).append(dom.id)
    found, todo = {ref}, [ref]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _slot(ts: float, k: int) -> int:
    return math.floor(ts / 2.0**k)


def thin_times(times: list[float], k: int) -> list[float]:
    """The first instant in each slot of 2^k seconds (times sorted)."""
    out: list[float] = []
    last: int | None = None
    width = 2.0**k
    for t in times:
        s = math.floor(t / width)
        if s != last:
            out.append(t)
            last = s
    return out


def thin_points(points: list[tuple[float, float]], k: int, after: float | None) -> list[tuple[float, float]]:
    """Like thin_times, for readings that follow an instant already kept (`after`) in the same series."""
    out: list[tuple[float, float]] = []
    last = None if after is None else _slot(after, k)
    for p in points:
        s = _slot(p[0], k)
        if s != last:
            out.append(p)
            last = s
    return out


@dataclass(slots=True)
class Tracked:
    """An incident collecting evidence, and a mirror of what the store holds for it (instants only)."""

    id: int
    start: float  # first evidence minus `before`
    end: float | None  # resolution plus `after`; None while open
    devices: set[str] = field(default_factory=set)
    seen: dict[str, float] = field(default_factory=dict)  # device -> newest reading already considered
    times: dict[Series, list[float]] = field(default_factory=dict)
    points: int = 0
    k: int | None = None  # thinned to one reading per 2^k s per quantity; None: every reading kept
    thinned: int = 0
    meta_dirty: bool = False
    # scope, number of symptoms, buildings when its devices were last found
    shape: tuple[str, int, tuple[str, ...]] | None = None

    @property
    def spacing(self) -> float | None:
        return None if self.k is None else 2.0**self.k

    def restore(self, stored: StoredEvidence) -> None:
        self.times = {s: list(ts) for s, ts in stored.times.items()}
        self.points = sum(len(ts) for ts in self.times.values())
        self.k = None if stored.spacing is None else round(math.log2(stored.spacing))
        self.thinned = stored.thinned
        for (dev, _), ts in self.times.items():
            if ts:
                self.seen[dev] = max(self.seen.get(dev, ts[-1]), ts[-1])


class EvidenceKeeper:
    """The daemon component keeping the rings, and the detector's hook writing them with incidents."""

    name = "evidence"

    def __init__(
        self,
        site: Site,
        settings: EvidenceConfig,
        sub: Subscription,
        incidents: Callable[[], Mapping[int, Incident]],
        store: IncidentStore,
    ) -> None:
        self.site = site
        self.settings = settings
        self.sub = sub
        self.incidents = incidents  # the engine's incidents (open ones and those recently closed)
        self.rings: dict[str, Ring] = {}
        self.tracked: dict[int, Tracked] = {}
        self.points_stored = 0  # readings written with incidents (in total, for /metrics)
        self.points_thinned = 0  # readings not kept, or dropped later, to stay within max_points
        self._span = max(settings.before, RING_MIN_SPAN)
        self._known = {d.id for d in site.config.devices}
        self._matches: dict[str, bool] = {}
        # per device: the quantities of its last reading (in the reading's order) and those of them kept, in
        # sorted order; a device sends the same quantities reading after reading, so the match and the sort
        # run once, and its entries share one keys tuple
        self._plans: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self.flushed_at = -math.inf  # the round time of the last evidence flush
        self._stop: asyncio.Event | None = None
        # a restart: go on from what the store holds for the incidents the engine restored
        held = [i.id for i in incidents().values() if i.state != IncidentState.MERGED]
        self._restored = store.stored_evidence(held) if settings.quantities else {}

    # ---- the rings --------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        while not stop.is_set():
            ev = await self.sub.get_until(stop)
            if ev is not None:
                self.take(ev)
            self.drain()
        self.drain()

    def drain(self) -> None:
        while (ev := self.sub.get_nowait()) is not None:
            self.take(ev)

    def take(self, ev: Event) -> None:
        if not isinstance(ev, Sample) or ev.quality == "stale" or ev.device not in self._known:
            return  # a repeated (retained) value is not a reading of that instant
        values = ev.values
        names = tuple(values)
        plan = self._plans.get(ev.device)
        if plan is None or plan[0] != names:
            plan = self._plans[ev.device] = (names, tuple(sorted(q for q in names if self._kept(q))))
        keys = plan[1]
        if not keys:
            return
        kept = tuple([float(values[q]) for q in keys])
        if not math.isfinite(sum(kept)):  # a NaN or an infinity among them (or a sum past the float range)
            finite = [(q, v) for q, v in zip(keys, kept, strict=True) if math.isfinite(v)]
            if not finite:
                return
            if len(finite) < len(keys):
                keys, kept = tuple(q for q, _ in finite), tuple(v for _, v in finite)
        ring = self.rings.get(ev.device)
        if ring is None:
            ring = self.rings[ev.device] = Ring(self._span)
        ring.add(ev.ts, keys, kept)

    def _kept(self, quantity: str) -> bool:
        hit = self._matches.get(quantity)
        if hit is None:
            hit = any(fnmatchcase(quantity, p) for p in self.settings.quantities)
            self._matches[quantity] = hit
        return hit

    # ---- the detector's hook ---------------------------------------------------------------------------
    def on_batch(self, batch: Batch, now: float) -> None:
        """Add to the round's batch the readings its incidents' evidence owes (see the module docstring)."""
        if not self.settings.quantities:
            return
        self.drain()  # as fresh as the readings the detector just fed
        joined = self._follow(now)
        stopping = self._stop is not None and self._stop.is_set()
        if not (joined or stopping or batch or now - self.flushed_at >= FLUSH_EVERY):
            return
        self.flushed_at = now
        write = self._collect()
        if write is not None:
            batch.writers.append(write)
        self._retire(now)

    def _follow(self, now: float) -> bool:
        """Track the engine's incidents; True when one started collecting or a device joined one."""
        joined = False
        after = self.settings.after
        for inc in self.incidents().values():
            if inc.state == IncidentState.MERGED:  # its root collects now; what it holds stays
                self.tracked.pop(inc.id, None)
                continue
            ended = inc.resolved_at if inc.resolved_at is not None else inc.updated_at
            end = None if inc.is_open else ended + after
            tr = self.tracked.get(inc.id)
            if tr is None:
                if end is not None and end < now - GRACE and inc.id not in self._restored:
                    continue  # closed before this keeper could see it (e.g. restored long after)
                tr = Tracked(inc.id, inc.first_evidence_at - self.settings.before, end)
                stored = self._restored.pop(inc.id, None)
                if stored is not None:
                    tr.restore(stored)
                self.tracked[inc.id] = tr
            tr.end = end
            shape = (inc.scope, len(inc.symptoms), tuple(inc.buildings))
            if shape == tr.shape:  # symptoms only grow: the same count is the same devices
                continue
            tr.shape = shape
            devices = affected_devices(inc, self.site)
            if not devices <= tr.devices:
                tr.devices |= devices
                joined = True
        return joined

    def _collect(self) -> EvidenceWrite | None:
        inserts: list[tuple[int, str, str, float, float]] = []
        deletes: list[tuple[int, str, str, float]] = []
        meta: dict[int, tuple[float | None, int]] = {}
        for tr in self.tracked.values():
            entries = self._new_entries(tr)
            if entries:
                new, dropped = self._admit(tr, entries)
                deletes.extend((tr.id, dev, q, t) for (dev, q), t in dropped)
                for (dev, q), pts in new.items():
                    inserts.extend((tr.id, dev, q, t, v) for t, v in pts)
            if tr.meta_dirty:
                meta[tr.id] = (tr.spacing, tr.thinned)
                tr.meta_dirty = False
        if not (inserts or deletes or meta):
            return None
        self.points_stored += len(inserts)
        return EvidenceWrite(inserts, deletes, meta)

    def _new_entries(self, tr: Tracked) -> dict[str, list[Entry]]:
        """The ring entries of the incident's devices it has not considered yet, inside its window."""
        out: dict[str, list[Entry]] = {}
        hi = math.inf if tr.end is None else tr.end
        for dev in sorted(tr.devices):
            ring = self.rings.get(dev)
            if ring is None:
                continue
            seen = tr.seen.get(dev, -math.inf)
            taken: list[Entry] = []
            for entry in ring.since(max(seen, math.nextafter(tr.start, -math.inf))):
                if entry[0] > hi:  # past the after window: left for a reopening, if one comes
                    break
                taken.append(entry)
                seen = entry[0]
            tr.seen[dev] = seen
            if taken:
                out[dev] = taken
        return out

    def _admit(
        self, tr: Tracked, entries: dict[str, list[Entry]]
    ) -> tuple[dict[Series, list[tuple[float, float]]], list[tuple[Series, float]]]:
        """The readings of `entries` the incident keeps within its bound, and the stored ones a thinning
        drops. Updates the mirror, the counts and the rate.

        The rate is chosen on the entries' instants before any reading is spelled out (a site-wide incident
        opening brings every device's whole ring at once); the exact check after it raises it further in
        the rare case the estimate was short."""
        offered = sum(len(e[1]) for es in entries.values() for e in es)
        limit = self.settings.max_points
        target = int(limit * FILL)
        k = tr.k
        if tr.points + offered > limit:
            k = self._choose_k(tr, entries, target)
        dropped: list[tuple[Series, float]] = []
        if k != tr.k and k is not None:
            dropped = self._rethin(tr, k)
        new = self._spell_out(tr, entries, k)
        if tr.points + sum(len(p) for p in new.values()) > limit:
            dropped += self._thin(tr, new, target)
        if k != tr.k:
            log.info(
                "incident evidence thinned to stay within its bound",
                extra={"fields": {"incident": tr.id, "spacing_s": tr.spacing, "max_points": limit}},
            )
        for s, pts in new.items():
            tr.times.setdefault(s, []).extend(t for t, _ in pts)
        tr.points = sum(len(ts) for ts in tr.times.values())
        thinned = offered - sum(len(p) for p in new.values()) + len(dropped)
        if thinned:
            tr.thinned += thinned
            tr.meta_dirty = True
            self.points_thinned += thinned
        return new, dropped

    def _choose_k(self, tr: Tracked, entries: dict[str, list[Entry]], target: int) -> int:
        """The finest slot (2^k s, never finer than the incident's) at which what it holds and `entries`
        fit in `target`, estimated per device on the entries' instants."""
        times = {dev: [e[0] for e in es] for dev, es in entries.items()}
        width = {dev: sum(len(e[1]) for e in es) / len(es) for dev, es in entries.items()}

        def estimate(k: int) -> float:
            held = sum(len(thin_times(ts, k)) for ts in tr.times.values())
            return held + sum(len(thin_times(ts, k)) * width[dev] for dev, ts in times.items())

        if tr.k is not None:
            k = tr.k
            est = estimate(k)
        else:  # slots no wider than the closest two readings: nothing is thinned there
            series = [*tr.times.values(), *times.values()]
            gap = min((b - a for ts in series for a, b in pairwise(ts) if b > a), default=math.inf)
            k = K_MIN if not math.isfinite(gap) else max(K_MIN, min(K_MAX, math.floor(math.log2(gap))))
            est = tr.points + sum(len(e[1]) for es in entries.values() for e in es)
        if est > target:
            # a slot 2^j times as wide keeps at best 1/2^j of the readings: no narrower one can do, so jump
            # there and step on
            k = min(K_MAX, k + math.floor(math.log2(est / target)))
            while estimate(k) > target and k < K_MAX:
                k += 1
        return k

    @staticmethod
    def _rethin(tr: Tracked, k: int) -> list[tuple[Series, float]]:
        """Thin what the incident holds to slots of 2^k s; returns the instants dropped."""
        dropped: list[tuple[Series, float]] = []
        for s, ts in list(tr.times.items()):
            kept = thin_times(ts, k)
            if len(kept) != len(ts):
                keep = set(kept)
                dropped.extend((s, t) for t in ts if t not in keep)
                tr.times[s] = kept
        tr.points = sum(len(ts) for ts in tr.times.values())
        tr.k = k
        tr.meta_dirty = True
        return dropped

    @staticmethod
    def _spell_out(
        tr: Tracked, entries: dict[str, list[Entry]], k: int | None
    ) -> dict[Series, list[tuple[float, float]]]:
        """The entries' readings, each quantity's first in every slot of 2^k s after what it holds."""
        new: dict[Series, list[tuple[float, float]]] = {}
        if k is None:
            for dev, es in entries.items():
                for ts, keys, values in es:
                    for q, v in zip(keys, values, strict=True):
                        new.setdefault((dev, q), []).append((ts, v))
            return new
        width = 2.0**k
        for dev, es in entries.items():
            last: dict[str, int] = {}
            prev_slot, prev_keys = None, None
            for ts, keys, values in es:
                slot = math.floor(ts / width)
                if slot == prev_slot and keys is prev_keys:
                    continue  # the entry before, in this slot with these quantities, settled each of them
                prev_slot, prev_keys = slot, keys
                for q, v in zip(keys, values, strict=True):
                    prev = last.get(q)
                    if prev is None:
                        held = tr.times.get((dev, q))
                        prev = math.floor(held[-1] / width) if held else None
                    if slot != prev:
                        new.setdefault((dev, q), []).append((ts, v))
                        last[q] = slot
                    elif q not in last:
                        last[q] = slot
        return new

    def _thin(
        self, tr: Tracked, new: dict[Series, list[tuple[float, float]]], target: int
    ) -> list[tuple[Series, float]]:
        """Raise the incident's slot until what it holds and `new` fit in `target`; returns the stored
        instants this drops (`new` and the mirror are thinned in place)."""
        k = tr.k if tr.k is not None else self._start_k(tr, new)
        old = tr.times
        kept_old = old
        kept_new = dict(new)

        def total() -> int:
            return sum(len(t) for t in kept_old.values()) + sum(len(p) for p in kept_new.values())

        while total() > target and k < K_MAX:
            k += 1
            kept_old = {s: thin_times(ts, k) for s, ts in kept_old.items()}
            kept_new = {
                s: thin_points(pts, k, kept_old[s][-1] if kept_old.get(s) else None)
                for s, pts in kept_new.items()
            }
        if total() > self.settings.max_points:  # more series than the bound holds: new readings wait out
            kept_new = {s: [] for s in kept_new}
        dropped: list[tuple[Series, float]] = []
        for s, ts in old.items():
            keep = set(kept_old[s])
            dropped.extend((s, t) for t in ts if t not in keep)
        tr.times = {s: ts for s, ts in kept_old.items() if ts}
        tr.points = sum(len(ts) for ts in tr.times.values())
        new.clear()
        new.update({s: pts for s, pts in kept_new.items() if pts})
        if k != tr.k:
            tr.k = k
            tr.meta_dirty = True
        return dropped

    @staticmethod
    def _start_k(tr: Tracked, new: Mapping[Series, list[tuple[float, float]]]) -> int:
        """The largest slot (2^k s) finer than the closest two readings of any series: nothing thinned yet."""
        series = [*tr.times.values(), *([t for t, _ in pts] for pts in new.values())]
        gap = min((b - a for ts in series for a, b in pairwise(ts) if b > a), default=math.inf)
        if not math.isfinite(gap):
            return K_MIN
        return max(K_MIN, min(K_MAX, math.floor(math.log2(gap))))

    def _retire(self, now: float) -> None:
        """Forget incidents past their after window that the engine no longer holds (it can no longer
        reopen them; their evidence is in the store)."""
        held = self.incidents()
        for inc_id, tr in list(self.tracked.items()):
            if inc_id not in held and tr.end is not None and tr.end < now - GRACE:
                del self.tracked[inc_id]
        self._restored = {i: s for i, s in self._restored.items() if i in held}

    # ---- readers ---------------------------------------------------------------------------------------
    def held_incidents(self) -> set[int]:
        """Incidents whose evidence is still being collected (retention leaves them alone)."""
        return set(self.tracked)

    def ring_readings(self) -> int:
        return sum(len(r) for r in self.rings.values())
