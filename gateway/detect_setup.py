"""Daemon builder of live detection (listed in gateway/daemon.py BUILDERS, after the store, before sources).

Opens the incident store (restoring the engine and writing the downtime since the last heartbeat),
subscribes to the bus as a blocking subscriber (samples and statuses are never dropped for the rules),
registers the incidents service (`open_incidents()`, `all_incidents(limit)`) and the /api/incidents router.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from gateway.daemon import Component, Runtime
from gateway.http import ROUTERS
from gateway.incidents.api import make_router
from gateway.incidents.detector import Detector
from gateway.incidents.manager import IncidentManager
from gateway.incidents.store import IncidentStore

log = logging.getLogger("meterwatch.incidents")

RULES_QUEUE = 20_000  # events; past this the bus blocks the sources until the engine catches up


def store_path(rt: Runtime) -> Path:
    return rt.state_file(rt.site.config.incidents.path, "incidents.sqlite")


def build(rt: Runtime) -> list[Component]:
    store = IncidentStore(store_path(rt))
    mgr = IncidentManager.open(rt.site, store, time.time())
    sub = rt.bus.subscribe("rules", maxsize=RULES_QUEUE, overflow="block")
    rt.services["incidents"] = mgr
    site = rt.site.config.site
    routers = rt.services.setdefault(ROUTERS, [])
    assert isinstance(routers, list)
    routers.append(make_router(mgr.reader, site.id, site.timezone))
    return [Detector(mgr, sub)]
