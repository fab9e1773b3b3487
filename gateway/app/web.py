"""The daemon's HTTP routes beyond /metrics and the health checks: the incidents' read API, the desk's
write API (bearer tokens), the staff console, the link pages and the public building pages."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.app.detect import Detection
from gateway.config import Site
from gateway.incidents.api import make_router as incidents_router
from gateway.observe.presence import DevicePresence
from gateway.review.data import ReviewReader
from gateway.web import api, pages, reports, votes
from gateway.web.auth import Tokens


def build(site: Site, detection: Detection, presence: DevicePresence) -> list[APIRouter]:
    info = site.config.site
    reader = detection.manager.reader
    tokens = Tokens(site.config.http.tokens)
    desk = detection.desk
    return [
        incidents_router(reader, info.id, info.timezone),
        api.make_router(desk, tokens, site),
        pages.make_router(desk, tokens, site, reader, presence, detection.responder.signer),
        votes.make_router(site, reader, detection.responder.signer),  # the all-clear's rating page /r/
        reports.make_router(site, tokens, ReviewReader(reader.path), reader),  # incident and month reports
    ]
