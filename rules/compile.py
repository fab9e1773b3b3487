"""Turn the validated rule specs into the engine's plain evaluators, bound to the site's devices."""

from __future__ import annotations

from datetime import time
from zoneinfo import ZoneInfo

from gateway.config.detection import Detection
from gateway.config.rules import (
    AbsenceRule,
    CalendarRule,
    Condition,
    Match,
    PolyphaseRule,
    RateRule,
    RuleSpec,
    SequenceRule,
    StuckRule,
    ThresholdRule,
)
from rules.kinds import (
    Absence,
    Calendar,
    Cond,
    Kind,
    Polyphase,
    Rate,
    SequenceKind,
    Stuck,
    Threshold,
    device_gaps,
)
from rules.model import MAINS_RULE, DetectionSettings, RuleInfo
from rules.topology import DeviceNode, Topology

_DEFAULT_CATEGORY = {
    "polyphase": "power_outage",
    "threshold": "threshold",
    "absence": "comm_fault",
    "rate": "rate",
    "calendar": "calendar",
    "sequence": "equipment_fault",
    "stuck": "sensor_fault",
}


def matches(m: Match, d: DeviceNode) -> bool:
    return (
        (m.roles is None or d.role in m.roles)
        and (m.devices is None or d.id in m.devices)
        and (m.buildings is None or d.building in m.buildings)
        and (m.domains is None or d.domain in m.domains)
    )


def _info(r: RuleSpec, for_: float | None = None) -> RuleInfo:
    return RuleInfo(
        id=r.id,
        kind=r.kind,
        category=r.category or _DEFAULT_CATEGORY[r.kind],
        event_code=r.event_code,
        severity=r.severity,
        audiences=tuple(r.audiences),
        scope=r.scope,
        title=r.title,
        for_=r.for_ if for_ is None else for_,
        clear_for=r.clear_for,
        confirm_samples=r.samples_to_fire(),
    )


def _cond(c: Condition) -> Cond:
    return Cond(c.quantity, c.above, tuple(c.devices) if c.devices is not None else None, c.over)


def _hhmm(s: str) -> time:
    h, m = s.split(":")
    return time(int(h), int(m))


def compile_rules(specs: list[RuleSpec], topo: Topology) -> list[Kind]:
    out: list[Kind] = []
    for r in specs:
        devs = frozenset(d.id for d in topo.devices.values() if matches(r.match, d))
        if isinstance(r, PolyphaseRule):
            assert r.pct is not None and r.clear_pct is not None
            out.append(
                Polyphase(_info(r), devs, r.check, tuple(r.phases), r.pct, r.clear_pct, r.others_above_pct)
            )
        elif isinstance(r, ThresholdRule):
            if r.below is not None:
                clear = r.clear_above if r.clear_above is not None else r.below
            else:
                assert r.above is not None
                clear = r.clear_below if r.clear_below is not None else r.above
            out.append(Threshold(_info(r), devs, r.quantity, r.below, r.above, clear))
        elif isinstance(r, AbsenceRule):
            stale = {
                d: (r.stale_after if r.stale_after is not None else topo.devices[d].default_stale_after)
                for d in devs
            }
            out.append(Absence(_info(r), devs, stale))
        elif isinstance(r, RateRule):
            falling = r.falling_faster_than is not None
            limit = r.falling_faster_than if falling else r.rising_faster_than
            assert limit is not None
            out.append(Rate(_info(r), devs, r.quantity, limit, falling, r.window))
        elif isinstance(r, CalendarRule):
            a, b = r.window.split("-")
            clear = r.clear_below if r.clear_below is not None else r.above
            out.append(
                Calendar(
                    _info(r),
                    devs,
                    r.quantity,
                    _hhmm(a),
                    _hhmm(b),
                    ZoneInfo(topo.timezone),
                    r.aggregate,
                    r.above,
                    clear,
                    r.consecutive,
                )
            )
        elif isinstance(r, SequenceRule):
            for_ = max(r.for_, r.within) if r.mode == "no_response" else r.for_
            out.append(
                SequenceKind(
                    _info(r, for_),
                    devs,
                    r.mode,
                    _cond(r.running),
                    tuple(_cond(c) for c in r.expect),
                    r.max_starts,
                    r.period,
                    r.stopped_below if r.stopped_below is not None else r.running.above / 2,
                )
            )
        elif isinstance(r, StuckRule):
            vary = r.while_varies
            out.append(
                Stuck(
                    _info(r),
                    devs,
                    r.quantity,
                    r.tolerance,
                    r.after,
                    {},  # the engine's gaps, filled in below once every absence rule is built
                    vary.quantity if vary is not None else None,
                    vary.min_range if vary is not None else 0.0,
                    r.only_above,
                )
            )
    gaps = device_gaps(out, topo)
    for k in out:
        if isinstance(k, Stuck):
            k.gap.update((d, gaps[d]) for d in k.devices)
    if topo.mains is not None and topo.mains.device in topo.devices:
        m = topo.mains
        info = RuleInfo(
            id=MAINS_RULE, kind="threshold", category="power_outage", event_code="003",
            severity="critical", audiences=("staff", "residents", "utility"), scope="site",
            title="site power outage (gateway mains lost)", for_=0.0, clear_for=60.0, confirm_samples=2,
        )  # fmt: skip
        out.append(Threshold(info, frozenset({m.device}), m.quantity, m.below, None, m.below))
    return out


def settings(d: Detection | None) -> DetectionSettings:
    if d is None:
        return DetectionSettings()
    return DetectionSettings(
        correlation_window=d.correlation_window,
        reopen_window=d.reopen_window,
        outage_fraction=d.outage_fraction,
        outage_clear_fraction=min(0.2, d.outage_fraction),
        outage_min_devices=d.outage_min_devices,
        line_min_devices=d.line_min_devices,
        flap_threshold=d.flap_threshold,
        flap_window=d.flap_window,
        outage_severity=d.outage_severity,
        outage_audiences=tuple(d.outage_audiences),
    )
