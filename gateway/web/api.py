"""The HTTP write API: what staff do to incidents (open, acknowledge, on site, note, ETA, cause, resolve),
drills (POST /api/drills), planned maintenance, and the on-call roster. Every route acts through the
daemon's `Desk`.

Every route here needs a bearer token (`http.tokens`, gateway/web/auth.py); its name is who acted, as the
timeline records it. GET routes need one too: the on-call view carries phone numbers and the response view
carries staff notes (what a caller said). The token is checked before anything else, even before a
malformed body is reported, so a caller without one learns nothing about the routes.

Errors are one JSON shape, `{"error": "..."}`, saying what was wrong, where, and what was expected:
- 400 bad input: a body that is not JSON or does not fit its model (every problem, `; `-joined), an
  unknown building or person, a local time that does not exist in the site's time zone;
- 401 / 403 no token / a token that is not one of http.tokens (or none configured);
- 404 no such incident (an id that cannot be one, e.g. past SQLite's 64-bit integers, is the same 404);
- 409 / 503 what the desk refuses (DeskError), with its message.
FastAPI's own 422 shape is converted here, per route (see `JsonErrorRoute`), so other routers keep theirs.

Times go out twice: `<name>_at` in the site's time zone (ISO 8601, local_iso) for people, `<name>_ts` in
epoch seconds for programs, as in the timeline of GET /api/incidents/{id}. Times come in as the site's local
wall-clock time without an offset (2026-12-01T18:00), as the site file writes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from gateway.config import Site
from gateway.config.base import Id
from gateway.config.notify import MAINTENANCE_CATEGORIES, LocalDateTime, MaintenanceWindow
from gateway.config.rules import Severity
from gateway.core.timefmt import local_iso
from gateway.respond.desk_api import (
    CAUSE_CODES,
    DRILL_SCENARIOS,
    EVENT_CODES,
    Desk,
    DeskError,
    DrillRequest,
    ManualIncident,
    OncallOverride,
    OncallView,
    PersonView,
    ResponseView,
)
from gateway.web.auth import Tokens

MAX_ID = 2**63 - 1  # SQLite's largest INTEGER: no incident id can be larger
MAX_BODY = 64 * 1024  # bytes; the largest valid body is a few kilobytes
MAX_TITLE = 200
MAX_TEXT = 2000
MAX_CAUSE = 500
MAX_BUILDINGS = 200
MAX_HOUSEHOLDS = 1_000_000
MAX_CATEGORIES = 20

_CODES = ", ".join(f"{c} ({what})" for c, what in EVENT_CODES.items())


# -- request bodies ---------------------------------------------------------------------------------------
class Body(BaseModel):
    """A request body: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


BuildingId = Annotated[str, Id]


class OpenIn(Body):
    code: str = Field(description=f"the handbook's event code: {_CODES}")
    title: str = Field(min_length=1, max_length=MAX_TITLE, description="what happened, in a few words")
    buildings: list[BuildingId] = Field(
        default_factory=list, max_length=MAX_BUILDINGS, description="building ids; empty: the whole site"
    )
    severity: Severity | None = Field(default=None, description="default: critical for 001/002, else major")
    households: int | None = Field(
        default=None, ge=0, le=MAX_HOUSEHOLDS, description="default: the buildings' households"
    )
    note: str = Field(default="", max_length=MAX_TEXT, description="the first note: what the caller said")

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        if v not in EVENT_CODES:
            raise ValueError(f"unknown event code {v[:20]!r}; expected one of {_CODES}")
        return v

    @field_validator("title")
    @classmethod
    def _title(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("a title is needed: what happened, in a few words")
        return v


_SCENARIOS = ", ".join(DRILL_SCENARIOS)


class DrillIn(Body):
    scenario: str = Field(description=f"what the drill pretends happened: {_SCENARIOS}")
    buildings: list[BuildingId] = Field(
        default_factory=list, max_length=MAX_BUILDINGS, description="building ids; empty: the whole site"
    )

    @field_validator("scenario")
    @classmethod
    def _scenario(cls, v: str) -> str:
        if v not in DRILL_SCENARIOS:
            raise ValueError(f"unknown drill scenario {v[:40]!r}; expected one of {_SCENARIOS}")
        return v


class NoteIn(Body):
    text: str = Field(min_length=1, max_length=MAX_TEXT)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the note is empty")
        return v


class EtaIn(Body):
    eta: LocalDateTime | None = Field(
        description="expected restoration, local time of the site without an offset (2026-12-01T18:00); "
        "null: unknown again"
    )


class CauseIn(Body):
    cause: str = Field(min_length=1, max_length=MAX_CAUSE, description="what caused it, in words")
    code: str = Field(
        default="",
        max_length=32,
        description=f"what kind of cause, for the monthly review: one of {', '.join(CAUSE_CODES)}",
    )

    @field_validator("cause")
    @classmethod
    def _cause(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the cause is empty; expected it in words")
        return v


class ResolveIn(Body):
    note: str = Field(default="", max_length=MAX_TEXT, description="how it was resolved")


class MaintenanceIn(MaintenanceWindow):
    """A maintenance window as the site file declares one, with bounded lengths for a request."""

    buildings: list[BuildingId] = Field(
        default_factory=list, max_length=MAX_BUILDINGS, description="building ids; empty: every building"
    )
    categories: list[Annotated[str, Id]] = Field(
        default_factory=lambda: list(MAINTENANCE_CATEGORIES),
        min_length=1,
        max_length=MAX_CATEGORIES,
        description="incident categories the works explain; default power_outage and water_supply",
    )
    note: str = Field(default="", max_length=MAX_TEXT, description="what the works are, in words")


class OverrideIn(Body):
    oncall: Annotated[str, Id] = Field(description="person id (oncall.people) who holds on-call")
    backup: Annotated[str, Id] | None = Field(default=None, description="person id of the backup")
    start: LocalDateTime = Field(description="local time of the site without an offset, 2026-12-01T08:00")
    end: LocalDateTime = Field(description="same form; after start")


# -- answers ---------------------------------------------------------------------------------------------
class Created(BaseModel):
    id: int


class DrillCreated(BaseModel):
    id: int
    scenario: str
    drill: bool = True


class MaintenanceCreated(BaseModel):
    id: str
    start: str
    end: str


class NoteOut(BaseModel):
    at: str
    ts: float
    who: str
    text: str


class ResponseOut(BaseModel):
    incident_id: int
    manual: bool
    dispatched_at: str | None
    dispatched_ts: float | None
    target_at: str | None
    target_ts: float | None
    target_missed: bool
    step: int
    called: list[str]
    acked_at: str | None
    acked_ts: float | None
    acked_by: str
    on_site_at: str | None
    on_site_ts: float | None
    on_site_by: str
    eta_at: str | None
    eta_ts: float | None
    cause: str
    cause_code: str
    notes: list[NoteOut]


class PersonOut(BaseModel):
    id: str
    name: str
    phone: str


class OncallOut(BaseModel):
    at: str
    ts: float
    override: bool
    oncall: PersonOut | None
    backup: PersonOut | None
    supervisor: PersonOut | None
    manager: PersonOut | None


def response_out(v: ResponseView, tz: str) -> ResponseOut:
    def at(ts: float | None) -> str | None:
        return None if ts is None else local_iso(ts, tz)

    return ResponseOut(
        incident_id=v.incident_id,
        manual=v.manual,
        dispatched_at=at(v.dispatched_at),
        dispatched_ts=v.dispatched_at,
        target_at=at(v.target_at),
        target_ts=v.target_at,
        target_missed=v.target_missed,
        step=v.step,
        called=list(v.called),
        acked_at=at(v.acked_at),
        acked_ts=v.acked_at,
        acked_by=v.acked_by,
        on_site_at=at(v.on_site_at),
        on_site_ts=v.on_site_at,
        on_site_by=v.on_site_by,
        eta_at=at(v.eta),
        eta_ts=v.eta,
        cause=v.cause,
        cause_code=v.cause_code,
        notes=[NoteOut(at=local_iso(n.ts, tz), ts=n.ts, who=n.who, text=n.text) for n in v.notes],
    )


def oncall_out(v: OncallView, tz: str) -> OncallOut:
    def person(p: PersonView | None) -> PersonOut | None:
        return None if p is None else PersonOut(id=p.id, name=p.name, phone=p.phone)

    return OncallOut(
        at=local_iso(v.at, tz),
        ts=v.at,
        override=v.override,
        oncall=person(v.oncall),
        backup=person(v.backup),
        supervisor=person(v.supervisor),
        manager=person(v.manager),
    )


# -- errors ----------------------------------------------------------------------------------------------
def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(loc: Sequence[int | str]) -> str:
    """A body location as a path: title, buildings[2], the body itself."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _expected(fields: Sequence[str]) -> str:
    return f"a JSON object with the fields {', '.join(fields)}" if fields else "a JSON object"


def describe_errors(errors: Sequence[Any], fields: Sequence[str]) -> str:
    """FastAPI's validation errors as one line: where, what, what was expected."""
    expected = _expected(fields)
    said: list[str] = []
    for e in errors:
        kind, loc, msg = e.get("type", ""), tuple(e.get("loc", ())), str(e.get("msg", ""))
        ctx = e.get("ctx") or {}
        where = _where(loc)
        if kind == "json_invalid":
            pos = loc[1] if len(loc) > 1 else "?"
            text = f"the body is not valid JSON ({ctx.get('error', 'decode error')} at character {pos}); "
            text += f"expected {expected}"
        elif kind == "missing" and not where:
            text = f"the body is missing; expected {expected} (Content-Type: application/json)"
        elif not where and kind == "value_error":
            text = msg.removeprefix("Value error, ")
        elif not where:
            text = f"the body is not what was expected: expected {expected} (Content-Type: application/json)"
        elif kind == "missing":
            text = f"{where}: missing; it is required"
        elif kind == "extra_forbidden":
            text = f"{where}: unknown field; expected only {', '.join(fields)}"
        elif kind == "string_too_long":
            got = len(e["input"]) if isinstance(e.get("input"), str) else "more"
            text = f"{where}: too long, {got} characters; at most {ctx.get('max_length')} expected"
        elif kind == "too_long":
            text = f"{where}: too many items; at most {ctx.get('max_length')} expected"
        elif kind == "value_error":
            text = f"{where}: {msg.removeprefix('Value error, ')}"
        elif kind == "string_pattern_mismatch":
            text = (
                f"{where}: {_short(e.get('input'))} is not an id; expected letters, digits, '_', '.' or '-', "
                "starting with a letter or digit, at most 64 characters"
            )
        else:
            text = f"{where}: {msg[:1].lower()}{msg[1:]}, got {_short(e.get('input'))}"
        said.append(text)
    return "; ".join(said) or "the request is not valid"


async def _capped(request: Request) -> Request | None:
    """The request with its body read into memory, or None when the body is larger than MAX_BODY (read no
    further). FastAPI's own max_body_size answers a declared oversize with plain text, not our JSON."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        return None
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        parts.append(chunk)
    body = b"".join(parts)
    replayed = False

    async def receive() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()  # later: a disconnect, as the server reports it

    return Request(request.scope, receive)


def _body_fields(route: APIRoute) -> list[str]:
    field = route.body_field
    model = getattr(getattr(field, "field_info", None), "annotation", None) if field is not None else None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def json_error_route(guard: Callable[[Request], str]) -> type[APIRoute]:
    """A route class whose every error is `{"error": "..."}`: FastAPI's app-wide handlers answer
    `{"detail": ...}` and 422 with a list, while this router's clients (the CLI, the console) show one line
    to a person. Converted per route, so other routers keep FastAPI's shapes.

    `guard` is the token check: a request that fails validation is checked for its token first, so a caller
    without one gets 401/403, never a description of the route's body."""

    class JsonErrorRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            fields = _body_fields(self)

            async def handle(request: Request) -> Response:
                try:
                    if request.method == "POST":
                        read = await _capped(request)
                        if read is None:
                            guard(request)
                            return error(
                                413, f"the body is larger than {MAX_BODY} bytes; expected {_expected(fields)}"
                            )
                        request = read
                    try:
                        return await handler(request)
                    except RequestValidationError as exc:
                        guard(request)
                        errors = list(exc.errors())
                        in_path = [e for e in errors if tuple(e.get("loc", ("",)))[:1] == ("path",)]
                        if in_path:
                            given = str(in_path[0].get("input"))[:40]
                            return error(404, f"no incident {given}: an incident id is a whole number from 1")
                        return error(400, describe_errors(errors, fields))
                except StarletteHTTPException as exc:
                    return error(exc.status_code, str(exc.detail), dict(exc.headers or {}))
                except DeskError as exc:
                    return error(exc.status, exc.message)

            return handle

    return JsonErrorRoute


# -- the router ------------------------------------------------------------------------------------------
IncidentId = Annotated[int, Path(ge=1, le=MAX_ID, description="incident id")]


def make_router(desk: Desk, tokens: Tokens, site: Site) -> APIRouter:
    tz = site.config.site.timezone
    zone = ZoneInfo(tz)
    buildings = [b.id for b in site.config.buildings]
    people = [p.id for p in site.config.oncall.people]

    router = APIRouter(tags=["desk"], route_class=json_error_route(tokens.require))
    # `who` is a default rather than an Annotated alias: these annotations are strings (PEP 563) that FastAPI
    # resolves in the module's globals, where a name local to this function does not exist.
    require = Depends(tokens.require)

    def known_buildings(given: Sequence[str], where: str) -> None:
        unknown = [b for b in given if b not in buildings]
        if unknown:
            raise HTTPException(
                400,
                f"{where}: unknown building(s) {', '.join(unknown)}; expected ids of the site file's "
                f"buildings: {', '.join(buildings)}",
            )

    def known_person(given: str | None, where: str) -> None:
        if given is not None and given not in people:
            known = ", ".join(people) or "none: the site file's oncall.people is empty"
            raise HTTPException(
                400, f"{where}: unknown person {given!r}; expected one of oncall.people: {known}"
            )

    def epoch(local: datetime, where: str) -> float:
        """A wall-clock time of the site as epoch seconds; a time the clocks skip (DST) is refused."""
        ts = local.replace(tzinfo=zone).timestamp()
        if datetime.fromtimestamp(ts, zone).replace(tzinfo=None) != local:
            raise HTTPException(
                400, f"{where}: {local.isoformat()} does not exist in {tz} (the clocks skip it); give another"
            )
        return ts

    @router.post("/api/incidents", status_code=201, response_model=Created)
    async def open_incident(body: OpenIn, who: str = require) -> Created:
        known_buildings(body.buildings, "buildings")
        report = ManualIncident(
            code=body.code,
            title=body.title.strip(),
            buildings=list(body.buildings),
            severity=body.severity or "",
            households=body.households,
            note=body.note,
        )
        return Created(id=await desk.open_incident(report, who))

    @router.post("/api/drills", status_code=201, response_model=DrillCreated)
    async def open_drill(body: DrillIn, who: str = require) -> DrillCreated:
        known_buildings(body.buildings, "buildings")
        drill = DrillRequest(scenario=body.scenario, buildings=list(body.buildings))
        return DrillCreated(id=await desk.open_drill(drill, who), scenario=body.scenario)

    @router.post("/api/incidents/{incident_id}/ack", response_model=ResponseOut)
    async def acknowledge(incident_id: IncidentId, who: str = require) -> ResponseOut:
        return response_out(await desk.acknowledge(incident_id, who), tz)

    @router.post("/api/incidents/{incident_id}/on-site", response_model=ResponseOut)
    async def on_site(incident_id: IncidentId, who: str = require) -> ResponseOut:
        return response_out(await desk.on_site(incident_id, who), tz)

    @router.post("/api/incidents/{incident_id}/note", response_model=ResponseOut)
    async def note(incident_id: IncidentId, body: NoteIn, who: str = require) -> ResponseOut:
        return response_out(await desk.note(incident_id, who, body.text), tz)

    @router.post("/api/incidents/{incident_id}/eta", response_model=ResponseOut)
    async def set_eta(incident_id: IncidentId, body: EtaIn, who: str = require) -> ResponseOut:
        eta = None if body.eta is None else epoch(body.eta, "eta")
        return response_out(await desk.set_eta(incident_id, who, eta), tz)

    @router.post("/api/incidents/{incident_id}/cause", response_model=ResponseOut)
    async def set_cause(incident_id: IncidentId, body: CauseIn, who: str = require) -> ResponseOut:
        return response_out(await desk.set_cause(incident_id, who, body.cause.strip(), body.code), tz)

    @router.post("/api/incidents/{incident_id}/resolve", response_model=ResponseOut)
    async def resolve(incident_id: IncidentId, body: ResolveIn, who: str = require) -> ResponseOut:
        return response_out(await desk.resolve(incident_id, who, body.note), tz)

    @router.get("/api/incidents/{incident_id}/response", response_model=ResponseOut)
    async def response(incident_id: IncidentId, who: str = require) -> ResponseOut:
        view = desk.response(incident_id)
        if view is None:
            raise HTTPException(404, f"no response to incident {incident_id}: no such incident, or none yet")
        return response_out(view, tz)

    @router.post("/api/maintenance", status_code=201, response_model=MaintenanceCreated)
    async def add_maintenance(body: MaintenanceIn, who: str = require) -> MaintenanceCreated:
        known_buildings(body.buildings, "buildings")
        for where, local in (("start", body.start), ("end", body.end)):
            epoch(local, where)
        window = MaintenanceWindow.model_validate(body.model_dump())
        await desk.add_maintenance(window, who)
        start, end = (t.isoformat(timespec="minutes") for t in (window.start, window.end))
        return MaintenanceCreated(id=window.id, start=start, end=end)

    @router.get("/api/oncall", response_model=OncallOut)
    async def oncall(who: str = require) -> OncallOut:
        return oncall_out(desk.oncall(time.time()), tz)

    @router.post("/api/oncall/overrides", response_model=OncallOut)
    async def override_oncall(body: OverrideIn, who: str = require) -> OncallOut:
        known_person(body.oncall, "oncall")
        known_person(body.backup, "backup")
        start, end = epoch(body.start, "start"), epoch(body.end, "end")
        if end <= start:
            raise HTTPException(
                400, f"end ({body.end.isoformat()}) must be after start ({body.start.isoformat()})"
            )
        override = OncallOverride(oncall=body.oncall, start=start, end=end, backup=body.backup)
        return oncall_out(await desk.override_oncall(override, who), tz)

    return router
