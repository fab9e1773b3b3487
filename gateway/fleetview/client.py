"""The view's MQTT client: paho 2 (callback API 2), MQTT 5, a clean session under a random client id, so any
number of views run side by side and each rebuilds everything from the retained topics. It subscribes to
`meterwatch/<company or +>/+/#`. It publishes nothing, except the signed commands of a view started with
--command-key (gateway/fleetview/commands.py), at QoS 1 on the gateways' command topics; their outcomes come
back on the events topics and are handed to `on_event`."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage, MQTTMessageInfo
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config.fleet import BrokerAddress
from gateway.fleet.mqttconn import BrokerLogin, make_client, on_disconnect, stop_client
from gateway.fleet.topics import ROOT
from gateway.fleetview.state import FleetState

log = logging.getLogger("meterwatch.fleetview")

RECEIVE_MAXIMUM = 65535  # QoS 1 messages the broker may have in flight to the view (the MQTT 5 maximum)


@dataclass(frozen=True, slots=True)
class ViewOptions:
    broker: BrokerAddress
    company: str | None = None
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    keepalive: int = 30

    @property
    def topic(self) -> str:
        return f"{ROOT}/{self.company or '+'}/+/#"


# (topic, payload) of a message on an events/ topic: the command outcomes (gateway/fleetview/commands.py)
EventHook = Callable[[str, bytes], None]


class FleetClient:
    def __init__(self, options: ViewOptions, state: FleetState, on_event: EventHook | None = None) -> None:
        self.options = options
        self.state = state
        self.on_event = on_event
        self.client_id = f"meterwatch-fleetview-{uuid.uuid4().hex[:12]}"
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.connects = 0
        self.last_error: str | None = None
        self._refused_logged = False
        self.client = self._make_client()

    def _make_client(self) -> Client:
        o = self.options
        login = BrokerLogin(o.broker, o.username, o.password, o.tls_ca)
        client = make_client(self.client_id, login, reconnect_max=30)
        client.on_connect = self._on_connect
        client.on_disconnect = on_disconnect(self._lost)
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Connects in the background (paho's thread retries until the broker answers)."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0  # nothing kept for us: the retained topics are the state
        # the retained state of every site comes at once at SUBSCRIBE; a broker queues what does not fit
        # in the client's window and drops past its queue limit (mosquitto: 20 in flight + 1000 queued, so
        # a 500-site fleet lost 40 % of it): the whole MQTT 5 window, acknowledged as it comes
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        self.client.connect_async(
            self.options.broker.host,
            self.options.broker.port,
            keepalive=self.options.keepalive,
            clean_start=True,
            properties=props,
        )
        self.client.loop_start()

    def stop(self) -> None:
        stop_client(self.client)

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        if reason.is_failure:
            self.last_error = str(reason)
            if not self._refused_logged:
                self._refused_logged = True
                log.error("the fleet broker refused the view (%s); trying again", reason)
            return
        self._refused_logged = False
        self.last_error = None
        self.connects += 1
        self.connected.set()
        log.info("connected to the fleet broker, subscribing to %s", self.options.topic)
        client.subscribe(self.options.topic, qos=1)

    def _on_subscribe(
        self, client: Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Properties | None
    ) -> None:
        if any(r.is_failure for r in reasons):
            self.last_error = f"subscription refused: {', '.join(str(r) for r in reasons)}"
            log.error("the fleet broker refused the subscription to %s: %s", self.options.topic, reasons)
            return
        if self.connects > 1:  # subscribed again: the retained burst that follows replaces what is known
            self.state.begin_resync()
        self.subscribed.set()

    def _lost(self, reason: ReasonCode) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if reason.is_failure:
            self.last_error = str(reason)
            log.warning("lost the fleet broker (%s); reconnecting, the state shown is kept", reason)

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        payload = bytes(msg.payload)
        self.state.ingest(msg.topic, payload, bool(msg.retain))
        if self.on_event is not None and "/events/" in msg.topic:
            self.on_event(msg.topic, payload)

    def publish(self, topic: str, payload: bytes) -> MQTTMessageInfo:
        """QoS 1, not retained (a command is for now, never for a gateway that starts later)."""
        return self.client.publish(topic, payload, qos=1, retain=False)

    def status(self) -> dict[str, Any]:
        return {
            "broker": f"{self.options.broker.host}:{self.options.broker.port}",
            "topic": self.options.topic,
            "client_id": self.client_id,
            "connected": self.connected.is_set(),
            "subscribed": self.subscribed.is_set(),
            "connects": self.connects,
            "error": self.last_error,
        }
