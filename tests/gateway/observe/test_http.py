"""The daemon's HTTP server (uvicorn in the test's loop on a real socket): /healthz, /readyz, routers,
incident families on /metrics, and a busy port that must not stop collection."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import APIRouter

from gateway.config import load_site
from gateway.observe.health import Readiness
from gateway.observe.http import HttpServer, make_app
from gateway.observe.metrics import Exported
from tests.gateway.observe.test_metrics import http_get, promtool_check_metrics, scrape, until


async def started_server(server: HttpServer) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    await until(lambda: server.bound_port is not None or task.done(), 15, "the server listening")
    return stop, task


async def test_readyz_is_503_until_started_then_200_and_healthz_is_200(sim_site_file: Path) -> None:
    readiness = Readiness()
    router = APIRouter()

    @router.get("/hello")
    def hello() -> dict[str, str]:
        return {"from": "another builder"}

    app = make_app(load_site(sim_site_file), Exported(), readiness, [router])
    server = HttpServer(app, "127.0.0.1", 0)
    stop, task = await started_server(server)
    try:
        port = server.bound_port
        assert port is not None
        status, body = await asyncio.to_thread(http_get, port, "/readyz")
        assert status == 503
        assert json.loads(body) == {
            "ready": False,
            "checks": {"started": False, "sink": "not configured (no influx section)"},
        }
        assert await asyncio.to_thread(http_get, port, "/healthz") == (200, '{"status":"alive"}')
        readiness.mark_started()
        status, body = await asyncio.to_thread(http_get, port, "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        assert await asyncio.to_thread(http_get, port, "/hello") == (200, '{"from":"another builder"}')
        assert (await asyncio.to_thread(http_get, port, "/nope"))[0] == 404
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_busy_port_is_a_clear_error_and_the_component_keeps_running(
    sim_site_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HttpServer(make_app(load_site(sim_site_file), Exported(), Readiness()), "127.0.0.1", port)
        with caplog.at_level(logging.ERROR, logger="meterwatch.http"):
            stop = asyncio.Event()
            task = asyncio.create_task(server.run(stop))
            await until(lambda: any("cannot listen" in r.getMessage() for r in caplog.records), 10, "error")
            assert not task.done()  # it waits for the stop like every other component
            stop.set()
            await asyncio.wait_for(task, 10)
    record = next(r for r in caplog.records if "cannot listen" in r.getMessage())
    assert record.fields["port"] == port  # type: ignore[attr-defined]
    assert server.bound_port is None


@dataclass
class FakeIncident:
    id: int
    category: str
    scope: str
    severity: str
    title: str = ""
    drill: bool = False


class FakeIncidents:
    """A test double of the incident service: only the one method the collector reads."""

    def __init__(self) -> None:
        self.open: list[FakeIncident] = []

    def open_incidents(self) -> list[FakeIncident]:
        return list(self.open)


async def test_incident_families_from_the_incident_service(sim_site_file: Path) -> None:
    site = load_site(sim_site_file)
    incidents = FakeIncidents()
    exported = Exported()
    server = HttpServer(make_app(site, exported, Readiness()), "127.0.0.1", 0)
    stop, task = await started_server(server)
    try:
        port = server.bound_port
        assert port is not None
        s = await scrape(port)
        assert "meterwatch_incidents_open" not in s.families  # no service, no family
        assert "meterwatch_incident_open" not in s.families

        exported.incidents = incidents
        s = await scrape(port)
        assert s.families["meterwatch_incidents_open"] == "gauge"
        assert s.series("meterwatch_incidents_open") == [] and s.series("meterwatch_incident_open") == []

        incidents.open = [
            FakeIncident(7, "power_outage", "domain:B1-power", "critical"),
            FakeIncident(8, "lost_meter", "device:R-pressure", "warning"),
            FakeIncident(9, "lost_meter", "device:P-tuf", "warning"),
            FakeIncident(10, "power_outage", "domain:B1-power", "critical"),  # e.g. a reopened one
            FakeIncident(11, "power_outage", "site", "critical"),
            FakeIncident(12, "line_fault", "line:pty", "warning"),
            FakeIncident(13, "lost_meter", "device:no-such-device", "warning"),
        ]
        s = await scrape(port)
        assert {(lbl["category"], lbl["scope"]): v for lbl, v in s.series("meterwatch_incidents_open")} == {
            ("power_outage", "domain:B1-power"): 2,
            ("lost_meter", "device:R-pressure"): 1,
            ("lost_meter", "device:P-tuf"): 1,
            ("power_outage", "site"): 1,
            ("line_fault", "line:pty"): 1,
            ("lost_meter", "device:no-such-device"): 1,
        }
        each = s.series("meterwatch_incident_open")
        assert sorted((lbl["incident_id"], lbl["severity"], lbl["building"], v) for lbl, v in each) == [
            ("10", "critical", "B1", 1.0),
            ("11", "critical", "", 1.0),
            ("12", "warning", "B3", 1.0),
            ("13", "warning", "", 1.0),
            ("7", "critical", "B1", 1.0),
            ("8", "warning", "B2", 1.0),
            ("9", "warning", "B3", 1.0),
        ]
        promtool_check_metrics(s.text)

        incidents.open = incidents.open[1:2]  # the rest resolved: their series disappear
        s = await scrape(port)
        assert [lbl["incident_id"] for lbl, _ in s.series("meterwatch_incident_open")] == ["8"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
