"""Bad input through the whole daemon: simulated meters, a real mosquitto, every builder of `meterwatch run`.

Acceptance of issue #2: malformed JSON, NaN, an unknown device, Modbus exception codes and an address out of
range are each counted (stats and /metrics), logged once per cause, skipped; good readings keep flowing
after each one; the daemon keeps running.

The gateway reads a site file of its own, on the simulators' endpoints: its R-sdm120 uses a profile with one
register more than the simulated meter has, so that read is answered with exception 02 (address out of
range) on every cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drivers.mqtt.subscriber import MqttSubscriber
from gateway.app.daemon import Runtime, build_runtime, serve
from gateway.config import load_site
from gateway.core.bus import Subscription
from gateway.core.stats import DeviceStats, MqttStats
from gateway.core.types import Event, Sample
from tests.drivers.mqtt.test_payloads import TASMOTA_PLUG
from tests.fixtures.mosquitto import Mosquitto, Publisher, eventually
from tests.fixtures.sim import SimHandle, write_sim_site
from tests.helpers import REPO

PROFILES = REPO / "drivers/profiles"
EXTRA_POINT = "  - {quantity: power_l2, unit: W, address: 0x0500}  # no such register on a real SDM120\n"


def gateway_site(sim: SimHandle, broker: Mosquitto, directory: Path) -> Path:
    directory.mkdir()
    (directory / "profiles").mkdir()
    sdm120 = (PROFILES / "sdm120.yaml").read_text(encoding="utf-8")
    extra = sdm120.replace("name: sdm120\n", "name: sdm120-extra\n") + EXTRA_POINT
    (directory / "profiles/sdm120-extra.yaml").write_text(extra, encoding="utf-8")
    site = write_sim_site(
        directory,
        tcp_port=sim.ports["tcp"],
        rtutcp_port=sim.ports["rtutcp"],
        pty=sim.pty,
        mqtt_port=broker.port,
        poll_interval="300ms",
    )
    text = site.read_text(encoding="utf-8")
    marker = "unit: 2, profile: sdm120,"
    assert text.count(marker) == 1
    text = text.replace(marker, "unit: 2, profile: sdm120-extra,")
    site.write_text(text + "\nprofiles_dir: profiles\nhttp: {host: 127.0.0.1, port: 0}\n", encoding="utf-8")
    return site


@dataclass
class Daemon:
    rt: Runtime
    task: asyncio.Task[None]
    tap: Subscription
    events: list[Event] = field(default_factory=list)

    def drain(self) -> list[Event]:
        while (e := self.tap.get_nowait()) is not None:
            self.events.append(e)
        return self.events

    def device(self, device: str) -> DeviceStats:
        return self.rt.services.device_stats()[device]

    @property
    def mqtt(self) -> MqttStats:
        assert self.rt.services.mqtt is not None
        return self.rt.services.mqtt.stats

    def metrics(self) -> str:
        port = self.rt.services.http_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return str(r.read().decode())


@contextlib.asynccontextmanager
async def daemon(site_path: Path, state_dir: Path) -> AsyncIterator[Daemon]:
    rt = build_runtime(load_site(site_path), state_dir=state_dir)
    tap = rt.bus.subscribe("test", maxsize=200_000)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(rt, stop))
    try:
        yield Daemon(rt, task, tap)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the one sample of `name` whose labels include `labels` (0 when absent)."""
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m[1] for k, v in labels.items()):
            return float(m[2])
    return 0.0


async def fresh(d: Daemon, device: str, check: Callable[[Sample], bool], what: str) -> Sample:
    """A sample of `device` published from now on that passes `check` (good readings keep flowing).

    "From now on" is by arrival on the bus, not by timestamp: a Tasmota message carries its own time.
    """
    start = len(d.drain())

    def found() -> Sample | None:
        new = d.drain()[start:]
        return next((e for e in new if isinstance(e, Sample) and e.device == device and check(e)), None)

    return await eventually(found, timeout=15, what=what)


async def test_bad_input_is_counted_logged_once_skipped_and_the_daemon_keeps_running(
    sim: SimHandle,
    mosquitto: Mosquitto,
    publisher: Publisher,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    site = gateway_site(sim, mosquitto, tmp_path / "gw")
    world = sim.world
    world.set_value("T-sdm630", "voltage_l1", 230.5)
    world.set_value("T-pressure", "pressure_decimals", 2)
    world.set_value("T-pressure", "pressure", 3.25)
    async with daemon(site, tmp_path / "state") as d:
        # Everyone reads well first.
        for dev in ("T-sdm630", "T-pressure", "R-sdm120", "P-tuf"):
            await fresh(d, dev, lambda s: s.quality == "good", f"a good sample of {dev}")
        subscriber = next(c for c in d.rt.components if isinstance(c, MqttSubscriber))
        await eventually(lambda: subscriber.subscribed, what="the gateway subscribed to the broker")

        # --- Modbus: an address out of range, on every cycle: the other values of the device still flow.
        r = await fresh(d, "R-sdm120", lambda s: "voltage_l1" in s.values, "R-sdm120 readings")
        assert "power_l2" not in r.values
        await eventually(lambda: d.device("R-sdm120").errors["exception_2"] >= 3, what="exception 02 x3")

        # --- Modbus: NaN in one value: that value is dropped, the rest of the read is published.
        world.set_value("T-sdm630", "voltage_l1", math.nan)
        await eventually(lambda: d.device("T-sdm630").errors["nan"] >= 3, what="three NaN reads")
        s = await fresh(d, "T-sdm630", lambda s: "current_l1" in s.values, "T-sdm630 without the NaN")
        assert "voltage_l1" not in s.values and s.quality == "decode_error"
        world.set_value("T-sdm630", "voltage_l1", 231.25)
        await fresh(d, "T-sdm630", lambda s: s.values.get("voltage_l1") == 231.25, "voltage_l1 back")

        # --- Modbus: exception 04 (the meter cannot represent 400 bar with two decimals in an int16).
        world.set_value("T-pressure", "pressure", 400.0)
        await eventually(lambda: d.device("T-pressure").errors["exception_4"] >= 3, what="exception 04 x3")
        assert d.device("T-pressure").up  # it answers: an exception is not a dead device
        world.set_value("T-pressure", "pressure", 3.5)
        await fresh(d, "T-pressure", lambda s: s.values.get("pressure") == 3.5, "pressure back")

        # --- MQTT: each bad message twice (counted twice, logged once), then a good one gets through.
        for _ in range(2):
            publisher.publish("tele/M-plug/SENSOR", b'{"ENERGY": {"Power": ')  # malformed JSON
        publisher.publish("tele/M-plug/SENSOR", TASMOTA_PLUG)
        await fresh(d, "M-plug", lambda s: s.values.get("power_total") == 48.0, "a good Tasmota message")
        for _ in range(2):
            publisher.publish("sensors/B3/M-tank/level", b"NaN")
        publisher.publish("sensors/B3/M-tank/level", b"2.5")
        await fresh(d, "M-tank", lambda s: s.values == {"level": 2.5}, "a good level after NaN")
        for _ in range(2):
            publisher.publish("sensors/B3/ghost/level", b"1.0")  # a device the site does not have
        publisher.publish("sensors/B3/M-tank/level", b"2.75")
        await fresh(d, "M-tank", lambda s: s.values == {"level": 2.75}, "a good level after a ghost")

        # Counted: in the stats the metrics read, and on /metrics.
        assert {k: v for k, v in d.mqtt.decode_errors.items() if v} == {
            "json": 2,
            "nan": 2,
            "unknown_device": 2,
        }
        text = await asyncio.to_thread(d.metrics)
        assert metric(text, "meterwatch_device_errors_total", device="R-sdm120", kind="exception_2") >= 3
        assert metric(text, "meterwatch_device_errors_total", device="T-sdm630", kind="nan") >= 3
        assert metric(text, "meterwatch_device_errors_total", device="T-pressure", kind="exception_4") >= 3
        for cause in ("json", "nan", "unknown_device"):
            assert metric(text, "meterwatch_mqtt_decode_errors_total", cause=cause) == 2, cause

        # Still running, every device still up, nothing failed.
        assert not d.task.done()
        assert all(d.device(dev).up for dev in ("T-sdm630", "T-pressure", "R-sdm120"))
        assert d.mqtt.connected

    # Logged once per cause, however often it happened.
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    once = {
        "address out of range": lambda m: "R-sdm120" in m and "Modbus exception 02" in m,
        "NaN over Modbus": lambda m: "T-sdm630: voltage_l1 read nan" in m,
        "exception 04": lambda m: "T-pressure" in m and "Modbus exception 04" in m,
        "malformed JSON": lambda m: "mqtt json " in m,
        "NaN over MQTT": lambda m: "mqtt nan " in m,
        "unknown device": lambda m: "mqtt unknown_device " in m,
    }
    for cause, match in once.items():
        assert sum(1 for m in logged if match(m)) == 1, (cause, logged)
    assert not any("component" in m and "failed" in m for m in logged), logged
