"""Engine.next_wakeup keeps its timers in heaps instead of scanning every device and alert: it must return
exactly what the full scan (rules.engine._scan_wakeup) returns, in every state the engine can reach.

Checked at every step of the recorded cases (tests/cases), of the SKAB recordings and of randomized event
sequences (samples out of order, stale and non-finite values, devices and sources going down and up, a
restart through restore, a recording's end), both where the replay asks and after every feed and tick.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import Site, load_site
from gateway.core.durations import parse_duration
from gateway.core.types import DeviceStatus, Event, Sample, SourceStatus
from gateway.incidents.replay import run_replay
from gateway.incidents.site_model import build_engine
from gateway.incidents.trace import load_mapping, read_trace
from rules.engine import Engine, _scan_wakeup
from rules.model import Alert, Transition
from tests.helpers import REPO

CASES = REPO / "tests" / "cases"
REPLAYED = sorted(
    p.name
    for p in CASES.iterdir()
    if (p / "expected.yaml").exists()
    and "errors" not in (yaml.safe_load((p / "expected.yaml").read_text()) or {})
)
SKAB = REPO / "tests" / "data" / "skab"
T0 = 1_772_416_800.0


class CheckedEngine(Engine):
    """The engine, with next_wakeup compared to the full scan each time it is asked."""

    checks = 0

    def next_wakeup(self) -> float | None:
        got = super().next_wakeup()
        want = _scan_wakeup(self)
        assert got == want, f"next_wakeup {got} != scan {want} at now={self.now}"
        type(self).checks += 1
        return got


class EveryStep(CheckedEngine):
    """Also checked after every feed and tick, not only where the replay asks (more calls pop the heaps
    at other moments: the answer must not depend on when it is asked)."""

    def feed(self, event: Event) -> list[Transition]:
        out = super().feed(event)
        self.next_wakeup()
        return out

    def tick(self, now: float) -> list[Transition]:
        out = super().tick(now)
        self.next_wakeup()
        return out


@pytest.fixture(params=[CheckedEngine, EveryStep], ids=["as-replay-asks", "every-step"])
def engine_type(request: pytest.FixtureRequest) -> type[CheckedEngine]:
    cls: type[CheckedEngine] = request.param
    cls.checks = 0
    return cls


def recorded_case(case: str) -> tuple[Site, list[Event], float]:
    """A recorded case's site, its trace's events and the replay's tail."""
    d = CASES / case
    exp: dict[str, Any] = yaml.safe_load((d / "expected.yaml").read_text()) or {}
    site = load_site((d / exp.get("site", "site.yaml").replace("{repo}", str(REPO))).resolve())
    trace_path = (d / exp.get("trace", "trace.csv").replace("{repo}", str(REPO))).resolve()
    mapping = (
        load_mapping((d / exp["mapping"].replace("{repo}", str(REPO))).resolve())
        if "mapping" in exp
        else None
    )
    trace = read_trace(trace_path, site.config.site.timezone, mapping)
    return site, list(trace.events), parse_duration(exp.get("tail", 0))


@pytest.mark.parametrize("case", REPLAYED)
def test_recorded_cases(case: str, engine_type: type[CheckedEngine]) -> None:
    site, events, tail = recorded_case(case)
    run_replay(site, events, tail=tail, engine_type=engine_type)
    assert engine_type.checks > 0


@pytest.mark.parametrize("recording", ["anomaly-free/anomaly-free.csv", "other/12.csv"])
def test_skab_recordings(recording: str, engine_type: type[CheckedEngine]) -> None:
    site = load_site(REPO / "deploy/examples/skab/site.yaml")
    mapping = load_mapping(REPO / "deploy/examples/skab/mapping.yaml")
    trace = read_trace(SKAB / recording, site.config.site.timezone, mapping)
    run_replay(site, trace.events, tail=600.0, engine_type=engine_type)
    assert engine_type.checks > len(trace.events) / 10


RANDOM_SITE = """\
site: {id: r, timezone: Asia/Shanghai}
buildings:
  - {id: B1, households: 96, domains: [{id: B1-power, kind: power}, {id: B1-water, kind: water}]}
  - {id: B2, households: 64, domains: [{id: B2-power, kind: power}]}
devices:
  - {id: B1-main, building: B1, domain: B1-power, role: main_power, households: 96, source: mqtt,
     expected_interval: 1s}
  - {id: B1-u1, building: B1, domain: B1-power, role: unit_power, households: 1, source: mqtt,
     expected_interval: 2s}
  - {id: B1-u2, building: B1, domain: B1-power, role: unit_power, households: 1, source: mqtt,
     expected_interval: 5s}
  - {id: B1-pump, building: B1, domain: B1-power, role: pump, source: mqtt, expected_interval: 1s}
  - {id: B1-pressure, building: B1, domain: B1-water, role: zone_pressure, households: 96, source: mqtt,
     expected_interval: 1s}
  - {id: B1-flow, building: B1, domain: B1-water, role: flow, source: mqtt, expected_interval: 10s}
  - {id: B2-main, building: B2, domain: B2-power, role: main_power, households: 64, source: mqtt,
     expected_interval: 3s}
"""


def _random_values(rng: random.Random, device: str) -> dict[str, float]:
    if device.endswith(("main", "u1", "u2")):

        def volts() -> float:
            return rng.choice([230.0, 231.5, 0.0, 180.0, 260.0, float("nan")])

        return {"voltage_l1": volts(), "voltage_l2": volts(), "voltage_l3": volts()}
    if device.endswith("pump"):
        return {"current_l1": rng.choice([0.0, 0.2, 3.5])}
    if device.endswith("pressure"):
        return {"pressure": rng.choice([2.5, 2.4, 0.9, 0.1, 1.6, float("inf")])}
    return {"flow": rng.choice([0.0, 0.3, 0.8, 5.0])}


def _random_events(rng: random.Random, devices: list[str], n: int) -> list[Event | float]:
    """Events, and bare floats where the engine is ticked. Time mostly runs on, sometimes jumps past every
    timer, sometimes goes back (late samples); values change in runs so that holds get to last."""
    out: list[Event | float] = []
    t = T0
    held: dict[str, dict[str, float]] = {}
    for _ in range(n):
        t += rng.choice([0.0, 0.5, 1.0, 1.0, 2.0, 7.0]) if rng.random() > 0.02 else rng.uniform(20, 400)
        r = rng.random()
        d = rng.choice(devices)
        if r < 0.70:
            if d not in held or rng.random() < 0.1:
                held[d] = _random_values(rng, d)
            ts = t - rng.uniform(0, 30) if rng.random() < 0.05 else t
            quality = "stale" if rng.random() < 0.03 else "good"
            out.append(Sample(d, ts, {} if rng.random() < 0.01 else held[d], quality))
        elif r < 0.80:
            out.append(t)
        elif r < 0.90:
            out.append(DeviceStatus(d, t, up=rng.random() < 0.5, reason="timeout"))
        elif r < 0.95:
            lost = (*(x for x in devices if rng.random() < 0.5), "not-on-this-site")
            out.append(SourceStatus("mqtt:broker", t, connected=False, devices=lost))
        else:
            out.append(SourceStatus("mqtt:broker", t, connected=True))
    return out


def _site(tmp_path: Path) -> Site:
    p = tmp_path / "site.yaml"
    p.write_text(RANDOM_SITE)
    return load_site(p)


def _run(eng: EveryStep, steps: list[Event | float]) -> None:
    for step in steps:
        if isinstance(step, float):
            eng.tick(step)
        else:
            eng.feed(step)
        # and the way the replay runs timers: tick at each wakeup up to the current time
        while (w := eng.next_wakeup()) is not None and w <= eng.now:
            eng.tick(w)


@pytest.mark.parametrize("seed", range(12))
def test_randomized_sequences(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    site = _site(tmp_path)
    devices = [d.id for d in site.config.devices]
    EveryStep.checks = 0
    eng = build_engine(site, start=T0, engine_type=EveryStep)
    assert isinstance(eng, EveryStep)
    steps = _random_events(rng, devices, 3000)
    _run(eng, steps[:2000])

    # a restart: a new engine restores the alerts (pending ones among them) and goes on from later
    later = eng.now + rng.uniform(0, 120)
    alerts = [Alert.from_dict(a.to_dict()) for a in eng.alerts.values()]
    again = build_engine(site, start=T0, engine_type=EveryStep)
    assert isinstance(again, EveryStep)
    again.tick(T0 + 500.0)  # its timers ran before the restore: passed absence timers left the heap
    again.restore(alerts, list(eng.incidents.values()), eng.export_kinds(), now=later)
    again.next_wakeup()
    _run(again, steps[2000:])

    # a recording's end: timers run on past it, silence after it is judged by no one
    again.data_end = again.now
    for _ in range(200):
        w = again.next_wakeup()
        if w is None:
            break
        again.tick(w)
    again.tick(again.now + 3600.0)
    assert EveryStep.checks > 3000
