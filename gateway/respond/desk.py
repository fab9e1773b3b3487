"""The daemon's desk: staff's actions applied between detection rounds, answered once committed.

Each action is a function of `now` run by the detector between two rounds (Detector.call), where the
engine, the notice policy and the dispatcher may change; what it owes (notices, timeline steps, state) goes
into that round's transaction through the responder, and the caller hears back after the commit. An action
validates everything before it changes anything, so a refused one (DeskError) leaves no trace.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.config import Site
from gateway.config.notify import MaintenanceWindow
from gateway.config.rules import SEVERITY_RANK
from gateway.core.timefmt import local_iso
from gateway.incidents.detector import NotStored
from gateway.incidents.manager import IncidentManager
from gateway.respond.desk_api import (
    CAUSE_CODES,
    DRILL_SCENARIOS,
    EVENT_CODES,
    DeskError,
    DrillRequest,
    ManualIncident,
    OncallOverride,
    OncallView,
    ResponseView,
)
from gateway.respond.responder import Responder
from rules.model import Incident, IncidentState

log = logging.getLogger("meterwatch.desk")

T = TypeVar("T")
Call = Callable[[Callable[[float], Any]], Awaitable[Any]]

# the incident category of each hotline event code
CODE_CATEGORY = {
    "001": "personal_safety",
    "002": "fire",
    "003": "equipment_failure",
    "004": "property_loss",
    "005": "complaint",
    "006": "other",
}
URGENT_CODES = frozenset({"001", "002"})


class DaemonDesk:
    def __init__(self, site: Site, manager: IncidentManager, responder: Responder, call: Call) -> None:
        self.site = site
        self.manager = manager
        self.responder = responder
        self._call = call
        self._buildings = {b.id: b for b in site.config.buildings}

    async def _run(self, fn: Callable[[float], T]) -> T:
        try:
            result: T = await self._call(fn)
        except KeyError as exc:
            raise DeskError(
                404, f"no incident {exc.args[0]} held by the desk (unknown or long settled)"
            ) from None
        except ValueError as exc:
            raise DeskError(409, str(exc)) from None
        except NotStored as exc:
            raise DeskError(503, f"{exc}; the action is kept and will be stored, do not repeat it") from None
        return result

    def _view(self, incident_id: int) -> ResponseView:
        view = self.response(incident_id)
        assert view is not None
        return view

    # ---- incidents ------------------------------------------------------------------------------------
    async def open_incident(self, report: ManualIncident, who: str) -> int:
        if report.code not in EVENT_CODES:
            codes = ", ".join(f"{c} {n}" for c, n in EVENT_CODES.items())
            raise DeskError(400, f"unknown event code {report.code!r}; expected one of {codes}")
        unknown = [b for b in report.buildings if b not in self._buildings]
        if unknown:
            known = ", ".join(self._buildings)
            raise DeskError(400, f"unknown building(s) {', '.join(unknown)}; this site has {known}")
        severity = report.severity or ("critical" if report.code in URGENT_CODES else "major")
        if severity not in SEVERITY_RANK:
            raise DeskError(400, f"unknown severity {severity!r}; expected one of {', '.join(SEVERITY_RANK)}")
        if not report.title.strip():
            raise DeskError(400, "title: expected a few words saying what happened")
        buildings = sorted(set(report.buildings))
        households = report.households
        if households is None:
            chosen = buildings or list(self._buildings)
            households = sum(self._buildings[b].households or 0 for b in chosen)
        scope = f"building:{buildings[0]}" if len(buildings) == 1 else "site"
        evidence = [f"reported by {who} (event code {report.code}, {EVENT_CODES[report.code]})"]

        def act(now: float) -> int:
            proto = Incident(
                id=0, key="", category=CODE_CATEGORY[report.code], scope=scope, title=report.title.strip(),
                severity=severity, event_code=report.code, audiences=["staff"], households=households,
                state=IncidentState.FIRING, opened_at=now, first_evidence_at=now, updated_at=now,
                evidence=evidence, buildings=buildings if len(buildings) > 1 else [],
            )  # fmt: skip
            inc = self.manager.open_manual(proto, now)
            if report.note.strip():
                self.responder.note_after_opening(inc.id, who, report.note.strip(), now)
            return inc.id

        return await self._run(act)

    async def open_drill(self, drill: DrillRequest, who: str) -> int:
        scenario = DRILL_SCENARIOS.get(drill.scenario)
        if scenario is None:
            names = ", ".join(DRILL_SCENARIOS)
            raise DeskError(
                400, f"scenario: unknown drill scenario {drill.scenario[:40]!r}; expected one of {names}"
            )
        unknown = [b for b in drill.buildings if b not in self._buildings]
        if unknown:
            known = ", ".join(self._buildings)
            raise DeskError(400, f"unknown building(s) {', '.join(unknown)}; this site has {known}")
        buildings = sorted(set(drill.buildings))
        chosen = buildings or list(self._buildings)
        households = sum(self._buildings[b].households or 0 for b in chosen)
        scope = f"building:{buildings[0]}" if len(buildings) == 1 else "site"
        # residents only when the site says drills include them, and only of a supply outage (the policy
        # tells residents of the categories with a confirmation delay); never the utility
        residents = scenario.supply and self.site.config.review.drills_notify_residents
        audiences = ["staff", "residents"] if residents else ["staff"]
        evidence = [f"drill started by {who} (scenario {drill.scenario}, event code {scenario.code})"]

        def act(now: float) -> int:
            proto = Incident(
                id=0, key="", category=scenario.category, scope=scope, title=scenario.title,
                severity=scenario.severity, event_code=scenario.code, audiences=audiences,
                households=households, state=IncidentState.FIRING, opened_at=now, first_evidence_at=now,
                updated_at=now, evidence=evidence, buildings=buildings if len(buildings) > 1 else [],
                drill=True,
            )  # fmt: skip
            inc = self.manager.open_manual(proto, now)
            log.info("drill opened", extra={"fields": {"id": inc.id, "scenario": drill.scenario, "by": who}})
            return inc.id

        return await self._run(act)

    async def acknowledge(self, incident_id: int, who: str) -> ResponseView:
        def act(now: float) -> None:
            self.responder.add(self.responder.dispatcher.acknowledge(incident_id, who, now))

        await self._run(act)
        return self._view(incident_id)

    async def on_site(self, incident_id: int, who: str) -> ResponseView:
        def act(now: float) -> None:
            self.responder.add(self.responder.dispatcher.on_site(incident_id, who, now))

        await self._run(act)
        return self._view(incident_id)

    async def note(self, incident_id: int, who: str, text: str) -> ResponseView:
        text = text.strip()
        if not text:
            raise DeskError(400, "text: expected the note's words")

        def act(now: float) -> None:
            self.responder.add(self.responder.dispatcher.note(incident_id, who, text, now))

        await self._run(act)
        return self._view(incident_id)

    async def set_eta(self, incident_id: int, who: str, eta: float | None) -> ResponseView:
        tz = self.responder.tz

        def act(now: float) -> None:
            if not self.responder.dispatcher.holds(incident_id):
                raise KeyError(incident_id)
            if eta is not None and eta <= now:
                raise _BadInput(f"eta: {local_iso(eta, tz)} is not in the future; expected a later time")
            notices = self.responder.policy.set_eta(incident_id, eta, now)
            self.responder.add(notices)
            label = None if eta is None else local_iso(eta, tz)
            self.responder.add(self.responder.dispatcher.record_eta(incident_id, who, label, now))

        try:
            await self._run(act)
        except _BadInput as exc:
            raise DeskError(400, str(exc)) from None
        return self._view(incident_id)

    async def set_cause(self, incident_id: int, who: str, cause: str, code: str = "") -> ResponseView:
        cause = cause.strip()
        if not cause:
            raise DeskError(400, "cause: expected the cause in words")
        if code and code not in CAUSE_CODES:
            raise DeskError(
                400, f"code: unknown cause code {code!r}; expected one of {', '.join(CAUSE_CODES)}"
            )

        def act(now: float) -> None:
            self.responder.add(self.responder.dispatcher.set_cause(incident_id, who, cause, now, code))

        await self._run(act)
        return self._view(incident_id)

    async def resolve(self, incident_id: int, who: str, note: str) -> ResponseView:
        def act(now: float) -> None:
            if not self.responder.dispatcher.holds(incident_id):
                raise KeyError(incident_id)
            detail = f"resolved by {who}" + (f": {note.strip()}" if note.strip() else "")
            self.manager.resolve_manual(incident_id, now, detail)

        await self._run(act)
        return self._view(incident_id)

    # ---- planned works and the roster ------------------------------------------------------------------
    async def add_maintenance(self, window: MaintenanceWindow, who: str) -> None:
        unknown = [b for b in window.buildings if b not in self._buildings]
        if unknown:
            known = ", ".join(self._buildings)
            raise DeskError(400, f"unknown building(s) {', '.join(unknown)}; this site has {known}")

        def act(now: float) -> None:
            self.responder.add(self.responder.policy.add_maintenance(window, now))
            log.info("maintenance window declared", extra={"fields": {"id": window.id, "by": who}})

        await self._run(act)

    async def override_oncall(self, override: OncallOverride, who: str) -> OncallView:
        def act(now: float) -> None:
            try:
                self.responder.roster.add_override(override)
            except ValueError as exc:
                raise _BadInput(str(exc)) from None
            self.responder.changed()
            log.info(
                "on-call override",
                extra={"fields": {"oncall": override.oncall, "backup": override.backup or "", "by": who}},
            )

        try:
            await self._run(act)
        except _BadInput as exc:
            raise DeskError(400, str(exc)) from None
        return self.oncall(override.start)

    # ---- reading --------------------------------------------------------------------------------------
    def response(self, incident_id: int) -> ResponseView | None:
        return self.responder.dispatcher.view(incident_id, self.responder.policy.eta(incident_id))

    def oncall(self, at: float) -> OncallView:
        return self.responder.roster.view(at)


class _BadInput(Exception):
    """Refused before anything changed, as bad input (400) rather than a conflict (409)."""
