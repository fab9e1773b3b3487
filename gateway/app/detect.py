"""Live detection and the response to it: the incident store (restoring the engine and writing the downtime
since the last heartbeat), a blocking bus subscription (samples and statuses are never dropped for the
rules), the respond side (notices, dispatch, escalation) committed with each round, and the desk staff act
through.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from gateway.app.component import state_file
from gateway.config import Site
from gateway.core.bus import Bus
from gateway.incidents.detector import Detector
from gateway.incidents.manager import IncidentManager
from gateway.incidents.store import IncidentStore
from gateway.respond.desk import DaemonDesk
from gateway.respond.responder import Responder

RULES_QUEUE = 20_000  # events; past this the bus blocks the sources until the engine catches up


def store_path(site: Site, state_dir: Path) -> Path:
    return state_file(site.path.parent, state_dir, site.config.incidents.path, "incidents.sqlite")


@dataclass
class Detection:
    manager: IncidentManager
    detector: Detector
    responder: Responder
    desk: DaemonDesk


def build(site: Site, bus: Bus, state_dir: Path) -> Detection:
    """The incident manager, its detector, and the respond side: the notices and response steps each round
    owes are committed with the round's transitions; staff's actions run between rounds (Detector.call)."""
    path = store_path(site, state_dir)
    store = IncidentStore(path)
    now = time.time()
    mgr = IncidentManager.open(site, store, now)
    sub = bus.subscribe("rules", maxsize=RULES_QUEUE, overflow="block")
    responder = Responder(site, mgr, path, state_dir, now)
    detector = Detector(mgr, sub, on_batch=responder.on_batch, on_commit=responder.on_commit)
    responder.bind(detector.call)
    desk = DaemonDesk(site, mgr, responder, detector.call)
    return Detection(mgr, detector, responder, desk)
