"""Scenario files: validation errors name file:line and field; examples load; timelines apply to the world."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, Site, load_site
from simulators.scenario import load_scenario
from simulators.world import ManualClock, World

SITE = Path("deploy/examples/compound.yaml")
EXAMPLES = sorted(Path("deploy/examples/scenarios").glob("*.yaml"))


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(SITE)


def _errors(tmp_path: Path, text: str, site: Site | None = None) -> list[str]:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_scenario(path, site)
    return [str(i) for i in info.value.issues]


def test_examples_load_against_the_example_site(site: Site) -> None:
    assert {p.stem for p in EXAMPLES} >= {"b1-outage", "dead-meter", "flicker", "pump-dry"}
    for path in EXAMPLES:
        scenario = load_scenario(path, site)
        assert scenario.actions, path


def test_b1_outage_timeline(site: Site) -> None:
    sc = load_scenario(Path("deploy/examples/scenarios/b1-outage.yaml"), site)
    assert [(a.t, a.label) for a in sc.actions] == [(30.0, "cut power B1"), (90.0, "restore power B1")]


def test_flicker_expands_to_cuts_and_restores(tmp_path: Path, site: Site) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("timeline:\n  - at: 10s\n    flicker: {target: B3, times: 3, period: 4s, off_for: 1s}\n")
    sc = load_scenario(path, site)
    assert [a.t for a in sc.actions] == [10.0, 11.0, 14.0, 15.0, 18.0, 19.0]
    world = World(site, clock=ManualClock(0.0))
    for a in sc.actions[:1]:
        a.apply(world)
    assert not world.answering("B3-main")
    sc.actions[1].apply(world)
    assert world.answering("B3-main")


def test_actions_apply_to_the_world(tmp_path: Path, site: Site) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        """timeline:
  - {at: 0, set: {device: B1-pressure, quantity: pressure, value: 1.5}}
  - {at: 0, ramp: {device: B1-flow, quantity: flow, to: 0, over: 10s, from: 10}}
  - {at: 0, error_bit: {device: B1-flow, bit: 3}}
  - {at: 0, pump: {device: B1-pump, running: false}}
  - {at: 0, delay: {device: B2-shop, seconds: 200ms}}
  - {at: 0, stop_device: B2-main}
"""
    )
    clock = ManualClock(0.0)
    world = World(site, clock=clock)
    for a in load_scenario(path, site).actions:
        a.apply(world)
    clock.advance(5)
    assert world.value("B1-pressure", "pressure") == 1.5
    assert world.value("B1-flow", "flow") == pytest.approx(5.0)
    assert world.value("B1-flow", "pipe_empty") == 1.0
    assert world.value("B1-pump", "current_l1") == 0.0
    assert world.delay("B2-shop") == pytest.approx(0.2)
    assert not world.answering("B2-main")


def test_two_actions_in_one_step(tmp_path: Path) -> None:
    errs = _errors(tmp_path, "name: x\ntimeline:\n  - at: 5\n    cut_power: B1\n    stop_device: B2-main\n")
    assert len(errs) == 1
    assert errs[0].startswith(f"{tmp_path / 's.yaml'}:3: timeline[0]: ")
    assert "exactly one action" in errs[0] and "cut_power, stop_device" in errs[0]


def test_unknown_action_names_the_line_and_field(tmp_path: Path) -> None:
    errs = _errors(tmp_path, "timeline:\n  - {at: 1s, cut_power: B1}\n  - at: 2s\n    explode: B1\n")
    assert any(e.startswith(f"{tmp_path / 's.yaml'}:4: timeline[1].explode: unknown field") for e in errs), (
        errs
    )


def test_bad_duration(tmp_path: Path) -> None:
    errs = _errors(tmp_path, "timeline:\n  - {at: soon, cut_power: B1}\n")
    assert len(errs) == 1
    assert ":2: timeline[0].at: " in errs[0] and "expected a duration" in errs[0] and "'soon'" in errs[0]


def test_flicker_off_longer_than_period(tmp_path: Path) -> None:
    errs = _errors(
        tmp_path, "timeline:\n  - at: 0\n    flicker: {target: B1, times: 2, period: 2s, off_for: 3s}\n"
    )
    assert ":3: timeline[0].flicker: off_for (3s) must be shorter than period (2s)" in errs[0]


def test_names_checked_against_the_site(tmp_path: Path, site: Site) -> None:
    errs = _errors(
        tmp_path,
        """timeline:
  - {at: 1, stop_device: B9-main}
  - {at: 2, set: {device: B1-main, quantity: pressure, value: 1}}
  - {at: 3, cut_power: B1-water}
  - {at: 4, flicker: {target: B7, times: 1, period: 1s}}
""",
        site,
    )
    path = tmp_path / "s.yaml"
    assert errs[0].startswith(f"{path}:2: timeline[0].stop_device: unknown device 'B9-main'")
    assert errs[1].startswith(
        f"{path}:3: timeline[1].set.quantity: device B1-main has no quantity 'pressure'"
    )
    assert errs[2].startswith(f"{path}:4: timeline[2].cut_power: supply domain 'B1-water' is a water domain")
    assert errs[3].startswith(f"{path}:5: timeline[3].flicker.target: unknown building or supply domain 'B7'")


def test_yaml_syntax_error(tmp_path: Path) -> None:
    errs = _errors(tmp_path, "timeline:\n  - {at: 1, cut_power: B1\n")
    assert len(errs) == 1 and "YAML syntax" in errs[0] and errs[0].startswith(f"{tmp_path / 's.yaml'}:")


def test_not_a_mapping(tmp_path: Path) -> None:
    errs = _errors(tmp_path, "- 1\n- 2\n")
    assert errs == [f"{tmp_path / 's.yaml'}:1: expected a mapping with name and timeline"]
