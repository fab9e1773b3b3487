"""The live terminal view: every device of the site with its state and latest readings.

It reads the bus as a best-effort subscriber (drop_oldest): a slow terminal never slows collection.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from gateway.config import Device, Site
from gateway.core.bus import Bus, Subscription
from gateway.core.types import DeviceInfo, DeviceStatus, Sample, SourceStatus
from rules.model import Incident

# The few quantities an engineer looks at first, in display order, with their formats.
HEADLINE: tuple[tuple[str, str, str], ...] = (
    ("voltage_l1", "V1", "{:.1f} V"),
    ("voltage_l2", "V2", "{:.1f} V"),
    ("voltage_l3", "V3", "{:.1f} V"),
    ("power_total", "P", "{:.0f} W"),
    ("pressure", "p", "{:.2f} bar"),
    ("flow", "Q", "{:.2f} m3/h"),
    ("level", "level", "{:.2f} m"),
)


class IncidentSource(Protocol):
    def open_incidents(self) -> list[Incident]: ...


@dataclass
class DeviceRow:
    device: Device
    values: dict[str, float] = field(default_factory=dict)
    last_ts: float | None = None
    up: bool | None = None
    reason: str = ""
    samples: int = 0
    info: dict[str, str] = field(default_factory=dict)  # serial number, firmware (DeviceInfo)


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

    @classmethod
    def attach(cls, site: Site, bus: Bus, plain: bool | None = None) -> LiveView:
        sub = bus.subscribe("live-view", maxsize=5000, overflow="drop_oldest")
        view = cls(site=site, sub=sub, plain=(not sys.stdout.isatty()) if plain is None else plain)
        view.views = {d.id: DeviceRow(d) for d in site.config.devices}
        return view

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

    def table(self, now: float | None = None) -> Table:
        now = time.time() if now is None else now
        cfg = self.site.config
        t = Table(
            title=f"meterwatch · {cfg.site.name or cfg.site.id} · {len(self.views)} devices", expand=False
        )
        with_info = any(v.info for v in self.views.values())
        for col in ("device", "building", "role", "source", "state", "age", *(h[1] for h in HEADLINE)):
            t.add_column(
                col, justify="right" if col not in ("device", "building", "role", "source") else "left"
            )
        if with_info:
            t.add_column("info", justify="left", max_width=40)
        for v in self.views.values():
            d = v.device
            if v.up is None:
                state = "[yellow]waiting[/]"
            elif v.up:
                state = "[green]up[/]"
            else:
                state = f"[red]down[/] {v.reason[:18]}"
            age = "" if v.last_ts is None else f"{max(0.0, now - v.last_ts):.0f}s"
            cells = [fmt.format(v.values[q]) if q in v.values else "" for q, _, fmt in HEADLINE]
            src = d.line or "mqtt"
            extra = [escape(" ".join(v.info.values()))] if with_info else []  # device text is not markup
            t.add_row(d.id, d.building, d.role, src, state, age, *cells, *extra)
        return t

    def open_incidents(self) -> list[Incident]:
        return [] if self.incidents is None else self.incidents.open_incidents()

    def incident_lines(self) -> list[str]:
        out = []
        for inc in self.open_incidents():
            since = time.strftime("%H:%M:%S", time.localtime(inc.opened_at))
            extra = f" households={inc.households}" if inc.households else ""
            flap = f" flaps={inc.flap_count}" if inc.flap_count else ""
            devices = ",".join(sorted(inc.symptoms))
            out.append(
                f"#{inc.id} {inc.state:<10} {inc.severity:<8} {inc.title} since {since}{extra}{flap}"
                f" symptoms={devices or '-'}"
            )
        return out

    def render(self) -> Group | Table:
        if self.incidents is None:
            return self.table()
        lines = self.incident_lines()
        t = Table(title=f"open incidents: {len(lines)}", expand=False, show_header=False)
        t.add_column("incident")
        for line in lines or ["none"]:
            t.add_row(f"[red]{line}[/]" if lines else "[green]none[/]")
        return Group(self.table(), t)

    def snapshot_lines(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        lines = []
        for v in self.views.values():
            vals = " ".join(f"{q}={v.values[q]:.6g}" for q, _, _ in HEADLINE if q in v.values)
            state = "waiting" if v.up is None else ("up" if v.up else f"down({v.reason})")
            age = "-" if v.last_ts is None else f"{max(0.0, now - v.last_ts):.1f}s"
            info = " ".join(f"{k}={t!r}" for k, t in v.info.items())
            lines.append(
                f"{v.device.id:<12} {state:<16} age={age:<6} {vals}" + (f"  [{info}]" if info else "")
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
            self.apply(event)

    async def _run_rich(self, stop: asyncio.Event) -> None:
        console = Console()
        with Live(self.render(), console=console, refresh_per_second=2, screen=False) as live:
            while not stop.is_set():
                await self._drain(stop, time.monotonic() + 0.5)
                live.update(self.render())

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
        stamp = time.strftime("%H:%M:%S")
        print(f"--- {stamp} live readings", flush=True)
        for line in self.snapshot_lines():
            print(line, flush=True)
        if self.incidents is not None:
            lines = self.incident_lines()
            print(f"--- open incidents: {len(lines)}", flush=True)
            for line in lines:
                print(line, flush=True)
