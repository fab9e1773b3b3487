"""Evidence kept with an incident (issue 10, item 1): the affected devices' key readings from `before`
ahead of its first evidence until `after` past its resolution, in the incident store, bounded per incident.

- Through the real daemon (bench/rules_live.py: simulated meters over Modbus TCP): a power cut in B1 stores
  the B1 main meter's phase voltages from before the cut to after the restore, B2's meter not at all, and
  within the bound: thinned to a lower rate, one reading per slot, still spanning the whole incident.
- The ring and the bound in virtual time, with a real store and a real bus subscription: the ring's window
  and rate, the quantities kept, the before and after windows, which devices an incident concerns, the
  bound and its even thinning, and a restart going on from what the store holds.
"""

from __future__ import annotations

import math
import random
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.rules_live import POLL, DaemonThread, LiveSite, incident, open_incidents, write_live_site
from gateway.config import ConfigError, Site, load_site
from gateway.core.bus import Bus
from gateway.core.types import DeviceStatus, Sample
from gateway.incidents.evidence import FLUSH_EVERY, EvidenceKeeper, Ring, affected_devices
from gateway.incidents.store import Batch, IncidentStore, StoreReader
from rules.model import Incident, IncidentState
from simulators.runner import SimulatorThread
from tests.helpers import wait_until

T0 = 1_760_000_000.0

# ---- through the daemon ------------------------------------------------------------------------------------

BEFORE, AFTER, MAX_POINTS = 20.0, 3.0, 200
OUTAGE = 6.0  # seconds of 0 V readings before the power comes back
PHASES = ("voltage_l1", "voltage_l2", "voltage_l3")
EVIDENCE = f"{{before: {BEFORE:g}s, after: {AFTER:g}s, max_points: {MAX_POINTS}}}"


class EvidenceSite(LiveSite):
    """The live site with its `incidents:` line given an evidence section."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.site_path = write_live_site(directory)
        text, n = re.subn(
            r"^incidents: \{(.*)\}$",
            rf"incidents: {{\1, evidence: {EVIDENCE}}}",
            self.site_path.read_text("utf-8"),
            flags=re.M,
        )
        assert n == 1, "the live site's incidents line changed"
        self.site_path.write_text(text, encoding="utf-8")
        self.site = load_site(self.site_path)
        self.sim = SimulatorThread(self.site, mqtt=False)
        self.daemon = DaemonThread(self.site, directory / "state")


def ring_span(daemon: DaemonThread, device: str) -> float:
    keeper = daemon.services.evidence
    assert keeper is not None
    ring = keeper.rings.get(device)
    try:
        return 0.0 if ring is None else ring.entries[-1][0] - ring.entries[0][0]
    except IndexError:  # emptied meanwhile
        return 0.0


def zero_span(daemon: DaemonThread, device: str) -> float:
    """Seconds from the first to the last 0 V reading (voltage_l1) in the device's ring."""
    keeper = daemon.services.evidence
    assert keeper is not None
    ring = keeper.rings.get(device)
    times = [
        ts
        for ts, keys, values in list(ring.entries if ring is not None else ())
        if dict(zip(keys, values, strict=True)).get("voltage_l1") == 0.0
    ]
    return times[-1] - times[0] if times else 0.0


def ring_newest(daemon: DaemonThread, device: str) -> float:
    keeper = daemon.services.evidence
    assert keeper is not None
    ring = keeper.rings.get(device)
    try:
        return 0.0 if ring is None else ring.entries[-1][0]
    except IndexError:
        return 0.0


def test_a_power_cut_keeps_the_main_meters_voltages_from_before_the_cut_to_after_the_restore(
    tmp_path: Path,
) -> None:
    with EvidenceSite(tmp_path) as live:
        daemon = live.daemon
        # the ring must already hold some history when the cut comes: that is what `before` is about
        wait_until(
            lambda: ring_span(daemon, "B1-main") >= 6.0, 30.0, what="six seconds of B1-main in the ring"
        )
        cut = time.time()
        live.sim.world.cut_power("B1")
        found = wait_until(
            lambda: [i for i in open_incidents(daemon) if i["scope"] == "domain:B1-power"],
            30.0,
            what="B1's power incident",
        )
        inc_id = int(found[0]["id"])
        reader = StoreReader(daemon.incidents.store.path)

        def zeros() -> int:
            series = reader.evidence(inc_id).get("B1-main", {}).get("voltage_l1", [])
            return sum(1 for _, v in series if v == 0.0)

        # stored while it is open, not only at the end; a few of them, whatever rate the bound leaves
        wait_until(lambda: zeros() >= 3, 30.0, what="B1-main's 0 V readings stored with the open incident")
        # The bound keeps the first reading of each quantity per slot (2 s here, in the end), slots aligned
        # to the clock: an outage shorter than a slot or two may keep no reading from its middle at all.
        # The outage goes on until the ring holds OUTAGE seconds of 0 V readings, so its middle spans slots.
        wait_until(
            lambda: zero_span(daemon, "B1-main") >= OUTAGE,
            30.0,
            what=f"{OUTAGE:g} s of 0 V in B1-main's ring",
        )
        live.sim.world.restore_power("B1")
        restore = time.time()
        wait_until(
            lambda: incident(daemon, inc_id)["state"] == IncidentState.RESOLVED, 30.0, what="resolution"
        )
        inc = reader.incident(inc_id)
        assert inc is not None and inc.resolved_at is not None
        window_end = inc.resolved_at + AFTER
        # the after window is filled once a flush ran after it closed (it drains the readings queued by then)
        keeper = daemon.services.evidence
        assert keeper is not None
        wait_until(
            lambda: (
                keeper.flushed_at > window_end + 1.0 and ring_newest(daemon, "B1-main") > window_end + 1.0
            ),
            30.0,
            what="a flush after the after window closed",
        )
        metrics = urllib.request.urlopen(daemon.url + "/metrics", timeout=5).read().decode()
    # read after the daemon stopped: its last flush is in too
    evidence = reader.evidence(inc_id)
    info = reader.evidence_info(inc_id)

    assert set(evidence) == {"B1-main", "B1-unit"}, "the devices of the incident's domain, not B2's"
    main = evidence["B1-main"]
    assert set(PHASES) <= set(main)
    assert "energy_import" not in main, "only the configured quantities"
    for q in PHASES:
        series = main[q]
        times = [t for t, _ in series]
        assert times == sorted(times)
        assert times[0] < cut - 3.0, f"{q}: readings from before the cut"
        assert times[0] >= inc.first_evidence_at - BEFORE - 1e-6
        assert times[-1] <= window_end, f"{q}: nothing from past the after window"
        assert info.spacing is None or times[-1] > window_end - info.spacing - 0.5 - 1e-6, (
            f"{q}: up to its end"
        )
        assert times[-1] > restore, f"{q}: readings from after the restore"
        before_cut = [v for t, v in series if t < cut - 1.0]
        during = [v for t, v in series if cut + 0.6 < t < restore - 0.6]
        after_restore = [v for t, v in series if t > inc.resolved_at]
        assert before_cut and min(before_cut) > 200.0
        assert info.spacing is None or restore - cut - 1.2 > info.spacing + 2 * POLL, (
            f"the outage ({restore - cut:.1f} s) is too short for its middle to hold a reading "
            f"{info.spacing} s apart: OUTAGE no longer covers what the bound leaves"
        )
        assert during and max(during) == 0.0
        assert after_restore and min(after_restore) > 200.0
    # bounded: more readings came than the bound holds, so the incident was thinned to a lower rate, one
    # reading per slot of each quantity, over the whole span
    assert info.points <= MAX_POINTS
    assert info.spacing is not None and info.thinned > 0
    for q, series in main.items():
        slots = [math.floor(t / info.spacing) for t, _ in series]
        assert len(slots) == len(set(slots)), f"{q}: one reading per {info.spacing} s slot"
    assert re.search(r"^meterwatch_evidence_points_total [1-9]", metrics, re.M)
    assert re.search(r"^meterwatch_evidence_thinned_points_total [1-9]", metrics, re.M)
    assert re.search(r"^meterwatch_incident_store_bytes [1-9]", metrics, re.M)


# ---- in virtual time ---------------------------------------------------------------------------------------

SITE = """\
site: {id: evidencetest}
buildings:
  - {id: B1, households: 40, domains: [{id: T1, kind: power}, {id: B1-power, kind: power, parent: T1}]}
  - {id: B2, households: 30, domains: [{id: B2-power, kind: power}, {id: B2-water, kind: water}]}
devices:
  - {id: B1-main, building: B1, domain: B1-power, role: main_power, households: 40, source: mqtt,
     expected_interval: 1s}
  - {id: B1-unit, building: B1, domain: B1-power, role: unit_power, source: mqtt, expected_interval: 1s,
     line_powered: true}
  - {id: B2-main, building: B2, domain: B2-power, role: main_power, households: 30, source: mqtt,
     expected_interval: 1s}
  - {id: B2-pump, building: B2, domain: B2-water, role: pump, source: mqtt, expected_interval: 1s,
     powered_by: B1-power}
incidents: {evidence: {before: 30s, after: 10s, max_points: 300}}
"""


@pytest.fixture
def site(tmp_path: Path) -> Site:
    path = tmp_path / "site.yaml"
    path.write_text(SITE, encoding="utf-8")
    return load_site(path)


def outage(
    inc_id: int = 1,
    scope: str = "domain:B1-power",
    first: float = T0,
    symptoms: tuple[str, ...] = ("B1-main",),
) -> Incident:
    return Incident(
        id=inc_id, key=f"power_outage/{scope}", category="power_outage", scope=scope, title="outage",
        severity="critical", event_code="003", audiences=["staff"], households=40,
        state=IncidentState.FIRING, opened_at=first + 3, first_evidence_at=first, updated_at=first + 3,
        symptoms={d: ["power.outage"] for d in symptoms},
    )  # fmt: skip


def resolve(inc: Incident, at: float) -> None:
    inc.state = IncidentState.RESOLVED
    inc.resolved_at = inc.updated_at = at


class Rig:
    """A keeper on a real store and a real bus subscription, stepped the way the detector steps it: readings
    published, then one round (on_batch, the batch written) per call of `round`."""

    def __init__(self, site: Site, db: Path, incidents: dict[int, Incident] | None = None) -> None:
        self.site = site
        self.store = IncidentStore(db)
        self.reader = StoreReader(db)
        self.bus = Bus()
        self.incidents: dict[int, Incident] = incidents or {}  # what the engine holds (restored on a start)
        self.keeper = EvidenceKeeper(
            site,
            site.config.incidents.evidence,
            self.bus.subscribe("evidence", 10_000, "drop_oldest"),
            lambda: self.incidents,
            self.store,
        )

    def publish(self, device: str, ts: float, volts: float, **extra: float) -> None:
        values = {"voltage_l1": volts, "voltage_l2": volts, "energy_import": 12.5, **extra}
        assert self.bus.publish_nowait(Sample(device, ts, values))

    def round(self, now: float) -> Batch:
        batch = Batch()
        self.keeper.on_batch(batch, now)
        self.store.write(batch)
        return batch

    def run(self, start: float, end: float, volts: float, devices: tuple[str, ...] = ("B1-main",)) -> None:
        """One reading per device and second in [start, end), a round after each second."""
        t = start
        while t < end:
            for dev in devices:
                self.publish(dev, t, volts)
            self.round(t + 0.2)
            t += 1.0

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def rig(site: Site, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(site, tmp_path / "incidents.sqlite")
    yield r
    r.close()


def test_the_ring_holds_its_window_at_its_rate_and_in_time_order() -> None:
    ring = Ring(span=60.0, slots=120)  # at most one reading per 0.5 s
    keys = ("voltage_l1",)
    for i in range(200):
        assert ring.add(T0 + i, keys, (float(i),))
    assert [e[0] for e in ring.entries] == [T0 + i for i in range(139, 200)], "the last 60 s only"
    assert not ring.add(T0 + 199.2, keys, (0.0,)), "closer than span/slots to the newest"
    assert not ring.add(T0 + 150, keys, (0.0,)), "older than the newest"
    assert ring.add(T0 + 199.5, keys, (1.0,))
    assert [e[0] for e in ring.since(T0 + 197)] == [T0 + 198, T0 + 199, T0 + 199.5]
    assert ring.since(T0 + 500) == []


def test_the_ring_keeps_the_configured_quantities_of_fresh_finite_readings(rig: Rig) -> None:
    rig.publish("B1-main", T0, 230.0, current_l1=5.0, frequency=50.0, power_factor=0.9)
    rig.bus.publish_nowait(Sample("B1-main", T0 + 1, {"voltage_l1": 231.0}, quality="stale"))
    rig.bus.publish_nowait(Sample("B1-main", T0 + 2, {"voltage_l1": float("nan")}))
    rig.bus.publish_nowait(Sample("ghost", T0 + 2, {"voltage_l1": 1.0}))
    rig.bus.publish_nowait(DeviceStatus("B1-main", T0 + 3, up=False))
    rig.keeper.drain()
    entries = list(rig.keeper.rings["B1-main"].entries)
    assert entries == [
        (T0, ("current_l1", "frequency", "voltage_l1", "voltage_l2"), (5.0, 50.0, 230.0, 230.0))
    ]
    assert set(rig.keeper.rings) == {"B1-main"}


def test_a_reading_keeps_its_finite_values_beside_a_nan_or_an_infinity(rig: Rig) -> None:
    """The finite values of a reading stay when another is NaN or infinite; values whose sum is past the float
    range are finite, and stay too. A device's usual readings share one keys tuple."""
    rig.publish("B1-main", T0, 230.0, frequency=float("nan"))
    rig.publish("B1-main", T0 + 1, float("inf"), frequency=50.0)
    rig.publish("B1-main", T0 + 2, 1e308, frequency=1e308)
    rig.publish("B1-main", T0 + 3, 231.0, frequency=50.0)
    rig.keeper.drain()
    entries = list(rig.keeper.rings["B1-main"].entries)
    assert [(t, k, v) for t, k, v in entries] == [
        (T0, ("voltage_l1", "voltage_l2"), (230.0, 230.0)),
        (T0 + 1, ("frequency",), (50.0,)),
        (T0 + 2, ("frequency", "voltage_l1", "voltage_l2"), (1e308, 1e308, 1e308)),
        (T0 + 3, ("frequency", "voltage_l1", "voltage_l2"), (50.0, 231.0, 231.0)),
    ]
    assert entries[2][1] is entries[3][1]


def test_an_incident_keeps_its_devices_readings_from_before_it_until_after_it_resolves(rig: Rig) -> None:
    rig.run(T0 - 100, T0, 230.0, ("B1-main", "B1-unit", "B2-main"))
    rig.run(T0, T0 + 5, 0.0, ("B1-main", "B2-main"))
    inc = rig.incidents[1] = outage()
    rig.round(T0 + 5.5)
    ev = rig.reader.evidence(1)
    # opened: the ring from `before` (30 s) ahead of the first evidence is stored at once
    # the domain's devices that have readings (B2-pump, powered by B1-power, published none), not B2's meter
    assert set(ev) == {"B1-main", "B1-unit"}
    times = [t for t, _ in ev["B1-main"]["voltage_l1"]]
    assert times[0] == T0 - 30 and times[-1] == T0 + 4
    assert "energy_import" not in ev["B1-main"]
    rig.run(T0 + 5, T0 + 20, 0.0, ("B1-main", "B2-main"))
    resolve(inc, T0 + 20)
    rig.run(T0 + 20, T0 + 60, 230.0, ("B1-main", "B1-unit"))
    times = [t for t, _ in rig.reader.evidence(1)["B1-main"]["voltage_l1"]]
    assert times == [T0 - 30 + i for i in range(61)], "every second from T0-30 to resolution + 10 s"
    assert rig.keeper.points_stored == rig.reader.evidence_info(1).points
    # once past the window and no longer held by the engine, the keeper lets go
    del rig.incidents[1]
    rig.round(T0 + 100)
    assert rig.keeper.held_incidents() == set()


def test_a_device_joining_an_incident_brings_its_ring(rig: Rig) -> None:
    rig.run(T0 - 40, T0 + 5, 230.0, ("B2-main",))
    rig.incidents[1] = outage(scope="device:B1-main")
    rig.round(T0 + 5.5)
    assert "B2-main" not in rig.reader.evidence(1)
    rig.incidents[1].symptoms["B2-main"] = ["power.outage"]
    rig.round(T0 + 6)
    times = [t for t, _ in rig.reader.evidence(1)["B2-main"]["voltage_l1"]]
    assert times[0] == T0 - 30 and times[-1] == T0 + 4


def test_which_devices_an_incident_concerns(site: Site) -> None:
    assert affected_devices(outage(scope="domain:T1", symptoms=()), site) == {"B1-main", "B1-unit", "B2-pump"}
    assert affected_devices(outage(scope="building:B2", symptoms=()), site) == {"B2-main", "B2-pump"}
    assert affected_devices(outage(scope="device:B2-main", symptoms=("B1-unit",)), site) == {
        "B2-main",
        "B1-unit",
    }
    assert affected_devices(outage(scope="site", symptoms=()), site) == {
        "B1-main",
        "B1-unit",
        "B2-main",
        "B2-pump",
    }
    manual = outage(scope="site", symptoms=("notify:staff",))
    manual.manual = True
    assert affected_devices(manual, site) == set(), "a failing channel concerns no meter"
    manual.buildings = ["B2"]
    assert affected_devices(manual, site) == {"B2-main", "B2-pump"}


def test_the_bound_thins_evenly_and_keeps_the_lower_rate(rig: Rig) -> None:
    # 2 quantities a second: the bound of 300 is reached after 150 s
    rig.run(T0 - 30, T0, 230.0)
    inc = rig.incidents[1] = outage()
    rig.run(T0, T0 + 1000, 0.0)
    resolve(inc, T0 + 1000)
    rig.run(T0 + 1000, T0 + 1020, 230.0)
    info = rig.reader.evidence_info(1)
    ev = rig.reader.evidence(1)["B1-main"]
    offered = 2 * 1041  # T0-30 .. T0+1010, two quantities
    assert info.points <= 300
    assert info.points + info.thinned == offered, "every reading is stored or counted as thinned"
    assert rig.keeper.points_thinned == info.thinned
    assert info.spacing is not None and info.spacing >= 8.0  # 1041 s in at most 150 readings a quantity
    for series in ev.values():
        times = [t for t, _ in series]
        assert times[0] == T0 - 30 and times[-1] > T0 + 1000 - info.spacing, "the whole span, evenly"
        slots = [math.floor(t / info.spacing) for t in times]
        assert slots == list(range(slots[0], slots[-1] + 1)), "exactly one reading in every slot"


def test_a_restart_goes_on_from_what_the_store_holds(site: Site, tmp_path: Path) -> None:
    db = tmp_path / "incidents.sqlite"
    first = Rig(site, db)
    first.run(T0 - 30, T0, 230.0)
    inc = first.incidents[1] = outage()
    first.run(T0, T0 + 400, 0.0)
    before = first.reader.evidence(1)
    info = first.reader.evidence_info(1)
    assert info.spacing is not None
    first.close()

    # the engine restored the open incident; the ring starts empty
    second = Rig(site, db, {1: inc})
    second.run(T0 + 400, T0 + 700, 0.0)
    after = second.reader.evidence(1)
    info2 = second.reader.evidence_info(1)
    second.close()
    assert info2.points <= 300 and info2.thinned >= info.thinned
    for q, series in after["B1-main"].items():
        times = [t for t, _ in series]
        assert times[0] == T0 - 30, "what was written before the restart is still there"
        # the last readings wait for the next flush (FLUSH_EVERY) and one reading per slot is kept
        assert info2.spacing is not None and times[-1] > T0 + 700 - FLUSH_EVERY - 1 - info2.spacing
        assert len(times) == len(set(times))
        slots = [math.floor(t / info2.spacing) for t in times]
        assert len(slots) == len(set(slots)), f"{q}: the restored rate holds across the restart"
    assert before["B1-main"]["voltage_l1"][0] == after["B1-main"]["voltage_l1"][0]


def test_no_quantities_no_evidence(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(SITE.replace("max_points: 300", "max_points: 300, quantities: []"), encoding="utf-8")
    rig = Rig(load_site(path), tmp_path / "incidents.sqlite")
    rig.run(T0 - 10, T0, 230.0)
    rig.incidents[1] = outage()
    rig.run(T0, T0 + 10, 0.0)
    assert rig.reader.evidence(1) == {}
    rig.close()


def test_bad_evidence_settings_are_named(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(
        SITE.replace("max_points: 300", "max_points: 300, quantities: ['volt age']"), encoding="utf-8"
    )
    with pytest.raises(ConfigError) as err:
        load_site(path)
    text = str(err.value)
    assert "incidents.evidence.quantities" in text and "'volt age'" in text


def test_irregular_readings_stay_within_the_bound_and_are_all_accounted_for(rig: Rig) -> None:
    # readings at uneven instants, each with some of the quantities, in bursts: whatever the estimate of the
    # rate gets wrong, the bound holds, every reading is stored or counted, one per slot and quantity
    rnd = random.Random(7)
    names = ("voltage_l1", "voltage_l2", "voltage_l3", "current_l1", "frequency")
    rig.incidents[1] = outage(symptoms=("B1-main", "B1-unit", "B2-main"))
    offered = 0
    t = T0 - 25.0
    while t < T0 + 3000:
        for dev in ("B1-main", "B1-unit", "B2-main"):
            keys = rnd.sample(names, rnd.randint(1, len(names)))
            rig.bus.publish_nowait(Sample(dev, t + rnd.random() * 0.2, {q: rnd.random() for q in keys}))
            offered += len(keys)
        t += rnd.choice((0.3, 1.0, 1.0, 7.0, 40.0))
        rig.round(t)  # the detector's rounds come at least every second; its flushes every FLUSH_EVERY
        assert rig.keeper.tracked[1].points <= 300
    rig.round(t + FLUSH_EVERY + 1)
    info = rig.reader.evidence_info(1)
    assert info.spacing is not None
    assert info.points + info.thinned == offered
    ev = rig.reader.evidence(1)
    mirror = rig.keeper.tracked[1].times
    for dev, series in ev.items():
        for q, points in series.items():
            times = [p[0] for p in points]
            assert times == mirror[(dev, q)], "the keeper's mirror is what the store holds"
            slots = [math.floor(p / info.spacing) for p in times]
            assert len(slots) == len(set(slots))


def test_readings_each_with_another_quantity_still_fit(tmp_path: Path) -> None:
    # one quantity per reading, in turn, ten minutes of them in the ring when the incident opens: the rate
    # chosen on the readings' instants keeps five times what it estimates, and the exact check after it
    # must thin further
    path = tmp_path / "site.yaml"
    path.write_text(SITE.replace("before: 30s", "before: 600s"), encoding="utf-8")
    rig = Rig(load_site(path), tmp_path / "incidents.sqlite")
    names = ("voltage_l1", "voltage_l2", "voltage_l3", "current_l1", "frequency")
    for i in range(3000):
        assert rig.bus.publish_nowait(Sample("B1-main", T0 - 600 + i * 0.2, {names[i % 5]: float(i)}))
    rig.incidents[1] = outage()
    rig.round(T0)
    info = rig.reader.evidence_info(1)
    assert info.points <= 300 and info.points + info.thinned == 3000
    assert info.spacing is not None
    for q, points in rig.reader.evidence(1)["B1-main"].items():
        slots = [math.floor(t / info.spacing) for t, _ in points]
        assert slots == list(range(slots[0], slots[-1] + 1)), f"{q}: one reading in every slot"
    rig.close()
