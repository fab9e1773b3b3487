"""The fleet bridge in the daemon (the site file's `fleet:` section): the detector hook that owes the fleet
its incident transitions (gateway/fleet/bridge.py) and the publisher that sends them (gateway/fleet/
publisher.py). None when the site has no fleet section. With `fleet.commands` enabled, also the command
client (gateway/fleet/commands.py): a detector hook after the bridge's, a component, and a desk of its own
(`bind_desk`) that acts as the daemon's desk does."""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from gateway.config import Site
from gateway.fleet.bridge import FleetBridge
from gateway.fleet.command_format import load_public_key
from gateway.fleet.commands import Call, FleetCommands
from gateway.fleet.peers import PeerLinks
from gateway.fleet.publisher import FleetPublisher
from gateway.incidents.manager import IncidentManager
from gateway.observe.presence import DevicePresence
from gateway.respond.desk import DaemonDesk
from gateway.respond.responder import Responder


@dataclass
class Fleet:
    bridge: FleetBridge
    publisher: FleetPublisher
    presence: DevicePresence | None = None  # the daemon's view of its devices (devices_up)
    commands: FleetCommands | None = None  # fleet.commands enabled: signed commands from the fleet view
    peers: PeerLinks | None = None  # a shard: notes its peer shards' incidents of the same cause


def _version() -> str:
    try:
        return version("meterwatch")
    except PackageNotFoundError:
        return "unknown"


def gateway_facts(site: Site, manager: IncidentManager, presence: DevicePresence | None) -> dict[str, Any]:
    """What the gateway's retained state says of it (read on the event loop)."""
    now = time.time()
    devices = [d.id for d in site.config.devices]
    up = 0 if presence is None else sum(1 for d in devices if presence.up(d, now))
    return {
        "buildings": [b.id for b in site.config.buildings],
        "devices_up": up,
        "devices_total": len(devices),
        "open_incidents": sum(1 for i in manager.open_incidents() if not i.drill),
    }


def build(
    site: Site, manager: IncidentManager, store_path: Path, presence: DevicePresence | None, now: float
) -> Fleet | None:
    cfg = site.config.fleet
    if cfg is None:
        return None
    bridge = FleetBridge(site, cfg, manager, store_path, now)
    fleet: Fleet

    def facts() -> dict[str, Any]:
        return gateway_facts(site, manager, fleet.presence)

    publisher = FleetPublisher(site, cfg, bridge, facts, _version())
    commands = None
    if cfg.commands.enabled and cfg.commands.public_key is not None:
        path = cfg.commands.public_key
        # read at start: a missing or wrong key stops the daemon with one line (KeyFileError is an OSError)
        key = load_public_key(path if path.is_absolute() else site.path.parent / path)
        commands = FleetCommands(site, cfg, bridge.topics, store_path, key, publisher.wake)
    fleet = Fleet(bridge, publisher, presence, commands)
    if site.shard is not None:
        fleet.peers = PeerLinks(site, cfg, bridge.topics, manager, store_path)
    return fleet


def bind_desk(fleet: Fleet, site: Site, manager: IncidentManager, responder: Responder, call: Call) -> None:
    """The commands' desk: the daemon's desk class on the same manager, responder and detector, whose calls
    let the command client add the outcome to the action's own round (FleetCommands.through)."""
    if fleet.commands is not None:
        fleet.commands.bind(DaemonDesk(site, manager, responder, fleet.commands.through(call)))
    if fleet.peers is not None:  # a note of a peer's incident, as staff's notes are made
        fleet.peers.bind(DaemonDesk(site, manager, responder, call))
