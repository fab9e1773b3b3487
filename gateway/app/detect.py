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
from gateway.respond.responder import Responder

RULES_QUEUE = 20_000  # events; past this the bus blocks the sources until the engine catches up


def store_path(site: Site, state_dir: Path) -> Path:
    return state_file(site.path.parent, state_dir, site.config.incidents.path, "incidents.sqlite")


def build(
    site: Site, bus: Bus, state_dir: Path
) -> tuple[IncidentManager, Detector, APIRouter, Responder | None]:
    """The incident manager, its detector, the /api/incidents router, and the respond side when the site
    has notify channels (the notices each round owes are committed with the round's transitions)."""
    path = store_path(site, state_dir)
    store = IncidentStore(path)
    now = time.time()
    mgr = IncidentManager.open(site, store, now)
    sub = bus.subscribe("rules", maxsize=RULES_QUEUE, overflow="block")
    info = site.config.site
    responder = Responder(site, mgr, path, now) if site.config.notify.channels else None
    detector = Detector(
        mgr,
        sub,
        on_batch=responder.on_batch if responder is not None else None,
        on_commit=responder.on_commit if responder is not None else None,
    )
    return mgr, detector, make_router(mgr.reader, info.id, info.timezone), responder
