"""The fleet view's web page and JSON: GET / (Chinese; `?lang=en` English), GET /api/fleet (the same state as
JSON), GET /assets/pages.css (the console's style sheet, gateway/web/static/pages.css) and GET /healthz.

Server-rendered with Jinja2 (autoescape on) on the console's base template, refreshed by a meta refresh;
nothing comes from elsewhere. Read-only: no route changes anything, here or at the broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import jinja2
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response

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


def make_app(state: FleetState, status: Callable[[], dict[str, Any]], tz: str = TIMEZONE) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    template = _env().get_template("fleet.html")
    css = (WEB / "static" / "pages.css").read_bytes()
    zone = ZoneInfo(tz)

    def render(lang: Lang) -> str:
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
            refresh=REFRESH,
            fleet=state.snapshot(),
            link=status(),
            duration=lambda s: duration(float(s), lang),
            kind=lambda k: KIND_NAMES[lang].get(k, k.replace("_", " ")),
            severity=lambda s: SEVERITY_NAMES[lang].get(s, s),
            pct=lambda v: "—" if v is None else f"{v * 100:.0f}%",
            clock=clock,
        )

    @app.get("/", response_class=HTMLResponse)
    def page(lang: str = "zh") -> HTMLResponse:
        return HTMLResponse(render("en" if lang == "en" else "zh"), headers={"Cache-Control": "no-store"})

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
