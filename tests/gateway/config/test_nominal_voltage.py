"""A site-wide nominal voltage (220 V in China, 230 V in Europe) that a device may override."""

from __future__ import annotations

from pathlib import Path

from gateway.config import load_site
from gateway.incidents.site_model import topology_from_site

SITE = """\
site: {{id: un, timezone: Europe/Berlin{site_un}}}
buildings:
  - {{id: B1, households: 10, domains: [{{id: B1-power, kind: power}}]}}
devices:
  - {{id: M1, building: B1, domain: B1-power, role: main_power, source: mqtt, expected_interval: 1s}}
  - {{id: M2, building: B1, domain: B1-power, role: unit_power, source: mqtt, expected_interval: 1s,
     nominal_voltage: 110}}
"""


def nominal(tmp_path: Path, site_un: str) -> dict[str, float]:
    path = tmp_path / "site.yaml"
    path.write_text(SITE.format(site_un=site_un), encoding="utf-8")
    topo = topology_from_site(load_site(path))
    return {d: topo.devices[d].nominal_voltage for d in ("M1", "M2")}


def test_devices_take_the_sites_nominal_voltage_unless_they_give_their_own(tmp_path: Path) -> None:
    assert nominal(tmp_path, "") == {"M1": 220.0, "M2": 110.0}
    assert nominal(tmp_path, ", nominal_voltage: 230") == {"M1": 230.0, "M2": 110.0}
