"""What a shard tells the fleet: each incident's summary carries the shard id, its supply path (its domain
and the domain's ancestors, from the whole compound) and the domain's kind; the gateway's state carries
the shard and its buildings. Without a shard the supply path is told all the same (gateways sharing a
site without shards are linked too) and the shard is null."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gateway.config import Site, load_site
from gateway.fleet.bridge import FleetBridge, Response, summary
from gateway.fleet.publisher import FleetPublisher
from gateway.incidents.manager import IncidentManager
from gateway.incidents.store import IncidentStore
from rules.model import Incident, IncidentState
from tests.gateway.fleet.test_shard_config import compound_site

FLEET = "fleet: {company: acme, broker: 'mqtt://127.0.0.1:1', gateway: gw-north}\n"


def incident(scope: str) -> Incident:
    now = 1_796_000_000.0
    return Incident(
        id=3, key=f"power_outage/{scope}", category="power_outage", scope=scope, title="power outage",
        severity="critical", event_code="003", audiences=["staff"], households=40,
        state=IncidentState.FIRING, opened_at=now, first_evidence_at=now, updated_at=now,
    )  # fmt: skip


def north(tmp_path: Path, shard: str = "shard: {id: north, buildings: [B1]}") -> Site:
    return load_site(compound_site(tmp_path, shard, FLEET))


def test_an_incident_on_a_shard_domain_names_its_supply_path_and_shard(tmp_path: Path) -> None:
    s = north(tmp_path)
    body = summary(incident("domain:B1-power"), Response(), s)
    assert body["shard"] == "north"
    assert body["supply_path"] == ["B1-power", "T1"]
    assert body["supply_kind"] == "power"
    assert body["buildings"] == ["B1"]
    json.dumps(body, allow_nan=False)  # it goes out as JSON


def test_other_scopes_have_no_supply_path(tmp_path: Path) -> None:
    s = north(tmp_path)
    for scope in ("device:B1-unit", "line:tcp", "building:B1", "site"):
        body = summary(incident(scope), Response(), s)
        assert (body["supply_path"], body["supply_kind"]) == ([], None), scope


def test_without_a_shard_the_path_is_told_and_the_shard_is_null(tmp_path: Path) -> None:
    s = load_site(compound_site(tmp_path, "", FLEET))
    body = summary(incident("domain:B2-power"), Response(), s)
    assert (body["shard"], body["supply_path"], body["supply_kind"]) == (None, ["B2-power", "T1"], "power")
    # the shard id defaults to fleet.gateway
    s = north(tmp_path / "d", "shard: {buildings: [B2]}")
    assert summary(incident("domain:B2-power"), Response(), s)["shard"] == "gw-north"


def test_the_gateway_state_names_its_shard_and_its_buildings(tmp_path: Path) -> None:
    from gateway.app.fleet import gateway_facts

    s = north(tmp_path)
    assert s.config.fleet is not None
    path = tmp_path / "incidents.sqlite"
    mgr = IncidentManager.open(s, IncidentStore(path), time.time())
    bridge = FleetBridge(s, s.config.fleet, mgr, path, time.time())
    publisher = FleetPublisher(s, s.config.fleet, bridge, lambda: gateway_facts(s, mgr, None), "test")
    publisher._facts = publisher.facts()  # what run() reads on the loop before each heartbeat
    state = json.loads(publisher.state_payload("online", time.time()))
    assert (state["shard"], state["buildings"], state["devices_total"]) == ("north", ["B1"], 2)
