"""/metrics at 1,000 devices: rendered off the loop (the loop keeps running while the text is made), and
the per-line summary mode (`http.metrics_detail: line`) against the per-device figures of the same stats.

Synthetic stats of the real types (bench/metrics_scrape.py makes them); the daemon's real HTTP server and
real HTTP requests; promtool checks the text. Speed is measured in the bench, never asserted here."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bench.metrics_scrape import site_text, synthetic
from gateway.config import Site, load_site
from gateway.observe.health import Readiness
from gateway.observe.http import HttpServer, make_app
from gateway.observe.metrics import make_registry
from tests.gateway.observe.test_http import started_server
from tests.gateway.observe.test_metrics import Scrape, promtool_check_metrics, scrape


def sized_site(tmp_path: Path, devices: int, per_line: int, detail: str) -> Site:
    path = tmp_path / f"site-{detail}.yaml"
    path.write_text(site_text(devices, per_line, detail))
    return load_site(path)


class HeldRender(Collector):
    """A collector that, once called, waits for the loop to let it go: if rendering ran on the loop, the
    loop could never let it go (it would be stuck here), and the wait would end unreleased."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop_thread = threading.get_ident()
        self.started = threading.Event()
        self.release = threading.Event()
        self.thread: int | None = None
        self.released = False

    def collect(self) -> Iterable[Metric]:
        self.thread = threading.get_ident()
        self.started.set()
        self.released = self.release.wait(timeout=30)
        yield GaugeMetricFamily("meterwatch_test_held", "1 when the loop let the rendering go", 1.0)


async def test_a_scrape_at_1000_devices_is_rendered_off_the_loop(tmp_path: Path) -> None:
    site = sized_site(tmp_path, 1000, 25, "device")
    held = HeldRender(asyncio.get_running_loop())
    app = make_app(site, synthetic(site), Readiness(), collectors=[held])
    server = HttpServer(app, "127.0.0.1", 0)
    stop, task = await started_server(server)
    try:
        assert server.bound_port is not None
        pending = asyncio.create_task(scrape(server.bound_port))
        # The render has started (the snapshot is taken); the loop runs on and lets it finish.
        assert await asyncio.to_thread(held.started.wait, 30)
        held.release.set()  # runs only because the loop is free while the text is being made
        s = await pending
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert held.released, "the loop could not run while /metrics was rendered"
    assert held.thread is not None and held.thread != held.loop_thread
    assert s.value("meterwatch_test_held") == 1.0
    assert len(s.series("meterwatch_device_up")) == 1000
    assert len(s.series("meterwatch_device_request_duration_seconds_bucket", le="+Inf")) == 1000
    promtool_check_metrics(s.text)


def test_line_mode_sums_the_device_series_per_line_and_keeps_up_per_device(tmp_path: Path) -> None:
    dev_site = sized_site(tmp_path, 60, 25, "device")
    line_site = sized_site(tmp_path, 60, 25, "line")
    exported = synthetic(dev_site)  # one set of stats, rendered both ways
    per_device = Scrape(generate_latest(make_registry(dev_site, exported)).decode())
    per_line = Scrape(generate_latest(make_registry(line_site, exported)).decode())
    promtool_check_metrics(per_line.text)
    assert len(per_line.text) < len(per_device.text) / 3

    # per device, as in device mode: up, last success, skipped cycles
    for name in (
        "meterwatch_device_up",
        "meterwatch_device_last_success_timestamp_seconds",
        "meterwatch_device_skipped_cycles_total",
    ):
        assert sorted(map(str, per_line.series(name))) == sorted(map(str, per_device.series(name))), name
        assert len(per_line.series(name)) == 60

    # summed per line, without the device label; equal to the device series summed by line (and kind, le)
    lines = {f"l{i}" for i in range(3)}

    def summed(s: Scrape, name: str, *by: str) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {}
        for lbl, v in s.series(name):
            key = tuple(lbl[k] for k in by)
            out[key] = out.get(key, 0.0) + v
        return out

    for name, by in (
        ("meterwatch_device_requests_total", ("line",)),
        ("meterwatch_device_poll_cycles_total", ("line",)),
        ("meterwatch_device_errors_total", ("line", "kind")),
        ("meterwatch_device_request_duration_seconds_bucket", ("line", "le")),
        ("meterwatch_device_request_duration_seconds_sum", ("line",)),
        ("meterwatch_device_request_duration_seconds_count", ("line",)),
        ("meterwatch_device_samples_total", ("line", "source")),
    ):
        series = per_line.series(name)
        assert series and all("device" not in lbl for lbl, _v in series), name
        assert {lbl["line"] for lbl, _v in series} == lines, name
        expected: dict[tuple[str, ...], float] | None = (
            summed(per_device, name, *by) if "line" in per_device.series(name)[0][0] else None
        )
        if expected is None:  # samples: per (device, source) in device mode, no line label there
            line_of = {d.id: d.line for d in dev_site.config.devices}
            expected = {}
            for lbl, v in per_device.series(name):
                key: tuple[str, ...] = (line_of[lbl["device"]] or "", lbl["source"])
                expected[key] = expected.get(key, 0.0) + v
        got = summed(per_line, name, *by)
        assert got.keys() == expected.keys(), name
        for k, v in expected.items():
            assert abs(got[k] - v) < 1e-9 * max(1.0, abs(v)), (name, k, got[k], v)
    # every kind at 0 until it happens, per line as per device
    assert per_line.value("meterwatch_device_errors_total", line="l0", kind="wrong_unit") == 0
