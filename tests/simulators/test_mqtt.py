"""The MQTT sensor simulator: what it publishes decodes, through the gateway's own MQTT router, to the
world's values, in every format a site can subscribe to."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

import pytest
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion

from drivers.mqtt.router import Router
from drivers.mqtt.settings import make_subscription
from gateway.config import Site, load_site
from simulators.mqtt_publisher import messages, plan_publications
from simulators.runner import SimulatorThread
from simulators.world import ManualClock, World
from tests.fixtures.mosquitto import Mosquitto
from tests.fixtures.sim import write_sim_site
from tests.helpers import wait_until

SUBSCRIPTIONS = {
    "number": '{topic: "sensors/{building}/{device}/{quantity}", format: number}',
    "tasmota": '{topic: "tele/{device}/SENSOR", format: tasmota}',
    "shelly1": '{topic: "shellies/{device}/emeter/{channel}/{quantity}", format: shelly}',
    "shelly2": '{topic: "shelly2/{device}/status/em:0", format: shelly}',
    "json": (
        '{topic: "site/json/data", format: json, device_field: meta.id, time_field: ts,'
        " fields: {level: data.level}}"
    ),
}


def _site(tmp_path: Path, sub: str, role: str) -> Site:
    text = f"""site: {{id: mq}}
buildings:
  - id: B1
    domains: [{{id: B1-power, kind: power}}, {{id: B1-water, kind: water}}]
devices:
  - {{id: D1, building: B1, domain: B1-power, role: {role}, source: mqtt, expected_interval: 1s,
     line_powered: true}}
mqtt:
  port: 1883
  subscriptions:
    - {SUBSCRIPTIONS[sub]}
"""
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return load_site(path)


def _router(site: Site) -> Router:
    assert site.config.mqtt is not None
    subs = [
        make_subscription(
            s.topic, s.format, s.device, s.quantity, s.fields or None, s.device_field, s.time_field
        )
        for s in site.config.mqtt.subscriptions
    ]
    return Router(subs, {d.id: d.building for d in site.config.devices}, UTC)


@pytest.mark.parametrize(
    ("sub", "role", "expected"),
    [
        ("number", "tank", {"level"}),
        ("number", "pump", {"voltage_l1", "current_l1", "power_total", "energy_import", "frequency"}),
        ("tasmota", "pump", {"voltage_l1", "current_l1", "power_total", "energy_import", "power_factor"}),
        ("shelly1", "pump", {"voltage_l1", "current_l1", "power_l1"}),
        ("shelly2", "pump", {"voltage_l1", "current_l1", "power_l1", "power_total"}),
        ("json", "tank", {"level"}),
    ],
)
def test_published_messages_decode_to_world_values(
    tmp_path: Path, sub: str, role: str, expected: set[str]
) -> None:
    site = _site(tmp_path, sub, role)
    world = World(site, clock=ManualClock(1_700_000_000.0))
    pubs, warnings = plan_publications(site, world)
    assert warnings == [] and len(pubs) == 1
    now = world.now()
    values = world.values("D1")
    router = _router(site)
    got: dict[str, float] = {}
    for topic, payload in messages(pubs[0], values, now):
        routed = router.route(topic, payload, received=now)
        assert routed.problems == [], (topic, payload, routed.problems)
        assert routed.sample is not None and routed.sample.device == "D1"
        got.update(routed.sample.values)
    assert expected <= set(got), got
    for q in expected:
        want = values[q.replace("power_l1", "power_total")] if q not in values else values[q]
        assert got[q] == pytest.approx(want, abs=1e-6), q


def test_json_carries_the_device_and_time_fields(tmp_path: Path) -> None:
    site = _site(tmp_path, "json", "tank")
    world = World(site, clock=ManualClock(1_700_000_123.5))
    pubs, _ = plan_publications(site, world)
    [(topic, payload)] = messages(pubs[0], world.values("D1"), world.now())
    routed = _router(site).route(topic, payload, received=0.0)
    assert routed.sample is not None
    assert routed.sample.ts == 1_700_000_123.5
    assert payload == b'{"data": {"level": 2.5}, "meta": {"id": "D1"}, "ts": 1700000123.5}'


def test_device_no_subscription_can_carry_is_reported(tmp_path: Path) -> None:
    site = _site(tmp_path, "tasmota", "tank")  # a level sensor cannot speak Tasmota ENERGY
    pubs, warnings = plan_publications(site, World(site, clock=ManualClock(0.0)))
    assert pubs == []
    assert warnings == ["D1: no mqtt subscription can carry its quantities ['level']"]


def test_example_site_publications() -> None:
    site = load_site("deploy/examples/compound.yaml")
    pubs, warnings = plan_publications(site, World(site, clock=ManualClock(0.0)))
    assert warnings == []
    formats = {p.device.id: p.sub.format for p in pubs}
    assert formats == {"B3-tank": "number", "B3-pump": "tasmota"}


class Inbox:
    """Every message the broker delivers on `#`, by device."""

    def __init__(self, broker: Mosquitto) -> None:
        self.by_device: dict[str, int] = {}
        self.client = Client(CallbackAPIVersion.VERSION2, client_id="sim-test-inbox")
        self.client.on_connect = lambda c, *_: c.subscribe("#", qos=1)
        self.client.on_message = self._message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _message(self, client: Client, userdata: object, msg: MQTTMessage) -> None:
        parts = msg.topic.split("/")
        device = parts[2] if parts[0] == "sensors" else parts[1]
        self.by_device[device] = self.by_device.get(device, 0) + 1

    def count(self, device: str) -> int:
        return self.by_device.get(device, 0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_publishes_through_mosquitto_goes_silent_when_unpowered_and_survives_restart(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    site = load_site(write_sim_site(tmp_path, mqtt_port=mosquitto.port))
    inbox = Inbox(mosquitto)
    sim = SimulatorThread(site, clock=ManualClock()).start()
    try:
        wait_until(lambda: inbox.count("M-tank") >= 1 and inbox.count("M-plug") >= 1, what="first readings")
        # M-plug is line_powered in B3: cut B3 and it goes silent, while M-tank (water) keeps publishing.
        sim.world.cut_power("B3")
        start = inbox.count("M-tank")
        wait_until(lambda: inbox.count("M-tank") >= start + 1, what="a tank reading after the cut")
        plug = inbox.count("M-plug")  # anything in flight at the cut has arrived by now
        wait_until(lambda: inbox.count("M-tank") >= start + 3, what="more tank readings")
        assert inbox.count("M-plug") == plug
        sim.world.restore_power("B3")
        wait_until(lambda: inbox.count("M-plug") > plug, what="the plug back after the restore")
        # The broker restarts: the publisher reconnects on its own and readings resume.
        mosquitto.restart()
        inbox.close()
        inbox = Inbox(mosquitto)
        wait_until(lambda: inbox.count("M-tank") >= 2, timeout=15, what="readings after a broker restart")
    finally:
        sim.stop()
        inbox.close()
