"""`shard:` in the site file: one compound file serves every gateway, each narrowed to its buildings; the
shard's errors name the key; `meterwatch check` and `plan` say what is left out; the engine of a shard
judges only its own supply domains (a transformer shared with another shard is in the supply path, not
a root here). `compound_site` is the compound the live test (tests/gateway/fleetview/test_links_live.py)
runs as two gateways."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.cli.summary import print_plan, print_summary
from gateway.config import ConfigError, load_site
from gateway.incidents.site_model import topology_from_site

COMPOUND = """\
site: {{id: {site}, name: Compound with two shards, timezone: Asia/Shanghai}}
buildings:
  - id: B1
    households: 40
    domains:
      - {{id: T1, kind: power, name: transformer T1}}
      - {{id: B1-power, kind: power, parent: T1}}
  - {{id: B2, households: 30, domains: [{{id: B2-power, kind: power, parent: T1}}]}}
  - {{id: B3, households: 20, domains: [{{id: B3-power, kind: power}}]}}
lines:
  - {{id: tcp, transport: tcp, host: 127.0.0.1, port: {port}, timeout: 300ms}}
  - {{id: b3-line, transport: tcp, host: 127.0.0.1, port: {port3}, timeout: 300ms}}
devices:
  - {{id: B1-main, building: B1, domain: B1-power, role: main_power, households: 40, line: tcp, unit: 1,
     profile: sdm630, poll_interval: {poll}s}}
  - {{id: B1-unit, building: B1, domain: B1-power, role: unit_power, households: 1, line: tcp, unit: 2,
     profile: sdm120, poll_interval: {poll}s, line_powered: true}}
  - {{id: B2-main, building: B2, domain: B2-power, role: main_power, households: 30, line: tcp, unit: 3,
     profile: dtsu666, poll_interval: {poll}s}}
  - {{id: B2-unit, building: B2, domain: B2-power, role: unit_power, households: 1, line: tcp, unit: 4,
     profile: sdm120, poll_interval: {poll}s, line_powered: true}}
  - {{id: B3-main, building: B3, domain: B3-power, role: main_power, households: 20, line: b3-line, unit: 1,
     profile: sdm630, poll_interval: {poll}s}}
rules:
  - {{id: power.outage, kind: polyphase, check: outage, category: power_outage, severity: critical,
     audiences: [staff, residents], match: {{roles: [main_power, unit_power]}}, for: 2s, clear_for: 3s}}
  - {{id: comm.absent, kind: absence, category: comm_fault, severity: minor, for: 2s, clear_for: 3s}}
http: {{host: 127.0.0.1, port: {http_port}}}
incidents: {{heartbeat: 1s}}
"""


def compound_site(
    directory: Path,
    shard: str = "",
    extra: str = "",
    *,
    site: str = "compound",
    port: int = 15502,
    port3: int = 15503,
    http_port: int = 0,
    poll: float = 0.5,
    name: str = "site.yaml",
) -> Path:
    """The compound B1 + B2 (both under transformer T1) + B3, with `shard` (a YAML line) and `extra`."""
    text = COMPOUND.format(site=site, port=port, port3=port3, http_port=http_port, poll=poll)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text + (shard + "\n" if shard else "") + extra, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_site(path)
    return [str(i) for i in err.value.issues]


def test_without_a_shard_nothing_is_narrowed(tmp_path: Path) -> None:
    site = load_site(compound_site(tmp_path))
    assert site.shard is None and site.compound is site.config
    assert [d.id for d in site.config.devices] == ["B1-main", "B1-unit", "B2-main", "B2-unit", "B3-main"]
    assert set(topology_from_site(site).domains) == {"T1", "B1-power", "B2-power", "B3-power"}
    out: list[str] = []
    assert print_summary(site, out.append)
    assert not any(line.startswith("shard") or "left out" in line for line in out)


def test_a_shard_runs_its_buildings_devices_and_lines_only(tmp_path: Path) -> None:
    site = load_site(compound_site(tmp_path, "shard: {id: north, buildings: [B1]}"))
    assert site.shard is not None
    assert (site.shard.id, site.shard.buildings) == ("north", ("B1",))
    assert [b.id for b in site.config.buildings] == ["B1"]
    assert [d.id for d in site.config.devices] == ["B1-main", "B1-unit"]
    assert [ln.id for ln in site.config.lines] == ["tcp"]
    assert site.shard.left_out_devices == ("B2-main", "B2-unit", "B3-main")
    assert site.shard.left_out_lines == ("b3-line",)
    # the whole compound is kept: the supply path is told from it, and the simulator can serve it all
    assert [b.id for b in site.compound.buildings] == ["B1", "B2", "B3"]
    assert [d.id for d in site.whole().config.devices][-1] == "B3-main"
    assert set(site.supply_domains()) == {"T1", "B1-power", "B2-power", "B3-power"}


def test_a_shard_judges_only_its_own_supply_domains(tmp_path: Path) -> None:
    north = load_site(compound_site(tmp_path / "n", "shard: {id: north, buildings: [B1]}"))
    south = load_site(compound_site(tmp_path / "s", "shard: {id: south, buildings: [B2, B3]}"))
    both = load_site(compound_site(tmp_path / "b", "shard: {id: all, buildings: [B1, B2]}"))
    # T1 feeds B1 and B2: neither shard sees all of it, so neither takes its own outage for T1's
    assert set(topology_from_site(north).domains) == {"B1-power"}
    assert set(topology_from_site(south).domains) == {"B2-power", "B3-power"}
    assert set(topology_from_site(both).domains) == {"T1", "B1-power", "B2-power"}
    assert topology_from_site(north).ancestors("B1-power") == ["T1"]


def test_check_and_plan_say_what_the_shard_leaves_out(tmp_path: Path) -> None:
    site = load_site(compound_site(tmp_path, "shard: {id: north, buildings: [B1]}"))
    for printer in (print_summary, print_plan):
        out: list[str] = []
        assert printer(site, out.append)
        text = "\n".join(out)
        assert "shard north: 1 of the compound's 3 building(s) (B1)" in text
        assert "left out (other shards' buildings): 3 device(s): B2-main, B2-unit, B3-main" in text
        assert "left out: 1 line(s): b3-line" in text
        assert "shared with other shards (not judged here; named in its incidents' supply path): T1" in text
        assert "B2-main" not in text.split("left out")[0]  # not among the polled devices


def test_the_shard_id_defaults_to_the_fleet_gateway(tmp_path: Path) -> None:
    fleet = "fleet: {company: acme, broker: 'mqtt://127.0.0.1:1883', gateway: gw-north}\n"
    site = load_site(compound_site(tmp_path, "shard: {buildings: [B1, B2]}", fleet))
    assert site.shard is not None and site.shard.id == "gw-north"


def test_shard_errors_name_the_key(tmp_path: Path) -> None:
    found = problems(compound_site(tmp_path, "shard: {id: north, buildings: [B1, B9, B1]}"))
    assert any("shard.buildings[1]: unknown building 'B9'; known: ['B1', 'B2', 'B3']" in p for p in found), (
        found
    )
    assert any("shard.buildings[2]: building 'B1' is listed twice" in p for p in found), found
    assert all(re.match(r"^\S+site\.yaml:\d+: ", p) for p in found), found  # each with file:line

    found = problems(compound_site(tmp_path, "shard: {buildings: [B1]}"))
    assert any("shard.id: required without a fleet section" in p for p in found), found

    found = problems(compound_site(tmp_path, "shard: {id: north, buildings: []}"))
    assert any("shard.buildings" in p for p in found), found

    found = problems(compound_site(tmp_path, "shard: {id: north, building: [B1]}"))
    assert any("shard.building: unknown field" in p for p in found), found

    mains = "gateway: {mains: {device: B2-main, quantity: voltage_l1, below: 100}}\n"
    found = problems(compound_site(tmp_path, "shard: {id: north, buildings: [B1]}", mains))
    assert any(
        "gateway.mains.device: the mains sensor B2-main is in building B2, outside this gateway's shard" in p
        for p in found
    ), found


def test_maintenance_windows_follow_the_shard(tmp_path: Path) -> None:
    extra = """\
notify:
  maintenance:
    - {id: all, start: 2026-12-01T09:00, end: 2026-12-01T12:00}
    - {id: b2-only, start: 2026-12-01T09:00, end: 2026-12-01T12:00, buildings: [B2]}
    - {id: b1-b2, start: 2026-12-01T09:00, end: 2026-12-01T12:00, buildings: [B1, B2]}
"""
    site = load_site(compound_site(tmp_path, "shard: {id: north, buildings: [B1]}", extra))
    windows = {w.id: w.buildings for w in site.config.notify.maintenance}
    # each shard announces works to its own residents only: no notice twice, none to another's
    assert windows == {"all": [], "b1-b2": ["B1"]}


def test_two_shards_on_one_host_keep_apart_their_state_and_mqtt_session(tmp_path: Path) -> None:
    from gateway.app.daemon import default_state_dir
    from gateway.app.mqtt import mqtt_settings

    whole = load_site(compound_site(tmp_path / "whole", "mqtt: {host: 127.0.0.1}"))
    north = load_site(
        compound_site(tmp_path / "n", "shard: {id: north, buildings: [B1]}\nmqtt: {host: 127.0.0.1}")
    )
    south = load_site(
        compound_site(tmp_path / "s", "shard: {id: south, buildings: [B2]}\nmqtt: {host: 127.0.0.1}")
    )
    assert default_state_dir(whole) == Path("var/compound")  # unchanged without a shard
    dirs = {default_state_dir(s) for s in (whole, north, south)}
    assert dirs == {Path("var/compound"), Path("var/compound.shard-north"), Path("var/compound.shard-south")}
    settings = [mqtt_settings(s) for s in (whole, north, south)]
    ids = [s.client_id for s in settings if s is not None]
    assert len(set(ids)) == 3 and ids[1].startswith("meterwatch-compound.shard-north-"), ids
