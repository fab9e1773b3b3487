"""Two real gateways of one compound, each a shard, and transformer T1 feeding a building of each: the
simulated meters of the whole compound over Modbus TCP, two real daemons (shard north: B1; shard south: B2)
publishing to a real mosquitto, and the fleet view. The view shows one compound of two shards; a cut of T1
in the simulators opens an outage on each gateway, and the view links them as one cause, T1; once the
power is back both are gone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.rules_live import DaemonThread, all_polled
from gateway.config import load_site
from simulators.runner import SimulatorThread
from tests.fixtures.mosquitto import Mosquitto
from tests.gateway.fleet.test_shard_config import compound_site
from tests.gateway.fleetview.conftest import Views, shows, site_of
from tests.helpers import free_port, wait_until

SITE = "compound"
FLEET = """\
fleet:
  company: acme
  broker: mqtt://{host}:{port}
  gateway: {gateway}
  keepalive: 5
  heartbeat: 1s
  reconnect_max: 1s
"""


def compound(state: dict[str, Any]) -> dict[str, Any] | None:
    return site_of(state, SITE)


PEER_BUILDING = {"north": "B1", "south": "B2"}


def notes(daemon: DaemonThread, incident_id: int) -> list[str]:
    detail = daemon.api(f"/api/incidents/{incident_id}")
    return [e["detail"] for e in detail["timeline"] if e["event"] == "note"]


def test_a_cut_of_a_shared_transformer_shows_as_linked_incidents_of_two_shards(
    tmp_path: Path, mosquitto: Mosquitto, view_factory: Views
) -> None:
    ports = {"port": free_port(), "port3": free_port()}
    paths = {
        shard: compound_site(
            tmp_path / shard,
            f"shard: {{id: {shard}, buildings: [{building}]}}",
            FLEET.format(host=mosquitto.host, port=mosquitto.port, gateway=f"gw-{shard}"),
            **ports,
        )
        for shard, building in (("north", "B1"), ("south", "B2"))
    }
    sites = {shard: load_site(p) for shard, p in paths.items()}
    view = view_factory("--company", "acme")
    # one simulator serves the whole compound (B3 too, which no gateway here watches)
    sim = SimulatorThread(sites["north"].whole(), mqtt=False)
    daemons = {shard: DaemonThread(site, tmp_path / shard / "state") for shard, site in sites.items()}
    sim.start()
    try:
        for d in daemons.values():
            d.start()
        for shard, d in daemons.items():
            wait_until(lambda d=d: all_polled(d), 30.0, 0.05, f"every device of {shard} polled once")
        assert sorted(daemons["north"].services.device_stats()) == ["B1-main", "B1-unit"]
        assert sorted(daemons["south"].services.device_stats()) == ["B2-main", "B2-unit"]

        state = shows(
            view,
            lambda s: (c := compound(s)) and len(c["gateways"]) == 2 and not c["gateways_offline"],
            "one compound of two online shards",
        )
        c = compound(state)
        assert c is not None and c["compound"] and not c["partly_offline"]
        assert [(s["shard"], s["gateways"], s["buildings"]) for s in c["shards"]] == [
            ("north", ["gw-north"], ["B1"]),
            ("south", ["gw-south"], ["B2"]),
        ]
        assert c["buildings"] == ["B1", "B2"] and c["links"] == [] and c["incidents"] == []

        sim.world.cut_power("T1")
        state = shows(
            view,
            lambda s: (c := compound(s)) and c["links"] and len(c["links"][0]["incidents"]) == 2,
            "the outages of both shards linked to T1",
        )
        c = compound(state)
        assert c is not None
        (group,) = c["links"]
        assert (group["cause"], group["kind"], group["shards"]) == ("T1", "power", ["north", "south"])
        members = {(m["shard"], m["gateway"], tuple(m["buildings"])) for m in group["incidents"]}
        assert members == {("north", "gw-north", ("B1",)), ("south", "gw-south", ("B2",))}
        assert all(not m["late"] and m["target_s"] == 1800.0 for m in group["incidents"])
        outages = [i for i in c["incidents"] if i["kind"] == "power_outage"]
        assert sorted((i["shard"], tuple(i["supply_path"]), i["link"]) for i in outages) == [
            ("north", ("B1-power", "T1"), "T1"),
            ("south", ("B2-power", "T1"), "T1"),
        ]
        page = view.get("").decode()
        assert (
            "同一原因：T1" in page and 'data-linked="gw-north/' in page and 'data-linked="gw-south/' in page
        )

        # each gateway learns its peer's incident and notes it once in its own incident's timeline
        ids = {i["shard"]: i["id"] for i in outages}
        for shard, peer in (("north", "south"), ("south", "north")):
            want = (
                f"peer shards: same cause T1 as gw-{peer} #{ids[peer]} (shard {peer}, {PEER_BUILDING[peer]})"
            )
            wait_until(
                lambda shard=shard, want=want: notes(daemons[shard], ids[shard]).count(want) == 1,
                30.0,
                0.1,
                f"{shard}'s note of {peer}'s incident",
            )

        sim.world.restore_power("T1")
        shows(
            view,
            lambda s: (c := compound(s)) and not c["incidents"] and not c["links"],
            "both incidents gone once T1 is back",
        )
        for shard, peer in (("north", "south"), ("south", "north")):  # noted once, not once a second
            assert len([n for n in notes(daemons[shard], ids[shard]) if f"gw-{peer} #" in n]) == 1
    finally:
        for d in daemons.values():
            d.stop()
        sim.stop()
