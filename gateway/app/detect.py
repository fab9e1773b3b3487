"""Live detection: the incident store (restoring the engine and writing the downtime since the last
heartbeat), a blocking bus subscription (samples and statuses are never dropped for the rules), and the
/api/incidents router.
"""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter

from gateway.app.component import state_file
from gateway.config import Site
from gateway.core.bus import Bus
from gateway.incidents.api import make_router
from gateway.incidents.detector import Detector
from gateway.incidents.manager import IncidentManager
from gateway.incidents.store import IncidentStore

RULES_QUEUE = 20_000  # events; past this the bus blocks the sources until the engine catches up


def store_path(site: Site, state_dir: Path) -> Path:
    return state_file(site.path.parent, state_dir, site.config.incidents.path, "incidents.sqlite")


def build(site: Site, bus: Bus, state_dir: Path) -> tuple[IncidentManager, Detector, APIRouter]:
    store = IncidentStore(store_path(site, state_dir))
    mgr = IncidentManager.open(site, store, time.time())
    sub = bus.subscribe("rules", maxsize=RULES_QUEUE, overflow="block")
    info = site.config.site
    return mgr, Detector(mgr, sub), make_router(mgr.reader, info.id, info.timezone)
