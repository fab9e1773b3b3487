"""The pages people open on a phone: the staff console, the one-tap link pages and the public building page.

Server-rendered (Jinja2, autoescape on), Chinese by default, English with `?lang=en`; no script or style
comes from elsewhere (a gateway's network may reach nothing but its meters).

    GET  /                           the staff console; without the console cookie only its login form
    POST /console/login, /logout     set (after checking it) or drop the HttpOnly, SameSite=Strict cookie
    POST /console/incidents/{id}/{ack|on-site|note|eta}
                                     the console's buttons; answered with a redirect back to the console
    GET  /ack/{token}, /on-site/{token}
                                     the dispatch message's links: the incident and one big button; the
                                     ack page submits itself when a browser runs its script (a chat app's
                                     link preview fetches the page but runs no script, so it never acts)
    POST /ack/{token}, /on-site/{token}
                                     verify the link again, act as the person it names, show the time
    GET  /b/{building}               public and read-only, for a QR code on the notice board: water and
                                     power now, since when, the team's status, the expected restoration,
                                     the hotline; counts only, never a name or a phone number
    GET  /assets/pages.css           the one style sheet

The console's forms are protected from other sites by the cookie itself: SameSite=Strict means a form
posted from another site arrives without it and is refused like any request without a token. The link
pages need no cookie: the signed token is the permission, and a GET never changes anything.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import jinja2
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.config import Site
from gateway.config.devices import Role
from gateway.incidents.store import StoreReader, TimelineEntry
from gateway.observe.presence import DevicePresence
from gateway.respond.context import ADVICE, buildings_of
from gateway.respond.desk_api import Desk, DeskError, OncallView, PersonView, ResponseView
from gateway.respond.links import Action, LinkClaim, LinkError, LinkSigner
from gateway.respond.messages import CATEGORY_NAMES, SEVERITY_NAMES, format_duration, what_happened
from gateway.web.auth import Tokens, login_cookie, logout_cookie
from rules.model import Incident, IncidentState

Lang = Literal["zh", "en"]

HERE = Path(__file__).parent
CSS = HERE / "static" / "pages.css"

CONSOLE_REFRESH = 15  # seconds; the console skips a refresh while someone is typing in it
PUBLIC_REFRESH = 30  # seconds; the building page has nothing to type into
TIMELINE_SHOWN = 40  # newest entries of an incident's timeline on the console
NOTE_MAX = 2000  # characters of a console note
FORM_MAX = 64 * 1024  # bytes of a posted form (a note is the longest field)
OPEN_LIMIT = 500  # open incidents read for one page

# HTTP status of a link that does not stand: a bad link is the client's error; an expired one is gone.
LINK_STATUS: dict[str, int] = {"malformed": 400, "forged": 400, "wrong_action": 400, "expired": 410}

SEVERITY_RANK = {"critical": 0, "major": 1, "minor": 2, "warning": 3, "info": 4}

POWER_ROLES = frozenset({Role.MAIN_POWER, Role.UNIT_POWER})
WATER_ROLES = frozenset({Role.ZONE_PRESSURE, Role.PUMP, Role.TANK, Role.FLOW})

# ------------------------------------------------------------------------------------------------ words

WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "console": "值班台",
        "login_title": "值班台登录",
        "login_hint": "请输入值班令牌（站点配置 http.tokens 中的一个）。",
        "token": "令牌",
        "login": "登录",
        "logout": "退出",
        "login_bad": "令牌不正确。",
        "login_off": "本站未配置令牌（http.tokens），无法通过网页操作。",
        "signed_in_as": "已登录：{who}",
        "open_incidents": "未结束事件",
        "no_open": "目前没有未结束的事件。",
        "state_firing": "进行中",
        "state_recovering": "恢复中",
        "state_resolved": "已恢复",
        "state_merged": "已合并",
        "households": "{n}户",
        "since": "开始于 {t}",
        "lasting": "已持续 {d}",
        "not_dispatched": "未派单（该级别不派单）",
        "dispatched": "已派单 {t}",
        "target_left": "响应计时 {e} / 目标 {target}，剩余 {left}",
        "target_met": "确认用时 {d}（目标 {target}）",
        "target_missed": "超过 {target} 响应目标",
        "called": "已通知：{who}",
        "acked": "已确认：{who}，{t}",
        "not_acked": "尚无人确认",
        "on_site": "已到场：{who}，{t}",
        "eta": "预计恢复：{t}",
        "no_eta": "预计恢复时间未定",
        "cause": "原因：{text}",
        "notes": "备注",
        "timeline": "时间线（{n}条）",
        "earlier": "另有{n}条更早的记录未显示",
        "btn_ack": "确认接单",
        "btn_on_site": "我已到场",
        "btn_note": "添加备注",
        "note_placeholder": "现场情况、处理进展…",
        "btn_eta": "设置",
        "eta_label": "预计恢复时间（本地时间）",
        "btn_eta_clear": "清除",
        "devices": "设备状态",
        "devices_up": "{up}/{n} 在线",
        "device_up": "在线",
        "device_down": "离线",
        "never_seen": "未收到数据",
        "seen_ago": "{d}前",
        "oncall_now": "当前值班",
        "role_oncall": "值班",
        "role_backup": "备班",
        "role_supervisor": "主管",
        "role_manager": "经理",
        "nobody": "无",
        "override": "（临时调班）",
        "refresh_note": "页面每{n}秒自动刷新（输入时暂停）。",
        "updated": "更新于 {t}",
        "done_ack": "事件 #{id} 已确认。",
        "done_on_site": "事件 #{id} 已记录到场。",
        "done_note": "事件 #{id} 已添加备注。",
        "done_eta": "事件 #{id} 的预计恢复时间已更新。",
        "refused": "操作未执行",
        "back": "返回值班台",
        "bad_eta": "预计恢复时间格式不对：{value}",
        "empty_note": "备注不能为空。",
        "long_note": "备注太长（最多{n}字）。",
        "unknown_action": "未知操作。",
        # the link pages
        "ack_title": "确认接单",
        "on_site_title": "到场确认",
        "link_for": "派给：{who}",
        "incident_since": "{what} · 开始于 {t}",
        "ack_button": "确认接单",
        "on_site_button": "我已到场",
        "ack_auto": "正在确认……",
        "ack_done": "已确认",
        "arrive_hint": "到达现场后，请打开派单消息中的“到场”链接。",
        "on_site_done": "已到场",
        "done_at": "{who} 于 {t} 确认",
        "on_site_at": "{who} 于 {t} 到场",
        "already_acked": "此事件已由 {who} 于 {t} 确认，无需再次操作。",
        "already_on_site": "{who} 已于 {t} 到场。",
        "resolved_already": "此事件已于 {t} 结束，无需操作。",
        "link_expired_title": "链接已过期",
        "link_expired": "此链接已于 {t} 过期。请在值班台操作，或拨打值班电话。",
        "link_forged_title": "链接无效",
        "link_forged": "此链接的签名不正确：可能被改动过，或不是本网关生成的。",
        "link_malformed_title": "链接无效",
        "link_malformed": "此链接不完整或格式不对，请从派单消息中完整打开。",
        "link_wrong_action_title": "链接用途不符",
        "link_wrong_action": "此链接不是用于本页面的操作。",
        "links_off_title": "未启用链接",
        "links_off": "本网关未配置链接地址（notify.links.base_url），派单消息中没有可用的链接。",
        "no_incident_title": "找不到事件",
        "no_incident": "事件 #{id} 不存在。",
        "nothing_changed": "没有做任何更改。",
        # the public building page
        "building_title": "{name} 水电状态",
        "power": "供电",
        "water": "供水",
        "power_ok": "供电正常",
        "water_ok": "供水正常",
        "power_out": "停电中",
        "water_out": "停水中",
        "recovering": "已恢复，正在确认稳定",
        "not_monitored": "未监测",
        "out_since": "自 {t} 起 · 已持续 {d}",
        "affected": "约{n}户受影响",
        "team_on_site": "抢修人员已到场",
        "team_acked": "抢修人员已接单，正在赶往现场",
        "team_called": "已通知值班抢修人员",
        "team_unknown": "物业正在处理",
        "public_eta": "预计 {t} 前恢复",
        "public_no_eta": "恢复时间待定",
        "hotline": "24小时服务热线",
        "public_note": "本页面每{n}秒自动刷新。",
        "unknown_building_title": "找不到该楼栋",
        "unknown_building": "没有编号为 {id} 的楼栋。",
        "other_lang": "English",
    },
    "en": {
        "console": "Duty console",
        "login_title": "Duty console login",
        "login_hint": "Enter your duty token (one of the site file's http.tokens).",
        "token": "Token",
        "login": "Log in",
        "logout": "Log out",
        "login_bad": "That token is not right.",
        "login_off": "This site has no tokens (http.tokens): nothing can be done over the web.",
        "signed_in_as": "Logged in as {who}",
        "open_incidents": "Open incidents",
        "no_open": "No open incidents.",
        "state_firing": "ongoing",
        "state_recovering": "recovering",
        "state_resolved": "resolved",
        "state_merged": "merged",
        "households": "{n} households",
        "since": "since {t}",
        "lasting": "for {d}",
        "not_dispatched": "not dispatched (its severity is not)",
        "dispatched": "dispatched {t}",
        "target_left": "response clock {e} of the {target} target, {left} left",
        "target_met": "time to acknowledge: {d} (target {target})",
        "target_missed": "the {target} response target was missed",
        "called": "called: {who}",
        "acked": "acknowledged: {who}, {t}",
        "not_acked": "nobody has acknowledged yet",
        "on_site": "on site: {who}, {t}",
        "eta": "expected restoration: {t}",
        "no_eta": "no expected restoration time yet",
        "cause": "cause: {text}",
        "notes": "Notes",
        "timeline": "Timeline ({n} entries)",
        "earlier": "{n} earlier entries not shown",
        "btn_ack": "Acknowledge",
        "btn_on_site": "On site",
        "btn_note": "Add note",
        "note_placeholder": "what is happening on site…",
        "btn_eta": "Set",
        "eta_label": "Expected restoration (site time)",
        "btn_eta_clear": "Clear",
        "devices": "Devices",
        "devices_up": "{up}/{n} up",
        "device_up": "up",
        "device_down": "down",
        "never_seen": "no data yet",
        "seen_ago": "{d} ago",
        "oncall_now": "On call now",
        "role_oncall": "On call",
        "role_backup": "Backup",
        "role_supervisor": "Supervisor",
        "role_manager": "Manager",
        "nobody": "nobody",
        "override": "(override)",
        "refresh_note": "This page refreshes every {n} s (not while you type).",
        "updated": "updated {t}",
        "done_ack": "Incident #{id} acknowledged.",
        "done_on_site": "Incident #{id}: on site recorded.",
        "done_note": "Incident #{id}: note added.",
        "done_eta": "Incident #{id}: expected restoration updated.",
        "refused": "Not done",
        "back": "Back to the console",
        "bad_eta": "The expected restoration time is not a date and time: {value}",
        "empty_note": "The note is empty.",
        "long_note": "The note is too long (at most {n} characters).",
        "unknown_action": "Unknown action.",
        "ack_title": "Acknowledge",
        "on_site_title": "On site",
        "link_for": "for {who}",
        "incident_since": "{what} · since {t}",
        "ack_button": "Acknowledge",
        "on_site_button": "I am on site",
        "ack_auto": "Acknowledging…",
        "ack_done": "Acknowledged",
        "arrive_hint": "When you get there, open the dispatch message's 'on site' link.",
        "on_site_done": "On site",
        "done_at": "by {who} at {t}",
        "on_site_at": "{who} on site at {t}",
        "already_acked": "{who} acknowledged this incident at {t}; nothing more to do.",
        "already_on_site": "{who} has been on site since {t}.",
        "resolved_already": "This incident ended at {t}; nothing to do.",
        "link_expired_title": "Link expired",
        "link_expired": "This link expired at {t}. Use the duty console or call the duty phone.",
        "link_forged_title": "Invalid link",
        "link_forged": "This link's signature does not match: it was altered or not made by this gateway.",
        "link_malformed_title": "Invalid link",
        "link_malformed": "This link is incomplete or garbled; open it whole from the dispatch message.",
        "link_wrong_action_title": "Wrong link for this page",
        "link_wrong_action": "This link is not for this page's action.",
        "links_off_title": "Links are not configured",
        "links_off": "This gateway has no link address (notify.links.base_url): its messages carry no links.",
        "no_incident_title": "No such incident",
        "no_incident": "There is no incident #{id}.",
        "nothing_changed": "Nothing was changed.",
        "building_title": "{name}: water and power",
        "power": "Power",
        "water": "Water",
        "power_ok": "Power on",
        "water_ok": "Water on",
        "power_out": "Power cut",
        "water_out": "Water off",
        "recovering": "Back on, checking it stays on",
        "not_monitored": "not monitored",
        "out_since": "since {t} · for {d}",
        "affected": "about {n} households affected",
        "team_on_site": "The repair team is on site",
        "team_acked": "The repair team has the job and is on its way",
        "team_called": "The duty repair team has been called",
        "team_unknown": "Property management is handling it",
        "public_eta": "expected back by {t}",
        "public_no_eta": "restoration time not known yet",
        "hotline": "24-hour hotline",
        "public_note": "This page refreshes every {n} s.",
        "unknown_building_title": "No such building",
        "unknown_building": "There is no building {id}.",
        "other_lang": "中文",
    },
}

TIMELINE_EVENTS: dict[str, dict[str, str]] = {
    "zh": {
        "opened": "开始",
        "symptom": "新症状",
        "absorbed": "合并下级事件",
        "merged": "并入上级事件",
        "recovering": "恢复中",
        "refired": "再次发生",
        "flapping": "频繁波动",
        "resolved": "已恢复",
        "reopened": "重新打开",
        "gateway_down": "网关离线",
        "dispatched": "派单",
        "escalated": "升级",
        "acknowledged": "确认",
        "on_site": "到场",
        "retriggered": "重新派单",
        "target_missed": "响应超时",
        "note": "备注",
        "eta": "预计恢复",
        "cause": "原因",
    },
    "en": {},
}


def relative_root(path: str) -> str:
    """The way from `path` back to the router's root as a relative URL ("./", "../", ...): the pages link
    to each other relatively, so they work the same behind a proxy that serves the gateway under a
    prefix (notify.links.base_url may have a path)."""
    depth = path.count("/") - 1
    return "../" * depth if depth > 0 else "./"


def pick_lang(request: Request) -> Lang:
    return "en" if request.query_params.get("lang") == "en" else "zh"


# ------------------------------------------------------------------------------------------------ views


@dataclass(frozen=True)
class TargetClock:
    """The 30-minute response target of one incident as the console shows it."""

    state: Literal["none", "running", "met", "missed"]
    elapsed: float = 0.0
    target: float = 0.0
    fraction: float = 0.0  # of the target used, 0..1 (the bar)


def target_clock(rv: ResponseView | None, target: float, now: float) -> TargetClock:
    """Acknowledgement stops the clock (the escalation's 'target missed' record means nobody had)."""
    if rv is None or rv.dispatched_at is None:
        return TargetClock("none", target=target)
    if rv.target_at is not None and rv.target_at > rv.dispatched_at:
        target = rv.target_at - rv.dispatched_at
    end = rv.acked_at if rv.acked_at is not None else now
    elapsed = max(0.0, end - rv.dispatched_at)
    fraction = min(1.0, elapsed / target) if target > 0 else 1.0
    if rv.acked_at is not None and not rv.target_missed and elapsed <= target:
        return TargetClock("met", elapsed, target, fraction)
    if rv.target_missed or elapsed > target:
        return TargetClock("missed", elapsed, target, 1.0)
    return TargetClock("running", elapsed, target, fraction)


@dataclass(frozen=True)
class DeviceRow:
    id: str
    name: str
    up: bool
    last_seen_ago: float | None
    reason: str


@dataclass(frozen=True)
class BuildingDevices:
    id: str
    name: str
    devices: list[DeviceRow]

    @property
    def up(self) -> int:
        return sum(1 for d in self.devices if d.up)


@dataclass
class SupplyStatus:
    """Water or power of one building, as the public page tells it."""

    kind: Literal["power", "water"]
    monitored: bool
    out: bool = False
    recovering: bool = False  # every incident of this supply is recovering: back, being verified
    since: float | None = None
    households: int = 0
    team: Literal["", "called", "acked", "on_site", "unknown"] = ""
    eta: float | None = None
    incident_ids: list[int] = field(default_factory=list)


def monitored_kinds(site: Site, building: str) -> set[str]:
    """The supplies the gateway watches in a building: its supply domains' kinds and its devices' roles."""
    kinds: set[str] = set()
    for b in site.config.buildings:
        if b.id == building:
            kinds.update(d.kind for d in b.domains)
    for d in site.config.devices:
        if d.building != building:
            continue
        if d.role in POWER_ROLES:
            kinds.add("power")
        elif d.role in WATER_ROLES:
            kinds.add("water")
    return kinds


def building_status(
    site: Site,
    building: str,
    incidents: Sequence[Incident],
    response: Callable[[int], ResponseView | None],
) -> dict[str, SupplyStatus]:
    """Power and water of `building` now, from the open incidents that touch it (counts and times only)."""
    watched = monitored_kinds(site, building)
    out: dict[str, SupplyStatus] = {}
    for kind in ("power", "water"):
        status = SupplyStatus(kind=kind, monitored=kind in watched)
        touching = [
            i
            for i in incidents
            # a drill is no outage: the residents' public page never shows one
            if i.is_open
            and not i.drill
            and ADVICE.get(i.category) == kind
            and building in buildings_of(i, site)
        ]
        if touching:
            status.monitored = True
            status.out = True
            status.recovering = all(i.state == IncidentState.RECOVERING for i in touching)
            status.since = min(i.opened_at for i in touching)
            status.households = max(i.households for i in touching)
            status.incident_ids = sorted(i.id for i in touching)
            views = [v for v in (response(i.id) for i in touching) if v is not None]
            if any(v.on_site_at is not None for v in views):
                status.team = "on_site"
            elif any(v.acked_at is not None for v in views):
                status.team = "acked"
            elif any(v.dispatched_at is not None for v in views):
                status.team = "called"
            else:
                status.team = "unknown"
            etas = [v.eta for v in views if v.eta is not None]
            # the latest promise: residents are better told too late a time than too early a one
            status.eta = max(etas) if etas else None
        out[kind] = status
    return out


def parse_local(value: str, tz: str) -> float:
    """A datetime-local field's value (site local time, no offset) as epoch seconds; ValueError if bad."""
    text = value.strip()
    if not text:
        raise ValueError("empty")
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=ZoneInfo(tz))
    return t.timestamp()


async def form_fields(request: Request) -> dict[str, str]:
    """An urlencoded form body (the pages' forms post nothing else); the first value of each field.
    Read up to FORM_MAX bytes: a bigger body is refused before it is all in memory."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX:
            raise HTTPException(status_code=413, detail=f"form larger than {FORM_MAX} bytes")
    parsed = urllib.parse.parse_qs(bytes(body).decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


# ------------------------------------------------------------------------------------------------ the router


class Pages:
    """What the page handlers share: the site, the desk, the readers and one Jinja2 environment."""

    def __init__(
        self,
        desk: Desk,
        tokens: Tokens,
        site: Site,
        reader: StoreReader,
        presence: DevicePresence,
        signer: LinkSigner | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.desk = desk
        self.tokens = tokens
        self.site = site
        self.reader = reader
        self.presence = presence
        self.signer = signer
        self.clock = clock
        self.tz = site.config.site.timezone
        self.zone = ZoneInfo(self.tz)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.names = {b.id: (b.name or b.id) for b in site.config.buildings}
        self.people = {p.id: p for p in site.config.oncall.people}

    # ---- rendering -----------------------------------------------------------------------------------
    def helpers(self, lang: Lang) -> dict[str, Any]:
        words = WORDS[lang]

        def t(key: str, **kw: Any) -> str:
            text = words[key]
            return text.format(**kw) if kw else text

        def when(ts: float | None, with_date: bool = True) -> str:
            if ts is None:
                return ""
            d = datetime.fromtimestamp(ts, self.zone)
            now = datetime.fromtimestamp(self.clock(), self.zone)
            if not with_date or d.date() == now.date():
                return f"{d:%H:%M}"
            if lang == "zh":
                return f"{d.month}月{d.day}日 {d:%H:%M}"
            return f"{d.day} {d:%b} {d:%H:%M}"

        def duration(seconds: float | None) -> str:
            return format_duration(seconds, lang) if seconds is not None else ""

        def category(c: str) -> str:
            return CATEGORY_NAMES[lang].get(c, c.replace("_", " "))

        def severity(s: str) -> str:
            return SEVERITY_NAMES[lang].get(s, s)

        def event(e: str) -> str:
            return TIMELINE_EVENTS[lang].get(e, e.replace("_", " "))

        def person(pid: str) -> str:
            p = self.people.get(pid)
            return p.name or pid if p is not None else pid

        def who_name(actor: str) -> str:
            # the timeline's actor: a person id of a link, or a token's name
            return person(actor) if actor else ""

        def called(entries: Sequence[str]) -> str:
            # "role:person" in call order -> "值班 王师傅、备班 李工"
            out = []
            for entry in entries:
                role, _, pid = entry.partition(":")
                out.append(f"{words.get('role_' + role, role)} {person(pid)}")
            return ("、" if lang == "zh" else ", ").join(out)

        return {
            "lang": lang,
            "t": t,
            "when": when,
            "duration": duration,
            "category": category,
            "severity": severity,
            "event": event,
            "person": person,
            "who_name": who_name,
            "called": called,
            "what": lambda c: what_happened(c, lang, ""),
            "building_name": lambda b: self.names.get(b, b),
            "q": "?lang=en" if lang == "en" else "",
        }

    def render(
        self,
        request: Request,
        template: str,
        status: int = 200,
        *,
        no_store: bool = True,
        **context: Any,
    ) -> HTMLResponse:
        lang = pick_lang(request)
        nonce = secrets.token_urlsafe(16)
        path = request.url.path
        html = self.env.get_template(template).render(
            **self.helpers(lang),
            nonce=nonce,
            root=relative_root(path),
            lang_switch=path.rsplit("/", 1)[-1] + ("" if lang == "en" else "?lang=en") or "./",
            now=self.clock(),
            site_name=self.site.config.site.name or self.site.config.site.id,
            **context,
        )
        headers = {
            # scripts only with this response's nonce; nothing from elsewhere; never inside a frame
            "Content-Security-Policy": (
                f"default-src 'none'; style-src 'self'; img-src 'self'; script-src 'nonce-{nonce}'; "
                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
            ),
            # the link pages carry a token in their address: it must not leave in a Referer
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        }
        if no_store:
            headers["Cache-Control"] = "no-store"
        return HTMLResponse(html, status_code=status, headers=headers)

    def message(self, request: Request, status: int, title: str, text: str, **extra: Any) -> HTMLResponse:
        return self.render(request, "message.html", status, title=title, text=text, **extra)

    # ---- data ----------------------------------------------------------------------------------------
    async def open_incidents(self) -> list[Incident]:
        return await asyncio.to_thread(self.reader.incidents, "open", OPEN_LIMIT)

    def devices(self, now: float) -> list[BuildingDevices]:
        by_building: dict[str, list[DeviceRow]] = {}
        for d in self.site.config.devices:
            seen = self.presence.devices.get(d.id)
            last = seen.last_sample if seen is not None else None
            by_building.setdefault(d.building, []).append(
                DeviceRow(
                    id=d.id,
                    name=d.name or d.id,
                    up=self.presence.up(d.id, now),
                    last_seen_ago=None if last is None else max(0.0, now - last),
                    reason=seen.reason if seen is not None else "",
                )
            )
        return [
            BuildingDevices(b, self.names.get(b, b), sorted(rows, key=lambda r: (r.up, r.id)))
            for b, rows in by_building.items()
        ]

    def oncall(self, now: float) -> tuple[list[tuple[str, PersonView | None]], bool]:
        """Who holds each role now, and whether an override (not the weekly roster) decides on-call."""
        view: OncallView = self.desk.oncall(now)
        roles = [
            ("oncall", view.oncall),
            ("backup", view.backup),
            ("supervisor", view.supervisor),
            ("manager", view.manager),
        ]
        return roles, view.override

    def who_of(self, request: Request) -> str | None:
        """The token name the request's cookie (or header) proves, or None."""
        if not self.tokens.enabled:
            return None
        try:
            return self.tokens.require(request)
        except HTTPException:
            return None

    def incident_names(self, inc: Incident) -> list[str]:
        return [self.names.get(b, b) for b in buildings_of(inc, self.site)]


@dataclass(frozen=True)
class ConsoleIncident:
    incident: Incident
    buildings: list[str]
    response: ResponseView | None
    clock: TargetClock
    timeline: list[TimelineEntry]
    earlier: int


def _redirect_console(request: Request, done: str = "", incident_id: int | None = None) -> RedirectResponse:
    """303 back to the console (relative, see relative_root), with the notice of what was just done."""
    lang = pick_lang(request)
    query: dict[str, str] = {}
    if lang == "en":
        query["lang"] = "en"
    if done:
        query["done"] = done
        query["id"] = str(incident_id)
    url = relative_root(request.url.path) + (f"?{urllib.parse.urlencode(query)}" if query else "")
    if incident_id is not None:
        url += f"#inc-{incident_id}"
    return RedirectResponse(url, status_code=303)


DONE_KEYS: Mapping[str, str] = {
    "ack": "done_ack",
    "on-site": "done_on_site",
    "note": "done_note",
    "eta": "done_eta",
}


def make_router(
    desk: Desk,
    tokens: Tokens,
    site: Site,
    reader: StoreReader,
    presence: DevicePresence,
    signer: LinkSigner | None,
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    pages = Pages(desk, tokens, site, reader, presence, signer, clock)
    router = APIRouter(include_in_schema=False)
    target = site.config.oncall.target

    # ---- assets --------------------------------------------------------------------------------------
    css = CSS.read_bytes()

    @router.get("/assets/pages.css")
    async def stylesheet() -> Response:
        return Response(css, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"})

    # ---- the console ---------------------------------------------------------------------------------
    @router.get("/", response_class=HTMLResponse)
    async def console(request: Request) -> HTMLResponse:
        who = pages.who_of(request)
        if who is None:
            return pages.render(request, "login.html", 200, enabled=tokens.enabled, error="")
        now = pages.clock()
        incs = await pages.open_incidents()
        rows: list[ConsoleIncident] = []
        # what needs someone first: ongoing before recovering, then the most severe, then the oldest
        for inc in sorted(
            incs,
            key=lambda i: (i.state != IncidentState.FIRING, SEVERITY_RANK.get(i.severity, 9), i.opened_at),
        ):
            rv = desk.response(inc.id)
            entries = await asyncio.to_thread(reader.timeline, inc.id)
            shown = entries[-TIMELINE_SHOWN:][::-1]  # newest first: what just happened is on top
            rows.append(
                ConsoleIncident(
                    incident=inc,
                    buildings=pages.incident_names(inc),
                    response=rv,
                    clock=target_clock(rv, target, now),
                    timeline=shown,
                    earlier=len(entries) - len(shown),
                )
            )
        done_key = DONE_KEYS.get(request.query_params.get("done", ""), "")
        done_id = request.query_params.get("id", "")
        oncall, override = pages.oncall(now)
        return pages.render(
            request,
            "console.html",
            who=who,
            incidents=rows,
            devices=pages.devices(now),
            oncall=oncall,
            oncall_override=override,
            refresh=CONSOLE_REFRESH,
            done=WORDS[pick_lang(request)][done_key].format(id=done_id) if done_key and done_id else "",
            local_input=lambda ts: datetime.fromtimestamp(ts, pages.zone).strftime("%Y-%m-%dT%H:%M"),
        )

    @router.post("/console/login", response_model=None)
    async def login(request: Request) -> Response:
        fields = await form_fields(request)
        presented = fields.get("token", "").strip()
        if not tokens.enabled:
            return pages.render(request, "login.html", 403, enabled=False, error="")
        if not presented or tokens.name_of(presented) is None:
            return pages.render(
                request, "login.html", 403, enabled=True, error=WORDS[pick_lang(request)]["login_bad"]
            )
        resp = _redirect_console(request)
        login_cookie(resp, presented, request)
        return resp

    @router.post("/console/logout")
    async def logout(request: Request) -> RedirectResponse:
        resp = _redirect_console(request)
        logout_cookie(resp)
        return resp

    @router.post("/console/incidents/{incident_id}/{action}", response_model=None)
    async def console_action(request: Request, incident_id: int, action: str) -> Response:
        lang = pick_lang(request)
        words = WORDS[lang]
        who = pages.who_of(request)
        if who is None:
            return pages.render(request, "login.html", 401, enabled=tokens.enabled, error="")
        fields = await form_fields(request)
        try:
            if action == "ack":
                await desk.acknowledge(incident_id, who)
            elif action == "on-site":
                await desk.on_site(incident_id, who)
            elif action == "note":
                text = fields.get("text", "").strip()
                if not text:
                    raise DeskError(400, words["empty_note"])
                if len(text) > NOTE_MAX:
                    raise DeskError(400, words["long_note"].format(n=NOTE_MAX))
                await desk.note(incident_id, who, text)
            elif action == "eta":
                eta: float | None = None
                if "clear" not in fields:
                    value = fields.get("eta", "")
                    try:
                        eta = parse_local(value, pages.tz)
                    except ValueError:
                        raise DeskError(400, words["bad_eta"].format(value=value or "—")) from None
                await desk.set_eta(incident_id, who, eta)
            else:
                raise DeskError(404, words["unknown_action"])
        except DeskError as exc:
            return pages.message(
                request,
                exc.status,
                title=words["refused"],
                text=exc.message,
                detail=words["nothing_changed"],
                back=relative_root(request.url.path) + ("?lang=en" if lang == "en" else ""),
            )
        return _redirect_console(request, action, incident_id)

    # ---- the dispatch message's links ----------------------------------------------------------------
    async def link_page(request: Request, token: str, action: Action, act: bool) -> HTMLResponse:
        lang = pick_lang(request)
        words = WORDS[lang]
        if signer is None:
            return pages.message(request, 404, words["links_off_title"], words["links_off"])
        try:
            claim: LinkClaim = signer.verify(token, action)
        except LinkError as exc:
            text = words[f"link_{exc.reason}"]
            if exc.reason == "expired" and exc.expires_at is not None:
                text = text.format(t=pages.helpers(lang)["when"](exc.expires_at))
            return pages.message(
                request,
                LINK_STATUS[exc.reason],
                words[f"link_{exc.reason}_title"],
                text,
                detail=words["nothing_changed"],
            )
        inc = await asyncio.to_thread(reader.incident, claim.incident_id)
        if inc is None:
            return pages.message(
                request,
                404,
                words["no_incident_title"],
                words["no_incident"].format(id=claim.incident_id),
                detail=words["nothing_changed"],
            )
        rv = desk.response(inc.id)
        done = False
        error = ""
        status = 200
        if act and inc.is_open:
            try:
                rv = await (desk.acknowledge if action == "ack" else desk.on_site)(inc.id, claim.who)
                done = True
            except DeskError as exc:
                error, status = exc.message, exc.status
        return pages.render(
            request,
            "link.html",
            status,
            action=action,
            claim=claim,
            incident=inc,
            buildings=pages.incident_names(inc),
            response=rv,
            done=done,
            error=error,
            # the ack link acknowledges when opened in a browser; a second visit shows what stands
            auto=action == "ack" and not act and inc.is_open and (rv is None or rv.acked_at is None),
            form_action=request.url.path + ("?lang=en" if lang == "en" else ""),
        )

    @router.get("/ack/{token}", response_class=HTMLResponse)
    async def ack_page(request: Request, token: str) -> HTMLResponse:
        return await link_page(request, token, "ack", act=False)

    @router.post("/ack/{token}", response_class=HTMLResponse)
    async def ack_post(request: Request, token: str) -> HTMLResponse:
        return await link_page(request, token, "ack", act=True)

    @router.get("/on-site/{token}", response_class=HTMLResponse)
    async def on_site_page(request: Request, token: str) -> HTMLResponse:
        return await link_page(request, token, "on_site", act=False)

    @router.post("/on-site/{token}", response_class=HTMLResponse)
    async def on_site_post(request: Request, token: str) -> HTMLResponse:
        return await link_page(request, token, "on_site", act=True)

    # ---- the public building page --------------------------------------------------------------------
    @router.get("/b/{building}", response_class=HTMLResponse)
    async def building_page(request: Request, building: str) -> HTMLResponse:
        words = WORDS[pick_lang(request)]
        b = next((b for b in site.config.buildings if b.id == building), None)
        if b is None:
            return pages.message(
                request,
                404,
                words["unknown_building_title"],
                words["unknown_building"].format(id=building),
            )
        incs = await pages.open_incidents()
        status = building_status(site, b.id, incs, desk.response)
        return pages.render(
            request,
            "building.html",
            building=b,
            name=b.name or b.id,
            supplies=[status["power"], status["water"]],
            hotline=site.config.notify.hotline,
            refresh=PUBLIC_REFRESH,
        )

    return router
