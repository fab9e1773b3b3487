"""Rule kinds: each turns a device's samples into evidence for its alert instances.

Evidence is (sub_key, condition, value): condition True = the trigger holds, False = the clear condition holds
(fresh proof of health), None = inside the hysteresis band (neither). No evidence at all (the sample does not
carry the quantity) is an empty list: absence of data is never proof of anything.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from gateway.core.types import Sample
from rules.model import RuleInfo
from rules.topology import DeviceNode, Topology

Evidence = tuple[str, bool | None, float | None]
TickEvidence = tuple[str, str, bool | None, float | None]  # device, sub, condition, value


@dataclass
class Context:
    """What the engine knows besides the sample in hand: the latest readings of every device."""

    topology: Topology
    last_values: dict[str, Mapping[str, float]] = field(default_factory=dict)
    last_ts: dict[str, float] = field(default_factory=dict)
    freshness: float = 30.0  # a reading older than this does not count as the current value
    # quantity -> the longest trailing span a rule averages it over; only these quantities keep a history
    windows: dict[str, float] = field(default_factory=dict)
    history: dict[tuple[str, str], deque[tuple[float, float]]] = field(default_factory=dict)

    def record(self, s: Sample) -> None:
        for q, span in self.windows.items():
            v = s.values.get(q)
            if v is None:
                continue
            h = self.history.get((s.device, q))
            if h is None:
                h = self.history[(s.device, q)] = deque()
            h.append((s.ts, v))
            while h[0][0] < s.ts - span:
                h.popleft()

    def mean(self, device: str, quantity: str, now: float, span: float) -> float | None:
        h = self.history.get((device, quantity))
        if not h:
            return None
        vals = [v for t, v in h if t >= now - span]
        return sum(vals) / len(vals) if vals else None


class Kind:
    info: RuleInfo
    devices: frozenset[str]

    def on_sample(self, dev: DeviceNode, s: Sample, ctx: Context) -> list[Evidence]:
        return []

    def on_tick(self, now: float) -> list[TickEvidence]:
        return []

    def wakeup(self) -> float | None:
        return None

    def windows(self) -> dict[str, float]:
        """Quantities this rule averages, with the span: the engine keeps their recent readings."""
        return {}

    def export(self) -> dict[str, object]:
        return {}

    def restore(self, data: dict[str, object]) -> None:
        return None


@dataclass
class Polyphase(Kind):
    info: RuleInfo
    devices: frozenset[str]
    check: str
    phases: tuple[str, ...]
    pct: float
    clear_pct: float
    others_above_pct: float

    def on_sample(self, dev: DeviceNode, s: Sample, ctx: Context) -> list[Evidence]:
        vals = [s.values[q] for q in self.phases if q in s.values]
        if not vals:
            return []
        un = dev.nominal_voltage
        lo, hi = min(vals), max(vals)
        trig, clear = self.pct * un / 100.0, self.clear_pct * un / 100.0
        cond: bool | None
        if self.check == "outage":
            cond = True if hi < trig else (False if lo >= clear else None)
            return [("", cond, hi)]
        if self.check == "phase_loss":
            return self._phase_loss(s, un, trig, clear)
        if self.check == "undervoltage":
            # a dead phase is an outage or a phase loss, not an undervoltage: those rules own it
            floor = 0.6 * un
            cond = True if floor <= lo < trig else (False if lo >= clear else None)
            return [("", cond, lo)]
        cond = True if hi > trig else (False if hi <= clear else None)
        return [("", cond, hi)]

    def _phase_loss(self, s: Sample, un: float, trig: float, clear: float) -> list[Evidence]:
        """One alert per lost phase, keyed by its label (L1, L2, L3 in `phases` order), so that the meters
        fed from that phase can be told apart from those on the others."""
        present = [(f"L{i + 1}", s.values[q]) for i, q in enumerate(self.phases) if q in s.values]
        if len(present) < 2:
            return []
        healthy = self.others_above_pct * un / 100.0
        out: list[Evidence] = []
        for label, v in present:
            others = max(w for other, w in present if other != label)
            cond = True if v < trig and others >= healthy else (False if v >= clear else None)
            out.append((label, cond, v))
        return out


@dataclass
class Threshold(Kind):
    info: RuleInfo
    devices: frozenset[str]
    quantity: str
    below: float | None
    above: float | None
    clear_at: float

    def on_sample(self, dev: DeviceNode, s: Sample, ctx: Context) -> list[Evidence]:
        v = s.values.get(self.quantity)
        if v is None:
            return []
        if self.below is not None:
            return [("", True if v < self.below else (False if v >= self.clear_at else None), v)]
        assert self.above is not None
        return [("", True if v > self.above else (False if v <= self.clear_at else None), v)]


@dataclass
class Absence(Kind):
    """Handled by the engine itself (it needs the clock); this holds the settings."""

    info: RuleInfo
    devices: frozenset[str]
    stale_after: dict[str, float]


def device_gaps(kinds: Iterable[Kind], topo: Topology) -> dict[str, float]:
    """Device -> the longest pause in its readings that is no gap: its shortest absence `stale_after`, or
    its default when no absence rule watches it. Holds restart after a longer pause, and flat spans too."""
    absences = [k for k in kinds if isinstance(k, Absence)]
    return {
        d: min((a.stale_after[d] for a in absences if d in a.stale_after), default=node.default_stale_after)
        for d, node in topo.devices.items()
    }


@dataclass
class Rate(Kind):
    info: RuleInfo
    devices: frozenset[str]
    quantity: str
    limit: float  # units per second, positive
    falling: bool
    window: float
    history: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)

    def on_sample(self, dev: DeviceNode, s: Sample, ctx: Context) -> list[Evidence]:
        v = s.values.get(self.quantity)
        if v is None:
            return []
        h = self.history.get(dev.id)
        if h is None:
            h = self.history[dev.id] = deque()
        if h and s.ts - h[-1][0] > self.window:
            h.clear()  # a gap: a rate across it would be invented
        h.append((s.ts, v))
        while h and s.ts - h[0][0] > self.window:
            h.popleft()
        t0, v0 = h[0]
        if s.ts - t0 < self.window / 2:
            return []
        rate = (v - v0) / (s.ts - t0)
        speed = -rate if self.falling else rate
        cond = True if speed > self.limit else (False if speed <= self.limit / 2 else None)
        return [("", cond, rate)]


@dataclass
class _Night:
    day: str  # ISO date of the window's start
    end_ts: float
    n: int = 0
    total: float = 0.0
    lo: float = float("inf")
    hi: float = float("-inf")


@dataclass
class Calendar(Kind):
    """Aggregates a quantity over a daily local-time window (site time zone); counts bad windows in a row."""

    info: RuleInfo
    devices: frozenset[str]
    quantity: str
    start: time
    end: time
    tz: ZoneInfo
    aggregate: str
    above: float
    clear_at: float
    consecutive: int
    current: dict[str, _Night] = field(default_factory=dict)
    streak: dict[str, tuple[str, int]] = field(default_factory=dict)  # device -> (last bad day, count)

    def _window_of(self, ts: float) -> tuple[date, float] | None:
        local = datetime.fromtimestamp(ts, self.tz)
        t = local.time()
        day = local.date()
        if self.start < self.end:
            if not (self.start <= t < self.end):
                return None
        elif t >= self.start:
            pass
        elif t < self.end:
            day = day - timedelta(days=1)
        else:
            return None
        end_day = day if self.start < self.end else day + timedelta(days=1)
        end_ts = datetime.combine(end_day, self.end, tzinfo=self.tz).timestamp()
        return day, end_ts

    def on_sample(self, dev: DeviceNode, s: Sample, ctx: Context) -> list[Evidence]:
        out: list[Evidence] = []
        cur = self.current.get(dev.id)
        if cur is not None and s.ts >= cur.end_ts:
            out.extend(self._close(dev.id))
            cur = None
        v = s.values.get(self.quantity)
        if v is None:
            return out
        win = self._window_of(s.ts)
        if win is None:
            return out
        day, end_ts = win
        if cur is None or cur.day != day.isoformat():
            if cur is not None:
                out.extend(self._close(dev.id))
            cur = self.current[dev.id] = _Night(day.isoformat(), end_ts)
        cur.n += 1
        cur.total += v
        cur.lo = min(cur.lo, v)
        cur.hi = max(cur.hi, v)
        return out

    def _close(self, device: str) -> list[Evidence]:
        night = self.current.pop(device)
        value = {"min": night.lo, "max": night.hi, "avg": night.total / night.n}[self.aggregate]
        if value > self.above:
            last_day, count = self.streak.get(device, ("", 0))
            yesterday = (date.fromisoformat(night.day) - timedelta(days=1)).isoformat()
            count = count + 1 if last_day == yesterday else 1
            self.streak[device] = (night.day, count)
            return [("", True, value)] if count >= self.consecutive else []
        self.streak.pop(device, None)
        if value <= self.clear_at:
            return [("", False, value)]
        return [("", None, value)]

    def on_tick(self, now: float) -> list[TickEvidence]:
        out: list[TickEvidence] = []
        for device in [d for d, n in self.current.items() if now >= n.end_ts]:
            out.extend((device, sub, cond, v) for sub, cond, v in self._close(device))
        return out

    def wakeup(self) -> float | None:
        return min((n.end_ts for n in self.current.values()), default=None)

    def export(self) -> dict[str, object]:
        return {
            "current": {d: [n.day, n.end_ts, n.n, n.total, n.lo, n.hi] for d, n in self.current.items()},
            "streak": {d: list(v) for d, v in self.streak.items()},
        }

    def restore(self, data: dict[str, object]) -> None:
        cur = data.get("current") or {}
        assert isinstance(cur, dict)
        for d, (day, end_ts, n, total, lo, hi) in cur.items():
            self.current[d] = _Night(day, end_ts, n, total, lo, hi)
        streak = data.get("streak") or {}
        assert isinstance(streak, dict)
        self.streak = {d: (str(v[0]), int(v[1])) for d, v in streak.items()}


@dataclass(frozen=True, slots=True)
class Cond:
    quantity: str
    above: float
    devices: tuple[str, ...] | None
    over: float = 0.0  # mean over this trailing span; 0 = the latest reading


@dataclass
class SequenceKind(Kind):
    """`kind: sequence`: equipment that runs without the response it should cause (no_response), or starts
    too often (short_cycling)."""

    info: RuleInfo
    devices: frozenset[str]
    mode: str
    running: Cond
    expect: tuple[Cond, ...]
    max_starts: int
    period: float
    stopped_below: float  # running ends only under this: a reading hovering at the threshold is no restart
    was_running: dict[str, bool] = field(default_factory=dict)
    starts: dict[str, deque[float]] = field(default_factory=dict)

    def _read(self, dev: DeviceNode, c: Cond, now: float, ctx: Context) -> float | None:
        """Latest fresh value of c.quantity from c.devices, else the device itself, else its building."""
        if c.devices is not None:
            candidates: list[str] = list(c.devices)
        else:
            own = ctx.last_values.get(dev.id, {})
            if c.quantity in own:
                candidates = [dev.id]
            else:
                candidates = [d.id for d in ctx.topology.devices.values() if d.building == dev.building]
        best: float | None = None
        for d in candidates:
            vals = ctx.last_values.get(d)
            if vals is None or c.quantity not in vals or now - ctx.last_ts.get(d, -1e18) > ctx.freshness:
                continue
            v = ctx.mean(d, c.quantity, now, c.over) if c.over > 0 else vals[c.quantity]
            if v is None:
                continue
            best = v if best is None else max(best, v)
        return best

    def windows(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for c in (self.running, *self.expect):
            if c.over > 0:
                out[c.quantity] = max(out.get(c.quantity, 0.0), c.over)
        return out

    def on_sample(self, dev: DeviceNode, s: Sample, ctx: Context) -> list[Evidence]:
        own = self.running.devices is None and self.running.over == 0
        r = s.values.get(self.running.quantity) if own else None
        if r is None:
            r = self._read(dev, self.running, s.ts, ctx)
        if r is None:
            return []
        was = self.was_running.get(dev.id, False)
        running = r >= self.stopped_below if was else r > self.running.above
        self.was_running[dev.id] = running
        if self.mode == "short_cycling":
            q = self.starts.setdefault(dev.id, deque())
            if running and not was:
                q.append(s.ts)
            while q and s.ts - q[0] > self.period:
                q.popleft()
            n = len(q)
            cond = True if n > self.max_starts else (False if n <= self.max_starts // 2 else None)
            return [("", cond, float(n))]
        if not running:
            return [("", None, r)]  # a stopped pump proves nothing about supply
        got = [(c, v) for c in self.expect if (v := self._read(dev, c, s.ts, ctx)) is not None]
        if not got:
            return []
        met = any(v > c.above for c, v in got)
        return [("", not met, max(v for _, v in got))]


# Readings this close (relative to their size) are the same reading: float rounding is no change.
_SAME = 1e-9


@dataclass
class _Flat:
    """One device's current flat span: the value its readings have stayed within tolerance of, since when."""

    anchor: float
    since: float  # the first reading of the span
    last: float  # the latest reading of the span
    moved: bool  # the span began with a change seen (not with a first reading, or the first after a gap)
    related: dict[str, list[float]] = field(default_factory=dict)  # peer device -> [lo, hi] in the span


@dataclass
class Stuck(Kind):
    """`kind: stuck`: a reading that stays within `tolerance` of one value for `after`, optionally while a
    related quantity of the same supply domain (else building) varies by more than `min_range`.

    Per device it keeps the flat span (anchor value, its start, the latest reading) and, for the related
    quantity, the lowest and highest reading of each peer device seen during the span: O(peers) per sample,
    memory bounded by the devices. The peers' latest readings come from the engine's context (a rule only
    sees its own devices' samples), taken at each sample of the watched device while they are fresh.

    Evidence: True once flat for `after` (and the related quantity varied, if given); False while the
    reading changed less than `after` ago (fresh proof the sensor follows the process); None when it cannot
    tell: flat since the first reading or since a gap, flat while the related quantity is flat too, or flat
    at or below `only_above`. A pause longer than the engine's gap for the device restarts the span, so
    data that stops never makes a sensor stuck.
    """

    info: RuleInfo
    devices: frozenset[str]
    quantity: str
    tolerance: float
    after: float
    gap: dict[str, float]  # device -> the engine's gap for it (the longest pause that is no gap)
    related: str | None = None  # while_varies.quantity
    min_range: float = 0.0
    only_above: float | None = None
    flat: dict[str, _Flat] = field(default_factory=dict)
    _peers: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    def on_sample(self, dev: DeviceNode, s: Sample, ctx: Context) -> list[Evidence]:
        v = s.values.get(self.quantity)
        if v is None:
            return []
        f = self.flat.get(dev.id)
        if f is not None and s.ts < f.last:
            return []  # late, out of order: the span is already past it
        if f is None or s.ts - f.last > self.gap.get(dev.id, dev.default_stale_after):
            f = self.flat[dev.id] = _Flat(v, s.ts, s.ts, moved=False)
        elif abs(v - f.anchor) > self.tolerance + _SAME * max(1.0, abs(f.anchor)):
            f = self.flat[dev.id] = _Flat(v, s.ts, s.ts, moved=True)
        else:
            f.last = s.ts
        if self.related is not None:
            self._track(dev, f, s.ts, ctx)
        cond: bool | None
        if s.ts - f.since < self.after:
            cond = False if f.moved else None
        elif self.only_above is not None and f.anchor <= self.only_above:
            cond = None
        else:
            cond = True if self._varied(f) else None
        return [("", cond, v)]

    def _peers_of(self, dev: DeviceNode, topo: Topology) -> tuple[str, ...]:
        """Devices whose related readings count: the same supply domain, else the same building. The device
        itself counts too (a meter of both quantities), unless the related quantity is the watched one."""
        peers = self._peers.get(dev.id)
        if peers is None:
            peers = self._peers[dev.id] = tuple(
                d.id
                for d in topo.devices.values()
                if (d.domain == dev.domain if dev.domain else d.building == dev.building)
                and not (d.id == dev.id and self.related == self.quantity)
            )
        return peers

    def _track(self, dev: DeviceNode, f: _Flat, now: float, ctx: Context) -> None:
        assert self.related is not None
        for p in self._peers_of(dev, ctx.topology):
            x = ctx.last_values.get(p, {}).get(self.related)
            node = ctx.topology.devices.get(p)
            age = now - ctx.last_ts.get(p, float("-inf"))
            if x is None or node is None or age > node.default_stale_after:
                continue  # no reading, or one too old to tell about the span
            r = f.related.get(p)
            if r is None:
                f.related[p] = [x, x]
            elif x < r[0]:
                r[0] = x
            elif x > r[1]:
                r[1] = x

    def _varied(self, f: _Flat) -> bool:
        if self.related is None:
            return True
        return any(hi - lo > self.min_range for lo, hi in f.related.values())

    def export(self) -> dict[str, object]:
        if not self.flat:
            return {}
        return {
            "flat": {
                d: [f.anchor, f.since, f.last, f.moved, {p: list(r) for p, r in f.related.items()}]
                for d, f in self.flat.items()
            }
        }

    def restore(self, data: dict[str, object]) -> None:
        flat = data.get("flat") or {}
        assert isinstance(flat, dict)
        for d, (anchor, since, last, moved, related) in flat.items():
            if d in self.devices:
                rel = {str(p): [float(r[0]), float(r[1])] for p, r in related.items()}
                self.flat[d] = _Flat(float(anchor), float(since), float(last), bool(moved), rel)
