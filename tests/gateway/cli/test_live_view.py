"""The live view as a terminal shows it: every device of the example site on one row at 80 columns, whole ids,
a unit on every value, a dead device shown dead, the site's clock, log lines under the table, and the open
incidents under the readings (rich table and plain text).

The table is rendered by rich itself (Console(record=True, width=80)); the readings are the events the
daemon's bus carries.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from rich.console import Console

from gateway.cli.live import LiveView
from gateway.cli.live_log import LogTail
from gateway.config import load_site
from gateway.core.bus import Bus
from gateway.core.types import DeviceInfo, DeviceStatus, Sample, SourceStatus
from rules.model import Incident, IncidentState
from tests.helpers import REPO

EXAMPLE = REPO / "deploy/examples/compound.yaml"  # timezone: Asia/Shanghai (UTC+8, no summer time)
NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC = 2023-11-15 06:13:20 in Shanghai
THREE_PHASE = {
    "voltage_l1": 229.8, "voltage_l2": 230.4, "voltage_l3": 231.0, "current_l1": 42.1, "current_l2": 40.2,
    "current_l3": 41.0, "power_total": 28_900.0, "frequency": 50.0,
}  # fmt: skip
ONE_PHASE = {"voltage_l1": 230.0, "current_l1": 3.2, "power_total": 700.0}
DEAD = "no answer in 3 cycles (timeout: no answer within 0.5 s)"  # the poller's words, longer than the cell


class OpenIncidents:
    def __init__(self, incidents: list[Incident]) -> None:
        self.incidents = incidents

    def open_incidents(self) -> list[Incident]:
        return list(self.incidents)


def outage() -> Incident:
    return Incident(
        id=7, key="power_outage/domain:B1-power", category="power_outage", scope="domain:B1-power",
        title="power outage: supply domain B1-power (building B1)", severity="critical", event_code="003",
        audiences=["staff"], households=96, state=IncidentState.FIRING, opened_at=1_700_000_000.0,
        first_evidence_at=1_700_000_000.0, updated_at=1_700_000_000.0,
        symptoms={"B1-main": ["power.outage"], "B1-pump": ["absence"]},
    )  # fmt: skip


def the_site_running() -> LiveView:
    """The example site a second after every device answered, except B2-shop (dead: it answered 230 V once,
    then stopped) and B3-pump (an MQTT plug whose last message is a minute old)."""
    view = LiveView.attach(load_site(EXAMPLE), Bus(), plain=False)
    for device in ("B1-main", "B1-pump", "B2-main", "B3-main"):
        view.apply(Sample(device, NOW - 1, THREE_PHASE))
    view.apply(Sample("B3-office", NOW - 1, ONE_PHASE))
    view.apply(Sample("B2-shop", NOW - 20, {"voltage_l1": 230.0, "current_l1": 3.2, "power_total": 700.0}))
    view.apply(DeviceStatus("B2-shop", NOW - 5, up=False, reason=DEAD))
    view.apply(Sample("B1-pressure", NOW - 1, {"pressure": 3.12}))
    view.apply(Sample("B2-pressure", NOW - 1, {"pressure": 2.9}))
    view.apply(Sample("B1-flow", NOW - 2, {"flow": 12.1, "velocity": 1.2}))
    view.apply(Sample("B3-tank", NOW - 3, {"level": 2.41}))
    view.apply(Sample("B3-pump", NOW - 60, {"voltage_l1": 228.0, "current_l1": 1.2, "power_total": 250.0}))
    view.apply(DeviceInfo("B1-main", NOW, {"serial_number": "12345678"}))
    return view


def screen(view: LiveView, width: int = 80) -> str:
    console = Console(record=True, width=width, file=io.StringIO())  # the test run's terminal stays clean
    console.print(view.render(NOW))
    return console.export_text()


def rows(text: str, view: LiveView) -> dict[str, list[str]]:
    """Device id -> the lines of the screen that start with it."""
    out: dict[str, list[str]] = {d: [] for d in view.views}
    for line in text.splitlines():
        first = line.split(" ", 1)[0]
        if first in out:
            out[first].append(line)
    return out


def test_at_80_columns_every_device_has_one_row_with_its_whole_id() -> None:
    view = the_site_running()
    text = screen(view)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    by_device = rows(text, view)
    assert all(len(lines) == 1 for lines in by_device.values()), text
    # rich's ellipsis: only a down device's long reason is cut (to keep its row one line), never a value or id
    assert [ln for ln in text.splitlines() if "…" in ln] == by_device["B2-shop"], text
    lines = text.splitlines()
    rule = next(i for i, ln in enumerate(lines) if ln.startswith("───"))
    assert len([ln for ln in lines[rule + 1 :] if ln.strip()]) == len(view.views), text  # no wrapped rows


def test_every_value_carries_its_unit() -> None:
    view = the_site_running()
    row = {d: lines[0] for d, lines in rows(screen(view), view).items()}
    assert "230/230/231 V" in row["B1-main"], row["B1-main"]  # the three phases side by side
    assert "42.1/40.2/41.0 A" in row["B1-main"] and "28.9 kW" in row["B1-main"], row["B1-main"]  # W -> kW
    assert "230 V" in row["B3-office"] and "3.20 A" in row["B3-office"] and "0.70 kW" in row["B3-office"]
    assert "3.12 bar" in row["B1-pressure"] and "2.90 bar" in row["B2-pressure"]
    assert "12.1 m³/h" in row["B1-flow"]
    assert "2.41 m" in row["B3-tank"]  # an MQTT device: no profile, the unit from the known quantities


def test_a_dead_device_shows_down_and_not_its_last_values() -> None:
    view = the_site_running()
    row = {d: lines[0] for d, lines in rows(screen(view), view).items()}
    assert " down " in row["B2-shop"] and "no answer in 3 cycles" in row["B2-shop"], row["B2-shop"]
    assert " V" not in row["B2-shop"] and "kW" not in row["B2-shop"], row["B2-shop"]
    # an MQTT device has no poller to say it is down: a minute without a message is silent
    assert " silent " in row["B3-pump"] and "no reading for 60s" in row["B3-pump"], row["B3-pump"]
    assert " V" not in row["B3-pump"], row["B3-pump"]
    plain = {ln.split(" ", 1)[0]: ln for ln in view.snapshot_lines(NOW)}
    assert "down(" in plain["B2-shop"] and "voltage_l1=" not in plain["B2-shop"], plain["B2-shop"]
    assert plain["B1-main"].split()[1] == "up" and "voltage_l1=229.8" in plain["B1-main"]


def test_a_lost_broker_shows_its_devices_down() -> None:
    view = the_site_running()
    view.apply(SourceStatus("mqtt", NOW, connected=False, reason="broker gone", devices=("B3-tank",)))
    row = rows(screen(view), view)["B3-tank"][0]
    assert " down " in row and "broker gone" in row and "2.41" not in row, row


def test_times_are_the_sites_clock() -> None:
    view = the_site_running()
    text = screen(view)
    row = {d: lines[0] for d, lines in rows(text, view).items()}
    shanghai, utc = "06:13:19", datetime.fromtimestamp(NOW - 1, UTC).strftime("%H:%M:%S")
    assert shanghai in row["B1-main"] and utc not in text, text
    assert "06:13:00" in row["B2-shop"], row["B2-shop"]  # when the dead meter last answered
    assert "06:13:20 CST" in text.splitlines()[0], text  # the title: the site's time now, and its zone
    view.incidents = OpenIncidents([outage()])
    assert "since 06:13:20" in view.incident_lines()[0]


def test_device_info_shows_only_when_there_is_room() -> None:
    view = the_site_running()
    assert "12345678" not in screen(view, 80)
    assert "12345678" in rows(screen(view, 120), view)["B1-main"][0]


@pytest.fixture
def terminal_log() -> Iterator[io.StringIO]:
    """A root handler writing to a terminal-like stream, as setup_logging installs on stderr."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_log_lines_go_under_the_table_not_across_it(terminal_log: io.StringIO) -> None:
    view = the_site_running()
    view.logs = LogTail(view.tz)
    with view.logs.capture():
        logging.getLogger("meterwatch.modbus").warning(
            "device down", extra={"fields": {"device": "B2-shop", "reason": "timeout"}}
        )
    logging.getLogger("meterwatch.modbus").info("after the table is gone")
    assert terminal_log.getvalue() == "after the table is gone\n"  # nothing written while the table was drawn
    lines = screen(view).splitlines()
    last_row = max(i for i, ln in enumerate(lines) if ln.split(" ", 1)[0] in view.views)
    (log_at,) = [i for i, ln in enumerate(lines) if "device down device=B2-shop reason=timeout" in ln]
    assert log_at > last_row, "\n".join(lines)
    assert lines[log_at].split()[1:3] == ["warning", "modbus:"], lines[log_at]


def test_the_rich_view_keeps_log_records_off_the_terminal(terminal_log: io.StringIO) -> None:
    """The view as the demo runs it (rich Live on a terminal): a record logged meanwhile is drawn under the
    table, never written between its lines."""
    bus = Bus()
    view = LiveView.attach(load_site(EXAMPLE), bus, plain=False)
    out = io.StringIO()
    view.console = Console(file=out, force_terminal=True, width=80)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(view.run(stop))
        await bus.publish(Sample("B1-main", NOW, THREE_PHASE))
        while view.views["B1-main"].up is None:  # the view has taken the sample off the bus
            await asyncio.sleep(0.01)
        logging.getLogger("meterwatch.test").warning("a warning while the table is up")
        await asyncio.sleep(0.6)  # one redraw (every 0.5 s) after the record, so the last frame has it
        stop.set()
        await task

    asyncio.run(scenario())
    assert terminal_log.getvalue() == "", terminal_log.getvalue()
    last_frame = out.getvalue().rsplit("meterwatch · Sunrise Gardens", 1)[1]
    assert "a warning while the table is up" in last_frame
    assert last_frame.index("B3-pump") < last_frame.index("a warning while the table is up")


def test_open_incidents_are_listed_under_the_readings() -> None:
    view = LiveView.attach(load_site(EXAMPLE), Bus(), plain=True)
    assert view.incident_lines() == []
    view.incidents = OpenIncidents([outage()])
    (line,) = view.incident_lines()
    assert line.startswith("#7 firing")
    assert "power outage: supply domain B1-power" in line
    assert "households=96" in line and "symptoms=B1-main,B1-pump" in line
    text = screen(view, 200)
    assert "open incidents: 1" in text and "#7 firing" in text and "B1-main" in text
    assert text.index("B3-pump") < text.index("#7 firing")


def test_without_detection_there_is_no_incident_panel() -> None:
    view = LiveView.attach(load_site(EXAMPLE), Bus(), plain=True)
    assert "open incidents" not in screen(view, 200)
