"""GET /api/incidents and GET /api/incidents/{id}: the daemon's incidents as JSON (pydantic models: an edge).

Records carry the same fields as `meterwatch replay --json` (gateway/incidents/replay.py, incident_record):
times in the site's time zone as ISO 8601. The list reads the store (what is committed is what is shown); the
detail adds the incident's append-only timeline, including the gateway's downtime.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from gateway.core.timefmt import local_iso
from gateway.incidents.replay import incident_record
from gateway.incidents.store import StoreReader, TimelineEntry
from rules.model import Incident

MAX_ID = 2**63 - 1  # SQLite's largest integer: a bigger id cannot exist


class IncidentOut(BaseModel):
    id: int
    category: str
    scope: str
    title: str
    state: str
    severity: str
    event_code: str
    audiences: list[str]
    opened_at: str | None
    first_evidence_at: str | None
    resolved_at: str | None
    households: int
    symptoms: list[str]
    flap_count: int
    flapping: bool
    reopen_count: int
    absorbed: list[int]
    merged_into: int | None
    evidence: list[str] = Field(
        default_factory=list, description="why it was classified as it is, in words (an outage, a fault)"
    )
    drill: bool = Field(default=False, description="a drill (meterwatch drill), not a real incident")


class TimelineOut(BaseModel):
    seq: int
    ts: float
    at: str
    event: str
    notify: bool
    detail: str


class IncidentDetail(IncidentOut):
    timeline: list[TimelineOut]


class IncidentList(BaseModel):
    site: str
    timezone: str
    state: Literal["open", "all"]
    incidents: list[IncidentOut]


def make_router(reader: StoreReader, site_id: str, tz: str) -> APIRouter:
    router = APIRouter(prefix="/api/incidents", tags=["incidents"])

    def out(inc: Incident) -> IncidentOut:
        return IncidentOut.model_validate({**incident_record(inc, tz), "drill": inc.drill})

    def entry(e: TimelineEntry) -> TimelineOut:
        at = local_iso(e.ts, tz)
        return TimelineOut(seq=e.seq, ts=e.ts, at=at, event=e.event, notify=e.notify, detail=e.detail)

    @router.get("", response_model=IncidentList)
    async def list_incidents(
        state: Literal["open", "all"] = Query("open", description="open: firing or recovering"),
        limit: int = Query(100, ge=1, le=10_000),
    ) -> IncidentList:
        incs = await asyncio.to_thread(reader.incidents, state, limit)
        return IncidentList(site=site_id, timezone=tz, state=state, incidents=[out(i) for i in incs])

    @router.get("/{incident_id}", response_model=IncidentDetail)
    async def get_incident(incident_id: str) -> IncidentDetail:
        # any text that is no possible id is a plain 404 (not FastAPI's 422, not SQLite's overflow)
        digits = incident_id.isascii() and incident_id.isdigit() and len(incident_id) <= 19
        if not digits or not 1 <= int(incident_id) <= MAX_ID:
            raise HTTPException(status_code=404, detail=f"no incident {incident_id[:40]!r}")
        inc = await asyncio.to_thread(reader.incident, int(incident_id))
        if inc is None:
            raise HTTPException(status_code=404, detail=f"no incident {incident_id}")
        timeline = await asyncio.to_thread(reader.timeline, int(incident_id))
        return IncidentDetail(**out(inc).model_dump(), timeline=[entry(e) for e in timeline])

    return router
