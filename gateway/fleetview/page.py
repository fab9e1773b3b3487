"""The fleet view's web page and JSON: GET / (Chinese; `?lang=en` English), GET /api/fleet (the same state as
JSON), GET /assets/pages.css (the console's style sheet, gateway/web/static/pages.css) and GET /healthz.

Server-rendered with Jinja2 (autoescape on) on the console's base template, refreshed by a meta refresh;
nothing comes from elsewhere. Read-only unless the view was started with --command-key: then each open
incident has acknowledge / on site / note buttons (POST /commands, a form; POST /api/commands, JSON) that
sign and publish a command (gateway/fleetview/commands.py), GET /api/commands says what became of them, and
the page reloads itself by a small script that waits while someone types. Without the key those routes
answer 403 and the page has no buttons.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote
from zoneinfo import ZoneInfo

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from gateway.fleetview.commands import CommandDesk, CommandError
from gateway.fleetview.state import FleetState

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
        "cmd_who": "您的姓名",
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
        "cmd_who": "your name",
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
WHO_COOKIE = "mw_fleet_who"  # the name last used on this browser, to fill the name field again
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


def make_app(
    state: FleetState,
    status: Callable[[], dict[str, Any]],
    tz: str = TIMEZONE,
    commands: CommandDesk | None = None,
) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    # the page's forms carry this; another site's page cannot read it, so cannot post a command for a
    # browser that can reach the view (the page sends no Referer and so an Origin of "null")
    form_token = secrets.token_urlsafe(18)
    template = _env().get_template("fleet.html")
    css = (WEB / "static" / "pages.css").read_bytes()
    zone = ZoneInfo(tz)

    def render(lang: Lang, who: str = "", error: str = "") -> str:
        words = WORDS[lang]

        def t(key: str, **kw: Any) -> str:
            return words[key].format(**kw) if kw else words[key]

        def clock(ts: float | None) -> str:
            return "" if ts is None else datetime.fromtimestamp(ts, zone).strftime("%m-%d %H:%M")

        return template.render(
            lang=lang,
            t=t,
            root="",
            lang_switch="./" if lang == "en" else "?lang=en",
            site_name=words["title"],
            # with commands, the page's script reloads it (and waits while someone types in a form)
            refresh=REFRESH if commands is None else "",
            commands=commands is not None,
            cmd_sent=[] if commands is None else commands.recent(8),
            cmd_who=who,
            cmd_error=error,
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

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, lang: str = "zh", error: str = "") -> HTMLResponse:
        who = unquote(request.cookies.get(WHO_COOKIE, ""))[:64]
        body = render("en" if lang == "en" else "zh", who, error[:300])
        return HTMLResponse(body, headers={"Cache-Control": "no-store"})

    def send(fields: dict[str, Any]) -> dict[str, Any]:
        """CommandError for a refused command (or one this view cannot send)."""
        if commands is None:
            raise CommandError(403, READ_ONLY)
        try:
            incident = int(str(fields.get("incident", "")))
        except ValueError:
            raise CommandError(400, "incident: expected the incident id, a whole number") from None
        names = ("company", "site", "gateway", "action", "who", "text")
        f = {k: str(fields.get(k) or "") for k in names}
        sent = commands.send(
            f["company"], f["site"], f["gateway"], incident, f["action"], f["who"], f["text"]
        )
        return commands.get(sent.id) or {}

    @app.post("/api/commands")
    async def api_send(request: Request) -> JSONResponse:
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
            sent = await run_in_threadpool(send, body)
        except CommandError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        return JSONResponse(sent, status_code=202)

    @app.get("/api/commands")
    def api_commands() -> JSONResponse:
        if commands is None:
            return JSONResponse({"error": READ_ONLY}, status_code=403)
        return JSONResponse({"commands": commands.recent()}, headers={"Cache-Control": "no-store"})

    @app.get("/api/commands/{cid}")
    def api_command(cid: str) -> JSONResponse:
        found = None if commands is None else commands.get(cid)
        if found is None:
            return JSONResponse({"error": f"no command {cid[:100]} sent by this view"}, status_code=404)
        return JSONResponse(found, headers={"Cache-Control": "no-store"})

    @app.post("/commands")
    async def form_send(request: Request) -> Response:
        """The page's buttons: a form post, answered by a redirect back to the page (303)."""
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        lang = "en" if form.get("lang") == "en" else "zh"
        back = "./?lang=en" if lang == "en" else "./"
        if commands is not None and not secrets.compare_digest(form.get("token", ""), form_token):
            return JSONResponse({"error": "the form is stale or not this view's: reload the page"}, 403)
        try:
            await run_in_threadpool(send, form)
        except CommandError as exc:
            if exc.status == 403:
                return JSONResponse({"error": exc.message}, status_code=403)
            sep = "&" if "?" in back else "?"
            return RedirectResponse(f"{back}{sep}error={quote(exc.message)}", status_code=303)
        resp = RedirectResponse(back, status_code=303)
        resp.set_cookie(
            WHO_COOKIE, quote(form.get("who", "").strip()[:64]), max_age=90 * 86400, samesite="strict"
        )
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
