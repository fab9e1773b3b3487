"""`kind: stuck`: a sensor whose reading stays flat, optionally while a related quantity of its domain
varies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from gateway.config import ConfigError, Site, effective_rules, load_site
from gateway.config.default_rules import DEFAULT_RULES
from gateway.config.rules import RuleSpec, StuckRule
from gateway.core.types import Sample
from gateway.incidents.replay import run_replay
from gateway.incidents.site_model import topology_from_site
from rules.compile import compile_rules
from rules.kinds import Context, Evidence, Stuck
from rules.model import RuleInfo
from rules.topology import DeviceNode, DomainNode, Topology

T0 = 1_772_416_800.0  # 2026-03-02 10:00 Asia/Shanghai
INFO = RuleInfo("t.stuck", "stuck", "sensor_fault", "003", "minor", ("staff",), "device", "", 0.0, 60.0)


def _node(
    id: str, role: str, domain: str | None = "W", building: str = "B1", interval: float = 10.0
) -> DeviceNode:
    return DeviceNode(id, building, domain, role, 0, None, None, None, interval)


def _topo(*nodes: DeviceNode) -> Topology:
    return Topology(
        "t",
        "Asia/Shanghai",
        {n.id: n for n in nodes},
        {"W": DomainNode("W", "water", "B1", 10), "W2": DomainNode("W2", "water", "B1", 10)},
    )


class Rig:
    """The kind and the engine's context, fed the way the engine feeds them (context first, then the kind)."""

    def __init__(self, kind: Stuck, topo: Topology) -> None:
        self.kind, self.topo = kind, topo
        self.ctx = Context(topo)

    def feed(self, device: str, t: float, **values: float) -> list[Evidence]:
        s = Sample(device, T0 + t, values)
        self.ctx.last_values[device] = s.values
        self.ctx.last_ts[device] = s.ts
        if device not in self.kind.devices:
            return []
        return self.kind.on_sample(self.topo.devices[device], s, self.ctx)


def _rig(
    *,
    tolerance: float = 0.001,
    after: float = 300.0,
    related: str | None = "flow",
    min_range: float = 1.0,
    only_above: float | None = None,
    watched: str = "pressure",
    extra: tuple[DeviceNode, ...] = (),
) -> Rig:
    topo = _topo(_node("P", "zone_pressure"), _node("F", "flow"), *extra)
    dev = "P" if watched == "pressure" else "F"
    kind = Stuck(
        INFO, frozenset({dev}), watched, tolerance, after, {dev: 30.0}, related, min_range, only_above
    )
    return Rig(kind, topo)


def _conds(out: list[Evidence]) -> bool | None:
    ((sub, cond, _),) = out
    assert sub == ""
    return cond


def _run(
    rig: Rig,
    seconds: int,
    pressure: float | None = 3.2,
    flow: float | None = None,
    step: int = 10,
    t0: int = 0,
) -> list[bool | None]:
    """Feed both meters every `step` s; the flow swings 4..8 m3/h unless given. The pressure evidence."""
    got: list[bool | None] = []
    for t in range(t0, t0 + seconds, step):
        f = flow if flow is not None else 4.0 + 4.0 * ((t // step) % 2)
        rig.feed("F", t, flow=f)
        if pressure is not None:
            got.append(_conds(rig.feed("P", t + 1, pressure=pressure)))
    return got


# ---- flatness and tolerance ------------------------------------------------------------------------------
def test_flat_for_after_while_the_flow_moves_is_stuck_and_reports_the_reading() -> None:
    rig = _rig()
    got = _run(rig, 320)
    # +1 .. +291: flat for less than 300 s since the first reading: undecided (never proof either way)
    assert got[:30] == [None] * 30
    assert got[30:] == [True, True]  # +301: flat for 300 s
    assert rig.feed("P", 331, pressure=3.2) == [("", True, 3.2)]


def test_a_reading_within_tolerance_is_flat_one_beyond_it_is_a_change() -> None:
    rig = _rig(after=60.0)
    _run(rig, 10)  # anchor 3.2 at +1
    for t, p in ((11, 3.201), (21, 3.199), (31, 3.2009)):
        rig.feed("F", t, flow=8.0 if t % 20 else 4.0)
        assert _conds(rig.feed("P", t, pressure=p)) is None  # within 0.001 bar of 3.2: flat
    rig.feed("F", 61, flow=4.0)
    assert _conds(rig.feed("P", 61, pressure=3.2)) is True  # flat since +1 for 60 s
    assert _conds(rig.feed("P", 71, pressure=3.2015)) is False  # a change: fresh proof of health
    assert rig.kind.flat["P"].since == T0 + 71


def test_one_count_of_float_rounding_is_within_a_tolerance_of_one_count() -> None:
    rig = _rig(after=20.0)
    vals = [3.211, 3.212, 3.211, 3.212]  # 3.212 - 3.211 is 0.001000000000000334 in floats
    got = []
    for i, p in enumerate(vals):
        rig.feed("F", i * 10, flow=4.0 + 4.0 * (i % 2))
        got.append(_conds(rig.feed("P", i * 10 + 1, pressure=p)))
    assert got == [None, None, True, True]


def test_tolerance_zero_takes_any_change() -> None:
    rig = _rig(tolerance=0.0, after=20.0)
    rig.feed("F", 0, flow=4.0)
    rig.feed("P", 1, pressure=3.2)
    rig.feed("F", 10, flow=8.0)
    assert _conds(rig.feed("P", 11, pressure=3.2001)) is False


def test_after_a_change_it_is_healthy_until_flat_for_after_again() -> None:
    rig = _rig()
    _run(rig, 50, pressure=3.2)
    got = _run(rig, 320, pressure=3.3, t0=50)  # one change at +51, then frozen again
    assert got[:30] == [False] * 30  # it moved less than 300 s ago
    assert got[30:] == [True, True]


# ---- gaps: data that stops never makes a sensor stuck --------------------------------------------------
def test_a_gap_longer_than_the_engines_restarts_the_span_and_proves_nothing() -> None:
    rig = _rig()
    assert _run(rig, 200) == [None] * 20  # +1 .. +191
    # 31 s without a pressure reading (the gap is 30 s); the flow goes on
    rig.feed("F", 200, flow=4.0)
    rig.feed("F", 210, flow=8.0)
    after_gap = _run(rig, 300, t0=221)  # +222 .. +512
    assert after_gap[:29] == [None] * 29  # not False: the same reading after a gap is no change
    assert after_gap[29] is None  # +512: 290 s since the restart at +222, though 511 s since the first
    assert _conds(rig.feed("P", 522, pressure=3.2)) is True  # 300 s after the restart


def test_a_pause_of_exactly_the_gap_is_no_gap() -> None:
    rig = _rig()
    _run(rig, 200)  # +1 .. +191
    rig.feed("F", 200, flow=4.0)
    rig.feed("F", 215, flow=8.0)
    assert _conds(rig.feed("P", 221, pressure=3.2)) is None  # 30 s after +191
    for t in (251, 281):
        rig.feed("F", t - 1, flow=4.0 if t % 2 else 8.0)
        rig.feed("P", t, pressure=3.2)
    rig.feed("F", 300, flow=4.0)
    assert _conds(rig.feed("P", 301, pressure=3.2)) is True  # flat since +1, no reading more than 30 s apart


def test_a_late_reading_is_ignored() -> None:
    rig = _rig()
    _run(rig, 100)
    assert rig.feed("P", 50, pressure=9.9) == []
    assert rig.kind.flat["P"].anchor == 3.2


def test_a_sample_without_the_quantity_is_no_evidence() -> None:
    rig = _rig()
    assert rig.feed("P", 1, temperature=18.0) == []
    assert "P" not in rig.kind.flat


# ---- the related quantity --------------------------------------------------------------------------------
def test_flat_while_the_related_quantity_is_flat_too_is_undecided() -> None:
    rig = _rig()
    assert set(_run(rig, 1000, flow=0.2)) == {None}  # a quiet night
    # a spread of exactly min_range is not more than it
    rig2 = _rig()
    got = []
    for t in range(0, 400, 10):
        rig2.feed("F", t, flow=4.0 + (t // 10) % 2)  # 4.0 / 5.0: spread 1.0
        got.append(_conds(rig2.feed("P", t + 1, pressure=3.2)))
    assert set(got) == {None}


def test_the_related_quantity_must_have_varied_within_the_span() -> None:
    rig = _rig()
    _run(rig, 100, pressure=3.0)  # the flow swings while the pressure moves...
    rig.feed("F", 100, flow=6.0)
    assert _conds(rig.feed("P", 101, pressure=3.2)) is False  # ...a change starts a new span here
    got = _run(rig, 500, flow=6.0, t0=110)  # then flow flat at 6.0 for the whole span
    assert set(got) == {False, None} and True not in got


def test_a_stale_related_reading_does_not_count() -> None:
    rig = _rig()
    rig.feed("F", 0, flow=1.0)  # then the flow meter stops (its stale_after is 30 s)
    got = [_conds(rig.feed("P", t, pressure=3.2)) for t in range(100, 500, 10)]
    rig.feed("F", 495, flow=9.0)
    got.append(_conds(rig.feed("P", 500, pressure=3.2)))
    assert set(got) == {None}  # the 1.0 from +0 is no reading of the span from +100: 9.0 spreads nothing


def test_only_devices_of_the_same_domain_count() -> None:
    other = _node("F2", "flow", domain="W2")
    rig = _rig(extra=(other,))
    got = []
    for t in range(0, 400, 10):
        rig.feed("F", t, flow=0.2)
        rig.feed("F2", t, flow=4.0 + 4.0 * ((t // 10) % 2))  # another zone's flow moves
        got.append(_conds(rig.feed("P", t + 1, pressure=3.2)))
    assert set(got) == {None}


def test_without_a_domain_the_building_counts() -> None:
    topo = _topo(_node("P", "zone_pressure", domain=None), _node("F", "flow", domain="W"))
    rig = Rig(Stuck(INFO, frozenset({"P"}), "pressure", 0.001, 300.0, {"P": 30.0}, "flow", 1.0), topo)
    assert _run(rig, 320)[-1] is True


def test_spreads_are_per_device_not_across_meters() -> None:
    # two flow meters reading 2 and 6 m3/h, each steady: together they spread 4, yet nothing moved
    rig = _rig(extra=(_node("F2", "flow"),))
    got = []
    for t in range(0, 400, 10):
        rig.feed("F", t, flow=2.0)
        rig.feed("F2", t, flow=6.0)
        got.append(_conds(rig.feed("P", t + 1, pressure=3.2)))
    assert set(got) == {None}


def test_the_same_quantity_as_related_reads_the_other_sensors_not_itself() -> None:
    topo = _topo(_node("P", "zone_pressure"), _node("P2", "zone_pressure"))
    kind = Stuck(
        INFO, frozenset({"P", "P2"}), "pressure", 0.001, 300.0, {"P": 30.0, "P2": 30.0}, "pressure", 0.05
    )
    rig = Rig(kind, topo)
    got = []
    for t in range(0, 400, 10):
        rig.feed("P2", t, pressure=3.0 + 0.1 * ((t // 10) % 2))  # its neighbour moves
        got.append(_conds(rig.feed("P", t + 1, pressure=3.2)))
    assert got[-1] is True
    assert kind._peers_of(topo.devices["P"], topo) == ("P2",)


def test_without_while_varies_flatness_alone_fires() -> None:
    rig = _rig(related=None)
    assert _run(rig, 320, flow=0.2)[-1] is True


def test_only_above_keeps_a_reading_of_zero_from_being_stuck() -> None:
    rig = _rig(tolerance=0.0, related="pressure", min_range=0.1, only_above=0.0, watched="flow")
    got = []
    for t in range(0, 400, 10):
        rig.feed("P", t, pressure=3.0 + 0.2 * ((t // 10) % 2))  # the supply pressure swings
        got.append(_conds(rig.feed("F", t + 1, flow=0.0)))
    assert set(got) == {None}  # nothing drawn: the meter's low-flow cut-off, not a frozen meter
    rig.feed("P", 400, pressure=3.0)
    assert _conds(rig.feed("F", 401, flow=5.5)) is False
    got = []
    for t in range(410, 720, 10):
        rig.feed("P", t, pressure=3.0 + 0.2 * ((t // 10) % 2))
        got.append(_conds(rig.feed("F", t + 1, flow=5.5)))
    assert got[-1] is True  # 5.5 m3/h to the digit for 300 s while the pressure swings


# ---- state across a restart ------------------------------------------------------------------------------
def test_export_and_restore_keep_the_flat_span() -> None:
    rig = _rig()
    _run(rig, 200)
    data = json.loads(json.dumps(rig.kind.export()))
    assert set(data["flat"]) == {"P"}
    fresh = _rig()
    fresh.kind.restore(data)
    assert fresh.kind.flat == rig.kind.flat
    # back within the gap: the span goes on (flat since +1, the flow spread carried over)
    fresh.feed("F", 205, flow=4.0)
    got = [_conds(fresh.feed("P", t, pressure=3.2)) for t in range(211, 320, 10)]
    assert got[-1] is True and got[0] is None


def test_restore_after_a_long_downtime_restarts_the_span() -> None:
    rig = _rig()
    _run(rig, 200)
    fresh = _rig()
    fresh.kind.restore(rig.kind.export())
    fresh.feed("F", 3600, flow=4.0)
    assert _conds(fresh.feed("P", 3601, pressure=3.2)) is None
    assert fresh.kind.flat["P"].since == T0 + 3601


def test_restore_drops_devices_the_rule_no_longer_watches_and_nothing_to_export_is_empty() -> None:
    rig = _rig()
    assert rig.kind.export() == {}
    rig.kind.restore({"flat": {"gone": [1.0, T0, T0, False, {}]}})
    assert rig.kind.flat == {}


# ---- through the engine: a site file, defaults, holds --------------------------------------------------
WATER_SITE = """\
site: {id: t, timezone: Asia/Shanghai}
buildings:
  - {id: B1, households: 96, domains: [{id: B1-water, kind: water}]}
devices:
  - {id: B1-pressure, building: B1, domain: B1-water, role: zone_pressure, households: 96, source: mqtt,
     expected_interval: 10s}
  - {id: B1-flow, building: B1, domain: B1-water, role: flow, households: 96, source: mqtt,
     expected_interval: 10s}
"""


def _site(tmp_path: Path, text: str) -> Site:
    p = tmp_path / "site.yaml"
    p.write_text(text)
    return load_site(p)


def _trace(pressure: dict[int, float | None], seconds: int) -> list[Sample]:
    """Both meters every 10 s, the flow swinging 4..8 m3/h; `pressure` maps start times to readings."""
    out: list[Sample] = []
    keys = sorted(pressure)
    for t in range(0, seconds, 10):
        out.append(Sample("B1-flow", T0 + t, {"flow": 4.0 + 4.0 * ((t // 10) % 2)}))
        p = pressure[max(k for k in keys if k <= t)]
        if p is not None:
            out.append(Sample("B1-pressure", T0 + t + 1, {"pressure": p}))
    return out


def test_default_pressure_rule_opens_a_staff_only_device_sensor_fault_and_a_change_resolves_it(
    tmp_path: Path,
) -> None:
    # frozen at 3.2 bar from +0; moves again from +2400 s
    events = _trace({0: 3.2, 2400: 3.25, 2410: 3.31, 2420: 3.27, 2430: 3.3}, 2900)
    result = run_replay(_site(tmp_path, WATER_SITE), events)
    (inc,) = result.incidents()
    assert (inc.category, inc.scope, inc.audiences) == ("sensor_fault", "device:B1-pressure", ["staff"])
    assert (inc.severity, inc.event_code, inc.state) == ("minor", "003", "resolved")
    assert inc.opened_at - T0 == 1801  # 30 min after the first frozen reading at +1
    assert inc.resolved_at is not None and inc.resolved_at - T0 == 2401 + 300  # clear_for 5m of fresh data


def test_a_gap_after_the_alert_fired_neither_resolves_nor_refires_it(tmp_path: Path) -> None:
    # frozen all along; the transmitter is silent from +2000 s to +2200 s, then answers the same value
    events = _trace({0: 3.2, 2000: None, 2200: 3.2}, 2600)
    result = run_replay(_site(tmp_path, WATER_SITE), events)
    (inc,) = [i for i in result.incidents() if i.category == "sensor_fault"]
    assert inc.state == "firing" and inc.reopen_count == 0 and inc.flap_count == 0


def test_silence_never_makes_a_sensor_stuck(tmp_path: Path) -> None:
    # the same value, but the transmitter answers only for 20 minutes at a time with 5-minute gaps
    events = [e for e in _trace({0: 3.2}, 5400) if e.device == "B1-flow" or (e.ts - T0) % 1500 < 1200]
    result = run_replay(_site(tmp_path, WATER_SITE), events)
    assert {i.category for i in result.incidents()} == {"comm_fault"}  # the gaps are seen, nothing else


def test_the_engine_gap_comes_from_the_absence_rules(tmp_path: Path) -> None:
    site = _site(
        tmp_path,
        WATER_SITE
        + "rules:\n"
        + "  - {id: comm.absent, kind: absence, stale_after: 2m, match: {roles: [flow]}}\n"
        + "  - {id: slow.absent, kind: absence, stale_after: 5m, match: {roles: [zone_pressure]}}\n",
    )
    topo = topology_from_site(site)
    kinds = compile_rules(effective_rules(site.config.rules), topo)
    (pressure,) = [k for k in kinds if isinstance(k, Stuck) and k.info.id == "pressure.stuck"]
    (flow,) = [k for k in kinds if isinstance(k, Stuck) and k.info.id == "flow.stuck"]
    assert pressure.gap == {"B1-pressure": 300.0}
    assert flow.gap == {"B1-flow": 120.0}
    assert (pressure.related, pressure.min_range, pressure.only_above) == ("flow", 1.0, None)
    assert (flow.related, flow.min_range, flow.only_above) == ("pressure", 0.1, 0.0)


def test_the_default_stuck_rules_are_device_sensor_faults_for_staff_only() -> None:
    stuck = [r for r in DEFAULT_RULES if isinstance(r, StuckRule)]
    assert [r.id for r in stuck] == ["pressure.stuck", "flow.stuck"]
    for r in stuck:
        assert (r.category, r.severity, r.scope, r.event_code) == ("sensor_fault", "minor", "device", "003")
        assert r.audiences == ["staff"]
        assert r.after == 1800.0 and r.while_varies is not None


# ---- validation ------------------------------------------------------------------------------------------
def _spec(**kw: object) -> RuleSpec:
    return TypeAdapter(RuleSpec).validate_python(
        {"id": "x.stuck", "kind": "stuck", "quantity": "pressure", **kw}
    )


def test_a_stuck_rule_takes_defaults() -> None:
    r = _spec()
    assert isinstance(r, StuckRule)
    assert (r.tolerance, r.after, r.while_varies, r.only_above) == (0.0, 1800.0, None, None)
    r = _spec(after="45m", while_varies={"quantity": "flow", "min_range": 0.5})
    assert isinstance(r, StuckRule) and r.after == 2700.0
    assert r.while_varies is not None and r.while_varies.min_range == 0.5


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"tolerance": -0.01}, "tolerance must be >= 0 (the change that still counts as none), got -0.01"),
        ({"while_varies": {"quantity": "flow", "min_range": -1}}, "min_range must be >= 0"),
        ({"while_varies": {"quantity": "flow"}}, "Field required"),
        ({"while_varies": {"quantity": "flow", "min_range": 1, "span": 3}}, "Extra inputs are not permitted"),
        ({"after": 0}, "greater than 0"),
        ({"after": "soon"}, "expected a duration"),
    ],
)
def test_a_stuck_rule_is_validated(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _spec(**kw)


def test_a_negative_tolerance_in_a_site_file_is_an_error_with_its_place(tmp_path: Path) -> None:
    text = WATER_SITE + "rules:\n  - {id: p.stuck, kind: stuck, quantity: pressure, tolerance: -1}\n"
    with pytest.raises(ConfigError) as info:
        _site(tmp_path, text)
    (issue,) = info.value.issues
    assert "rules[0].tolerance" in str(issue) and "tolerance must be >= 0" in str(issue), str(issue)
