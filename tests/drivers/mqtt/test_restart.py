"""No QoS 1 message is lost across a restart of the whole daemon (not just its subscriber component).

tests/drivers/mqtt/test_subscriber.py proves it for MqttSubscriber with an explicit client id; this runs
every part of `meterwatch run` twice on the same site file, so the client id and session settings are
the ones the site file yields (meterwatch-<site id>-<host name>, persistent session).
"""

from __future__ import annotations

from pathlib import Path

from drivers.mqtt.subscriber import MqttSubscriber
from gateway.core.types import Sample
from tests.fixtures.mosquitto import Mosquitto, Publisher, eventually
from tests.fixtures.sim import write_sim_site
from tests.gateway.app.test_bad_input import daemon


async def test_messages_published_while_the_daemon_is_down_arrive_after_it_restarts(
    mosquitto: Mosquitto, publisher: Publisher, tmp_path: Path
) -> None:
    site = write_sim_site(tmp_path, mqtt_port=mosquitto.port)
    site.write_text(site.read_text(encoding="utf-8") + "\nhttp: {port: 0}\n", encoding="utf-8")
    # No simulators: the Modbus lines stay silent, which the daemon tolerates; only MQTT matters here.
    async with daemon(site, tmp_path / "state") as first:
        sub = next(c for c in first.rt.components if isinstance(c, MqttSubscriber))
        assert sub.settings.client_id.startswith("meterwatch-simtest-")
        await eventually(lambda: sub.subscribed, what="first run subscribed (session created)")
        publisher.publish("sensors/B3/M-tank/level", b"-1", qos=1)
        await eventually(
            lambda: any(isinstance(e, Sample) and e.device == "M-tank" for e in first.drain()),
            what="a message while running",
        )

    for i in range(30):  # the daemon is down
        publisher.publish("sensors/B3/M-tank/level", str(i), qos=1)

    async with daemon(site, tmp_path / "state") as second:

        def levels() -> list[float]:
            tank = [e for e in second.drain() if isinstance(e, Sample) and e.device == "M-tank"]
            return [e.values["level"] for e in tank]

        await eventually(lambda: len(levels()) >= 30, timeout=20, what="all 30 messages queued while down")
        assert levels() == [float(i) for i in range(30)]
