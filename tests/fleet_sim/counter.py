"""The simulation's own counting subscriber: paho, MQTT 5, QoS 1, a persistent session (clean start off, a
session expiry), so what is published while it is away, and what the broker kept across its own restart,
still reaches it. It is a client of the broker that is stopped, like the gateways: it reconnects by itself
and says whether the broker still had its session (`session_present` at each connect).

It keeps, for each events/ message id, how many times it came (a QoS 1 redelivery after a cut is the same
id again: counted as a duplicate, and the id once), and when it first came.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

SESSION_EXPIRY = 3600


class Counter5:
    def __init__(self, host: str, port: int, topic: str, client_id: str = "fleet-sim-counter") -> None:
        self.topic = topic
        self._lock = threading.Lock()
        self.ids: Counter[str] = Counter()  # events/ id -> deliveries
        self.events: dict[str, dict[str, Any]] = {}  # events/ id -> its first payload
        self.per_topic: Counter[str] = Counter()  # events/ topic -> deliveries
        self.conflicts: list[str] = []  # one id, two different payloads: never allowed
        self.malformed: list[str] = []
        self.connects: list[tuple[float, bool]] = []  # (monotonic time, session_present)
        self.disconnects = 0
        self.client = Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY
        # clean start off on every (re)connect: the broker keeps the subscription and queues for it
        self.client.connect(host, port, keepalive=10, clean_start=False, properties=props)
        self.client.loop_start()

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, rc: ReasonCode, props: Properties | None
    ) -> None:
        if rc.is_failure:
            return
        with self._lock:
            self.connects.append((time.monotonic(), bool(flags.session_present)))
        if not flags.session_present:  # a new session (the first, or one the broker lost): subscribe again
            client.subscribe(self.topic, qos=1)

    def _on_disconnect(self, client: Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        with self._lock:
            self.disconnects += 1

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        if "/events/" not in msg.topic:
            return  # state topics (gateway, incident, kpi) are the view's business
        try:
            body = json.loads(msg.payload)
            eid = str(body["id"])
        except (ValueError, KeyError, TypeError) as exc:
            with self._lock:
                self.malformed.append(f"{msg.topic}: {exc}")
            return
        with self._lock:
            self.ids[eid] += 1
            self.per_topic[msg.topic] += 1
            first = self.events.setdefault(eid, body)
            if first != body:
                self.conflicts.append(eid)

    def received(self) -> set[str]:
        with self._lock:
            return set(self.ids)

    def duplicates(self) -> int:
        with self._lock:
            return sum(n - 1 for n in self.ids.values())

    def snapshot(self) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
        with self._lock:
            return dict(self.ids), dict(self.events)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
