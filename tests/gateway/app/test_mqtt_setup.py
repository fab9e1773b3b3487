"""From the site file to a running subscriber: settings, config errors, and the simulators end to end."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import yaml

from drivers.mqtt.subscriber import MqttSubscriber
from gateway.app.mqtt import build, mqtt_settings
from gateway.config import ConfigError, load_site
from gateway.core.bus import Bus
from gateway.core.stats import MqttStats
from gateway.core.types import Sample
from simulators.mqtt_publisher import MqttPublisher
from simulators.world import World
from tests.fixtures.mosquitto import Mosquitto, eventually
from tests.helpers import REPO

EXAMPLE = REPO / "deploy" / "examples" / "compound.yaml"

SITE = """\
site: {id: hill-court, timezone: Asia/Shanghai}
buildings:
  - id: B1
devices:
  - {id: tank, building: B1, source: mqtt, expected_interval: 5s}
  - {id: plug, building: B1, source: mqtt}
  - {id: meter, building: B1, line: l1, profile: sdm120}
lines:
  - {id: l1, transport: tcp, host: 127.0.0.1, port: 1502}
mqtt:
  host: broker.local
  port: 8883
  username: gw
  password: ${MQTT_PASSWORD}
  tls: {ca_file: certs/ca.pem}
  qos: 1
  reconnect_max: 10s
  silence_timeout: 2m
  subscriptions:
    - topic: sensors/{building}/{device}/{quantity}
    - {topic: 'tele/{device}/SENSOR', format: tasmota, qos: 0}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(text)
    return p


def test_settings_from_the_site_file(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, SITE), env={"MQTT_PASSWORD": "pw-from-env"})
    s = mqtt_settings(site)
    assert s is not None
    assert s.client_id.startswith("meterwatch-hill-court-")  # -<host name>: unique per host
    assert s.status_topic == "meterwatch/hill-court/status"
    assert dict(s.devices) == {"tank": "B1", "plug": "B1"}  # only source: mqtt devices
    assert (s.host, s.port, s.username, s.password) == ("broker.local", 8883, "gw", "pw-from-env")
    assert s.tls is not None and s.tls.ca_file == str(tmp_path / "certs" / "ca.pem")
    assert (s.reconnect_max, s.silence_timeout, s.clean_start) == (10.0, 120.0, False)
    assert s.timezone == "Asia/Shanghai"
    assert [(x.template.filter, x.format, x.qos) for x in s.subscriptions] == [
        ("sensors/+/+/+", "number", 1),
        ("tele/+/SENSOR", "tasmota", 0),
    ]
    assert "pw-from-env" not in repr(s)


def test_build_registers_stats_and_returns_the_subscriber(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, SITE), env={"MQTT_PASSWORD": "x"})
    subscriber = build(site, Bus())
    assert isinstance(subscriber, MqttSubscriber)
    assert isinstance(subscriber.stats, MqttStats) and subscriber.stats.source == subscriber.settings.source


def test_no_mqtt_section_builds_nothing(tmp_path: Path) -> None:
    text = SITE.split("mqtt:")[0]
    assert build(load_site(write(tmp_path, text)), Bus()) is None


@pytest.mark.parametrize(
    ("subscription", "line", "says"),
    [
        ("{topic: 'a/{devcie}/x', quantity: q}", 21, "unknown placeholder {devcie}"),
        ("{topic: 'a/{device}'}", 21, "format number needs the quantity"),
        ("{topic: 'a/#/b', device: tank, quantity: q}", 21, "'#' must be the last level"),
        (
            "{topic: 'j/{device}', format: json, fields: {level: 'a..b'}}",
            21,
            "fields.level: invalid field path",
        ),
        ("{topic: 'a/b', device: ghost, quantity: q}", 21, "'ghost' is not a device with source: mqtt"),
    ],
)
def test_bad_subscriptions_name_file_line_and_field(
    tmp_path: Path, subscription: str, line: int, says: str
) -> None:
    text = SITE.replace(
        "    - {topic: 'tele/{device}/SENSOR', format: tasmota, qos: 0}", f"    - {subscription}"
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_site(path, env={"MQTT_PASSWORD": "x"})
    messages = [str(i) for i in err.value.issues]
    assert any(m.startswith(f"{path}:{line}: mqtt.subscriptions[1]") and says in m for m in messages), (
        messages
    )


async def test_example_site_through_the_simulator_and_a_real_broker(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["mqtt"]["port"] = mosquitto.port
    doc["mqtt"]["host"] = mosquitto.host
    for d in doc["devices"]:
        if d.get("source") == "mqtt":
            d["expected_interval"] = "200ms"  # publish fast; the test waits on the first readings
    path = write(tmp_path, yaml.safe_dump(doc))
    site = load_site(path)
    bus = Bus()
    tap = bus.subscribe("test")
    subscriber = build(site, bus)
    assert isinstance(subscriber, MqttSubscriber)
    stop = asyncio.Event()
    task = asyncio.create_task(subscriber.run(stop))
    world = World(site)
    sim = MqttPublisher(site, world)
    try:
        await eventually(lambda: subscriber.subscribed, what="gateway subscribed")
        await sim.start()
        seen: dict[str, Sample] = {}

        def both() -> bool:
            while (e := tap.get_nowait()) is not None:
                if isinstance(e, Sample):
                    seen[e.device] = e
            return {"B3-tank", "B3-pump"} <= seen.keys()

        await eventually(both, what="samples of both MQTT devices of the example site")
    finally:
        await sim.stop()
        stop.set()
        await asyncio.wait_for(task, timeout=15)
    assert dict(seen["B3-tank"].values) == {"level": world.values("B3-tank")["level"]}
    pump = world.values("B3-pump")
    for q in ("voltage_l1", "current_l1", "power_total", "power_factor", "frequency"):
        assert seen["B3-pump"].values[q] == pytest.approx(pump[q], abs=1e-6), q
    assert seen["B3-pump"].quality == "good"
    assert sum(subscriber.stats.decode_errors.values()) == 0
    assert re.fullmatch(r"meterwatch-sunrise-gardens-[a-z0-9-]+", subscriber.settings.client_id)
