"""The fleet view's compound and linked incidents, on its state alone (no broker): gateways sharing a site are
one compound listed by shard (partly offline when one shard's gateway is); incidents of different gateways
of one site are linked as one cause when their supply paths share a domain of the same kind and they
opened within the link window; never across sites, kinds, without a common domain, or far apart in time."""

from __future__ import annotations

import json
from typing import Any

from bench.fleet_view import gateway_msg, incident_msg
from gateway.fleet.links import LINK_WINDOW_S
from gateway.fleetview.state import FleetState
from tests.gateway.fleetview.test_state import NOW, Clock


def shard_gateway(
    site: str,
    gateway: str,
    shard: str,
    buildings: list[str],
    state: str = "online",
    company: str = "acme",
    at: float = NOW,
) -> tuple[str, bytes]:
    topic, payload = gateway_msg(company, site, gateway, state, at)
    body = json.loads(payload)
    body.update(shard=shard, buildings=buildings)
    return topic, json.dumps(body).encode()


def linked_incident(
    site: str,
    gateway: str,
    incident_id: int,
    path: list[str],
    opened_at: float,
    *,
    kind: str = "power",
    shard: str | None = None,
    dispatched_at: float | None = None,
    company: str = "acme",
) -> tuple[str, bytes]:
    building = path[0].split("-")[0]
    topic, payload = incident_msg(
        company, site, gateway, incident_id, "power_outage" if kind == "power" else "water_supply",
        "critical", [building], opened_at, dispatched_at,
    )  # fmt: skip
    body = json.loads(payload)
    body["incident"].update(scope=f"domain:{path[0]}", shard=shard, supply_path=path, supply_kind=kind)
    return topic, json.dumps(body).encode()


T1_B1, T1_B2 = ["B1-power", "T1"], ["B2-power", "T1"]


def view(*messages: tuple[str, bytes]) -> dict[str, Any]:
    state = FleetState(Clock())
    for topic, payload in messages:
        state.ingest(topic, payload)
    return state.snapshot()


def site(snap: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in snap["sites"] if s["site"] == name)


def test_two_shards_are_one_compound_partly_offline_when_one_gateway_is() -> None:
    snap = view(
        shard_gateway("park", "gw-n", "north", ["B1", "B2"]),
        shard_gateway("park", "gw-s", "south", ["B3"], state="offline"),
    )
    park = site(snap, "park")
    assert park["compound"] and park["partly_offline"] and park["gateways_offline"] == 1
    assert park["buildings"] == ["B1", "B2", "B3"]
    assert park["shards"] == [
        {"shard": "north", "gateways": ["gw-n"], "buildings": ["B1", "B2"], "offline": False},
        {"shard": "south", "gateways": ["gw-s"], "buildings": ["B3"], "offline": True},
    ]
    assert [g["shard"] for g in park["gateways"]] == ["north", "south"]
    # a gateway that names no shard (an older one, or a site without shards) is its own shard
    alone = site(view(gateway_msg("acme", "solo", "gw-x", "online", NOW)), "solo")
    assert not alone["compound"] and not alone["partly_offline"]
    assert [s["shard"] for s in alone["shards"]] == ["gw-x"]


def test_incidents_of_two_shards_under_one_transformer_are_linked() -> None:
    snap = view(
        shard_gateway("park", "gw-n", "north", ["B1"]),
        shard_gateway("park", "gw-s", "south", ["B2"]),
        linked_incident("park", "gw-n", 3, T1_B1, NOW - 120, shard="north", dispatched_at=NOW - 100),
        linked_incident("park", "gw-s", 7, T1_B2, NOW - 100, shard="south", dispatched_at=NOW - 2000),
        linked_incident("park", "gw-s", 8, ["B9-power"], NOW - 100, shard="south"),  # unrelated
    )
    park = site(snap, "park")
    assert snap["totals"]["links"] == 1
    (group,) = park["links"]
    assert (group["cause"], group["kind"], group["shards"]) == ("T1", "power", ["north", "south"])
    assert group["buildings"] == ["B1", "B2"] and group["opened_at"] == NOW - 120
    members = {(m["shard"], m["id"]): m for m in group["incidents"]}
    assert set(members) == {("north", 3), ("south", 7)}
    # each with its own elapsed time against the 30-minute target
    assert members[("north", 3)]["elapsed_s"] == 100.0 and not members[("north", 3)]["late"]
    assert members[("south", 7)]["elapsed_s"] == 2000.0 and members[("south", 7)]["late"]
    assert group["late"]
    by_id = {i["id"]: i for i in park["incidents"]}
    assert (by_id[3]["link"], by_id[7]["link"], by_id[8]["link"]) == ("T1", "T1", None)


def test_gateways_of_one_site_without_shards_are_linked_too() -> None:
    snap = view(
        linked_incident("park", "gw-a", 1, ["B1-power", "F2", "T1"], NOW - 60),
        linked_incident("park", "gw-b", 1, ["B2-power", "F2", "T1"], NOW - 30),
        linked_incident("park", "gw-c", 1, ["B3-power", "T1"], NOW - 10),
    )
    (group,) = site(snap, "park")["links"]
    # the nearest domain all three share: F2 links a and b, T1 takes in c
    assert group["cause"] == "T1" and group["gateways"] == ["gw-a", "gw-b", "gw-c"]
    assert [m["shard"] for m in group["incidents"]] == ["gw-a", "gw-b", "gw-c"]
    two = view(
        linked_incident("park", "gw-a", 1, ["B1-power", "F2", "T1"], NOW - 60),
        linked_incident("park", "gw-b", 1, ["B2-power", "F2", "T1"], NOW - 30),
    )
    assert [g["cause"] for g in site(two, "park")["links"]] == ["F2"]


def test_no_link_across_sites() -> None:
    snap = view(
        linked_incident("park", "gw-n", 3, ["B1-power", "T1"], NOW - 60),
        linked_incident("lake", "gw-s", 7, ["B2-power", "T1"], NOW - 60),
        linked_incident("park", "gw-x", 4, ["B1-power", "T1"], NOW - 60, company="other"),
    )
    assert snap["totals"]["links"] == 0
    assert all(i["link"] is None for s in snap["sites"] for i in s["incidents"])


def test_no_link_between_different_kinds() -> None:
    snap = view(
        linked_incident("park", "gw-n", 3, ["B1-power", "T1"], NOW - 60, kind="power"),
        linked_incident("park", "gw-s", 7, ["B1-water", "T1"], NOW - 60, kind="water"),
    )
    assert site(snap, "park")["links"] == []


def test_no_link_without_a_common_domain() -> None:
    snap = view(
        linked_incident("park", "gw-n", 3, ["B1-power", "T1"], NOW - 60),
        linked_incident("park", "gw-s", 7, ["B2-power", "T2"], NOW - 60),
        # an incident with no supply path (a device's, a line's) is never linked
        incident_msg("acme", "park", "gw-t", 9, "comm_fault", "minor", ["B1"], NOW - 60),
    )
    assert site(snap, "park")["links"] == []


def test_no_link_when_they_opened_too_far_apart() -> None:
    snap = view(
        linked_incident("park", "gw-n", 3, ["B1-power", "T1"], NOW - 2 * LINK_WINDOW_S - 60),
        linked_incident("park", "gw-s", 7, ["B2-power", "T1"], NOW - 60),
    )
    assert site(snap, "park")["links"] == []
    snap = view(
        linked_incident("park", "gw-n", 3, ["B1-power", "T1"], NOW - LINK_WINDOW_S),
        linked_incident("park", "gw-s", 7, ["B2-power", "T1"], NOW),
    )
    assert [g["cause"] for g in site(snap, "park")["links"]] == ["T1"]  # the window's edge still links


def test_two_incidents_of_one_gateway_alone_are_no_link() -> None:
    snap = view(
        linked_incident("park", "gw-n", 3, ["B1-power", "T1"], NOW - 60),
        linked_incident("park", "gw-n", 4, ["B2-power", "T1"], NOW - 60),
    )
    assert site(snap, "park")["links"] == []


def test_a_malformed_supply_path_is_a_bad_payload_and_changes_nothing() -> None:
    topic, payload = linked_incident("park", "gw-n", 3, ["B1-power", "T1"], NOW - 60)
    body = json.loads(payload)
    body["incident"]["supply_path"] = "T1"
    state = FleetState(Clock())
    state.ingest(topic, json.dumps(body).encode())
    snap = state.snapshot()
    assert snap["sites"] == [] and snap["malformed_total"] == 1
    assert "supply_path" in snap["malformed"][topic]["error"]
