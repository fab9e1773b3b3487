"""The monthly review: a month's incidents measured against the handbook's targets, from the incident store.

    start, end = month_bounds("2026-11", "Asia/Shanghai")       # the month in the site's time zone
    review = monthly_review(site, ReviewReader(store), "2026-11")
    render_month_markdown(review, "zh"); render_month_html(review, "en")    # Chinese unless told otherwise
    month_csv(review); month_json(review)                                    # the incident list; the figures

Every incident opened in the month counts in it, whole: one that runs past the month's end counts in the
month it opened (and only there), so months add up. Drills are kept apart: they never count in the real
figures and have their own section. A figure with nothing to measure is None ("—"), never 100 %.
Per-incident figures come from gateway/review/measures.py; what each one means is said in DEFINITIONS,
and the rendered review says it too.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2

from gateway.config import Site
from gateway.core.timefmt import local_iso
from gateway.respond.messages import CATEGORY_NAMES, SEVERITY_NAMES
from gateway.review import kpi_charts
from gateway.review.data import IncidentRecord, ReviewReader
from gateway.review.measures import Measures, measure

TEMPLATES = Path(__file__).resolve().parent / "templates"
LANGS = ("zh", "en")
RATINGS = ("satisfied", "neutral", "unsatisfied")
TOP_DEVICES = 10  # the device table shows the worst ten; the JSON has them all
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")

# The order the figures are shown and their keys in the words file, the JSON and the CSV.
KPI_KEYS = ("informed", "response", "satisfaction")
TIME_KEYS = ("ack", "on_site", "restore")


# ---- the month ---------------------------------------------------------------------------------------------
def parse_month(month: str) -> tuple[int, int]:
    """`YYYY-MM` -> (year, month); ValueError naming what was given and what is expected."""
    m = _MONTH.match(month) if isinstance(month, str) else None
    if m is None:
        raise ValueError(f"month: expected YYYY-MM such as 2026-11, got {month!r}")
    year, mon = int(m.group(1)), int(m.group(2))
    if not 1 <= mon <= 12:
        raise ValueError(f"month: {month!r} has month {mon:02d}; expected 01 to 12")
    if year < 1970:
        raise ValueError(f"month: {month!r} is before 1970; the incident store has nothing that old")
    return year, mon


def month_bounds(month: str, tz: str) -> tuple[float, float]:
    """The month's first instant and the next month's first instant, as epoch seconds, in the zone `tz`
    (an IANA name such as Asia/Shanghai). ValueError for anything but YYYY-MM or an unknown zone."""
    year, mon = parse_month(month)
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"time zone: expected an IANA name such as Asia/Shanghai, got {tz!r}") from exc
    nxt = (year + 1, 1) if mon == 12 else (year, mon + 1)
    start = datetime(year, mon, 1, tzinfo=zone).timestamp()
    end = datetime(nxt[0], nxt[1], 1, tzinfo=zone).timestamp()
    return start, end


# ---- the figures -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Kpi:
    """A share against its target: `met` of `total`; no total, no value (shown "—", never 100 %)."""

    key: str  # one of KPI_KEYS
    met: int
    total: int
    target: float

    @property
    def value(self) -> float | None:
        return self.met / self.total if self.total else None

    @property
    def ok(self) -> bool | None:
        v = self.value
        return None if v is None else v >= self.target


def nearest_rank(values: Sequence[float], q: float) -> float | None:
    """The q-quantile by nearest rank: the smallest value at least a share q of the values are at most
    (p90: 90 % were within it). None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@dataclass(frozen=True, slots=True)
class Spread:
    """Times of one kind (seconds) over the month's incidents, and how many had none (never acknowledged,
    still open)."""

    key: str  # one of TIME_KEYS
    values: tuple[float, ...]
    missing: int

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def p90(self) -> float | None:
        return nearest_rank(self.values, 0.9)


@dataclass(frozen=True, slots=True)
class BuildingMinutes:
    """A building's supply outages: household-minutes without supply and, per household, the SAIDI-like
    minutes (None when the site file gives the building no households)."""

    building: str
    name: str
    households: int
    outages: int
    household_minutes: float

    @property
    def per_household(self) -> float | None:
        return self.household_minutes / self.households if self.households else None


@dataclass(frozen=True, slots=True)
class DeviceFaults:
    device: str
    name: str
    building: str
    incidents: int  # real incidents naming the device
    faults: int  # of them, on the device alone (scope device:<id>), not communication
    comm_faults: int  # communication faults naming it


@dataclass(frozen=True, slots=True)
class ChannelCount:
    channel: str
    sent: int
    failed: int


@dataclass(frozen=True, slots=True)
class Row:
    """One incident of the month: its measures and what the list shows beside them."""

    m: Measures
    title: str
    state: str
    devices: tuple[str, ...]
    continues: bool  # still open at the month's end, or resolved after it


@dataclass(frozen=True, slots=True)
class MonthlyReview:
    site_id: str
    site_name: str
    timezone: str
    month: str
    start: float
    end: float
    generated_at: float
    inform_within: float  # seconds (review.inform_within)
    response_target: float  # seconds (oncall.target)
    rows: tuple[Row, ...]  # real incidents, oldest first
    drills: tuple[Row, ...]
    kpis: tuple[Kpi, ...]
    times: tuple[Spread, ...]
    drill_times: tuple[Spread, ...]
    by_category: tuple[tuple[str, int], ...]
    by_event_code: tuple[tuple[str, int], ...]
    by_building: tuple[tuple[str, int], ...]
    by_device: tuple[tuple[str, int], ...]
    buildings: tuple[BuildingMinutes, ...]
    devices: tuple[DeviceFaults, ...]  # every device some real incident named, worst first
    channels: tuple[ChannelCount, ...]
    drill_channels: tuple[ChannelCount, ...]
    votes: dict[str, int] = field(default_factory=dict)  # rating -> votes, real incidents

    @property
    def in_progress(self) -> bool:
        """Generated before the month was over: the figures are so far."""
        return self.generated_at < self.end

    def kpi(self, key: str) -> Kpi:
        return next(k for k in self.kpis if k.key == key)

    def spread(self, key: str) -> Spread:
        return next(s for s in self.times if s.key == key)


def _devices(rec: IncidentRecord) -> tuple[str, ...]:
    """The devices an incident names: its symptoms and a device scope. Symptom keys with a colon are not
    devices (a failing channel's staff incident names `channel:<name>`); device ids never hold one."""
    inc = rec.incident
    found = {d for d in inc.symptoms if ":" not in d}
    kind, _, ref = inc.scope.partition(":")
    if kind == "device" and ref:
        found.add(ref)
    return tuple(sorted(found))


def _row(rec: IncidentRecord, m: Measures, end: float) -> Row:
    inc = rec.incident
    continues = inc.resolved_at is None or inc.resolved_at >= end
    return Row(m, inc.title, str(inc.state), _devices(rec), continues)


def _counted(items: Iterable[str]) -> tuple[tuple[str, int], ...]:
    """Most first, then by name, so equal counts keep one order."""
    return tuple(sorted(Counter(items).items(), key=lambda kv: (-kv[1], kv[0])))


def _spreads(rows: Sequence[Row]) -> tuple[Spread, ...]:
    dispatched = [r.m for r in rows if r.m.dispatched_at is not None]
    ack = [m.ack_s for m in dispatched if m.ack_s is not None]
    on_site = [m.on_site_s for m in dispatched if m.on_site_s is not None]
    restore = [r.m.duration_s for r in rows if r.m.duration_s is not None]
    return (
        Spread("ack", tuple(ack), len(dispatched) - len(ack)),
        Spread("on_site", tuple(on_site), len(dispatched) - len(on_site)),
        Spread("restore", tuple(restore), len(rows) - len(restore)),
    )


def _channels(rows: Sequence[Row]) -> tuple[ChannelCount, ...]:
    total: Counter[str] = Counter()
    for r in rows:
        total.update(r.m.notices)
    names = sorted({k.rsplit("/", 1)[0] for k in total})
    return tuple(ChannelCount(c, total[f"{c}/sent"], total[f"{c}/failed"]) for c in names)


def _split_minutes(m: Measures, households: dict[str, int]) -> dict[str, float]:
    """An incident's household-minutes per building it touches, in proportion to the buildings'
    households (the site file's); equal shares when it gives none."""
    if m.household_minutes <= 0 or not m.buildings:
        return {}
    weights = [households.get(b, 0) for b in m.buildings]
    total = sum(weights)
    if total <= 0:
        return {b: m.household_minutes / len(m.buildings) for b in m.buildings}
    return {b: m.household_minutes * w / total for b, w in zip(m.buildings, weights, strict=True)}


def _buildings(rows: Sequence[Row], site: Site) -> tuple[BuildingMinutes, ...]:
    conf = {b.id: b for b in site.config.buildings}
    households = {b.id: b.households for b in site.config.buildings}
    minutes: dict[str, float] = {}
    outages: Counter[str] = Counter()
    for r in rows:
        for b, hm in _split_minutes(r.m, households).items():
            minutes[b] = minutes.get(b, 0.0) + hm
            outages[b] += 1
    # every building of the site, even one with no outage (a row of zeros says so); then any building an
    # incident names that the site file no longer has
    ids = [b.id for b in site.config.buildings] + sorted(set(minutes) - set(conf))
    return tuple(
        BuildingMinutes(
            b,
            (conf[b].name or b) if b in conf else b,
            households.get(b, 0),
            outages[b],
            minutes.get(b, 0.0),
        )
        for b in ids
    )


def _device_faults(rows: Sequence[Row], site: Site) -> tuple[DeviceFaults, ...]:
    named: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    comm: Counter[str] = Counter()
    for r in rows:
        named.update(r.devices)
        if r.m.category == "comm_fault":
            comm.update(r.devices)
        elif r.m.scope.startswith("device:"):
            faults[r.m.scope.split(":", 1)[1]] += 1
    conf = {d.id: d for d in site.config.devices}
    out = [
        DeviceFaults(
            d,
            (conf[d].name or d) if d in conf else d,
            conf[d].building if d in conf else "",
            named[d],
            faults[d],
            comm[d],
        )
        for d in named
    ]
    return tuple(sorted(out, key=lambda x: (-(x.faults + x.comm_faults), -x.incidents, x.device)))


def monthly_review(
    site: Site, reader: ReviewReader, month: str, *, now: float | None = None
) -> MonthlyReview:
    """The review of `month` (YYYY-MM, the site's time zone) from the incident store `reader` reads.
    `now` (default: the clock) says when it was made; before the month's end its figures are so far."""
    cfg = site.config
    tz = cfg.site.timezone
    start, end = month_bounds(month, tz)
    real: list[Row] = []
    drills: list[Row] = []
    for rec in reader.records_between(start, end):
        m = measure(rec, site)
        (drills if m.drill else real).append(_row(rec, m, end))
    outages = [r.m for r in real if r.m.outage]
    responses = [r.m for r in real if r.m.response_in_time is not None]
    votes: Counter[str] = Counter()
    for r in real:
        votes.update(r.m.votes)
    kpis = (
        Kpi("informed", sum(1 for m in outages if m.informed_in_time), len(outages), cfg.review.inform_share),
        Kpi(
            "response",
            sum(1 for m in responses if m.response_in_time),
            len(responses),
            cfg.review.response_share,
        ),
        Kpi("satisfaction", votes["satisfied"], sum(votes.values()), cfg.review.satisfaction),
    )
    return MonthlyReview(
        site_id=cfg.site.id,
        site_name=cfg.site.name or cfg.site.id,
        timezone=tz,
        month=month,
        start=start,
        end=end,
        generated_at=time.time() if now is None else now,
        inform_within=cfg.review.inform_within,
        response_target=cfg.oncall.target,
        rows=tuple(real),
        drills=tuple(drills),
        kpis=kpis,
        times=_spreads(real),
        drill_times=_spreads(drills),
        by_category=_counted(r.m.category for r in real),
        by_event_code=_counted(r.m.event_code for r in real),
        by_building=_counted(b for r in real for b in r.m.buildings),
        by_device=_counted(d for r in real for d in r.devices),
        buildings=_buildings(real, site),
        devices=_device_faults(real, site),
        channels=_channels(real),
        drill_channels=_channels(drills),
        votes={k: votes[k] for k in sorted(votes, key=lambda k: (*RATINGS, k).index(k))},
    )


# ---- words -------------------------------------------------------------------------------------------------
@cache
def _words() -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = json.loads((TEMPLATES / "month_words.json").read_text(encoding="utf-8"))
    return data


def _check_lang(lang: str) -> str:
    if lang not in LANGS:
        raise ValueError(f"lang: expected zh (Chinese) or en (English), got {lang!r}")
    return lang


@dataclass(frozen=True, slots=True)
class Definition:
    key: str
    name: str
    text: str


def definitions(review: MonthlyReview, lang: str) -> list[Definition]:
    """What each figure means in `lang`, one line each, with the site's own thresholds filled in."""
    w = _words()[_check_lang(lang)]
    values = {
        "inform_min": _num(review.inform_within / 60),
        "response_min": _num(review.response_target / 60),
    }
    return [Definition(k, w["def_names"][k], text.format(**values)) for k, text in w["definitions"].items()]


def _num(x: float) -> str:
    return f"{x:g}"


_SIGN = {"met": "🟢", "missed": "🔴", "none": "⚪"}


# ---- formatting (shared by the templates) ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Fmt:
    lang: str
    tz: str
    response_s: float = 1800.0

    @property
    def w(self) -> dict[str, Any]:
        return _words()[self.lang]

    def t(self, key: str, **kw: Any) -> str:
        text = str(self.w[key])
        return text.format(**kw) if kw else text

    def kpi_name(self, key: str) -> str:
        return str(self.w["kpi_names"][key]).format(response_min=_num(self.response_s / 60))

    def pct(self, v: float | None) -> str:
        return "—" if v is None else f"{v * 100:.1f} %"

    def minutes(self, seconds: float | None) -> str:
        if seconds is None:
            return "—"
        return f"{seconds / 60:.1f} {self.w['min']}"

    def hm(self, value: float) -> str:
        return f"{value:,.0f}"

    def when(self, ts: float | None) -> str:
        if ts is None:
            return "—"
        d = datetime.fromtimestamp(ts, ZoneInfo(self.tz))
        return f"{d:%m-%d %H:%M}"

    def category(self, c: str) -> str:
        own = self.w["categories"].get(c)
        return str(own or CATEGORY_NAMES[self.lang].get(c) or c.replace("_", " "))

    def code(self, c: str) -> str:
        name = self.w["event_codes"].get(c)
        return f"{c} {name}" if name else c

    def severity(self, s: str) -> str:
        return SEVERITY_NAMES[self.lang].get(s, s)

    def yesno(self, v: bool | None) -> str:
        return "—" if v is None else self.w["yes"] if v else self.w["no"]

    @staticmethod
    def state(ok: bool | None) -> str:
        """met, missed or none: the class of a KPI's colour (green, red, grey)."""
        return "none" if ok is None else "met" if ok else "missed"

    def verdict(self, ok: bool | None) -> str:
        return str(self.w["verdict"][self.state(ok)])

    def status(self, ok: bool | None) -> str:
        """The verdict with its colour as a sign, for text without style (Markdown)."""
        return f"{_SIGN[self.state(ok)]} {self.verdict(ok)}"

    def rating(self, r: str) -> str:
        return str(self.w["ratings"].get(r, r))

    def votes(self, c: Counter[str]) -> str:
        return " ".join(f"{self.rating(k)}×{c[k]}" for k in RATINGS if c[k]) or "—"

    def names(self, items: Sequence[str]) -> str:
        return ("、" if self.lang == "zh" else ", ").join(items) or "—"

    @staticmethod
    def cell(text: object) -> str:
        """Text safe in a Markdown table cell: no pipe ends the cell, no newline the row."""
        return " ".join(str(text).split()).replace("|", "\\|")


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        # select_autoescape looks at the last extension only (.j2): say it for the HTML templates
        autoescape=lambda name: name is not None and name.endswith((".html.j2", ".html")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _context(review: MonthlyReview, lang: str) -> dict[str, Any]:
    f = _Fmt(_check_lang(lang), review.timezone, review.response_target)
    names = {b.building: b.name for b in review.buildings}
    return {
        "r": review,
        "f": f,
        "t": f.t,
        "w": f.w,
        "lang": lang,
        "kpi_keys": KPI_KEYS,
        "definitions": definitions(review, lang),
        "targets": {
            "informed": f.pct(review.kpi("informed").target),
            "response": f.pct(review.kpi("response").target),
            "satisfaction": f.pct(review.kpi("satisfaction").target),
        },
        "period": f"{local_iso(review.start, review.timezone)} — {local_iso(review.end, review.timezone)}",
        "generated": local_iso(review.generated_at, review.timezone),
        "building": lambda b: f"{names[b]} ({b})" if names.get(b, b) != b else b,
        "top_devices": list(review.devices[:TOP_DEVICES]),
        "more_devices": max(0, len(review.devices) - TOP_DEVICES),
    }


def render_month_markdown(review: MonthlyReview, lang: str = "zh") -> str:
    """The review as Markdown (tables, no charts), in Chinese (zh) or English (en)."""
    return _env().get_template("month.md.j2").render(**_context(review, lang))


def render_month_html(review: MonthlyReview, lang: str = "zh") -> str:
    """The review as one self-contained HTML page: style inline, charts embedded as PNG data URIs."""
    ctx = _context(review, lang)
    ctx["charts"] = kpi_charts.month_charts(_chart_input(review, lang))
    return _env().get_template("month.html.j2").render(**ctx)


def _chart_input(review: MonthlyReview, lang: str) -> kpi_charts.MonthFigures:
    lang = kpi_charts.chart_lang(lang)  # English words on a machine without a Chinese font
    f = _Fmt(lang, review.timezone, review.response_target)
    outages = [r.m for r in review.rows if r.m.outage]
    dispatched = [r.m for r in review.rows if r.m.response_in_time is not None]
    return kpi_charts.MonthFigures(
        lang=lang,
        kpis=[kpi_charts.Share(f.kpi_name(k.key), k.value, k.target, k.met, k.total) for k in review.kpis],
        inform=[(f"#{m.incident_id}", m.inform_s) for m in outages],
        inform_limit=review.inform_within,
        response=[(f"#{m.incident_id}", m.ack_s) for m in dispatched],
        response_limit=review.response_target,
        votes=[(f.rating(k), review.votes.get(k, 0)) for k in RATINGS],
        satisfaction_target=review.kpi("satisfaction").target,
        buildings=[(kpi_charts.drawable(b.name, b.building), b.household_minutes) for b in review.buildings],
        days=_per_day(review),
    )


def _per_day(review: MonthlyReview) -> list[tuple[int, int, int]]:
    """(day of month, real incidents opened, drills opened) for every day of the month."""
    zone = ZoneInfo(review.timezone)
    last = datetime.fromtimestamp(review.end - 1, zone).day
    real = Counter(datetime.fromtimestamp(r.m.opened_at, zone).day for r in review.rows)
    drill = Counter(datetime.fromtimestamp(r.m.opened_at, zone).day for r in review.drills)
    return [(d, real[d], drill[d]) for d in range(1, last + 1)]


# ---- exports -----------------------------------------------------------------------------------------------
CSV_COLUMNS: tuple[tuple[str, Callable[[Row, str], object]], ...] = (
    ("id", lambda r, tz: r.m.incident_id),
    ("opened", lambda r, tz: local_iso(r.m.opened_at, tz)),
    ("first_evidence", lambda r, tz: local_iso(r.m.first_evidence_at, tz)),
    ("resolved", lambda r, tz: local_iso(r.m.resolved_at, tz) if r.m.resolved_at is not None else ""),
    ("state", lambda r, tz: r.state),
    ("category", lambda r, tz: r.m.category),
    ("event_code", lambda r, tz: r.m.event_code),
    ("severity", lambda r, tz: r.m.severity),
    ("title", lambda r, tz: r.title),
    ("scope", lambda r, tz: r.m.scope),
    ("buildings", lambda r, tz: " ".join(r.m.buildings)),
    ("devices", lambda r, tz: " ".join(r.devices)),
    ("households", lambda r, tz: r.m.households),
    ("manual", lambda r, tz: int(r.m.manual)),
    ("detect_s", lambda r, tz: _sec(r.m.detect_s)),
    ("outage", lambda r, tz: int(r.m.outage)),
    ("inform_s", lambda r, tz: _sec(r.m.inform_s)),
    ("informed_in_time", lambda r, tz: _flag(r.m.informed_in_time)),
    ("ack_s", lambda r, tz: _sec(r.m.ack_s)),
    ("on_site_s", lambda r, tz: _sec(r.m.on_site_s)),
    ("response_in_time", lambda r, tz: _flag(r.m.response_in_time)),
    ("escalations", lambda r, tz: r.m.escalations),
    ("restore_s", lambda r, tz: _sec(r.m.duration_s)),
    ("household_minutes", lambda r, tz: f"{r.m.household_minutes:.1f}"),
    ("votes_satisfied", lambda r, tz: r.m.votes["satisfied"]),
    ("votes_neutral", lambda r, tz: r.m.votes["neutral"]),
    ("votes_unsatisfied", lambda r, tz: r.m.votes["unsatisfied"]),
    ("continues_next_month", lambda r, tz: int(r.continues)),
    ("cause", lambda r, tz: r.m.cause),
)


def _sec(x: float | None) -> str:
    return "" if x is None else f"{x:.0f}"


def _flag(x: bool | None) -> str:
    return "" if x is None else str(int(x))


def month_csv(review: MonthlyReview, *, drills: bool = False) -> str:
    """The month's real incidents (or, with `drills`, its drills), one row each; times in the site's
    zone, durations in seconds, an empty cell where a figure does not apply."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([name for name, _ in CSV_COLUMNS])
    for r in review.drills if drills else review.rows:
        writer.writerow([get(r, review.timezone) for _, get in CSV_COLUMNS])
    return out.getvalue()


def _row_json(r: Row, tz: str) -> dict[str, Any]:
    m = r.m
    return {
        "id": m.incident_id,
        "title": r.title,
        "state": r.state,
        "category": m.category,
        "event_code": m.event_code,
        "severity": m.severity,
        "scope": m.scope,
        "buildings": list(m.buildings),
        "devices": list(r.devices),
        "households": m.households,
        "manual": m.manual,
        "drill": m.drill,
        "first_evidence": local_iso(m.first_evidence_at, tz),
        "opened": local_iso(m.opened_at, tz),
        "resolved": local_iso(m.resolved_at, tz) if m.resolved_at is not None else None,
        "detect_s": m.detect_s,
        "outage": m.outage,
        "inform_s": m.inform_s,
        "informed_in_time": m.informed_in_time,
        "dispatched": local_iso(m.dispatched_at, tz) if m.dispatched_at is not None else None,
        "ack_s": m.ack_s,
        "on_site_s": m.on_site_s,
        "response_in_time": m.response_in_time,
        "escalations": m.escalations,
        "target_missed": m.target_missed,
        "restore_s": m.duration_s,
        "household_minutes": m.household_minutes,
        "notices": dict(sorted(m.notices.items())),
        "votes": {k: m.votes[k] for k in RATINGS if m.votes[k]},
        "continues_next_month": r.continues,
        "cause": m.cause,
    }


def _spread_json(s: Spread) -> dict[str, Any]:
    return {"count": s.count, "missing": s.missing, "median_s": s.median, "p90_s": s.p90}


def month_json(review: MonthlyReview) -> dict[str, Any]:
    """The review as JSON-able values for a property-management system: every figure, its target and
    definition (English), and the incident list. Shares are fractions (0.9), None where nothing counted."""
    tz = review.timezone
    return {
        "site": {"id": review.site_id, "name": review.site_name, "timezone": tz},
        "month": review.month,
        "period": {"start": local_iso(review.start, tz), "end": local_iso(review.end, tz)},
        "generated": local_iso(review.generated_at, tz),
        "in_progress": review.in_progress,
        "kpis": {
            k.key: {"value": k.value, "met": k.met, "total": k.total, "target": k.target, "ok": k.ok}
            for k in review.kpis
        },
        "targets": {"inform_within_s": review.inform_within, "response_within_s": review.response_target},
        "times": {s.key: _spread_json(s) for s in review.times},
        "incidents_total": len(review.rows),
        "by_category": dict(review.by_category),
        "by_event_code": dict(review.by_event_code),
        "by_building": dict(review.by_building),
        "by_device": dict(review.by_device),
        "buildings": [
            {
                "id": b.building,
                "name": b.name,
                "households": b.households,
                "outages": b.outages,
                "household_minutes": b.household_minutes,
                "minutes_per_household": b.per_household,
            }
            for b in review.buildings
        ],
        "devices": [
            {
                "id": d.device,
                "building": d.building,
                "incidents": d.incidents,
                "faults": d.faults,
                "comm_faults": d.comm_faults,
            }
            for d in review.devices
        ],
        "notices": {c.channel: {"sent": c.sent, "failed": c.failed} for c in review.channels},
        "votes": dict(review.votes),
        "drills": {
            "count": len(review.drills),
            "times": {s.key: _spread_json(s) for s in review.drill_times},
            "notices": {c.channel: {"sent": c.sent, "failed": c.failed} for c in review.drill_channels},
            "incidents": [_row_json(r, tz) for r in review.drills],
        },
        "incidents": [_row_json(r, tz) for r in review.rows],
        "definitions": {d.key: d.text for d in definitions(review, "en")},
    }
