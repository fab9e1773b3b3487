"""The fleet view's web page and JSON: GET / (Chinese; `?lang=en` English), GET /api/fleet (the same state as
JSON), GET /assets/pages.css (the console's style sheet, gateway/web/static/pages.css) and GET /healthz.

Server-rendered with Jinja2 (autoescape on) on the console's base template, refreshed by a meta refresh;
nothing comes from elsewhere. Read-only unless the view was started with --command-key: then whoever holds
one of the view's named tokens (gateway/fleetview/tokens.py) may act. The API takes `Authorization: Bearer
<token>`; the page has a small login form (POST /login sets an HttpOnly, SameSite=Strict cookie of the
view's own, POST /logout drops it) and, once logged in, acknowledge / on site / note buttons on each open
incident (POST /commands, a form that also carries the process's form token) and the panel of commands sent.
POST /api/commands (JSON) does the same for programs; GET /api/commands says what became of them. Every
command is signed and published by gateway/fleetview/commands.py in the token's name: the sender cannot
choose another. No token: 401; a token the view does not have: 403 (gateway/web/auth.py's Tokens, as the
gateway's own console). GET / and GET /api/fleet stay open: they show what a view without the key shows.
With commands the page reloads itself by a small script that waits while someone types. Without the key the
command routes answer 403 and the page has no buttons.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote
from zoneinfo import ZoneInfo

import jinja2
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from gateway.fleetview.commands import CommandDesk, CommandError
from gateway.fleetview.state import FleetState
from gateway.web.auth import Tokens, login_cookie, logout_cookie

Lang = Literal["zh", "en"]

HERE = Path(__file__).parent
WEB = Path(str(files("gateway.web")))  # the console's templates and style sheet, reused as they are
REFRESH = 10  # seconds between the page's own reloads
TIMEZONE = "Asia/Shanghai"  # times on the page; the handbook's sites are in China

WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "title": "物业集团总览",
        "other_lang": "English",
        "sites": "站点",
        "gateways": "网关",
        "offline": "离线",
        "open_incidents": "未结束事件",
        "late": "超时未确认",
        "no_sites": "尚未收到任何网关的消息。",
        "no_incidents": "无未结束事件",
        "gateway_online": "在线",
        "gateway_offline": "离线（连接断开）",
        "gateway_silent": "无心跳 {age}",
        "devices": "设备 {up}/{n}",
        "elapsed": "已 {d} / 目标 {target}",
        "past_target": "已 {d}，超过{target}响应目标",
        "acknowledged": "已确认",
        "on_site": "已到场",
        "not_acked": "未确认",
        "not_dispatched": "未派单",
        "households": "{n}户",
        "kpis": "本月指标（{month}）",
        "kpi_informed": "及时告知",
        "kpi_response": "30分钟响应",
        "kpi_satisfaction": "满意度",
        "kpi_none": "暂无数据",
        "no_kpi": "尚无指标快照",
        "target": "目标 {t}",
        "drill": "演练",
        "malformed": "格式错误的消息 {n} 条（已忽略）",
        "broker": "消息服务器 {b}",
        "disconnected": "未连接消息服务器，显示的是最后已知状态",
        "updated": "更新于 {t}",
        "login_hint": "远程操作需登录：",
        "login_token": "您的令牌",
        "login": "登录",
        "logout": "退出",
        "logged_in": "已登录：{name}",
        "login_bad": "令牌不正确。",
        "login_stale": "您的令牌已失效，请重新登录。",
        "login_first": "请先登录再操作。",
        "cmd_text": "备注内容",
        "cmd_acknowledge": "确认接单",
        "cmd_on_site": "已到场",
        "cmd_note": "添加备注",
        "cmd_title": "远程操作",
        "cmd_sending": "发送中",
        "cmd_sent": "等待网关回复",
        "cmd_accepted": "网关已执行",
        "cmd_rejected": "网关拒绝",
        "cmd_error": "未发送：{e}",
    },
    "en": {
        "title": "Fleet overview",
        "other_lang": "中文",
        "sites": "sites",
        "gateways": "gateways",
        "offline": "offline",
        "open_incidents": "open incidents",
        "late": "late, not acknowledged",
        "no_sites": "No gateway has been heard from yet.",
        "no_incidents": "no open incident",
        "gateway_online": "online",
        "gateway_offline": "offline (connection lost)",
        "gateway_silent": "no heartbeat for {age}",
        "devices": "devices {up}/{n}",
        "elapsed": "{d} of {target}",
        "past_target": "{d}: past the {target} response target",
        "acknowledged": "acknowledged",
        "on_site": "on site",
        "not_acked": "not acknowledged",
        "not_dispatched": "not dispatched",
        "households": "{n} households",
        "kpis": "KPIs this month ({month})",
        "kpi_informed": "residents informed",
        "kpi_response": "30-minute response",
        "kpi_satisfaction": "satisfaction",
        "kpi_none": "no data",
        "no_kpi": "no KPI snapshot yet",
        "target": "target {t}",
        "drill": "drill",
        "malformed": "{n} malformed messages (ignored)",
        "broker": "broker {b}",
        "disconnected": "not connected to the broker: showing the last known state",
        "updated": "updated {t}",
        "login_hint": "log in to send commands:",
        "login_token": "your token",
        "login": "Log in",
        "logout": "Log out",
        "logged_in": "logged in as {name}",
        "login_bad": "That token is not right.",
        "login_stale": "Your token is no longer valid: log in again.",
        "login_first": "Log in first.",
        "cmd_text": "note",
        "cmd_acknowledge": "acknowledge",
        "cmd_on_site": "on site",
        "cmd_note": "add note",
        "cmd_title": "commands from this view",
        "cmd_sending": "sending",
        "cmd_sent": "waiting for the gateway",
        "cmd_accepted": "done by the gateway",
        "cmd_rejected": "refused by the gateway",
        "cmd_error": "not sent: {e}",
    },
}

KIND_NAMES = {
    "zh": {
        "power_outage": "停电",
        "phase_loss": "缺相",
        "undervoltage": "欠压",
        "overvoltage": "过压",
        "comm_fault": "通信故障",
        "water_supply": "供水中断",
        "water_burst": "爆管",
        "leak_suspected": "疑似漏水",
        "pump_fault": "水泵故障",
        "sensor_fault": "传感器故障",
    },
    "en": {},
}
ACTION_WORDS = {"acknowledge": "cmd_acknowledge", "on_site": "cmd_on_site", "note": "cmd_note"}
# why a gateway refused a command (its `code`; the gateway's own words follow, in English)
REFUSAL_NAMES = {
    "zh": {
        "malformed": "格式错误",
        "bad_signature": "签名无效",
        "wrong_gateway": "目标网关不符",
        "expired": "已过期",
        "future": "签发时间在未来",
        "replayed": "重复的指令",
        "unknown_incident": "网关无此事件",
        "refused": "事件状态不允许",
        "failed": "网关执行失败",
    },
    "en": {},
}
# the view's own cookie: browsers share cookies between ports of one host, and the gateway's console (maybe
# on the same host) has its own under gateway/web/auth.py's COOKIE
COOKIE = "mw_fleet_token"
SOURCE = "the fleet view's tokens (METERWATCH_FLEET_TOKENS or --tokens)"
SEVERITY_NAMES = {
    "zh": {"critical": "紧急", "major": "严重", "minor": "一般", "warning": "警告", "info": "提示"},
    "en": {},
}


def duration(seconds: float, lang: Lang) -> str:
    minutes = int(seconds // 60)
    zh = lang == "zh"
    if minutes < 1:
        return f"{int(seconds)}秒" if zh else f"{int(seconds)} s"
    hours, mins = divmod(minutes, 60)
    if hours >= 24:
        days, hours = divmod(hours, 24)
        return f"{days}天{hours}小时" if zh else f"{days} d {hours} h"
    if hours:
        return f"{hours}小时{mins}分" if zh else f"{hours} h {mins} min"
    return f"{mins}分钟" if zh else f"{mins} min"


def _env() -> jinja2.Environment:
    loader = jinja2.FileSystemLoader([str(HERE / "templates"), str(WEB / "templates")])
    return jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)


READ_ONLY = "this view is read-only: start it with --command-key to send commands"
STALE_FORM = "the form is stale or not this view's: reload the page"


def make_app(
    state: FleetState,
    status: Callable[[], dict[str, Any]],
    tz: str = TIMEZONE,
    commands: CommandDesk | None = None,
    tokens: Tokens | None = None,
) -> FastAPI:
    """`tokens`: who may command (required with `commands`; the CLI refuses the key without them)."""
    if commands is not None and (tokens is None or not tokens.enabled):
        raise ValueError("commands need named tokens: nobody could send one, or anybody")
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    # the page's forms carry this; another site's page cannot read it, so cannot post a command for a
    # browser that can reach the view (the page sends no Referer and so an Origin of "null")
    form_token = secrets.token_urlsafe(18)
    template = _env().get_template("fleet.html")
    css = (WEB / "static" / "pages.css").read_bytes()
    zone = ZoneInfo(tz)

    def render(lang: Lang, user: str | None = None, error: str = "", login_error: str = "") -> str:
        """`user`: the name of the token the browser logged in with (None: the login form)."""
        words = WORDS[lang]

        def t(key: str, **kw: Any) -> str:
            return words[key].format(**kw) if kw else words[key]

        def clock(ts: float | None) -> str:
            return "" if ts is None else datetime.fromtimestamp(ts, zone).strftime("%m-%d %H:%M")

        return template.render(
            lang=lang,
            t=t,
            root="",
            lang_switch="./" if lang == "en" else "./?lang=en",  # also from /login, /commands
            site_name=words["title"],
            # with commands, the page's script reloads it (and waits while someone types in a form)
            refresh=REFRESH if commands is None else "",
            commands=commands is not None,
            # who sent what (and a note's words) is for those who may send: not on the open page
            cmd_sent=[] if commands is None or user is None else commands.recent(8),
            cmd_user=user,
            cmd_error=error,
            login_error=login_error,
            cmd_refresh=REFRESH,
            cmd_token=form_token,
            action_name=lambda a: words.get(ACTION_WORDS.get(a, ""), a),
            refusal=lambda c: REFUSAL_NAMES[lang].get(c or "", c or ""),
            fleet=state.snapshot(),
            link=status(),
            duration=lambda s: duration(float(s), lang),
            kind=lambda k: KIND_NAMES[lang].get(k, k.replace("_", " ")),
            severity=lambda s: SEVERITY_NAMES[lang].get(s, s),
            pct=lambda v: "—" if v is None else f"{v * 100:.0f}%",
            clock=clock,
        )

    def html(lang: Lang, status: int = 200, **kw: Any) -> HTMLResponse:
        return HTMLResponse(render(lang, **kw), status_code=status, headers={"Cache-Control": "no-store"})

    def user_of(request: Request) -> tuple[str | None, bool]:
        """The name of the browser's login cookie's token, and whether a cookie was there (a token taken
        away since, e.g. at a restart with other tokens, is said on the login form)."""
        presented = request.cookies.get(COOKIE)
        if commands is None or tokens is None or not presented:
            return None, False
        return tokens.name_of(presented), True

    def require(request: Request) -> str:
        """The token's name (Authorization: Bearer, else the login cookie), or HTTPException 401/403."""
        if commands is None or tokens is None:
            raise HTTPException(403, READ_ONLY)
        return tokens.require(request, cookie=COOKIE, source=SOURCE)

    def refused(exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    def pick(value: str | None) -> Lang:
        return "en" if value == "en" else "zh"

    def form_of(raw: bytes) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, lang: str = "zh", error: str = "") -> HTMLResponse:
        lang_: Lang = pick(lang)
        user, had_cookie = user_of(request)
        stale = WORDS[lang_]["login_stale"] if had_cookie and user is None else ""
        return html(lang_, user=user, error=error[:300] if user else "", login_error=stale)

    def send(fields: dict[str, Any], who: str) -> dict[str, Any]:
        """CommandError for a refused command (or one this view cannot send); `who` is the token's name."""
        if commands is None:
            raise CommandError(403, READ_ONLY)
        try:
            incident = int(str(fields.get("incident", "")))
        except ValueError:
            raise CommandError(400, "incident: expected the incident id, a whole number") from None
        claimed = fields.get("who")
        if claimed not in (None, "", who):  # a program that thinks it chooses the name learns it does not
            raise CommandError(400, f"who: commands go in your token's name ({who}); leave who out")
        names = ("company", "site", "gateway", "action", "text")
        f = {k: str(fields.get(k) or "") for k in names}
        sent = commands.send(f["company"], f["site"], f["gateway"], incident, f["action"], who, f["text"])
        return commands.get(sent.id) or {}

    @app.post("/api/commands")
    async def api_send(request: Request) -> JSONResponse:
        try:
            who = require(request)
        except HTTPException as exc:
            return refused(exc)
        # a JSON content type cannot come from another site's form without the browser asking (CORS)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "expected Content-Type: application/json"}, status_code=415)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "expected a JSON object"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "expected a JSON object"}, status_code=400)
        try:
            sent = await run_in_threadpool(send, body, who)
        except CommandError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        return JSONResponse(sent, status_code=202)

    @app.get("/api/commands")
    def api_commands(request: Request) -> JSONResponse:
        try:
            require(request)
        except HTTPException as exc:
            return refused(exc)
        assert commands is not None  # require() said so
        return JSONResponse({"commands": commands.recent()}, headers={"Cache-Control": "no-store"})

    @app.get("/api/commands/{cid}")
    def api_command(request: Request, cid: str) -> JSONResponse:
        try:
            require(request)
        except HTTPException as exc:
            return refused(exc)
        found = None if commands is None else commands.get(cid)
        if found is None:
            return JSONResponse({"error": f"no command {cid[:100]} sent by this view"}, status_code=404)
        return JSONResponse(found, headers={"Cache-Control": "no-store"})

    @app.post("/commands")
    async def form_send(request: Request) -> Response:
        """The page's buttons: a form post, answered by a redirect back to the page (303)."""
        form = form_of(await request.body())
        lang = pick(form.get("lang"))
        back = "./?lang=en" if lang == "en" else "./"
        if commands is None:
            return JSONResponse({"error": READ_ONLY}, status_code=403)
        try:
            who = require(request)
        except HTTPException as exc:  # logged out meanwhile, or a token taken away: the page, to log in
            why = "login_first" if exc.status_code == 401 else "login_stale"
            return html(lang, exc.status_code, login_error=WORDS[lang][why])
        if not secrets.compare_digest(form.get("csrf", ""), form_token):
            return JSONResponse({"error": STALE_FORM}, status_code=403)
        try:
            await run_in_threadpool(send, form, who)
        except CommandError as exc:
            sep = "&" if "?" in back else "?"
            return RedirectResponse(f"{back}{sep}error={quote(exc.message)}", status_code=303)
        return RedirectResponse(back, status_code=303)

    @app.post("/login")
    async def login(request: Request) -> Response:
        """The page's login form: the token checked, then kept in the view's HttpOnly cookie."""
        form = form_of(await request.body())
        lang = pick(form.get("lang"))
        if commands is None or tokens is None:
            return JSONResponse({"error": READ_ONLY}, status_code=403)
        if not secrets.compare_digest(form.get("csrf", ""), form_token):
            return JSONResponse({"error": STALE_FORM}, status_code=403)
        presented = form.get("token", "").strip()
        if not presented or tokens.name_of(presented) is None:
            return html(lang, 403, login_error=WORDS[lang]["login_bad"])
        resp = RedirectResponse("./?lang=en" if lang == "en" else "./", status_code=303)
        login_cookie(resp, presented, request, name=COOKIE)
        return resp

    @app.post("/logout")
    async def logout(request: Request) -> RedirectResponse:
        lang = pick(form_of(await request.body()).get("lang"))
        resp = RedirectResponse("./?lang=en" if lang == "en" else "./", status_code=303)
        logout_cookie(resp, name=COOKIE)
        return resp

    @app.get("/api/fleet")
    def api() -> JSONResponse:
        return JSONResponse({**state.snapshot(), "broker": status()}, headers={"Cache-Control": "no-store"})

    @app.get("/assets/pages.css")
    def stylesheet() -> Response:
        return Response(css, media_type="text/css", headers={"Cache-Control": "max-age=300"})

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "at": time.time()}

    return app
