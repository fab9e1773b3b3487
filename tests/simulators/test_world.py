"""The simulated world: nominal values, derived electrical quantities, counters and power-cut semantics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gateway.config import load_site
from simulators.world import ManualClock, Noisy, World, WorldError

SITE = Path("deploy/examples/compound.yaml")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_700_000_000.0)


@pytest.fixture
def world(clock: ManualClock) -> World:
    return World(load_site(SITE), clock=clock)


def test_nominal_values(world: World) -> None:
    v = world.values("B1-main")
    assert v["voltage_l1"] == v["voltage_l2"] == v["voltage_l3"] == 230.0
    assert v["voltage_l1_l2"] == pytest.approx(230.0 * math.sqrt(3), abs=1e-3)
    assert v["frequency"] == 50.0
    assert v["power_l1"] == pytest.approx(v["voltage_l1"] * v["current_l1"] * v["power_factor"])
    assert v["power_total"] == pytest.approx(v["power_l1"] + v["power_l2"] + v["power_l3"])
    assert world.value("B1-pressure", "pressure") == 3.0
    assert world.value("B1-pressure", "pressure_decimals") == 2.0
    assert world.value("B1-flow", "flow") == 12.0
    assert world.value("B1-flow", "pipe_empty") == 0.0
    assert world.values("B3-tank") == {"level": 2.5}


def test_energy_counter_grows_with_the_clock_and_stops_in_an_outage(world: World, clock: ManualClock) -> None:
    e0 = world.value("B1-main", "energy_import")
    p = world.value("B1-main", "power_total")
    clock.advance(3600)
    e1 = world.value("B1-main", "energy_import")
    assert e1 - e0 == pytest.approx(p / 1000.0)
    world.cut_power("B1")
    clock.advance(3600)
    assert world.value("B1-main", "energy_import") == pytest.approx(e1)
    world.restore_power("B1")
    clock.advance(1800)
    assert world.value("B1-main", "energy_import") == pytest.approx(e1 + p / 2000.0)


def test_building_cut_reads_zero_and_silences_powered_devices(world: World) -> None:
    world.cut_power("B2")
    # B2-main and B2-shop are line_powered: they go silent. B2-pressure measures water: still answers.
    assert not world.answering("B2-main")
    assert not world.answering("B2-shop")
    assert world.answering("B2-pressure")
    assert world.value("B2-main", "voltage_l1") == 0.0
    assert world.value("B2-main", "power_total") == 0.0
    assert world.value("B2-main", "frequency") == 0.0
    # Other buildings are untouched.
    assert world.answering("B1-main") and world.value("B1-main", "voltage_l1") == 230.0
    world.restore_power("B2")
    assert world.answering("B2-main") and world.value("B2-main", "voltage_l1") == 230.0


def test_line_converter_powered_by_a_domain_silences_every_device_on_it(world: World) -> None:
    # b1-gw's converter is powered_by B1-power: B1-main itself is not line_powered, but its line is dead.
    world.cut_power("B1-power")
    for dev in ("B1-main", "B1-pump", "B1-pressure", "B1-flow"):
        assert not world.answering(dev), dev
    assert not world.line_powered("b1-gw")
    assert world.line_powered("b2-rs485")


def test_meter_not_powered_by_its_circuit_reads_zero_but_answers(tmp_path: Path, clock: ManualClock) -> None:
    text = SITE.read_text()
    assert text.count("\n    powered_by: B1-power\n") == 1  # the b1-gw line's converter
    text = text.replace("\n    powered_by: B1-power\n", "\n")
    site_file = tmp_path / "site.yaml"
    site_file.write_text(text)
    world = World(load_site(site_file), clock=clock)
    world.cut_power("B1")
    assert world.answering("B1-main")  # meter on an auxiliary supply: answers with 0 V
    assert world.value("B1-main", "voltage_l2") == 0.0
    assert world.value("B1-main", "current_l2") == 0.0
    assert not world.answering("B1-pressure")  # powered_by B1-power


def test_parent_domain_cut_reaches_children(tmp_path: Path, clock: ManualClock) -> None:
    text = SITE.read_text().replace(
        "{id: B2-power, kind: power}", "{id: B2-power, kind: power, parent: B1-power}"
    )
    site_file = tmp_path / "site.yaml"
    site_file.write_text(text)
    world = World(load_site(site_file), clock=clock)
    world.cut_power("B1-power")
    assert not world.powered("B2-power")
    assert not world.answering("B2-main")
    world.restore_power("B1-power")
    assert world.answering("B2-main")


def test_stop_and_restore_one_device(world: World) -> None:
    world.stop_device("B2-shop")
    assert not world.answering("B2-shop")
    assert world.answering("B2-main")
    world.restore_device("B2-shop")
    assert world.answering("B2-shop")


def test_phase_loss_propagates_to_derived_quantities(world: World) -> None:
    world.set_value("B3-main", "voltage_l2", 0.0)
    v = world.values("B3-main")
    assert v["current_l2"] == 0.0 and v["power_l2"] == 0.0
    assert v["power_total"] == pytest.approx(v["power_l1"] + v["power_l3"])
    assert v["voltage_l1_l2"] == pytest.approx(230.0)
    assert v["voltage_l3_l1"] == pytest.approx(230.0 * math.sqrt(3), abs=1e-3)
    assert v["power_factor_l2"] == 0.0 and v["power_factor_l1"] == pytest.approx(0.95)


def test_pump_off_drops_current_keeps_voltage(world: World) -> None:
    world.set_pump("B1-pump", False)
    assert world.value("B1-pump", "current_l1") == 0.0
    assert world.value("B1-pump", "power_total") == 0.0
    assert world.value("B1-pump", "voltage_l1") == 230.0
    world.set_pump("B1-pump", True)
    assert world.value("B1-pump", "current_l1") > 0


def test_ramp(world: World, clock: ManualClock) -> None:
    world.ramp("B1-flow", "flow", 2.0, over=10.0)
    assert world.value("B1-flow", "flow") == 12.0
    clock.advance(5)
    assert world.value("B1-flow", "flow") == pytest.approx(7.0)
    clock.advance(20)
    assert world.value("B1-flow", "flow") == 2.0


def test_noise_is_seeded_bounded_and_reproducible() -> None:
    a = Noisy(3.0, 0.2, 30.0, "x")
    b = Noisy(3.0, 0.2, 30.0, "x")
    c = Noisy(3.0, 0.2, 30.0, "y")
    samples = [a.at(t) for t in range(0, 300, 3)]
    assert samples == [b.at(t) for t in range(0, 300, 3)]
    assert samples != [c.at(t) for t in range(0, 300, 3)]
    assert all(2.8 <= s <= 3.2 for s in samples)
    assert max(samples) - min(samples) > 0.1  # it does move


def test_set_with_noise_and_clear(world: World, clock: ManualClock) -> None:
    world.set_value("B1-pressure", "pressure", 2.0, noise=0.1, period=20)
    seen = set()
    for _ in range(20):
        clock.advance(1)
        p = world.value("B1-pressure", "pressure")
        assert 1.9 <= p <= 2.1
        seen.add(p)
    assert len(seen) > 5
    world.clear("B1-pressure", "pressure")
    assert world.value("B1-pressure", "pressure") == 3.0


def test_error_bits(world: World) -> None:
    world.set_error_bit("B1-flow", 3)
    assert world.value("B1-flow", "error_code") == 8.0
    assert world.value("B1-flow", "pipe_empty") == 1.0
    world.set_error_bit("B1-flow", 4)
    world.set_error_bit("B1-flow", 3, False)
    assert world.value("B1-flow", "error_code") == 16.0
    assert world.value("B1-flow", "pipe_empty") == 0.0


def test_unknown_names_are_clear_errors(world: World) -> None:
    with pytest.raises(WorldError, match="unknown device 'nope'"):
        world.stop_device("nope")
    with pytest.raises(WorldError, match="no quantity 'pressure'"):
        world.set_value("B1-main", "pressure", 1.0)
    with pytest.raises(WorldError, match="unknown building or supply domain 'B9'"):
        world.cut_power("B9")
    with pytest.raises(WorldError, match="water domain, not a power domain"):
        world.cut_power("B1-water")
