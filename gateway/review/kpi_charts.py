"""The monthly review's charts: each KPI against its target (green met, red missed, grey no data), the
times behind the two response KPIs, the votes, household-minutes per building and incidents per day.

Drawn with matplotlib's Agg canvas on a `Figure` of its own (never pyplot, whose global state is not safe
in a server), offline, as PNG data URIs the HTML embeds. Chinese needs a CJK font: `cjk_font()` finds one
(Noto Sans CJK, from fonts-noto-cjk); without one `chart_lang()` says to label the charts in English, so
a chart never shows empty boxes for its words.

    charts = month_charts(MonthFigures(...))     # name -> "data:image/png;base64,..."
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import matplotlib

matplotlib.use("Agg")  # no display on a gateway; only the PNG canvas is ever used

from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

# matplotlib's text layout and font cache are shared by every figure: one drawing at a time
_LOCK = threading.Lock()

CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "Noto Sans CJK JP",
)
GREEN, RED, GREY, BLUE, AMBER = "#15803d", "#b91c1c", "#9ca3af", "#1d4ed8", "#d97706"
WIDTH_IN, DPI = 9.0, 100

WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "kpis": "指标与目标",
        "target": "目标",
        "no_data": "无数据",
        "minutes": "分钟",
        "never": "未送达",
        "none": "无人确认",
        "informed": "住户获知用时（首个异常读数起）",
        "response": "确认用时（派工起）",
        "limit": "时限 {m:g} 分钟",
        "votes": "住户评价（票数）",
        "share": "满意 {v}（目标 {t}）",
        "buildings": "各楼停供户·分钟",
        "hm": "户·分钟",
        "days": "每日新开事件",
        "real": "事件",
        "drills": "演练",
        "day": "日",
    },
    "en": {
        "kpis": "KPIs against their targets",
        "target": "target",
        "no_data": "no data",
        "minutes": "minutes",
        "never": "never",
        "none": "nobody",
        "informed": "Time to inform residents (from the first evidence)",
        "response": "Time to acknowledge (from the dispatch)",
        "limit": "limit {m:g} min",
        "votes": "Residents' votes",
        "share": "satisfied {v} (target {t})",
        "buildings": "Household-minutes without supply per building",
        "hm": "household-minutes",
        "days": "Incidents opened per day",
        "real": "incidents",
        "drills": "drills",
        "day": "day",
    },
}


@cache
def cjk_font() -> str | None:
    """The family name of an installed font with Chinese glyphs, or None."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    for name in CJK_FAMILIES:
        if name in installed:
            return name
    return next((n for n in sorted(installed) if "CJK" in n and "Mono" not in n), None)


def chart_lang(lang: str) -> str:
    """The language the charts can be labelled in: Chinese only with a CJK font installed."""
    return lang if lang != "zh" or cjk_font() is not None else "en"


def drawable(text: str, fallback: str) -> str:
    """`text` if the charts can draw it (ASCII, or a CJK font is installed), else `fallback` (an id)."""
    return text if text.isascii() or cjk_font() is not None else fallback


@dataclass(frozen=True, slots=True)
class Share:
    label: str
    value: float | None  # None: nothing counted
    target: float
    met: int
    total: int


@dataclass(frozen=True, slots=True)
class MonthFigures:
    """What the charts show, already in words of `lang` (see chart_lang)."""

    lang: str
    kpis: list[Share]
    inform: list[tuple[str, float | None]]  # (incident label, seconds; None: never informed)
    inform_limit: float
    response: list[tuple[str, float | None]]  # (incident label, seconds to acknowledge; None: nobody did)
    response_limit: float
    votes: list[tuple[str, int]]  # (rating label, votes): satisfied first
    satisfaction_target: float
    buildings: list[tuple[str, float]]  # (building label, household-minutes)
    days: list[tuple[int, int, int]] = field(default_factory=list)  # (day, real incidents, drills)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.1f} %"


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(height: float) -> Figure:
    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(ax: Axes, title: str) -> None:
    ax.set_title(title, fontsize=11, loc="left", fontweight="bold")
    ax.grid(True, axis="x", color="#e5e7eb", lw=0.6)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _kpis(d: MonthFigures, w: dict[str, str]) -> str:
    """A bar per KPI (green met, red missed, grey no data) with its value inside, the target as a black
    tick across the bar and in words on the right."""
    fig = _figure(0.8 + 0.62 * max(1, len(d.kpis)))
    ax = fig.subplots()
    rows = d.kpis[::-1]  # barh draws bottom up: the first KPI on top
    values = [0.0 if k.value is None else k.value * 100 for k in rows]
    colours = [GREY if k.value is None else GREEN if k.value >= k.target else RED for k in rows]
    ax.barh([k.label for k in rows], values, color=colours, height=0.55)
    for i, (k, v) in enumerate(zip(rows, values, strict=True)):
        ax.plot([k.target * 100] * 2, [i - 0.36, i + 0.36], color="#111827", lw=2.2)
        if k.value is None:
            ax.text(1.5, i, w["no_data"], va="center", fontsize=9, color="#374151")
        else:
            text = f"{_pct(k.value)} ({k.met}/{k.total})"
            inside = v > 30  # room for the words inside the bar
            ax.text(v - 1.5 if inside else v + 1.5, i, text, va="center", ha="right" if inside else "left",
                    fontsize=9, color="white" if inside else "#111827", fontweight="bold")  # fmt: skip
        ax.text(103, i, f"{w['target']} ≥ {_pct(k.target)}", va="center", fontsize=8.5, color="#374151")
    ax.set_xlim(0, 128)
    ax.set_xticks([0, 20, 40, 60, 80, 100])
    ax.set_xticklabels([f"{x} %" for x in (0, 20, 40, 60, 80, 100)])
    _style(ax, w["kpis"])
    return _png(fig)


def _times(
    items: Sequence[tuple[str, float | None]], limit: float, title: str, missing: str, w: dict[str, str]
) -> str:
    """One bar per incident, its minutes; the limit as a line; over it red; none at all a hatched red bar
    to the top (never informed, never acknowledged)."""
    fig = _figure(3.2)
    ax = fig.subplots()
    limit_min = limit / 60
    if not items:
        ax.text(
            0.5, 0.5, w["no_data"], ha="center", va="center", fontsize=12, color=GREY, transform=ax.transAxes
        )
        ax.set_xticks([])
        ax.set_yticks([])
        _style(ax, title)
        return _png(fig)
    known = [s / 60 for _, s in items if s is not None]
    top = max([limit_min * 1.5, *known]) * 1.08
    xs = range(len(items))
    heights = [top if s is None else s / 60 for _, s in items]
    colours = [RED if s is None or s > limit else GREEN for _, s in items]
    bars = ax.bar(xs, heights, color=colours, width=0.7)
    for bar, (_, s) in zip(bars, items, strict=True):
        if s is None:
            bar.set_hatch("//")
            bar.set_alpha(0.45)
            ax.text(bar.get_x() + bar.get_width() / 2, top * 0.5, missing, rotation=90, ha="center",
                    va="center", fontsize=8, color=RED, fontweight="bold",
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})  # fmt: skip
    ax.axhline(limit_min, color="#111827", ls="--", lw=1.3, label=w["limit"].format(m=limit_min))
    ax.set_xticks(list(xs))
    ax.set_xticklabels([label for label, _ in items], rotation=90, fontsize=7.5)
    ax.set_ylabel(w["minutes"], fontsize=9)
    ax.set_ylim(0, top)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    _style(ax, title)
    ax.grid(True, axis="y", color="#e5e7eb", lw=0.6)
    ax.grid(False, axis="x")
    return _png(fig)


def _votes(d: MonthFigures, w: dict[str, str]) -> str:
    """The votes as one stacked bar (satisfied green, neutral grey, unsatisfied red), the target share as
    a black tick; the words under it say the share in the verdict's colour."""
    fig = _figure(1.9)
    ax = fig.subplots()
    total = sum(n for _, n in d.votes)
    if not total:
        ax.text(
            0.5, 0.5, w["no_data"], ha="center", va="center", fontsize=12, color=GREY, transform=ax.transAxes
        )
        ax.set_xticks([])
        ax.set_yticks([])
        _style(ax, w["votes"])
        return _png(fig)
    share = d.votes[0][1] / total
    left = 0
    for (label, n), colour in zip(d.votes, (GREEN, GREY, RED), strict=False):
        if n:
            ax.barh([0], [n], left=left, color=colour, height=0.6)
            ax.text(left + n / 2, 0, f"{label} {n}", ha="center", va="center", fontsize=9, color="white")
        left += n
    ax.plot([d.satisfaction_target * total] * 2, [-0.42, 0.42], color="#111827", lw=2.2)
    ax.set_xlim(0, total)
    ax.set_yticks([])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ok = share >= d.satisfaction_target
    ax.set_xlabel(w["share"].format(v=_pct(share), t=_pct(d.satisfaction_target)), fontsize=9.5,
                  color=GREEN if ok else RED, fontweight="bold")  # fmt: skip
    _style(ax, w["votes"])
    return _png(fig)


def _buildings(d: MonthFigures, w: dict[str, str]) -> str:
    fig = _figure(0.9 + 0.45 * max(1, len(d.buildings)))
    ax = fig.subplots()
    labels = [b for b, _ in d.buildings][::-1]
    values = [v for _, v in d.buildings][::-1]
    ax.barh(labels, values, color=BLUE, height=0.55)
    peak = max(values, default=0.0) or 1.0
    for i, v in enumerate(values):
        ax.text(v + peak * 0.01, i, f"{v:,.0f}", va="center", fontsize=9)
    ax.set_xlim(0, peak * 1.15)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.set_xlabel(w["hm"], fontsize=9)
    _style(ax, w["buildings"])
    return _png(fig)


def _days(d: MonthFigures, w: dict[str, str]) -> str:
    fig = _figure(2.4)
    ax = fig.subplots()
    days = [x for x, _, _ in d.days]
    real = [r for _, r, _ in d.days]
    drills = [k for _, _, k in d.days]
    ax.bar(days, real, color=BLUE, width=0.75, label=w["real"])
    ax.bar(days, drills, bottom=real, color=AMBER, width=0.75, label=w["drills"])
    ax.set_xticks(days)
    ax.set_xticklabels([str(x) for x in days], fontsize=7.5)
    ax.set_xlabel(w["day"], fontsize=9)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    _style(ax, w["days"])
    ax.grid(True, axis="y", color="#e5e7eb", lw=0.6)
    ax.grid(False, axis="x")
    return _png(fig)


def month_charts(d: MonthFigures) -> dict[str, str]:
    """Every chart of the review as a PNG data URI: kpis, informed, response, votes, buildings, days."""
    w = WORDS[d.lang]
    font = cjk_font()
    # matplotlib falls back glyph by glyph along the list: English words in DejaVu, a Chinese building
    # name in the CJK font even on an English page
    if font is None:
        families = ["DejaVu Sans"]
    else:
        families = [font, "DejaVu Sans"] if d.lang == "zh" else ["DejaVu Sans", font]
    with _LOCK, matplotlib.rc_context({"font.family": families, "axes.unicode_minus": False}):
        return {
            "kpis": _kpis(d, w),
            "informed": _times(d.inform, d.inform_limit, w["informed"], w["never"], w),
            "response": _times(d.response, d.response_limit, w["response"], w["none"], w),
            "votes": _votes(d, w),
            "buildings": _buildings(d, w),
            "days": _days(d, w),
        }
