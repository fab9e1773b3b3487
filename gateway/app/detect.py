"""Live detection and the response to it: the incident store (restoring the engine and writing the downtime
since the last heartbeat), a blocking bus subscription (samples and statuses are never dropped for the
rules), the respond side (notices, dispatch, escalation) and the incidents' evidence committed with each
round, the desk staff act through, the store's retention, and the fleet bridge when the site has a `fleet:`
section (its events are committed with the round that owes them, after the respond side's own steps).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.app import fleet as fleet_app
from gateway.app.component import state_file
from gateway.config import Site
from gateway.core.bus import Bus
from gateway.incidents.detector import Detector
from gateway.incidents.evidence import QUEUE as EVIDENCE_QUEUE
from gateway.incidents.evidence import EvidenceKeeper
from gateway.incidents.manager import IncidentManager
from gateway.incidents.retention import Retention
from gateway.incidents.store import Batch, IncidentStore
from gateway.observe.presence import DevicePresence
from gateway.respond.desk import DaemonDesk
from gateway.respond.responder import Responder

RULES_QUEUE = 20_000  # events; past this the bus blocks the sources until the engine catches up
# A round at most this often while events trickle in: at 800 meters a round per poll answer (2,400 a second,
# each with the respond side's and the evidence's hooks) was a third of the gateway's CPU. Detection's own
# timers are unchanged; a reading is judged at most this much later.
RULES_PACE = 0.05
# The evidence rings are drained by every round anyway (EvidenceKeeper.on_batch); their own loop only keeps
# the queue short in between
EVIDENCE_PACE = 0.25

log = logging.getLogger("meterwatch.incidents")

Hook = Callable[[Batch, float], None]


def each_round(*hooks: Hook) -> Hook:
    """One detector hook calling each of `hooks` in order: what a round owes is added to its batch. A hook
    that fails is logged and the others still run (a bug in one part must not cost the others' writes)."""

    def run(batch: Batch, now: float) -> None:
        for hook in hooks:
            try:
                hook(batch, now)
            except Exception:
                log.exception(
                    "a part failed on a round of transitions; detection goes on",
                    extra={"fields": {"hook": getattr(hook, "__qualname__", repr(hook))}},
                )

    return run


def each_commit(*hooks: Callable[[], None]) -> Callable[[], None]:
    """One on_commit calling each of `hooks` (a waker that fails is logged; the others are still woken)."""

    def run() -> None:
        for hook in hooks:
            try:
                hook()
            except Exception:
                log.exception("a part failed to wake after a commit", extra={"fields": {"hook": repr(hook)}})

    return run


def store_path(site: Site, state_dir: Path) -> Path:
    return state_file(site.path.parent, state_dir, site.config.incidents.path, "incidents.sqlite")


@dataclass
class Detection:
    manager: IncidentManager
    detector: Detector
    responder: Responder
    desk: DaemonDesk
    evidence: EvidenceKeeper
    retention: Retention
    fleet: fleet_app.Fleet | None = None


def build(site: Site, bus: Bus, state_dir: Path, presence: DevicePresence | None = None) -> Detection:
    """The incident manager, its detector, and the respond side: the notices and response steps each round
    owes are committed with the round's transitions; staff's actions run between rounds (Detector.call)."""
    path = store_path(site, state_dir)
    store = IncidentStore(path)
    now = time.time()
    mgr = IncidentManager.open(site, store, now)
    sub = bus.subscribe("rules", maxsize=RULES_QUEUE, overflow="block", pace=RULES_PACE)
    responder = Responder(site, mgr, path, state_dir, now)
    # best effort: evidence never slows the sources or the rules (what it drops, the bus counts)
    ev_sub = bus.subscribe("evidence", maxsize=EVIDENCE_QUEUE, overflow="drop_oldest", pace=EVIDENCE_PACE)
    evidence = EvidenceKeeper(
        site, site.config.incidents.evidence, ev_sub, lambda: mgr.engine.incidents, store
    )
    hooks: list[Hook] = [responder.on_batch, evidence.on_batch]
    wakers = [responder.on_commit]
    fleet = fleet_app.build(site, mgr, path, presence, now)
    if fleet is not None:  # last: it publishes the response steps the respond side added to the round
        hooks.append(fleet.bridge.on_batch)
        if fleet.commands is not None:  # after the bridge: a command's outcome follows the steps it made
            hooks.append(fleet.commands.on_batch)
        wakers.append(fleet.publisher.wake)
    detector = Detector(mgr, sub, on_batch=each_round(*hooks), on_commit=each_commit(*wakers))
    responder.bind(detector.call)
    desk = DaemonDesk(site, mgr, responder, detector.call)
    if fleet is not None:  # fleet.commands: the fleet view's signed commands act through a desk too
        fleet_app.bind_desk(fleet, site, mgr, responder, detector.call)

    def held() -> set[int]:
        return set(mgr.engine.incidents) | evidence.held_incidents()

    retention = Retention(store, site.config.review.retention, held, detector.call)
    return Detection(mgr, detector, responder, desk, evidence, retention, fleet)
