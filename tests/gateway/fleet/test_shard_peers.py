"""A shard's peers on their own (no broker): a peer's retained incident is parsed (a bad one counted and
changing nothing, our own ignored, an empty payload clearing it); an own open incident under the same
transformer is noted once through the desk, and never again after a restart (fleet_peer_links); one of
another kind, or none, is not noted. The live test is tests/gateway/fleetview/test_links_live.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from gateway.config import load_site
from gateway.fleet.peers import PeerLinks, parse_peer
from gateway.fleet.topics import Topics
from gateway.respond.desk_api import DeskError
from rules.model import Incident, IncidentState
from tests.gateway.fleet.test_shard_config import compound_site

FLEET = "fleet: {company: acme, broker: 'mqtt://127.0.0.1:1', gateway: gw-north}\n"
NOW = 1_796_000_000.0
PEER_TOPIC = "meterwatch/acme/compound/incident/gw-south/5"


def peer_payload(path: list[str] | Any, kind: str | None = "power", state: str = "firing") -> bytes:
    inc = {"id": 5, "state": state, "opened_at": NOW + 20, "buildings": ["B2"], "shard": "south",
           "supply_path": path, "supply_kind": kind}  # fmt: skip
    return json.dumps({"v": 1, "type": "incident", "incident": inc}).encode()


def own(scope: str, iid: int = 3) -> Incident:
    return Incident(
        id=iid, key=f"power_outage/{scope}", category="power_outage", scope=scope, title="power outage",
        severity="critical", event_code="003", audiences=["staff"], households=40,
        state=IncidentState.FIRING, opened_at=NOW, first_evidence_at=NOW, updated_at=NOW,
    )  # fmt: skip


class Manager:
    def __init__(self, *incidents: Incident) -> None:
        self.incidents = list(incidents)

    def open_incidents(self) -> list[Incident]:
        return self.incidents


class Desk:
    def __init__(self, refuse: bool = False) -> None:
        self.notes: list[tuple[int, str, str]] = []
        self.refuse = refuse

    async def note(self, incident_id: int, who: str, text: str) -> None:
        if self.refuse:
            raise DeskError(404, "not held")
        self.notes.append((incident_id, who, text))


def peers(tmp_path: Path, *incidents: Incident) -> tuple[PeerLinks, Desk]:
    site = load_site(compound_site(tmp_path, "shard: {id: north, buildings: [B1]}", FLEET))
    assert site.config.fleet is not None
    topics = Topics("acme", site.config.site.id, site.config.fleet.gateway_id)
    p = PeerLinks(site, site.config.fleet, topics, Manager(*incidents), tmp_path / "store.sqlite")  # type: ignore[arg-type]
    desk = Desk()
    p.bind(desk)  # type: ignore[arg-type]
    return p, desk


def test_a_peer_incident_under_the_same_transformer_is_noted_once(tmp_path: Path) -> None:
    p, desk = peers(tmp_path, own("domain:B1-power"), own("device:B1-unit", 4))
    p.ingest(PEER_TOPIC, peer_payload(["B2-power", "T1"]))
    asyncio.run(p.compare())
    asyncio.run(p.compare())
    assert desk.notes == [(3, "peer shards", "same cause T1 as gw-south #5 (shard south, B2)")]
    p._close()
    # after a restart the pair is known from the store: no second note
    again, desk2 = peers(tmp_path, own("domain:B1-power"))
    again.ingest(PEER_TOPIC, peer_payload(["B2-power", "T1"]))
    asyncio.run(again.compare())
    assert desk2.notes == []
    again._close()


def test_no_note_for_another_kind_no_common_domain_our_own_or_a_cleared_peer(tmp_path: Path) -> None:
    p, desk = peers(tmp_path, own("domain:B1-power"))
    p.ingest(PEER_TOPIC, peer_payload(["B2-water", "T1"], kind="water"))
    p.ingest("meterwatch/acme/compound/incident/gw-east/6", peer_payload(["B3-power"]))
    p.ingest("meterwatch/acme/compound/incident/gw-north/9", peer_payload(["B2-power", "T1"]))  # ours
    p.ingest("meterwatch/acme/compound/incident/gw-west/7", peer_payload(["B2-power", "T1"]))
    p.ingest("meterwatch/acme/compound/incident/gw-west/7", b"")  # resolved: cleared
    asyncio.run(p.compare())
    assert desk.notes == [] and set(p.peers) == {PEER_TOPIC, "meterwatch/acme/compound/incident/gw-east/6"}
    p._close()


def test_a_refused_note_is_tried_again_later_and_bad_payloads_change_nothing(tmp_path: Path) -> None:
    p, _ = peers(tmp_path, own("domain:B1-power"))
    refusing = Desk(refuse=True)
    p.bind(refusing)  # type: ignore[arg-type]
    p.ingest(PEER_TOPIC, peer_payload(["B2-power", "T1"]))
    for bad in (b"{", json.dumps({"v": 2}).encode(), peer_payload("T1")):
        p.ingest(PEER_TOPIC, bad)
    assert p.malformed == 3 and PEER_TOPIC in p.peers  # the last good state stands
    asyncio.run(p.compare())
    assert p.noted == 0 and (3, "gw-south/5") in p._refused
    assert parse_peer(peer_payload(["B2-power", "T1"], state="resolved"), "gw-south") is None
    p._close()
