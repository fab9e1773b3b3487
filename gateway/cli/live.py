"""The live terminal view: every device of the site with its state and latest readings.

It reads the bus as a best-effort subscriber (drop_oldest): a slow terminal never slows collection.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gateway.cli.live_cells import reading_cells
from gateway.cli.live_log import LogTail
from gateway.config import Device, Site
from gateway.core.bus import Bus, Subscription
from gateway.core.types import DeviceInfo, DeviceStatus, Sample, SourceStatus
from rules.model import Incident

# The quantities the plain snapshot prints, in this order (the rich table picks its own, with units).
HEADLINE: tuple[str, ...] = (
    "voltage_l1", "voltage_l2", "voltage_l3", "power_total", "pressure", "flow", "level",
)  # fmt: skip
# Below this width the table leaves out what an engineer can do without (device info text).
WIDE = 100
# An MQTT device without expected_interval is taken to publish this often (the simulator's default).
MQTT_INTERVAL = 10.0


def silent_after(device: Device) -> float:
    """How long without a reading before an "up" device shows as silent: the absence rule's default."""
    interval = device.poll_interval if device.source == "modbus" else device.expected_interval
    return max(3 * (interval or MQTT_INTERVAL), 10.0)


class IncidentSource(Protocol):
    def open_incidents(self) -> list[Incident]: ...


class PaneSource(Protocol):
    """Lines shown under the readings in a region of their own (the demo's messages: demo_pane.py)."""

    title: str
    total: int

    def recent(self, n: int) -> Sequence[PaneRow]: ...


class PaneRow(Protocol):
    @property
    def screen(self) -> str: ...

    @property
    def kind(self) -> str: ...


@dataclass
class DeviceRow:
    device: Device
    values: dict[str, float] = field(default_factory=dict)
    last_ts: float | None = None
    up: bool | None = None
    reason: str = ""
    samples: int = 0
    info: dict[str, str] = field(default_factory=dict)  # serial number, firmware (DeviceInfo)

    def state(self, now: float) -> str:
        """waiting, up, down (the source says it does not answer) or silent (no reading for too long)."""
        if self.up is None:
            return "waiting"
        if not self.up:
            return "down"
        if self.last_ts is not None and now - self.last_ts > silent_after(self.device):
            return "silent"
        return "up"


STATE_STYLE = {"waiting": "yellow", "up": "green", "down": "bold red", "silent": "red"}


@dataclass
class LiveView:
    """A daemon component. `plain=True` prints a text snapshot every `plain_every` seconds instead."""

    site: Site
    sub: Subscription
    plain: bool = False
    plain_every: float = 5.0
    name: str = "live-view"
    views: dict[str, DeviceRow] = field(default_factory=dict)
    first_reading_at: float | None = None
    # the daemon's incident service (rt.services["incidents"]) when detection runs: shown under the readings
    incidents: IncidentSource | None = None
    # one line under the table, e.g. the demo's scenario progress ("+32s · next +45s cut power B1")
    footer: Callable[[], str] | None = None
    logs: LogTail | None = None
    # a pane of its own under the footer (the demo's messages); plain mode prints its lines itself
    pane: PaneSource | None = None
    console: Console | None = None  # the terminal's by default

    @classmethod
    def attach(cls, site: Site, bus: Bus, plain: bool | None = None) -> LiveView:
        sub = bus.subscribe("live-view", maxsize=5000, overflow="drop_oldest")
        view = cls(site=site, sub=sub, plain=(not sys.stdout.isatty()) if plain is None else plain)
        view.views = {d.id: DeviceRow(d) for d in site.config.devices}
        return view

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.site.config.site.timezone)

    def clock(self, ts: float) -> str:
        """A time of day in the site's time zone (the operators' clock, not the gateway host's)."""
        return datetime.fromtimestamp(ts, self.tz).strftime("%H:%M:%S")

    def apply(self, event: object) -> None:
        if isinstance(event, Sample):
            v = self.views.get(event.device)
            if v is None:
                return
            v.values.update(event.values)
            v.last_ts = event.ts
            v.samples += 1
            v.up = True
            if self.first_reading_at is None:
                self.first_reading_at = time.time()
        elif isinstance(event, DeviceStatus):
            v = self.views.get(event.device)
            if v is not None:
                v.up, v.reason = event.up, event.reason
        elif isinstance(event, DeviceInfo):
            v = self.views.get(event.device)
            if v is not None:
                v.info = dict(event.text)
        elif isinstance(event, SourceStatus) and not event.connected:
            for dev in event.devices:
                if dev in self.views:
                    self.views[dev].up, self.views[dev].reason = False, event.reason

    def table(self, now: float | None = None, width: int | None = None) -> Table:
        """One row per device. Ids are never cut: at 80 columns the columns are few and short instead."""
        now = time.time() if now is None else now
        cfg = self.site.config
        wide = width is None or width >= WIDE
        stamp = datetime.fromtimestamp(now, self.tz).strftime("%H:%M:%S %Z")
        t = Table(
            title=f"meterwatch · {cfg.site.name or cfg.site.id} · {len(self.views)} devices · {stamp}",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            padding=(0, 1),
            collapse_padding=True,
            expand=False,
        )
        longest = max((len(d) for d in self.views), default=6)
        t.add_column("device", no_wrap=True, min_width=longest)
        t.add_column("bldg", no_wrap=True)
        t.add_column("state", no_wrap=True)
        t.add_column("last", no_wrap=True)
        t.add_column("readings")
        with_info = wide and any(v.info for v in self.views.values())
        if with_info:
            t.add_column("info", justify="left", max_width=40)
        for v in self.views.values():
            state = v.state(now)
            last = "" if v.last_ts is None else self.clock(v.last_ts)
            row: list[str | Text] = [
                escape(v.device.id),
                escape(v.device.building),
                f"[{STATE_STYLE[state]}]{state}[/]",
                last,
                self._readings(v, state, now),
            ]
            if with_info:
                row.append(escape(" ".join(v.info.values())))  # device text is not markup
            t.add_row(*row)
        return t

    def _readings(self, v: DeviceRow, state: str, now: float) -> Text:
        # A device that does not answer shows why, never its last values: 230.0 V of a dead meter would lie.
        # The cell is cut rather than wrapped (its column is the one that gives way): one line per device.
        if state == "down":
            return Text(v.reason or "no answer", style="red", no_wrap=True, overflow="ellipsis")
        if state == "silent" and v.last_ts is not None:
            return Text(f"no reading for {now - v.last_ts:.0f}s", style="red", no_wrap=True)
        cells = reading_cells(self.site, v.device, v.values)
        return Text("  ".join(cells), no_wrap=True, overflow="ellipsis")

    def open_incidents(self) -> list[Incident]:
        return [] if self.incidents is None else self.incidents.open_incidents()

    def incident_lines(self) -> list[str]:
        out = []
        for inc in self.open_incidents():
            since = self.clock(inc.opened_at)
            extra = f" households={inc.households}" if inc.households else ""
            flap = f" flaps={inc.flap_count}" if inc.flap_count else ""
            devices = ",".join(sorted(inc.symptoms))
            out.append(
                f"#{inc.id} {inc.state:<10} {inc.severity:<8} {inc.title} since {since}{extra}{flap}"
                f" symptoms={devices or '-'}"
            )
        return out

    def render(self, now: float | None = None) -> LiveScreen:
        """The table, then the open incidents (with detection), the footer and the recent log lines."""
        return LiveScreen(self, now)

    def snapshot_lines(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        lines = []
        for v in self.views.values():
            state = v.state(now)
            shown = "up" if state == "up" else f"down({v.reason})" if state == "down" else state
            # a device that does not answer has no current values: its last ones would read as live
            vals = (
                "" if state != "up" else " ".join(f"{q}={v.values[q]:.6g}" for q in HEADLINE if q in v.values)
            )
            age = "-" if v.last_ts is None else f"{max(0.0, now - v.last_ts):.1f}s"
            info = " ".join(f"{k}={t!r}" for k, t in v.info.items())
            lines.append(
                f"{v.device.id:<12} {shown:<16} age={age:<6} {vals}" + (f"  [{info}]" if info else "")
            )
        return lines

    async def run(self, stop: asyncio.Event) -> None:
        if self.plain:
            await self._run_plain(stop)
        else:
            await self._run_rich(stop)

    async def _drain(self, stop: asyncio.Event, until: float) -> None:
        while not stop.is_set():
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            try:
                event = await asyncio.wait_for(self.sub.get(), timeout=remaining)
            except TimeoutError:
                return
            if stop.is_set():  # the gateway is stopping: its pollers' "connection lost" is not the site's
                return
            self.apply(event)

    async def _run_rich(self, stop: asyncio.Event) -> None:
        self.logs = self.logs or LogTail(self.tz)
        console = self.console or Console()
        # Log records go to the tail under the table while it is drawn; print() goes above it (Live's
        # redirect), so nothing writes into the table. No auto refresh: the screen is laid out from the
        # view's state, which only this loop may read while events change it.
        with (
            self.logs.capture(),
            Live(self.render(), console=console, auto_refresh=False, screen=False) as live,
        ):
            while not stop.is_set():
                await self._drain(stop, time.monotonic() + 0.5)
                live.update(self.render(), refresh=True)

    def everyone_reported(self) -> bool:
        return all(v.up is not None for v in self.views.values())

    async def _run_plain(self, stop: asyncio.Event) -> None:
        # Print a first snapshot as soon as every device has reported (up or down), so a new user sees the
        # whole site at once rather than after a fixed period; then one every `plain_every` seconds.
        next_print = time.monotonic() + self.plain_every
        complete_shown = False
        while not stop.is_set():
            await self._drain(stop, min(next_print, time.monotonic() + 0.25))
            first_complete = not complete_shown and self.everyone_reported()
            if first_complete or time.monotonic() >= next_print:
                complete_shown = complete_shown or first_complete
                self.print_snapshot()
                next_print = time.monotonic() + self.plain_every

    def print_snapshot(self) -> None:
        stamp = self.clock(time.time())
        print(f"--- {stamp} live readings", flush=True)
        for line in self.snapshot_lines():
            print(line, flush=True)
        if self.incidents is not None:
            lines = self.incident_lines()
            print(f"--- open incidents: {len(lines)}", flush=True)
            for line in lines:
                print(line, flush=True)


# Lines of the screen the pane keeps at least, whatever the log tail wants, when the terminal is short.
PANE_MIN = 4
PANE_ROOMY = 8
# Open incidents listed on the screen at most (the rest are counted): the readings come first.
INCIDENTS_SHOWN = 3
PANE_STYLE = {"notice": "magenta", "demo": "bold cyan"}


@dataclass
class LiveScreen:
    """What the live view draws, laid out for the console's width and height when rich renders it.

    Everything fits the terminal (rich crops what does not, from the bottom): the readings table first,
    then the open incidents (at most INCIDENTS_SHOWN), the footer, the pane's newest lines (PANE_MIN of them
    at least) and the log tail in whatever rows are left. Every line is one row: long ones are cut."""

    view: LiveView
    now: float | None = None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        view = self.view
        now = time.time() if self.now is None else self.now
        table = view.table(now, width=options.max_width)
        yield table
        rows = options.height or console.height
        left = rows - 1 - len(console.render_lines(table, options.update(height=None), pad=False))
        if view.incidents is not None:
            lines = view.incident_lines()
            shown = lines[:INCIDENTS_SHOWN]
            more = f" (first {len(shown)} shown)" if len(shown) < len(lines) else ""
            yield Text(f"open incidents: {len(lines)}{more}", style="bold red" if lines else "green")
            for line in shown:
                yield _row(line, "red")
            left -= 1 + len(shown)
        if view.footer is not None:
            yield _row(view.footer(), "cyan")
            left -= 1
        recent_logs = view.logs.recent() if view.logs is not None else []
        if view.pane is not None:
            # the pane's newest lines before old log lines: the logs keep up to 3 rows only on a terminal
            # tall enough to leave the pane PANE_ROOMY rows besides
            room = left - 1
            logs_want = min(len(recent_logs), 3) + 1 if recent_logs else 0
            if room - logs_want >= PANE_ROOMY:
                room -= logs_want
            recent = view.pane.recent(max(PANE_MIN - 1, room))
            yield Text(f"{view.pane.title} (last {len(recent)} of {view.pane.total}):", style="bold")
            for row in recent:
                yield _row(row.screen, PANE_STYLE.get(row.kind, ""))
            left -= 1 + len(recent)
            recent_logs = recent_logs[-(left - 1) :] if left > 1 else []
        if view.logs is not None and recent_logs:
            yield Text(f"log (last {len(recent_logs)} of {view.logs.total}):", style="dim")
            for line in recent_logs:
                yield _row(line, "dim")


def _row(text: str, style: str) -> Text:
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")
