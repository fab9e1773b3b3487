"""The fleet bridge in the daemon (the site file's `fleet:` section): the detector hook that owes the fleet
its incident transitions (gateway/fleet/bridge.py) and the publisher that sends them (gateway/fleet/
publisher.py). None when the site has no fleet section."""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from gateway.config import Site
from gateway.fleet.bridge import FleetBridge
from gateway.fleet.publisher import FleetPublisher
from gateway.incidents.manager import IncidentManager
from gateway.observe.presence import DevicePresence


@dataclass
class Fleet:
    bridge: FleetBridge
    publisher: FleetPublisher
    presence: DevicePresence | None = None  # the daemon's view of its devices (devices_up)


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

    fleet = Fleet(bridge, FleetPublisher(site, cfg, bridge, facts, _version()), presence)
    return fleet
