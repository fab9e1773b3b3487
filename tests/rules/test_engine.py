"""Engine and correlator behaviour the replay cases do not pin down on their own."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, Site, load_site
from gateway.config.default_rules import DEFAULT_RULES
from gateway.core.types import Sample
from gateway.incidents.replay import run_replay
from gateway.incidents.site_model import build_engine
from gateway.incidents.trace import read_trace
from rules.model import Alert, AlertChange, AlertState, Incident, IncidentChange
from tests.helpers import REPO

T0 = 1_772_416_800.0  # 2026-03-02 10:00 Asia/Shanghai

WATER_SITE = """\
site: {id: t, timezone: Asia/Shanghai}
buildings:
  - {id: B1, households: 96, domains: [{id: B1-power, kind: power}, {id: B1-water, kind: water}]}
devices:
  - {id: B1-pump, building: B1, domain: B1-power, role: pump, source: mqtt, expected_interval: 1s}
  - {id: B1-pressure, building: B1, domain: B1-water, role: zone_pressure, households: 96, source: mqtt,
     expected_interval: 1s}
"""


def _site(tmp_path: Path, text: str) -> Site:
    p = tmp_path / "site.yaml"
    p.write_text(text)
    return load_site(p)


def test_burst_after_supply_loss_joins_the_open_supply_incident(tmp_path: Path) -> None:
    # pressure sags slowly below 1 bar (a supply loss, no burst), then drops fast from 0.9 to 0.1
    events: list[Sample] = []
    for i in range(0, 400):
        if i < 100:
            p = 2.5
        elif i < 200:
            p = 2.5 - (i - 100) * 0.016  # 0.016 bar/s: slower than the burst rule's 0.05
        elif i < 300:
            p = 0.9
        else:
            p = 0.1
        events.append(Sample("B1-pressure", T0 + i, {"pressure": round(p, 3)}))
        events.append(Sample("B1-pump", T0 + i, {"current_l1": 0.0}))
    result = run_replay(_site(tmp_path, WATER_SITE), events)
    incs = result.incidents(include_merged=True)
    assert [(i.category, i.scope, i.state) for i in incs] == [("water_supply", "domain:B1-water", "firing")]
    (only,) = incs
    assert only.symptoms == {"B1-pressure": ["water.low_pressure", "water.burst"]}
    assert [t.event for t in result.timeline(only.id)] == ["opened"]  # a new rule on a known device: no news


def test_burst_alone_stays_its_own_incident(tmp_path: Path) -> None:
    events = [
        Sample("B1-pressure", T0 + i, {"pressure": 2.5 if i < 100 else (1.2 if i < 160 else 2.5)})
        for i in range(0, 400)
    ]
    events += [Sample("B1-pump", T0 + i, {"current_l1": 0.0}) for i in range(0, 400)]
    result = run_replay(_site(tmp_path, WATER_SITE), sorted(events, key=lambda e: e.ts))
    assert [(i.category, i.state) for i in result.incidents(include_merged=True)] == [
        ("water_burst", "resolved")
    ]


def test_tail_runs_timers_but_the_end_of_the_recording_silences_nobody(tmp_path: Path) -> None:
    events = [Sample("B1-pressure", T0 + i, {"pressure": 2.5}) for i in range(0, 60)]
    events += [Sample("B1-pump", T0 + i, {"current_l1": 0.0}) for i in range(0, 60)]
    result = run_replay(_site(tmp_path, WATER_SITE), sorted(events, key=lambda e: e.ts), tail=3600.0)
    assert result.end == T0 + 59 + 3600
    assert result.incidents(include_merged=True) == []


def test_silence_recorded_inside_the_trace_is_still_judged(tmp_path: Path) -> None:
    # the pump stops answering at +60 s while the pressure sensor goes on for five minutes
    events = [Sample("B1-pressure", T0 + i, {"pressure": 2.5}) for i in range(0, 300)]
    events += [Sample("B1-pump", T0 + i, {"current_l1": 0.0}) for i in range(0, 60)]
    result = run_replay(_site(tmp_path, WATER_SITE), sorted(events, key=lambda e: e.ts), tail=600.0)
    assert [(i.category, i.scope, i.state) for i in result.incidents()] == [
        ("comm_fault", "device:B1-pump", "firing")
    ]


PUMP_SITE = """\
site: {id: t, timezone: Asia/Shanghai}
buildings:
  - {id: B1, households: 4, domains: [{id: B1-water, kind: water}]}
devices:
  - {id: pump, building: B1, domain: B1-water, role: pump, households: 4, source: mqtt, expected_interval: 1s}
rules:
  - id: pump.no_flow
    kind: sequence
    mode: no_response
    category: water_supply
    scope: domain
    match: {roles: [pump]}
    running: {quantity: current_l1, above: 0.5}
    expect: [{quantity: flow, above: 3.0, over: OVER}]
    within: 20s
"""


def _surging_pump() -> list[Sample]:
    # a cavitating pump: flow ~0.2 m3/h with a surge to 4 m3/h every 8 s (mean ~0.7), motor running
    return [
        Sample("pump", T0 + i, {"current_l1": 2.5, "flow": 7.5 if i < 100 else (4.0 if i % 8 == 0 else 0.2)})
        for i in range(0, 400)
    ]


def test_expect_over_a_span_sees_through_surges(tmp_path: Path) -> None:
    latest = run_replay(_site(tmp_path, PUMP_SITE.replace("OVER", "0s")), _surging_pump())
    assert latest.incidents() == []  # every surge restarts the 20 s hold
    mean = run_replay(_site(tmp_path, PUMP_SITE.replace("OVER", "20s")), _surging_pump())
    (inc,) = mean.incidents()
    assert (inc.category, inc.scope, inc.state) == ("water_supply", "domain:B1-water", "firing")
    # the 20 s mean falls under 3 m3/h about 12 s after the collapse at +100 s, then the 20 s hold runs
    assert 125 <= inc.opened_at - T0 <= 140, inc.opened_at - T0


def test_expect_over_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _site(tmp_path, PUMP_SITE.replace("OVER", "-5s"))
    assert any("rules[0].expect[0].over" in str(i) for i in info.value.issues), info.value.issues


def test_stopped_below_must_be_under_the_running_threshold(tmp_path: Path) -> None:
    text = PUMP_SITE.replace("OVER", "0s") + "    stopped_below: 0.8\n"
    with pytest.raises(ConfigError) as info:
        _site(tmp_path, text)
    assert any("stopped_below 0.8 must be <= running.above 0.5" in str(i) for i in info.value.issues)


# ---- confirmation by consecutive readings, glitches --------------------------------------------------------

GLITCH_CASE = REPO / "tests/cases/single-zero-pressure-reading-is-a-glitch-no-burst"


def _glitch_replay(site: Site) -> tuple[list[AlertChange], dict[tuple[str, str], int], list[Incident]]:
    trace = read_trace(GLITCH_CASE / "trace.csv", site.config.site.timezone)
    result = run_replay(site, trace.events)
    changes = [t for t in result.transitions if isinstance(t, AlertChange)]
    return changes, result.engine.glitches, result.incidents(include_merged=True)


def test_one_zero_pressure_reading_is_a_glitch_counted_per_device_and_rule() -> None:
    changes, glitches, incidents = _glitch_replay(load_site(GLITCH_CASE / "site.yaml"))
    assert incidents == []
    assert not [c for c in changes if c.new == AlertState.FIRING]
    # the burst (critical, `for` 0) and the low pressure rule (`for` 60 s) each saw it on that one reading
    assert glitches == {("B1-pressure", "water.burst"): 1, ("B1-pressure", "water.low_pressure"): 1}


def test_confirm_samples_1_lets_one_reading_open_the_burst(tmp_path: Path) -> None:
    text = (GLITCH_CASE / "site.yaml").read_text() + (
        "rules:\n"
        "  - {id: water.burst, kind: rate, quantity: pressure, falling_faster_than: 0.05, window: 10s,\n"
        "     category: water_burst, severity: critical, scope: domain, match: {roles: [zone_pressure]},\n"
        "     confirm_samples: 1}\n"
    )
    changes, glitches, incidents = _glitch_replay(_site(tmp_path, text))
    assert [(i.category, i.severity) for i in incidents] == [("water_burst", "critical")]
    assert [c.ts - T0 for c in changes if c.new == AlertState.FIRING] == [100.0]
    assert ("B1-pressure", "water.burst") not in glitches


def test_confirm_samples_defaults_by_severity_and_absence_takes_none(tmp_path: Path) -> None:
    by_id = {r.id: r.samples_to_fire() for r in DEFAULT_RULES}
    assert by_id["water.burst"] == by_id["power.outage"] == by_id["water.low_pressure"] == 2  # critical
    assert by_id["power.phase_loss"] == by_id["comm.absent"] == by_id["pump.no_flow"] == 1
    text = WATER_SITE + "rules:\n  - {id: comm.absent, kind: absence, confirm_samples: 2}\n"
    with pytest.raises(ConfigError) as info:
        _site(tmp_path, text)
    assert any("judged by the clock" in str(i) for i in info.value.issues), info.value.issues


POWER_SITE = """\
site: {id: t, timezone: Asia/Shanghai}
buildings:
  - {id: B1, households: 40, domains: [{id: B1-power, kind: power}]}
devices:
  - {id: B1-main, building: B1, domain: B1-power, role: main_power, households: 40, source: mqtt,
     expected_interval: 10s}
"""


def _volts(ts: float, v: float) -> Sample:
    return Sample("B1-main", ts, {"voltage_l1": v, "voltage_l2": v, "voltage_l3": v})


def test_a_held_alert_still_waits_for_its_second_reading(tmp_path: Path) -> None:
    # polled every 10 s, the outage's 5 s `for` has run out long before the next reading: the timer alone
    # must not fire a critical alert seen on one reading
    eng = build_engine(_site(tmp_path, POWER_SITE), start=T0)
    out = eng.feed(_volts(T0, 0.0)) + eng.tick(T0 + 5) + eng.tick(T0 + 9)
    assert [c.new for c in out if isinstance(c, AlertChange)] == [AlertState.PENDING]
    assert eng.next_wakeup() != T0 + 5  # no timer for an unconfirmed alert
    out = eng.feed(_volts(T0 + 10, 0.0))
    assert [(c.ts - T0, c.new) for c in out if isinstance(c, AlertChange)] == [(10.0, AlertState.FIRING)]


def test_a_recovering_alert_across_a_restart_needs_fresh_clear_time(tmp_path: Path) -> None:
    site = _site(tmp_path, POWER_SITE.replace("expected_interval: 10s", "expected_interval: 1s"))
    eng = build_engine(site, start=T0)
    for i in range(0, 40):  # 0 V until +30 s, then 230 V: recovering, clear_for 60 s would end at +90 s
        eng.feed(_volts(T0 + i, 0.0 if i < 30 else 230.0))
        eng.tick(T0 + i)
    (alert,) = eng.alerts.values()
    assert alert.state == AlertState.RECOVERING
    alerts = [Alert.from_dict(a.to_dict()) for a in eng.alerts.values()]
    incidents = [Incident.from_dict(i.to_dict()) for i in eng.incidents.values()]

    # the gateway was stopped for ten minutes: that is no clear time
    later = T0 + 640
    eng2 = build_engine(site, start=later)
    eng2.restore(alerts, incidents, eng.export_kinds(), now=later)
    resolved: list[float] = []
    for i in range(0, 90):
        for t in eng2.feed(_volts(later + i, 230.0)) + eng2.tick(later + i):
            if isinstance(t, AlertChange) and t.new == AlertState.RESOLVED:
                resolved.append(t.ts - later)
            if isinstance(t, IncidentChange) and t.event == "resolved":
                resolved.append(t.ts - later)
    assert resolved == [60.0, 60.0], resolved  # the alert, then its incident: a full clear_for of fresh data


def test_undervoltage_incident_is_named_after_what_happened(tmp_path: Path) -> None:
    site = _site(tmp_path, POWER_SITE.replace("expected_interval: 10s", "expected_interval: 1s"))
    events = [_volts(T0 + i, 230.0 if i < 10 else 190.0) for i in range(0, 400)]  # 190 V < 90 % of 220 V
    (inc,) = run_replay(site, events).incidents()
    assert (inc.category, inc.title, inc.severity) == (
        "undervoltage",
        "undervoltage: device B1-main",
        "warning",
    )
