"""What staff can do to an incident and what they see of the response: the desk's interface.

The HTTP write API, the staff console, the link pages and the CLI (through the API) all act through a
`Desk`; gateway/respond/desk.py is the daemon's. Every action is applied between two detection rounds and
answered once it is committed to the incident store, with the notices it owes (one transaction); an action
that is refused changes nothing. `who` is the actor as the timeline records it: a token's name, or the
person id a signed link was made for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from gateway.config.notify import MaintenanceWindow

# The handbook's event codes, for incidents reported by phone (the meters cannot see these).
EVENT_CODES: dict[str, str] = {
    "001": "personal safety",
    "002": "fire",
    "003": "equipment failure",
    "004": "property loss",
    "005": "resident complaint",
    "006": "other",
}


@dataclass(frozen=True, slots=True)
class DrillScenario:
    """What a drill (`meterwatch drill SCENARIO`) pretends happened: an incident of this category and
    event code, dispatched like a real one; a `supply` one may also go to residents
    (review.drills_notify_residents)."""

    category: str
    code: str  # EVENT_CODES key
    severity: str
    title: str  # the incident's title; the messages add the drill mark themselves
    supply: bool  # a water or power outage: residents are told of it when drills include them


# scenario name -> what it opens (meterwatch drill --help lists these, a 400 names them)
DRILL_SCENARIOS: dict[str, DrillScenario] = {
    "power_outage": DrillScenario("power_outage", "003", "critical", "drill: power outage", True),
    "water_supply": DrillScenario("water_supply", "003", "critical", "drill: water supply cut", True),
    "water_burst": DrillScenario("water_burst", "003", "critical", "drill: burst water main", True),
    "fire": DrillScenario("fire", "002", "critical", "drill: fire", False),
    "personal_safety": DrillScenario(
        "personal_safety", "001", "critical", "drill: personal safety (e.g. someone trapped in a lift)", False
    ),
    "equipment_failure": DrillScenario(
        "equipment_failure", "003", "major", "drill: equipment failure", False
    ),
}


@dataclass(frozen=True, slots=True)
class DrillRequest:
    """A drill to run: a scenario of DRILL_SCENARIOS in some buildings (empty: the whole site)."""

    scenario: str
    buildings: list[str] = field(default_factory=list)


# What caused an incident, as the monthly review groups them (the text says the rest).
CAUSE_CODES: dict[str, str] = {
    "utility": "supply cut by the utility",
    "equipment": "equipment failure on site (pump, switchgear, pipe, meter)",
    "damage": "external damage (construction, vehicle, vandalism)",
    "overload": "overload or protection trip",
    "maintenance": "planned works",
    "weather": "weather (storm, frost, flooding)",
    "other": "another cause, see the text",
    "unknown": "not found",
}


class DeskError(Exception):
    """An action refused, with the HTTP status that says why: 400 bad input, 404 no such incident or
    building, 409 not possible in the incident's state (resolving a detected incident, acknowledging a
    resolved one; a note or the cause may still be added to it for the record), 503 the incident store
    cannot take it now (retry later)."""

    def __init__(self, status: Literal[400, 404, 409, 503], message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class ManualIncident:
    """An event reported by the hotline: it opens an incident that is dispatched like a detected one."""

    code: str  # EVENT_CODES key
    title: str
    buildings: list[str] = field(default_factory=list)  # building ids (site file); empty: the whole site
    severity: str = ""  # empty: critical for 001 and 002, major otherwise
    households: int | None = None  # None: the buildings' households
    note: str = ""  # first note: what the caller said


@dataclass(frozen=True, slots=True)
class Note:
    ts: float
    who: str
    text: str


@dataclass(frozen=True, slots=True)
class ResponseView:
    """Where the response to one incident stands (times are epoch seconds; None: not yet)."""

    incident_id: int
    dispatched_at: float | None  # None: not dispatched (its severity is not dispatched)
    target_at: float | None  # dispatched_at + oncall.target
    target_missed: bool
    step: int  # escalation steps taken after the dispatch (0: the dispatch only)
    called: list[str]  # "role:person" called so far, in order, e.g. "oncall:wang", "backup:li"
    acked_at: float | None
    acked_by: str
    on_site_at: float | None
    on_site_by: str
    eta: float | None  # the expected restoration staff set
    cause: str
    cause_code: str  # CAUSE_CODES key, or "" when staff gave none
    manual: bool
    notes: list[Note]


@dataclass(frozen=True, slots=True)
class PersonView:
    id: str
    name: str
    phone: str


@dataclass(frozen=True, slots=True)
class OncallView:
    """Who holds each role at `at`; `override` when an override (not the weekly roster) decides on-call."""

    at: float
    oncall: PersonView | None
    backup: PersonView | None
    supervisor: PersonView | None
    manager: PersonView | None
    override: bool


@dataclass(frozen=True, slots=True)
class OncallOverride:
    """Someone else holds on-call (and optionally backup) from `start` to `end` (epoch seconds)."""

    oncall: str
    start: float
    end: float
    backup: str | None = None


class Desk(Protocol):
    async def open_incident(self, report: ManualIncident, who: str) -> int:
        """Open a manual incident; its id. DeskError 400 for an unknown code or building."""
        ...

    async def open_drill(self, drill: DrillRequest, who: str) -> int:
        """Open a drill incident (drill=True) that goes through the real notice and dispatch chain, every
        message marked; its id. DeskError 400 for an unknown scenario or building."""
        ...

    async def acknowledge(self, incident_id: int, who: str) -> ResponseView:
        """Someone took the incident on: the escalation stops (again idempotent: the first one counts)."""
        ...

    async def on_site(self, incident_id: int, who: str) -> ResponseView:
        """Someone is at the scene (also acknowledges)."""
        ...

    async def note(self, incident_id: int, who: str, text: str) -> ResponseView: ...

    async def set_eta(self, incident_id: int, who: str, eta: float | None) -> ResponseView:
        """The expected restoration (None: unknown again); residents already told get an update."""
        ...

    async def set_cause(self, incident_id: int, who: str, cause: str, code: str = "") -> ResponseView:
        """The cause in words and, optionally, its code (CAUSE_CODES; 400 for another)."""
        ...

    async def resolve(self, incident_id: int, who: str, note: str) -> ResponseView:
        """Resolve a manual incident (409 for a detected one: the meters say when it is over)."""
        ...

    async def add_maintenance(self, window: MaintenanceWindow, who: str) -> None:
        """Declare planned works (409 for another window under a known id)."""
        ...

    async def override_oncall(self, override: OncallOverride, who: str) -> OncallView: ...

    def response(self, incident_id: int) -> ResponseView | None:
        """The response to an incident as last committed (None: the desk holds none for it)."""
        ...

    def oncall(self, at: float) -> OncallView: ...
