"""/metrics of the real daemon (every builder, the HTTP server on a free port) against the simulators, a real
mosquitto and a real VictoriaMetrics; checked by promtool and scraped by a real Prometheus."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from drivers.modbus.crc import crc_bytes
from drivers.modbus.line import LineActor
from drivers.modbus.planner import plan_reads
from drivers.modbus.spec import DeviceSpec, LineSpec
from gateway.app.daemon import Runtime, build_runtime, serve
from gateway.config import load_site
from gateway.config.profile import builtin_profiles
from gateway.observe.metrics import Exported, make_registry
from simulators.runner import SimulatorThread
from simulators.world import ManualClock
from tests.fixtures.mosquitto import Mosquitto
from tests.fixtures.prometheus import Prometheus
from tests.fixtures.sim import SIM_DEVICES, SimHandle, write_sim_site
from tests.fixtures.victoria import Victoria
from tests.helpers import REPO, free_port
from tests.helpers import eventually as until

PROMTOOL = "/usr/bin/promtool"
ALERTS = REPO / "deploy/prometheus/alerts.yml"
MQTT_DEVICES = ("M-tank", "M-plug")


# ---------------------------------------------------------------------------------------------------------
# helpers


@dataclass
class Scrape:
    text: str

    def __post_init__(self) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = []
        self.families: dict[str, str] = {}  # family name -> type
        for fam in text_string_to_metric_families(self.text):
            self.families[fam.name] = fam.type
            for s in fam.samples:
                self.samples.append((s.name, dict(s.labels), float(s.value)))

    def series(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (lbl, v)
            for n, lbl, v in self.samples
            if n == name and all(lbl.get(k) == want for k, want in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        found = self.series(name, **labels)
        assert len(found) == 1, f"expected one series {name}{labels}, got {found}"
        return found[0][1]

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        return {lbl[label]: v for lbl, v in self.series(name, **labels)}


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


async def scrape(port: int) -> Scrape:
    # The server runs in this very loop: a blocking request here would never be answered.
    status, body = await asyncio.to_thread(http_get, port, "/metrics")
    assert status == 200, body
    return Scrape(body)


async def scrape_until(port: int, pred: Callable[[Scrape], object], timeout: float, what: str) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        s = await scrape(port)
        if pred(s):
            return s
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; last scrape:\n{s.text[:4000]}")
        await asyncio.sleep(0.25)


@contextlib.asynccontextmanager
async def gateway(site_path: Path, state_dir: Path) -> AsyncIterator[tuple[Runtime, int]]:
    """The whole daemon (every builder in gateway/app/daemon.py) in this loop, until the block ends."""
    rt = build_runtime(load_site(site_path), state_dir)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(rt, stop))
    try:
        await until(lambda: rt.services.http_port is not None or task.done(), 15, "the HTTP server")
        assert not task.done(), "the daemon stopped"
        port = rt.services.http_port
        assert port is not None
        yield rt, port
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def promtool_check_metrics(text: str) -> None:
    promtool = shutil.which(PROMTOOL) or shutil.which("promtool")
    if promtool is None:
        pytest.fail(f"promtool is not installed ({PROMTOOL}); apt-get install prometheus")
    res = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60, check=False
    )
    out = (res.stdout + res.stderr).decode()
    assert res.returncode == 0 and out.strip() == "", f"promtool check metrics:\n{out}"


def with_sections(site_path: Path, extra: str, name: str = "gateway.yaml") -> Path:
    """A copy of a site file with extra top-level sections (the simulators keep reading the original)."""
    path = site_path.parent / name
    path.write_text(site_path.read_text() + "\n" + extra, encoding="utf-8")
    return path


MODBUS_IDS = [d[0] for d in SIM_DEVICES]


# ---------------------------------------------------------------------------------------------------------
# the whole gateway


async def test_metrics_of_a_running_gateway(tmp_path: Path, mosquitto: Mosquitto, victoria: Victoria) -> None:
    site_path = write_sim_site(tmp_path, mqtt_port=mosquitto.port, poll_interval="500ms")
    gw_site = with_sections(
        site_path,
        f"influx: {{url: '{victoria.url}', batch_size: 20, flush_interval: 200ms}}\nhttp: {{port: 0}}\n",
    )
    sim = SimulatorThread(load_site(site_path), clock=ManualClock(), mqtt=True).start()
    try:
        async with gateway(gw_site, tmp_path / "state") as (_rt, port):
            every = {*MODBUS_IDS, *MQTT_DEVICES}

            def all_up(s: Scrape) -> bool:
                up = s.by("meterwatch_device_up", "device")
                return set(up) == every and all(v == 1.0 for v in up.values())

            s = await scrape_until(port, all_up, 30, "every device up")
            s = await scrape_until(
                port,
                lambda s: (
                    s.series("meterwatch_sink_points_written_total")
                    and s.value("meterwatch_sink_points_written_total") > 0
                    and s.series("meterwatch_mqtt_messages_total", source="mqtt")
                    and s.value("meterwatch_mqtt_messages_total", source="mqtt") >= 2
                ),
                30,
                "points written and MQTT messages",
            )

            # Modbus: per device and per line
            for dev, building, *_ in SIM_DEVICES:
                (lbl, _v), *rest = s.series("meterwatch_device_up", device=dev)
                assert not rest and lbl["building"] == building and lbl["source"] == "modbus"
                assert s.value("meterwatch_device_requests_total", device=dev) > 0
                assert s.value("meterwatch_device_request_duration_seconds_count", device=dev) > 0
                assert s.value("meterwatch_device_request_duration_seconds_bucket", device=dev, le="+Inf") > 0
                assert s.value("meterwatch_device_poll_cycles_total", device=dev) > 0
                assert s.series("meterwatch_device_skipped_cycles_total", device=dev)
                last = s.value("meterwatch_device_last_success_timestamp_seconds", device=dev)
                assert time.time() - 60 < last <= time.time() + 1
                errors = s.by("meterwatch_device_errors_total", "kind", device=dev)
                assert {"timeout", "crc", "framing", "connection", "decode", "nan"} <= set(errors)
                assert errors["timeout"] == 0
            assert s.by("meterwatch_modbus_line_connected", "line") == {"tcp": 1, "rtutcp": 1, "pty": 1}
            assert s.value("meterwatch_modbus_line_requests_total", line="pty", transport="rtu") > 0

            # MQTT
            assert s.value("meterwatch_mqtt_connected", source="mqtt") == 1
            assert 0 <= s.value("meterwatch_mqtt_last_message_age_seconds", source="mqtt") < 30
            for dev in MQTT_DEVICES:
                (lbl, up), *_ = s.series("meterwatch_device_up", device=dev)
                assert lbl["source"] == "mqtt" and up == 1
                assert s.value("meterwatch_device_samples_total", device=dev) > 0

            # sink and spool
            assert s.value("meterwatch_sink_configured") == 1
            assert s.value("meterwatch_sink_reachable") == 1
            assert s.value("meterwatch_sink_write_duration_seconds_count") > 0
            assert s.value("meterwatch_spool_max_bytes") > 0
            assert s.series("meterwatch_spool_points", mode="durable")
            assert s.series("meterwatch_spool_bytes", mode="durable")
            assert s.series("meterwatch_spool_oldest_age_seconds")
            assert s.by("meterwatch_spool_dropped_points_total", "reason") == {"bytes": 0, "age": 0}

            # process, build, bus
            assert s.value("process_resident_memory_bytes") > 0
            assert s.series("process_cpu_seconds_total")
            assert s.series("meterwatch_build_info", site="simtest")
            assert s.value("meterwatch_bus_published_total") > 0

            # Ecosystem conventions: base units, counters end in _total, promtool's linter is happy.
            for name, kind in s.families.items():
                assert name.startswith(("meterwatch_", "process_", "python_")), name
                assert not name.endswith(("_ms", "_milliseconds", "_kb", "_mb")), name
                if kind == "counter":
                    assert any(n == name + "_total" for n, _l, _v in s.samples) or not s.series(name), name
            promtool_check_metrics(s.text)

            # A silent device: timeouts counted, device_up goes to 0 (the others stay up).
            sim.world.stop_device("R-pressure")
            # A value the register cannot hold: the meter answers Modbus exception 04.
            sim.world.set_value("T-pressure", "pressure", 400.0)
            # A slow meter: three reads of 0.25 s each overrun its 0.5 s interval, so cycles are skipped.
            sim.world.set_delay("T-sdm630", 0.25)
            s = await scrape_until(
                port,
                lambda s: (
                    s.value("meterwatch_device_up", device="R-pressure") == 0
                    and s.value("meterwatch_device_errors_total", device="T-pressure", kind="exception_4") > 0
                    and s.value("meterwatch_device_skipped_cycles_total", device="T-sdm630") > 0
                ),
                30,
                "R-pressure down, exception 04 on T-pressure, skipped cycles on T-sdm630",
            )
            assert s.value("meterwatch_device_up", device="T-sdm630") == 1
            assert s.value("meterwatch_device_errors_total", device="R-pressure", kind="timeout") >= 1
            assert s.value("meterwatch_modbus_line_errors_total", line="rtutcp", kind="timeout") >= 1
            assert s.value("meterwatch_device_up", device="R-dtsu666") == 1
            promtool_check_metrics(s.text)
    finally:
        sim.stop()


async def test_spool_at_its_bound_and_influx_unreachable(
    sim: SimHandle, tmp_path: Path, prometheus: Prometheus
) -> None:
    """Drops and unreachable writes on /metrics, and the deploy kit's alert rules firing on them in a real
    Prometheus."""
    dead = free_port()  # nothing listens here: InfluxDB is down for the whole test
    gw_site = with_sections(
        sim.site_path,
        f"influx: {{url: 'http://127.0.0.1:{dead}', batch_size: 5, flush_interval: 100ms, timeout: 1s}}\n"
        "spool: {max_bytes: 4096}\nhttp: {port: 0}\n",
    )
    async with gateway(gw_site, tmp_path / "state") as (_rt, port):
        s = await scrape_until(
            port,
            lambda s: (
                s.value("meterwatch_spool_dropped_points_total", reason="bytes") > 0
                and s.value("meterwatch_sink_write_errors_total", kind="unreachable") > 0
            ),
            60,
            "drops at the byte bound and unreachable writes",
        )
        assert s.value("meterwatch_sink_reachable") == 0
        assert s.value("meterwatch_sink_points_written_total") == 0
        assert 0 < s.value("meterwatch_spool_bytes", mode="durable") <= 4096
        assert s.value("meterwatch_spool_points", mode="durable") > 0
        assert s.value("meterwatch_spool_oldest_age_seconds") > 0
        assert s.value("meterwatch_spool_dropped_points_total", reason="age") == 0
        # InfluxDB down does not make the gateway unready: the spool takes the samples.
        status, body = await asyncio.to_thread(http_get, port, "/readyz")
        assert status == 200, body
        promtool_check_metrics(s.text)

        await asyncio.to_thread(prometheus.start, [f"127.0.0.1:{port}"], "meterwatch", [ALERTS])

        async def alerts() -> dict[str, dict[str, object]]:
            return {a["labels"]["alertname"]: a for a in await asyncio.to_thread(prometheus.alerts)}

        deadline = time.monotonic() + 60
        seen = await alerts()
        while not (
            seen.get("MeterwatchSpoolDropping", {}).get("state") == "firing"
            and seen.get("MeterwatchInfluxUnreachable", {}).get("state") == "pending"
        ):
            if time.monotonic() > deadline:
                pytest.fail(f"alerts from deploy/prometheus/alerts.yml: {seen}")
            await asyncio.sleep(0.5)
            seen = await alerts()
        dropping = seen["MeterwatchSpoolDropping"]["labels"]
        assert isinstance(dropping, dict) and dropping["reason"] == "bytes"
        assert dropping["severity"] == "critical"
        assert "MeterwatchDown" not in seen and "MeterwatchManyDevicesDown" not in seen


# ---------------------------------------------------------------------------------------------------------
# CRC and framing errors: the simulator never corrupts a frame, so a few bytes of test-only server do.


async def test_crc_and_framing_errors_by_kind(sim_site_file: Path) -> None:
    mode = {"now": "crc"}

    async def serve_frames(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await reader.readexactly(8)
                unit, count = req[0], int.from_bytes(req[4:6], "big")
                if mode["now"] == "short":
                    count -= 1  # a well-formed answer with one register missing
                body = bytes([unit, 3, 2 * count]) + b"\x00\x02" * count
                crc = crc_bytes(body)
                if mode["now"] == "crc":
                    crc = bytes([crc[0] ^ 0xFF, crc[1]])
                writer.write(body + crc)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve_frames, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pressure = builtin_profiles()["rs485-pressure"]
    device = DeviceSpec(
        id="R-pressure", unit=1, poll_interval=0.1, requests=tuple(plan_reads(pressure.points, 1))
    )
    line = LineSpec(
        id="rtutcp", transport="rtu_over_tcp", host="127.0.0.1", port=port, timeout=0.1, down_after=100
    )

    async def emit(_event: object) -> None:
        return None

    actor = LineActor(line, [device], emit, seed=1)
    site = load_site(sim_site_file)
    registry = make_registry(site, Exported(lines={"rtutcp": actor.stats}, devices=actor.device_stats))
    stop = asyncio.Event()
    task = asyncio.create_task(actor.run(stop))
    st = actor.device_stats["R-pressure"]
    try:
        await until(lambda: st.errors["crc"] >= 2, 10, "CRC errors")
        mode["now"] = "short"
        await until(lambda: st.errors["framing"] >= 2, 10, "framing errors")
    finally:
        stop.set()
        await task
        server.close()
        await server.wait_closed()
    from prometheus_client import generate_latest

    s = Scrape(generate_latest(registry).decode())
    errors = s.by("meterwatch_device_errors_total", "kind", device="R-pressure", line="rtutcp")
    assert errors["crc"] == st.errors["crc"] >= 2
    assert errors["framing"] == st.errors["framing"] >= 2
    assert s.by("meterwatch_modbus_line_errors_total", "kind", line="rtutcp")["crc"] >= 2
    # The other devices of the site have no poller here: present (down), without request families.
    assert s.value("meterwatch_device_up", device="T-sdm630") == 0
    assert not s.series("meterwatch_device_requests_total", device="T-sdm630")
    promtool_check_metrics(s.text)


# ---------------------------------------------------------------------------------------------------------
# a real Prometheus


async def test_prometheus_scrapes_device_up_for_every_device(
    tmp_path: Path, mosquitto: Mosquitto, prometheus: Prometheus
) -> None:
    site_path = write_sim_site(tmp_path, mqtt_port=mosquitto.port)
    gw_site = with_sections(site_path, "http: {port: 0}\n")
    sim = SimulatorThread(load_site(site_path), clock=ManualClock(), mqtt=True).start()
    try:
        async with gateway(gw_site, tmp_path / "state") as (rt, port):
            await asyncio.to_thread(prometheus.start, [f"127.0.0.1:{port}"])
            every = {d.id for d in rt.site.config.devices}
            assert every == {*MODBUS_IDS, *MQTT_DEVICES}

            async def seen() -> dict[str, float]:
                result = await asyncio.to_thread(prometheus.query, "meterwatch_device_up")
                return {r["metric"]["device"]: float(r["value"][1]) for r in result}

            deadline = time.monotonic() + 60
            got: dict[str, float] = {}
            while not (set(got) == every and all(v == 1 for v in got.values())):
                if time.monotonic() > deadline:
                    targets = await asyncio.to_thread(prometheus.targets)
                    pytest.fail(f"Prometheus saw device_up {got}; targets: {targets}")
                await asyncio.sleep(0.5)
                got = await seen()
            target = (await asyncio.to_thread(prometheus.targets))[0]
            assert target["health"] == "up", target
            up = await asyncio.to_thread(prometheus.query, 'up{job="meterwatch"}')
            assert [float(r["value"][1]) for r in up] == [1.0]
            by_building = await asyncio.to_thread(
                prometheus.query, "sum by (building) (meterwatch_device_up)"
            )
            assert {r["metric"]["building"]: float(r["value"][1]) for r in by_building} == {
                "B1": 4.0,
                "B2": 3.0,
                "B3": 5.0,
            }
    finally:
        sim.stop()
