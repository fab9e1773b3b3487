"""The incident report a property manager signs: what happened, when each step of the response came, whether
the handbook's targets were met, the readings that showed it, and how far those readings can be trusted.

    report = incident_report(reader, store, site, 42, "zh")      # NoIncident if there is none
    charts = draw_charts(report)                                 # one PNG per device with evidence
    render_markdown(report, {c.name: f"report-42-{c.name}.png" for c in charts})
    render_html(report, charts)                                  # one self-contained page, PNGs inline
    report_json(report)                                          # the same report for a management system

Everything comes from the incident store (gateway/review/data.py, the evidence kept with the incident), never
from the time-series database, which may be down in the very outage. The figures are gateway/review/
measures.py's, whose docstring defines them. Times are shown in the site's time zone, to the second; the JSON
form gives each as `{"ts": <epoch seconds>, "at": <local ISO 8601>}`.

A report is built in one language (zh by default, en on request): its names and words are in that language,
its codes (category, event code, stage, status) are the same in both.
"""

from __future__ import annotations

import base64
import math
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo

import jinja2
from pydantic import BaseModel, ConfigDict, model_validator

from gateway.config import Site
from gateway.core.timefmt import local_iso
from gateway.incidents.store import EvidenceInfo, StoreReader
from gateway.respond.context import buildings_of
from gateway.respond.messages import CATEGORY_NAMES, SEVERITY_NAMES
from gateway.respond.model import DeliveryStatus
from gateway.review import charts as chartlib
from gateway.review.data import IncidentRecord, NoticeRecord, ReviewReader
from gateway.review.measures import Measures, measure
from gateway.review.quality import Evidence, Quality, assess, clean, gap_limit, incident_devices
from rules.model import IncidentEvent

Lang = Literal["zh", "en"]
LANGS: tuple[str, ...] = get_args(Lang)
REPORT_FORMAT = "meterwatch.incident-report/1"
MAX_CHARTS = 8  # devices drawn; the rest are in the JSON form and named in the data quality section

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
PAGES_CSS = HERE.parent / "web" / "static" / "pages.css"


class NoIncident(LookupError):
    """No incident of that id in the store."""


# ------------------------------------------------------------------------------------------------ words

Names = dict[str, dict[str, str]]  # language -> code -> words


class Words(BaseModel):
    """The report's words (templates/incident_words.json), each table in both languages."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    words: Names  # the report's own sentences and headings
    event_codes: Names  # the handbook's event codes 001-006
    events: Names  # timeline events (rules/model.py IncidentEvent) and the report's own rows
    stages: Names  # notice stages (gateway/respond/model.py Stage)
    audiences: Names
    statuses: Names  # a target's delivery status and a notice's state
    states: Names  # incident states
    scopes: Names
    quantities: Names  # kinds of quantity (gateway/review/charts.py family)

    @model_validator(mode="after")
    def _both_languages(self) -> Words:
        for name, table in self:
            if set(table) != set(LANGS) or set(table["zh"]) != set(table["en"]):
                raise ValueError(f"{name}: expected the same keys in zh and en")
        return self


WORDS_FILE = TEMPLATES / "incident_words.json"
_W = Words.model_validate_json(WORDS_FILE.read_bytes())
WORDS, EVENT_CODE_NAMES, EVENT_NAMES = _W.words, _W.event_codes, _W.events
STAGE_NAMES, AUDIENCE_NAMES, STATUS_NAMES = _W.stages, _W.audiences, _W.statuses
STATE_NAMES, SCOPE_NAMES, QUANTITY_NAMES = _W.states, _W.scopes, _W.quantities

# units by the common quantity name, for devices whose profile does not say (MQTT devices)
UNITS = {"voltage": "V", "line_voltage": "V", "current": "A", "power": "W", "frequency": "Hz",
         "pressure": "bar", "flow": "m³/h", "level": "m"}  # fmt: skip


def check_lang(lang: str) -> Lang:
    """The language if the report knows it; ValueError naming the ones it knows."""
    if lang == "zh":
        return "zh"
    if lang == "en":
        return "en"
    raise ValueError(f"unknown language {lang!r}; expected one of {', '.join(LANGS)}")


def duration_text(seconds: float | None, lang: str) -> str:
    """Seconds to the second: 45秒, 12分05秒, 2小时03分 / 45 s, 12 min 05 s, 2 h 03 min."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    s = round(max(0.0, seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    zh = lang == "zh"
    if days:
        return f"{days}天{hours}小时" if zh else f"{days} d {hours} h"
    if hours and not minutes:
        return f"{hours}小时" if zh else f"{hours} h"
    if hours:
        return f"{hours}小时{minutes:02d}分" if zh else f"{hours} h {minutes:02d} min"
    if minutes and not secs:
        return f"{minutes}分钟" if zh else f"{minutes} min"
    if minutes:
        return f"{minutes}分{secs:02d}秒" if zh else f"{minutes} min {secs:02d} s"
    return f"{secs}秒" if zh else f"{secs} s"


# ------------------------------------------------------------------------------------------------ the model


class Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Moment(Part):
    ts: float  # epoch seconds
    at: str  # the site's local time, ISO 8601 to the second


class Named(Part):
    id: str
    name: str


class SiteOut(Part):
    id: str
    name: str
    timezone: str


class Summary(Part):
    incident_id: int
    title: str
    state: str
    state_name: str
    category: str
    category_name: str
    event_code: str
    event_code_name: str
    scope: str
    scope_name: str
    buildings: list[Named]
    households: int
    household_minutes: float
    severity: str
    severity_name: str
    cause: str
    manual: bool
    drill: bool
    flapping: bool
    first_evidence: Moment
    opened: Moment
    resolved: Moment | None
    duration_s: float | None
    classification: list[str]  # the detector's words for why it is this kind of incident


class DeliveryOut(Part):
    target: str  # apprise's privacy form of the URL, never its secret
    status: str
    status_name: str
    attempts: int
    at: Moment
    detail: str


class NoticeOut(Part):
    key: str
    stage: str
    stage_name: str
    channel: str
    audience: str
    audience_name: str
    state: str
    state_name: str
    due: Moment
    delivered: Moment | None  # the first target that took it
    deliveries: list[DeliveryOut]


class TimelineRow(Part):
    at: Moment
    kind: str  # first_evidence, notice, downtime, or an IncidentEvent value
    label: str
    detail: str
    until: Moment | None = None  # a downtime's end
    notice: NoticeOut | None = None


class TargetOut(Part):
    key: Literal["detect", "inform", "acknowledge", "on_site", "outage"]
    label: str
    basis: str  # from which moment to which
    seconds: float | None
    value: str
    target_s: float | None
    target: str
    met: bool | None
    verdict: str


class ChannelCount(Part):
    channel: str
    sent: int
    failed: int


class MarkOut(Part):
    kind: str
    label: str
    at: Moment


class SeriesOut(Part):
    device: str
    device_name: str
    quantity: str
    unit: str
    gap_after_s: float  # a longer silence between two readings is a gap (drawn as a break)
    points: list[tuple[float, float]]


class ChartOut(Part):
    name: str  # file-safe; the PNG beside a Markdown report is report-<id>-<name>.png
    title: str
    device: str


class GapOut(Part):
    device: str
    device_name: str
    start: Moment
    end: Moment
    seconds: float
    expected: bool


class SilentOut(Part):
    device: str
    device_name: str
    since: Moment | None
    expected: bool


class DowntimeOut(Part):
    start: Moment
    end: Moment
    seconds: float
    clean_stop: bool


class QualityOut(Part):
    has_evidence: bool
    devices: int
    samples: int
    start: Moment | None
    end: Moment | None
    gaps: list[GapOut]
    silent: list[SilentOut]
    downtimes: list[DowntimeOut]
    notes: list[str]


class IncidentReport(Part):
    format: str = REPORT_FORMAT
    lang: Lang
    site: SiteOut
    generated: Moment
    summary: Summary
    timeline: list[TimelineRow]
    targets: list[TargetOut]
    notices: list[ChannelCount]
    votes: dict[str, int]
    marks: list[MarkOut]
    evidence: list[SeriesOut]
    charts: list[ChartOut]
    quality: QualityOut


# ------------------------------------------------------------------------------------------------ building


@dataclass(frozen=True, slots=True)
class KeptEvidence:
    """An incident's evidence as read from the store: the readings, how they were thinned (None: not known),
    and why none could be read, if so."""

    readings: Evidence
    info: EvidenceInfo | None = None
    problem: str | None = None


def read_evidence(store: StoreReader, incident_id: int) -> KeptEvidence:
    """The evidence the store keeps with an incident. A store written before evidence was kept has no such
    table: that is no evidence, not a problem; any other failure to read it is said in the report."""
    try:
        return KeptEvidence(store.evidence(incident_id), store.evidence_info(incident_id))
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return KeptEvidence({})
        return KeptEvidence({}, problem=str(exc))
    except sqlite3.Error as exc:
        return KeptEvidence({}, problem=str(exc))


class _Builder:
    """What building one report needs at hand: the site, its zone and the report's words."""

    def __init__(self, site: Site, lang: Lang) -> None:
        self.site = site
        self.lang = lang
        self.tz = site.config.site.timezone
        self.words = WORDS[lang]
        self.names = {b.id: (b.name or b.id) for b in site.config.buildings}

    def moment(self, ts: float) -> Moment:
        return Moment(ts=ts, at=local_iso(ts, self.tz))

    def maybe(self, ts: float | None) -> Moment | None:
        return None if ts is None else self.moment(ts)

    def w(self, key: str, **kw: Any) -> str:
        text = self.words[key]
        return text.format(**kw) if kw else text

    def stamp(self, ts: float) -> str:
        return datetime.fromtimestamp(ts, ZoneInfo(self.tz)).strftime("%Y-%m-%d %H:%M:%S")

    def device_name(self, device: str) -> str:
        try:
            return self.site.device(device).name or device
        except KeyError:
            return device

    def unit(self, device: str, quantity: str) -> str:
        try:
            dev = self.site.device(device)
        except KeyError:
            dev = None
        profile = self.site.profiles.get(dev.profile or "") if dev is not None else None
        if profile is not None:
            try:
                return profile.point(quantity).unit
            except KeyError:
                pass
        return UNITS.get(chartlib.family(quantity), "")

    def audience(self, audience: str) -> str:
        kind, _, ref = audience.partition(":")
        names = AUDIENCE_NAMES[self.lang]
        if kind == "person":
            people = {p.id: p.name or p.id for p in self.site.config.oncall.people}
            return people.get(ref, ref)
        if kind == "residents" and ref:
            return (
                f"{names['residents']}（{self.names.get(ref, ref)}）"
                if self.lang == "zh"
                else (f"residents of {self.names.get(ref, ref)}")
            )
        return names.get(kind, audience)

    def scope(self, scope: str) -> str:
        kind, _, ref = scope.partition(":")
        word = SCOPE_NAMES[self.lang].get(kind, kind)
        if not ref:
            return word
        if kind == "building":
            ref = self.names.get(ref, ref)
        elif kind == "domain":
            found = self.site.domains().get(ref)
            if found is not None and found[1].name:
                ref = found[1].name
        elif kind == "device":
            ref = self.device_name(ref)
        return f"{word} {ref}"


def _notice(b: _Builder, n: NoticeRecord) -> NoticeOut:
    status, stage = STATUS_NAMES[b.lang], STAGE_NAMES[b.lang]
    return NoticeOut(
        key=n.key,
        stage=n.stage,
        stage_name=stage.get(n.stage, n.stage),
        channel=n.channel,
        audience=n.audience,
        audience_name=b.audience(n.audience),
        state=n.state,
        state_name=status.get(n.state, n.state),
        due=b.moment(n.due_at),
        delivered=b.maybe(n.delivered_at),
        deliveries=[
            DeliveryOut(
                target=d.target,
                status=str(d.status),
                status_name=status.get(str(d.status), str(d.status)),
                attempts=d.attempts,
                at=b.moment(d.at),
                detail=d.detail,
            )
            for d in n.deliveries
        ],
    )


def _notice_time(n: NoticeRecord) -> float:
    """Where a notice stands in the timeline: its first delivery, else its last attempt, else when due."""
    if n.delivered_at is not None:
        return n.delivered_at
    if n.deliveries:
        return max(d.at for d in n.deliveries)
    return n.due_at


def _timeline(b: _Builder, rec: IncidentRecord) -> list[TimelineRow]:
    events = EVENT_NAMES[b.lang]
    rows: list[tuple[float, int, TimelineRow]] = []
    first = rec.incident.first_evidence_at
    rows.append((first, 0, TimelineRow(at=b.moment(first), kind="first_evidence",
                                       label=events["first_evidence"], detail="")))  # fmt: skip
    for e in rec.timeline:
        # the downtime rows below say the same with both ends
        if e.event == IncidentEvent.GATEWAY_DOWN and rec.downtimes:
            continue
        label = events.get(e.event, e.event.replace("_", " "))
        rows.append((e.ts, 1, TimelineRow(at=b.moment(e.ts), kind=e.event, label=label, detail=e.detail)))
    for n in rec.notices:
        out = _notice(b, n)
        arrow = "→"
        detail = f"{out.channel} {arrow} {out.audience_name}: {out.state_name}"
        t = _notice_time(n)
        rows.append((t, 2, TimelineRow(at=b.moment(t), kind="notice", label=out.stage_name, detail=detail,
                                       notice=out)))  # fmt: skip
    for d in rec.downtimes:
        detail = b.w("clean") if d.clean_stop else b.w("unclean")
        detail += f", {duration_text(d.seconds, b.lang)}"
        rows.append((d.down_from, 1, TimelineRow(at=b.moment(d.down_from), kind="downtime",
                                                 label=events["downtime"], detail=detail,
                                                 until=b.moment(d.down_to))))  # fmt: skip
    return [r for _, _, r in sorted(rows, key=lambda x: (x[0], x[1]))]


def _verdict(b: _Builder, met: bool | None, happened: bool, applies: bool, why_not: str) -> str:
    if not applies:
        return why_not
    if not happened:
        return b.w("not_happened")
    return b.w("met") if met else b.w("missed")


def _targets(b: _Builder, m: Measures) -> list[TargetOut]:
    cfg = b.site.config
    lang = b.lang
    inform_within = float(cfg.review.inform_within)
    response = float(cfg.oncall.target)
    dispatched = m.dispatched_at is not None
    on_site_met = None if m.on_site_s is None else m.on_site_s <= response
    rows: list[tuple[str, float | None, float | None, bool | None, str]] = [
        ("detect", m.detect_s, None, None, ""),
        ("inform", m.inform_s, inform_within, m.informed_in_time,
         _verdict(b, m.informed_in_time, m.inform_s is not None, m.outage, b.w("inform_na"))),
        ("acknowledge", m.ack_s, response, m.response_in_time,
         _verdict(b, m.response_in_time, m.ack_s is not None, dispatched, b.w("not_dispatched"))),
        ("on_site", m.on_site_s, response, on_site_met,
         _verdict(b, on_site_met, m.on_site_s is not None, dispatched, b.w("not_dispatched"))),
        ("outage", m.duration_s, None, None, "" if m.duration_s is not None else b.w("not_yet")),
    ]  # fmt: skip
    out = []
    for key, seconds, target, met, verdict in rows:
        # an acknowledgement still missing after the target has missed it already
        if key == "acknowledge" and dispatched and m.ack_s is None and m.response_in_time is False:
            verdict = b.w("missed")
        out.append(
            TargetOut(
                key=key,
                label=b.w(key),
                basis=b.w(f"{key}_basis"),
                seconds=seconds,
                value=duration_text(seconds, lang),
                target_s=target,
                target=f"≤ {duration_text(target, lang)}" if target is not None else b.w("no_target"),
                met=met,
                verdict=verdict,
            )
        )
    return out


def _marks(b: _Builder, rec: IncidentRecord, m: Measures) -> list[MarkOut]:
    moments = [
        ("first_evidence", m.first_evidence_at),
        ("opened", m.opened_at),
        ("dispatched", m.dispatched_at),
        ("acknowledged", m.acked_at),
        ("on_site", m.on_site_at),
        ("resolved", m.resolved_at),
    ]
    events = EVENT_NAMES[b.lang]
    return [MarkOut(kind=k, label=events[k], at=b.moment(t)) for k, t in moments if t is not None]


def _series(
    b: _Builder, rec: IncidentRecord, data: Mapping[str, Mapping[str, list[tuple[float, float]]]]
) -> list[SeriesOut]:
    # the incident's own devices first, then the others
    order = {d: i for i, d in enumerate(incident_devices(rec.incident))}
    out = []
    for device in sorted(data, key=lambda d: (order.get(d, len(order)), d)):
        quantities = data[device]
        times = sorted({ts for pts in quantities.values() for ts, _ in pts})
        limit = gap_limit(b.site, device, times)
        for quantity in sorted(quantities):
            out.append(
                SeriesOut(
                    device=device,
                    device_name=b.device_name(device),
                    quantity=quantity,
                    unit=b.unit(device, quantity),
                    gap_after_s=limit,
                    points=list(quantities[quantity]),
                )
            )
    return out


def _quality(
    b: _Builder, q: Quality, rec: IncidentRecord, stored: KeptEvidence, not_charted: list[str]
) -> QualityOut:
    notes = []
    if stored.problem is not None:
        notes.append(b.w("note_evidence_error", error=stored.problem))
    elif not q.has_evidence:
        notes.append(b.w("note_no_evidence"))
    info = stored.info
    if info is not None and info.spacing is not None and info.thinned:
        every = duration_text(info.spacing, b.lang)
        notes.append(b.w("note_thinned", every=every, n=info.thinned))
    if q.starts_late and q.start is not None:
        notes.append(b.w("note_starts_late", t=b.stamp(q.start), t0=b.stamp(rec.incident.first_evidence_at)))
    if q.dropped:
        notes.append(b.w("note_dropped", n=q.dropped))
    if q.unordered:
        notes.append(b.w("note_unordered", which=", ".join(q.unordered[:5])))
    if q.far:
        notes.append(b.w("note_far", which=", ".join(q.far[:5])))
    if q.downtimes:
        notes.append(b.w("downtime_note"))
    if not_charted:
        notes.append(b.w("note_not_charted", n=len(not_charted), which=", ".join(not_charted)))
    return QualityOut(
        has_evidence=q.has_evidence,
        devices=q.devices,
        samples=q.samples,
        start=b.maybe(q.start),
        end=b.maybe(q.end),
        gaps=[
            GapOut(
                device=g.device,
                device_name=b.device_name(g.device),
                start=b.moment(g.start),
                end=b.moment(g.end),
                seconds=g.seconds,
                expected=g.expected,
            )
            for g in q.gaps
        ],
        silent=[
            SilentOut(
                device=s.device,
                device_name=b.device_name(s.device),
                since=b.maybe(s.since),
                expected=s.expected,
            )
            for s in q.silent
        ],
        downtimes=[
            DowntimeOut(
                start=b.moment(d.down_from),
                end=b.moment(d.down_to),
                seconds=d.seconds,
                clean_stop=d.clean_stop,
            )
            for d in q.downtimes
        ],
        notes=notes,
    )


def build_report(
    rec: IncidentRecord,
    site: Site,
    evidence: Evidence | KeptEvidence,
    lang: str = "zh",
    *,
    now: float | None = None,
) -> IncidentReport:
    """The report of one incident's record; `evidence` its readings as the store keeps them (empty: none
    kept), or all read_evidence found."""
    stored = evidence if isinstance(evidence, KeptEvidence) else KeptEvidence(evidence)
    b = _Builder(site, check_lang(lang))
    inc = rec.incident
    m = measure(rec, site)
    data, _ = clean(stored.readings)
    quality = assess(stored.readings, site, inc, rec.downtimes)
    series = _series(b, rec, data)
    devices = list(dict.fromkeys(s.device for s in series))
    charted, not_charted = devices[:MAX_CHARTS], devices[MAX_CHARTS:]
    building_of = {d.id: d.building for d in site.config.devices}
    charts = [
        ChartOut(
            name=_file_safe(d),
            title=b.w("chart_title", device=b.device_name(d),
                      building=b.names.get(building_of.get(d, ""), building_of.get(d, "?"))),
            device=d,
        )
        for d in charted
    ]  # fmt: skip
    summary = Summary(
        incident_id=inc.id,
        title=inc.title,
        state=str(inc.state),
        state_name=STATE_NAMES[b.lang].get(str(inc.state), str(inc.state)),
        category=inc.category,
        category_name=CATEGORY_NAMES[b.lang].get(inc.category, inc.category.replace("_", " ")),
        event_code=inc.event_code,
        event_code_name=EVENT_CODE_NAMES[b.lang].get(inc.event_code, ""),
        scope=inc.scope,
        scope_name=b.scope(inc.scope),
        buildings=[Named(id=x, name=b.names.get(x, x)) for x in buildings_of(inc, site)],
        households=inc.households,
        household_minutes=round(m.household_minutes, 1),
        severity=inc.severity,
        severity_name=SEVERITY_NAMES[b.lang].get(inc.severity, inc.severity),
        cause=(f"[{m.cause_code}] " if m.cause_code else "") + m.cause,
        manual=inc.manual,
        drill=inc.drill,
        flapping=inc.flapping,
        first_evidence=b.moment(inc.first_evidence_at),
        opened=b.moment(inc.opened_at),
        resolved=b.maybe(inc.resolved_at),
        duration_s=m.duration_s,
        classification=list(inc.evidence),
    )
    counts: dict[str, list[int]] = {}
    for n in rec.notices:
        for d in n.deliveries:
            c = counts.setdefault(n.channel, [0, 0])
            c[0 if d.status == DeliveryStatus.SUCCESS else 1] += 1
    info = site.config.site
    return IncidentReport(
        lang=b.lang,
        site=SiteOut(id=info.id, name=info.name or info.id, timezone=info.timezone),
        generated=b.moment(time.time() if now is None else now),
        summary=summary,
        timeline=_timeline(b, rec),
        targets=_targets(b, m),
        notices=[ChannelCount(channel=k, sent=v[0], failed=v[1]) for k, v in sorted(counts.items())],
        votes=dict(sorted(m.votes.items())),
        marks=_marks(b, rec, m),
        evidence=series,
        charts=charts,
        quality=_quality(b, quality, rec, stored, not_charted),
    )


def incident_report(
    reader: ReviewReader, store: StoreReader, site: Site, incident_id: int, lang: str = "zh",
    *, now: float | None = None,
) -> IncidentReport:  # fmt: skip
    """The report of an incident in the store; NoIncident when there is none of that id, FileNotFoundError
    when there is no store, ValueError for an unknown language (checked first: nothing is read then)."""
    check_lang(lang)
    rec = reader.record(incident_id)
    if rec is None:
        raise NoIncident(f"no incident {incident_id} in {reader.path}")
    return build_report(rec, site, read_evidence(store, incident_id), lang, now=now)


def _file_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "device"


# ------------------------------------------------------------------------------------------------ charts


@dataclass(frozen=True, slots=True)
class Chart:
    name: str
    title: str
    png: bytes

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def chart_specs(report: IncidentReport, ascii_only: bool = False) -> list[chartlib.ChartSpec]:
    """What to draw for each chart of the report; `ascii_only` words in English and device ids in place of
    names (no CJK font installed: Chinese would show as empty boxes)."""
    lang = "en" if ascii_only else report.lang
    events, words, qnames = EVENT_NAMES[lang], WORDS[lang], QUANTITY_NAMES[lang]
    tz = ZoneInfo(report.site.timezone)

    def hms(ts: float) -> str:
        return datetime.fromtimestamp(ts, tz).strftime("%H:%M:%S")

    marks = [chartlib.Mark(m.kind, f"{events[m.kind]} {hms(m.at.ts)}", m.at.ts) for m in report.marks]
    s = report.summary
    end = (
        s.resolved.ts
        if s.resolved is not None
        else max([s.first_evidence.ts] + [p[0] for x in report.evidence for p in x.points[-1:]])
    )
    spans = [chartlib.Span("incident", words["incident_span"], s.first_evidence.ts, end)]
    spans += [
        chartlib.Span("downtime", words["downtime_span"], d.start.ts, d.end.ts)
        for d in report.quality.downtimes
    ]
    specs = []
    for chart in report.charts:
        series = {x.quantity: x for x in report.evidence if x.device == chart.device}
        panels = []
        for group in chartlib.panels_of(list(series)):
            fam = chartlib.family(group[0])
            unit = series[group[0]].unit
            what = qnames.get(fam, group[0].replace("_", " "))
            label = f"{what} ({unit})" if unit else what
            lines = [
                chartlib.Line(
                    q.removeprefix(fam + "_").upper() if len(group) > 1 else what,
                    series[q].points,
                    series[q].gap_after_s,
                )
                for q in group
            ]
            panels.append(chartlib.Panel(label, lines))
        title = chart.title
        if ascii_only:
            title = chart.device
        specs.append(chartlib.ChartSpec(chart.name, title, panels, marks, spans))
    return specs


def draw_charts(report: IncidentReport) -> list[Chart]:
    """Every chart of the report as PNG, in the report's language if a font can write it."""
    font = chartlib.cjk_font()
    ascii_only = report.lang == "zh" and font is None
    specs = chart_specs(report, ascii_only=ascii_only)
    return [
        Chart(spec.name, chart.title, chartlib.draw(spec, report.site.timezone, font))
        for spec, chart in zip(specs, report.charts, strict=True)
    ]


# ------------------------------------------------------------------------------------------------ rendering


def _md_cell(value: object) -> str:
    """Text safe in a Markdown table cell: no pipe ends the cell, no line break ends the row."""
    return " ".join(str(value).split()).replace("\\", "\\\\").replace("|", "\\|")


def _env(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["cell"] = _md_cell
    return env


_HTML = _env(True)
_MD = _env(False)


def _helpers(report: IncidentReport) -> dict[str, Any]:
    lang = report.lang
    words = WORDS[lang]
    zone = ZoneInfo(report.site.timezone)
    day = datetime.fromtimestamp(report.summary.first_evidence.ts, zone).date()

    def t(key: str, **kw: Any) -> str:
        text = words[key]
        return text.format(**kw) if kw else text

    def stamp(m: Moment | None) -> str:
        """Date and time to the second."""
        return "" if m is None else datetime.fromtimestamp(m.ts, zone).strftime("%Y-%m-%d %H:%M:%S")

    def clock(m: Moment | None) -> str:
        """Time to the second; with the date when it is not the incident's first day."""
        if m is None:
            return ""
        d = datetime.fromtimestamp(m.ts, zone)
        return d.strftime("%H:%M:%S") if d.date() == day else d.strftime("%m-%d %H:%M:%S")

    def duration(seconds: float | None) -> str:
        return duration_text(seconds, lang)

    return {"t": t, "stamp": stamp, "clock": clock, "duration": duration, "r": report, "s": report.summary,
            "q": report.quality, "sep": "、" if lang == "zh" else ", "}  # fmt: skip


def render_markdown(report: IncidentReport, chart_files: Mapping[str, str] | None = None) -> str:
    """The report as Markdown; `chart_files` maps a chart's name to the PNG path the text links to (charts
    without one are left out)."""
    files = dict(chart_files or {})
    charts = [(c, files[c.name]) for c in report.charts if c.name in files]
    return _MD.get_template("incident.md.j2").render(**_helpers(report), charts=charts)


def render_html(report: IncidentReport, charts: Sequence[Chart] = (), lang_link: str | None = None) -> str:
    """The report as one HTML page with its style and charts inside (no other file, nothing fetched);
    `lang_link` the address of the same report in the other language (served pages), if any."""
    css = PAGES_CSS.read_text(encoding="utf-8") if PAGES_CSS.is_file() else ""
    css += (TEMPLATES / "report.css").read_text(encoding="utf-8")
    return _HTML.get_template("incident.html").render(
        **_helpers(report), charts=list(charts), css=css, lang_link=lang_link
    )


def report_json(report: IncidentReport) -> dict[str, Any]:
    """The report as JSON-able data (times as {"ts", "at"}); the evidence's readings as [ts, value] pairs."""
    return report.model_dump(mode="json")
