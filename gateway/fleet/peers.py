"""A shard's peers (issue 13, item 5): a gateway with a `shard:` section learns the open incidents of the
other gateways of its site and notes in its own incident's timeline when one of them is the same cause.

It subscribes to its own site's retained incident topics (`meterwatch/<company>/<site>/incident/+/+`, QoS 1,
a clean session: the retained state comes at every subscribe, so nothing needs keeping while away) and keeps
the latest state of each peer incident (an empty payload clears it). Once a second, on the event loop, each
own open incident on a supply domain is compared with the peers' by the fleet view's rule
(gateway/fleet/links.py); a new link becomes one note on the own incident, through the desk as staff's
notes are ("peer shards: same cause T1 as gw-south #5 (shard south, B2)"), so the timeline, the incident
report and the fleet's events all tell it. Each (incident, peer incident) pair is noted once, also across
restarts (`fleet_peer_links` in the incident store). Detection and dispatch stay each gateway's own: a
note, never a merge.

A payload that is not a version-1 incident with the fields needed is counted and logged once; it changes
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import Site
from gateway.config.fleet import FleetConfig
from gateway.fleet.bridge import supply_of
from gateway.fleet.links import Supply, cause
from gateway.fleet.mqttconn import gateway_client, on_disconnect, refused, stop_client
from gateway.fleet.topics import VERSION, Topics
from gateway.incidents.manager import IncidentManager
from gateway.respond.desk_api import Desk, DeskError

log = logging.getLogger("meterwatch.fleet.peers")

SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_peer_links(
    incident_id INTEGER NOT NULL,
    peer TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY(incident_id, peer)
);
"""
WHO = "peer shards"  # the note's author in the timeline
EVERY = 1.0  # seconds between comparisons
RETRY = 60.0  # a note the desk refused (the incident not held yet) is tried again after this long


class BadPeer(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PeerIncident:
    gateway: str
    id: int
    shard: str
    buildings: tuple[str, ...]
    supply: Supply

    @property
    def key(self) -> str:
        return f"{self.gateway}/{self.id}"


def parse_peer(payload: bytes, gateway: str) -> PeerIncident | None:
    """A peer's retained incident state; None when it is not open. BadPeer says what is wrong."""
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadPeer(f"not JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("v") != VERSION or body.get("type") != "incident":
        raise BadPeer("expected a version-1 incident object")
    inc = body.get("incident")
    if not isinstance(inc, dict):
        raise BadPeer("missing field incident")
    if inc.get("state") in ("resolved", "merged"):
        return None
    iid, opened, path, kind = (
        inc.get("id"),
        inc.get("opened_at"),
        inc.get("supply_path"),
        inc.get("supply_kind"),
    )
    if not isinstance(iid, int) or isinstance(iid, bool) or not isinstance(opened, int | float):
        raise BadPeer("incident.id or incident.opened_at missing or not a number")
    if path is None:  # a gateway older than supply paths: nothing to link by
        path = []
    if not isinstance(path, list) or not all(isinstance(p, str) for p in path):
        raise BadPeer(f"incident.supply_path is {path!r}, expected a list of domain ids")
    if kind is not None and not isinstance(kind, str):
        raise BadPeer(f"incident.supply_kind is {kind!r}, expected a string or null")
    buildings = inc.get("buildings") or []
    shard = inc.get("shard")
    return PeerIncident(
        gateway=gateway,
        id=iid,
        shard=shard if isinstance(shard, str) else gateway,
        buildings=tuple(b for b in buildings if isinstance(b, str)),
        supply=Supply(gateway, kind, tuple(path), float(opened)),
    )


def note_text(cause_id: str, peer: PeerIncident) -> str:
    where = f"shard {peer.shard}" + (f", {', '.join(peer.buildings)}" if peer.buildings else "")
    return f"same cause {cause_id} as {peer.gateway} #{peer.id} ({where})"


class PeerLinks:
    """The component: its own paho client (thread) feeding `peers`; the loop compares and notes."""

    name = "fleet-peers"

    def __init__(
        self,
        site: Site,
        cfg: FleetConfig,
        topics: Topics,
        manager: IncidentManager,
        store_path: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.site = site
        self.cfg = cfg
        self.topics = topics
        self.manager = manager
        self.clock = clock
        self.filter = f"{topics.base}/incident/+/+"
        self.client_id = f"meterwatch-peers-{topics.site}-{topics.gateway}"[:128]
        self._lock = threading.Lock()
        self.peers: dict[str, PeerIncident] = {}  # topic -> the peer incident open there
        self.malformed = 0
        self.noted = 0
        self.connected = False
        self._bad_logged: set[str] = set()
        self._desk: Desk | None = None
        self._refused: dict[tuple[int, str], float] = {}
        self._db = sqlite3.connect(store_path, timeout=30.0, check_same_thread=False)
        self._db.executescript(SCHEMA)
        self._done = {
            (int(i), str(p)) for i, p in self._db.execute("SELECT incident_id, peer FROM fleet_peer_links")
        }
        self._client: Client | None = None

    def bind(self, desk: Desk) -> None:
        self._desk = desk

    # ---- comparing (on the loop) -------------------------------------------------------------------------
    def links(self) -> list[tuple[int, str, PeerIncident]]:
        """(own incident id, cause, peer incident) for every own open incident linked to a peer's."""
        with self._lock:
            peers = list(self.peers.values())
        if not peers:
            return []
        out: list[tuple[int, str, PeerIncident]] = []
        for inc in self.manager.open_incidents():
            if inc.drill:
                continue
            path, kind = supply_of(inc, self.site)
            own = Supply(self.topics.gateway, kind, path, inc.opened_at)
            for peer in peers:
                found = cause(own, peer.supply)
                if found is not None:
                    out.append((inc.id, found, peer))
        return out

    async def compare(self) -> None:
        """Note each new link once."""
        desk = self._desk
        if desk is None:
            return
        now = self.clock()
        for inc_id, found, peer in self.links():
            pair = (inc_id, peer.key)
            if pair in self._done or now - self._refused.get(pair, -RETRY) < RETRY:
                continue
            try:
                await desk.note(inc_id, WHO, note_text(found, peer))
            except DeskError as exc:  # not held by the dispatcher (yet): tried again later
                self._refused[pair] = now
                log.info(
                    "cannot note a peer's incident yet",
                    extra={"fields": {"incident": inc_id, "peer": peer.key, "reason": exc.message}},
                )
                continue
            self._done.add(pair)
            self._refused.pop(pair, None)
            self.noted += 1
            with self._db:
                self._db.execute(
                    "INSERT OR IGNORE INTO fleet_peer_links(incident_id, peer, at) VALUES (?, ?, ?)",
                    (inc_id, peer.key, now),
                )

    # ---- the component -----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        client = self._client = self._make_client()
        addr = self.cfg.address
        client.connect_async(addr.host, addr.port, keepalive=self.cfg.keepalive, clean_start=True)
        client.loop_start()
        try:
            while not stop.is_set():
                try:
                    await self.compare()
                except Exception:  # the store locked past its timeout, ...: tried again next time
                    log.exception("cannot compare with the peer shards' incidents")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), EVERY)
        finally:
            await asyncio.to_thread(self._close)

    def _close(self) -> None:
        stop_client(self._client)
        self._db.close()
        self.connected = False

    def _make_client(self) -> Client:
        client = gateway_client(self.client_id, self.cfg, self.site.path.parent)
        client.on_connect = self._on_connect
        client.on_disconnect = on_disconnect(self._lost)
        client.on_message = self._on_message
        return client

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        if refused(reason, log, "peer client", self.cfg.broker):
            return
        self.connected = True
        with self._lock:  # the retained state comes again whole
            self.peers.clear()
        client.subscribe(self.filter, qos=1)

    def _lost(self, reason: ReasonCode) -> None:
        self.connected = False

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        self.ingest(msg.topic, bytes(msg.payload))

    def ingest(self, topic: str, payload: bytes) -> None:
        """One message on the site's incident topics (paho's thread)."""
        parts = topic.split("/")
        if len(parts) != 6 or parts[3] != "incident" or parts[4] == self.topics.gateway:
            return  # our own incidents are ours already
        try:
            peer = parse_peer(payload, parts[4]) if payload else None
        except BadPeer as exc:
            self.malformed += 1
            if topic not in self._bad_logged:
                self._bad_logged.add(topic)
                log.warning(
                    "malformed peer incident (ignored; logged once per topic)",
                    extra={"fields": {"topic": topic, "error": str(exc)}},
                )
            return
        with self._lock:
            if peer is None:
                self.peers.pop(topic, None)
            else:
                self.peers[topic] = peer
