"""The incident report's charts: one PNG per device, a panel per kind of quantity (phase voltages, pressure,
flow, ...), the timeline's moments as vertical lines, the incident and the gateway's downtime as shaded spans.

Drawn with matplotlib's Agg canvas on a `Figure` of its own (never pyplot, whose global state is not safe
in a server), offline. Chinese needs a CJK font: `cjk_font()` finds one (Noto Sans CJK, installed by
scripts/bootstrap as fonts-noto-cjk); without one the caller labels the charts in English, so a chart never
shows empty boxes for its words.

    png = draw(ChartSpec(...), "Asia/Shanghai", font=cjk_font())
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from zoneinfo import ZoneInfo

import matplotlib
from matplotlib import dates as mdates
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg  # the PNG canvas: no display, no pyplot
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

# matplotlib's text layout and font cache are shared by every figure: one drawing at a time
_LOCK = threading.Lock()

CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "Noto Sans CJK JP",
)
MAX_PANELS = 3  # per device: more would make each too thin to read
WIDTH_IN, PANEL_IN, DPI = 9.5, 2.1, 110

# what each kind of moment looks like: colour and line style
MARK_STYLE: dict[str, tuple[str, str]] = {
    "first_evidence": ("#b91c1c", ":"),
    "opened": ("#dc2626", "-"),
    "dispatched": ("#1d4ed8", "--"),
    "acknowledged": ("#7c3aed", "-"),
    "on_site": ("#0f766e", "-."),
    "resolved": ("#15803d", "-"),
}
SPAN_STYLE: dict[str, tuple[str, float]] = {"incident": ("#fecaca", 0.35), "downtime": ("#94a3b8", 0.45)}


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    points: Sequence[tuple[float, float]]
    max_step: float = math.inf  # a longer silence between readings is drawn as a break, not a line


@dataclass(frozen=True, slots=True)
class Panel:
    label: str  # the y axis: what and its unit, "电压 (V)"
    lines: list[Line]


@dataclass(frozen=True, slots=True)
class Mark:
    kind: str  # a MARK_STYLE key
    label: str  # the legend's words, with the time
    ts: float


@dataclass(frozen=True, slots=True)
class Span:
    kind: str  # a SPAN_STYLE key
    label: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class ChartSpec:
    name: str  # file-safe: names the PNG beside a Markdown report
    title: str
    panels: list[Panel]
    marks: list[Mark] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)


# ---- the quantities ----------------------------------------------------------------------------------------
FAMILIES = ("voltage", "pressure", "flow", "level", "current", "power", "frequency")


def family(quantity: str) -> str:
    """The kind of a quantity, by its common name (voltage_l1 -> voltage); line-to-line voltages are their
    own kind, so a panel shows the phase voltages an outage is read from."""
    if quantity.startswith("voltage_") and quantity.count("_") >= 2:
        return "line_voltage"
    for fam in FAMILIES:
        if quantity == fam or quantity.startswith(fam + "_"):
            return fam
    return "other:" + quantity


def panels_of(quantities: Sequence[str]) -> list[list[str]]:
    """The device's quantities in panels, most telling first (phase voltages, pressure, flow, ...), at most
    MAX_PANELS; line voltages only where there is no phase voltage."""
    groups: dict[str, list[str]] = {}
    for q in sorted(quantities):
        groups.setdefault(family(q), []).append(q)
    if "voltage" in groups:
        groups.pop("line_voltage", None)
    order = {f: i for i, f in enumerate((*FAMILIES, "line_voltage"))}
    ranked = sorted(groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    return [qs for _, qs in ranked[:MAX_PANELS]]


# ---- the font --------------------------------------------------------------------------------------------
@cache
def cjk_font() -> str | None:
    """The family name of an installed font with Chinese glyphs, or None."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    for name in CJK_FAMILIES:
        if name in installed:
            return name
    return next((n for n in sorted(installed) if "CJK" in n and "Mono" not in n), None)


# ---- drawing ---------------------------------------------------------------------------------------------
def _series(
    points: Sequence[tuple[float, float]], zone: ZoneInfo, max_step: float
) -> tuple[list[datetime], list[float]]:
    xs: list[datetime] = []
    ys: list[float] = []
    prev: float | None = None
    for ts, value in points:
        if prev is not None and ts - prev > max_step:
            # a break: matplotlib does not join lines across a NaN
            xs.append(datetime.fromtimestamp((prev + ts) / 2, zone))
            ys.append(math.nan)
        xs.append(datetime.fromtimestamp(ts, zone))
        ys.append(value)
        prev = ts
    return xs, ys


def _time_format(span_s: float) -> str:
    if span_s <= 2 * 3600:
        return "%H:%M:%S"
    if span_s <= 86400:
        return "%H:%M"
    return "%m-%d %H:%M"


def draw(spec: ChartSpec, tz: str, font: str | None = None) -> bytes:
    """The chart as PNG bytes; `font` a family name for the words (cjk_font()), else matplotlib's default."""
    if not spec.panels:
        raise ValueError(f"chart {spec.name!r}: nothing to draw (no panel)")
    zone = ZoneInfo(tz)
    times = [ts for p in spec.panels for line in p.lines for ts, _ in line.points]
    times += [m.ts for m in spec.marks] + [t for s in spec.spans for t in (s.start, s.end)]
    if not times:
        raise ValueError(f"chart {spec.name!r}: no reading and no moment to place")
    lo, hi = min(times), max(times)
    pad = max((hi - lo) * 0.02, 1.0)
    families = [font, "DejaVu Sans"] if font else ["DejaVu Sans"]
    with _LOCK, matplotlib.rc_context({"font.family": "sans-serif", "font.sans-serif": families}):
        n = len(spec.panels)
        # constrained: room for the title, the axes' words and the legend below, whatever their length
        fig = Figure(figsize=(WIDTH_IN, 1.3 + PANEL_IN * n), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
        for ax, panel in zip(axes, spec.panels, strict=True):
            for span in spec.spans:
                colour, alpha = SPAN_STYLE.get(span.kind, ("#e5e7eb", 0.4))
                ax.axvspan(
                    datetime.fromtimestamp(span.start, zone),
                    datetime.fromtimestamp(span.end, zone),
                    color=colour,
                    alpha=alpha,
                    lw=0,
                    hatch="//" if span.kind == "downtime" else None,
                )
            for line in panel.lines:
                xs, ys = _series(line.points, zone, line.max_step)
                ax.plot(xs, ys, lw=1.5, marker="o" if len(xs) < 40 else None, ms=2.5, label=line.label)
            for mark in spec.marks:
                colour, style = MARK_STYLE.get(mark.kind, ("#374151", "-"))
                ax.axvline(datetime.fromtimestamp(mark.ts, zone), color=colour, ls=style, lw=1.3)
            ax.set_ylabel(panel.label, fontsize=9)
            ax.grid(True, color="#e5e7eb", lw=0.6)
            ax.tick_params(labelsize=8)
            if panel.lines:
                ax.legend(loc="best", fontsize=7.5, framealpha=0.85, ncols=min(len(panel.lines), 4))
        last = axes[-1]
        last.set_xlim(datetime.fromtimestamp(lo - pad, zone), datetime.fromtimestamp(hi + pad, zone))
        last.xaxis.set_major_locator(mdates.AutoDateLocator(tz=zone, maxticks=10))
        last.xaxis.set_major_formatter(mdates.DateFormatter(_time_format(hi - lo), tz=zone))
        axes[0].set_title(spec.title, fontsize=11, loc="left", fontweight="bold")
        handles = [
            Line2D([], [], color=MARK_STYLE.get(m.kind, ("#374151", "-"))[0],
                   ls=MARK_STYLE.get(m.kind, ("#374151", "-"))[1], lw=1.5, label=m.label)
            for m in spec.marks
        ]  # fmt: skip
        handles += [
            Line2D([], [], color=SPAN_STYLE.get(s.kind, ("#e5e7eb", 0.4))[0], lw=8, label=s.label)
            for s in _unique_spans(spec.spans)
        ]
        if handles:
            fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    return buf.getvalue()


def _unique_spans(spans: Sequence[Span]) -> list[Span]:
    """One legend entry per kind of span."""
    out: dict[str, Span] = {}
    for s in spans:
        out.setdefault(s.kind, s)
    return list(out.values())
