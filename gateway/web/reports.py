"""The reports over HTTP, for staff and for a property-management system.

    GET /incidents/{id}/report         the incident report as one HTML page (charts inside), ?lang=en
    GET /api/incidents/{id}/report     the same report as JSON (gateway/review/report.py, report_json)
    GET /reports/{month}               the monthly review of YYYY-MM as HTML, ?lang=en
    GET /reports/{month}.csv           its incident list as CSV

Every route needs a token (http.tokens, gateway/web/auth.py): the console's cookie or a bearer header. The
reports name the staff who acted and what they noted, so nothing here is public. The JSON route answers
errors as the write API does, `{"error": "..."}`; the pages answer them with a short page.

A report is read from the incident store (never the time-series database) and drawn in a worker thread:
the charts take a moment of CPU, and the daemon's event loop must not wait for them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sqlite3
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response

from gateway.config import Site
from gateway.incidents.store import StoreReader
from gateway.review.data import ReviewReader
from gateway.review.report import (
    TEMPLATES,
    NoIncident,
    draw_charts,
    incident_report,
    render_html,
    report_json,
)
from gateway.web.api import MAX_ID, json_error_route
from gateway.web.auth import Tokens
from gateway.web.pages import pick_lang, relative_root

# the report pages: their own style inline, pictures as data: URIs, no script, never inside a frame
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "login": "需要登录",
        "login_text": "报告只对值班人员开放：请先登录值班台。",
        "to_console": "前往值班台",
        "no_incident": "找不到事件",
        "no_incident_text": "事件 #{id} 不存在。",
        "bad_id": "事件编号应为从 1 开始的整数，而不是 {id}。",
        "no_store": "读不到事件库",
        "bad_month": "月份不对",
        "no_monthly": "月度回顾尚未提供",
        "no_monthly_text": "这个版本还没有月度回顾。",
    },
    "en": {
        "login": "Login needed",
        "login_text": "Reports are for staff: log in to the duty console first.",
        "to_console": "Go to the duty console",
        "no_incident": "No such incident",
        "no_incident_text": "There is no incident #{id}.",
        "bad_id": "An incident id is a whole number from 1, not {id}.",
        "no_store": "The incident store cannot be read",
        "bad_month": "Not a month",
        "no_monthly": "No monthly review yet",
        "no_monthly_text": "This version has no monthly review yet.",
    },
}

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
)
CSS_FILES = (Path(__file__).parent / "static" / "pages.css", TEMPLATES / "report.css")


def _page(html: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


def _message(request: Request, status: int, title: str, text: str, console: bool = False) -> HTMLResponse:
    lang = pick_lang(request)
    css = "".join(p.read_text(encoding="utf-8") for p in CSS_FILES if p.is_file())
    html = _ENV.get_template("report_message.html").render(
        lang=lang,
        title=title,
        text=text,
        console=relative_root(request.url.path) + ("?lang=en" if lang == "en" else "") if console else None,
        console_words=WORDS[lang]["to_console"],
        css=css,
    )
    return _page(html, status)


def _lang_link(request: Request) -> str:
    """The same page in the other language, relative to this one."""
    last = request.url.path.rsplit("/", 1)[-1]
    return last if pick_lang(request) == "en" else f"{last}?lang=en"


def _monthly() -> Any:
    """gateway/review/monthly.py, or None while this version has none."""
    if importlib.util.find_spec("gateway.review.monthly") is None:
        return None
    from gateway.review import monthly

    return monthly


IncidentId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="incident id")]


def make_router(site: Site, tokens: Tokens, reader: ReviewReader, store: StoreReader) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    api = APIRouter(tags=["reports"], route_class=json_error_route(tokens.require))
    tz = site.config.site.timezone

    def staff(request: Request) -> HTMLResponse | None:
        """None when the request carries a staff token; else the page that says to log in."""
        try:
            tokens.require(request)
        except HTTPException as exc:
            words = WORDS[pick_lang(request)]
            return _message(request, exc.status_code, words["login"], words["login_text"], console=True)
        return None

    @router.get("/incidents/{incident_id}/report", response_class=HTMLResponse)
    async def report_page(request: Request, incident_id: str) -> HTMLResponse:
        refused = staff(request)
        if refused is not None:
            return refused
        lang = pick_lang(request)
        words = WORDS[lang]
        if not incident_id.isdigit() or not 1 <= int(incident_id) <= MAX_ID:
            return _message(request, 404, words["no_incident"], words["bad_id"].format(id=incident_id[:40]))
        link = _lang_link(request)

        def make() -> str:
            report = incident_report(reader, store, site, int(incident_id), lang)
            return render_html(report, draw_charts(report), lang_link=link)

        try:
            html = await asyncio.to_thread(make)
        except NoIncident:
            return _message(
                request, 404, words["no_incident"], words["no_incident_text"].format(id=incident_id)
            )
        except (OSError, sqlite3.Error) as exc:
            return _message(request, 503, words["no_store"], str(exc))
        return _page(html)

    @api.get("/api/incidents/{incident_id}/report")
    async def report_data(request: Request, incident_id: IncidentId) -> JSONResponse:
        tokens.require(request)
        lang = pick_lang(request)
        try:
            report = await asyncio.to_thread(incident_report, reader, store, site, incident_id, lang)
        except NoIncident:
            raise HTTPException(404, f"no incident {incident_id}") from None
        except (OSError, sqlite3.Error) as exc:
            raise HTTPException(503, f"the incident store cannot be read: {exc}") from None
        return JSONResponse(report_json(report), headers={"Cache-Control": "no-store"})

    # the CSV route first: "/reports/{month}" would take "2026-11.csv" as a month
    @router.get("/reports/{month}.csv", response_model=None)
    async def month_csv(request: Request, month: str) -> Response:
        refused = staff(request)
        if refused is not None:
            return refused
        monthly = _monthly()
        words = WORDS[pick_lang(request)]
        if monthly is None:
            return _message(request, 404, words["no_monthly"], words["no_monthly_text"])
        try:
            monthly.month_bounds(month, tz)
        except ValueError as exc:
            return _message(request, 400, words["bad_month"], str(exc))
        try:
            text = await asyncio.to_thread(
                lambda: monthly.month_csv(monthly.monthly_review(site, reader, month))
            )
        except (OSError, sqlite3.Error) as exc:
            return _message(request, 503, words["no_store"], str(exc))
        return Response(
            str(text).encode("utf-8"),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="review-{month}.csv"',
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )

    @router.get("/reports/{month}", response_class=HTMLResponse)
    async def month_page(request: Request, month: str) -> HTMLResponse:
        refused = staff(request)
        if refused is not None:
            return refused
        monthly = _monthly()
        lang = pick_lang(request)
        words = WORDS[lang]
        if monthly is None:
            return _message(request, 404, words["no_monthly"], words["no_monthly_text"])
        try:
            monthly.month_bounds(month, tz)
        except ValueError as exc:
            return _message(request, 400, words["bad_month"], str(exc))

        def make() -> str:
            return str(monthly.render_month_html(monthly.monthly_review(site, reader, month), lang))

        try:
            html = await asyncio.to_thread(make)
        except (OSError, sqlite3.Error) as exc:
            return _message(request, 503, words["no_store"], str(exc))
        return _page(html)

    router.include_router(api)
    return router
