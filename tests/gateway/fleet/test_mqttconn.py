"""gateway/fleet/mqttconn.py's shared pieces against a real mosquitto that wants a password: a refused
connection is said (and only then), paho's on_disconnect reaches `lost` with its reason, the backoff is capped
as asked, and stop_client ends paho's thread (and takes None)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from paho.mqtt.client import Client, ConnectFlags
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config.fleet import BrokerAddress
from gateway.fleet.mqttconn import BrokerLogin, make_client, on_disconnect, refused, stop_client
from tests.fixtures.mosquitto import Mosquitto
from tests.helpers import wait_until

log = logging.getLogger("meterwatch.test.mqttconn")
REFUSALS = ("Not authorized", "Bad user name or password")


class Probe:
    """A client's callbacks: what refused() answered, connections, losses."""

    def __init__(self, broker: Mosquitto, password: str, reconnect_max: float | None = 7.9) -> None:
        login = BrokerLogin(BrokerAddress(broker.host, broker.port, tls=False), "gateway", password)
        self.client = make_client(f"probe-{password}", login, reconnect_max=reconnect_max)
        self.answers: list[bool] = []
        self.lost: list[ReasonCode] = []
        self.up = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = on_disconnect(self.lost.append)
        self.client.connect_async(broker.host, broker.port, keepalive=10)
        self.client.loop_start()

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        self.answers.append(refused(reason, log, "probe client", "mqtt://test"))
        if not self.answers[-1]:
            self.up.set()


def test_refused_logged_each_time_and_lost_called(
    mosquitto_with_users: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=log.name)
    bad = Probe(mosquitto_with_users, "wrong-password", reconnect_max=1)
    try:
        wait_until(lambda: len(bad.answers) >= 2, 20, 0.05, "the broker refusing the probe twice")
        assert set(bad.answers) == {True} and not bad.up.is_set()
        said = [r for r in caplog.records if r.getMessage() == "the fleet broker refused the probe client"]
        assert len(said) >= 2, caplog.text  # each refusal (a client that says it once keeps its own flag)
        fields = getattr(said[0], "fields")  # noqa: B009 (set through `extra`)
        assert fields["broker"] == "mqtt://test" and fields["reason"] in REFUSALS, fields
    finally:
        stop_client(bad.client)

    caplog.clear()
    good = Probe(mosquitto_with_users, "s3cret-pw")
    assert good.up.wait(20), "the right password connects"
    assert good.answers == [False] and caplog.records == []
    assert good.client._reconnect_max_delay == 7  # whole seconds, as paho takes them
    stop_client(good.client)
    assert good.lost and not good.lost[0].is_failure  # our own DISCONNECT: a normal one
    assert good.client._thread is None  # paho's network thread ended
    stop_client(None)


def test_reconnect_cap_at_least_one_second_and_paho_default_without() -> None:
    login = BrokerLogin(BrokerAddress("127.0.0.1", 1, tls=False))
    assert make_client("a", login, reconnect_max=0.2)._reconnect_max_delay == 1
    assert (
        make_client("b", login)._reconnect_max_delay
        == Client(CallbackAPIVersion.VERSION2)._reconnect_max_delay
    )
