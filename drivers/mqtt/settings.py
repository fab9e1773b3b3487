"""Plain settings of the MQTT source. gateway/app/mqtt.py builds them from the site file; drivers never
import the config model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from drivers.mqtt.payloads import (
    MAX_DEPTH,
    MAX_PAYLOAD,
    MAX_QUANTITIES,
    MAX_VALUES,
    FieldPath,
    parse_path,
)
from drivers.mqtt.takeover import SHORT_LINK
from gateway.config.mqtt import Format, subscription_problems
from gateway.config.topics import TopicTemplate, parse_template


@dataclass(frozen=True)
class Subscription:
    template: TopicTemplate
    format: Format = "number"
    device: str | None = None  # fixed device id when the topic does not name it
    quantity: str | None = None  # fixed quantity (format number)
    fields: Mapping[str, FieldPath] = field(default_factory=dict)
    device_field: FieldPath | None = None
    time_field: FieldPath | None = None
    qos: int = 1

    @property
    def shelly_gen1(self) -> bool:
        """Gen1 Shelly EM topics carry the channel and the value kind in the topic, one number each."""
        return self.format == "shelly" and "channel" in self.template.names


@dataclass(frozen=True)
class TlsSettings:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class MqttSettings:
    site: str
    client_id: str
    subscriptions: tuple[Subscription, ...]
    # device id -> building id, for every device of the site with source: mqtt
    devices: Mapping[str, str]
    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsSettings | None = None
    qos: int = 1
    keepalive: int = 30
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0
    clean_start: bool = False
    silence_timeout: float = 120.0
    timezone: str = "UTC"  # for payload timestamps without an offset
    protocol: Literal["5", "3.1.1"] = "5"
    # How long the broker keeps the session (subscriptions + queued QoS>0 messages) while we are away.
    session_expiry: int = 7 * 86400
    # Flow control: at most this many QoS>0 messages held unacknowledged. Announced to an MQTT 5 broker (its
    # receive maximum) and kept by the subscriber itself too (it stops reading the socket while this many wait
    # for the loop), so the rest of a burst waits at the broker, in our persistent session's queue.
    receive_maximum: int = 1000
    # QoS 0 messages waiting for the bus beyond this are dropped and counted (QoS>0 ones are bounded by
    # receive_maximum and never dropped: they stay unacknowledged until the bus takes them).
    inbox_limit: int = 50_000
    # Bounds of one message (drivers/mqtt/router.py): payload bytes (larger ones are dropped unread),
    # readings kept per message, distinct quantities per device, JSON nesting.
    max_payload: int = MAX_PAYLOAD
    max_values: int = MAX_VALUES
    max_quantities: int = MAX_QUANTITIES
    max_depth: int = MAX_DEPTH
    source: str = "mqtt"
    # A link the broker closes within this many seconds of connecting counts towards a session takeover by
    # another client with our id (drivers/mqtt/takeover.py); a link that stays up this long ends one.
    takeover_window: float = SHORT_LINK

    @property
    def status_topic(self) -> str:
        return f"meterwatch/{self.site}/status"


def make_subscription(
    topic: str,
    format: str = "number",
    device: str | None = None,
    quantity: str | None = None,
    fields: Mapping[str, str] | None = None,
    device_field: str | None = None,
    time_field: str | None = None,
    qos: int = 1,
) -> Subscription:
    """Build a subscription from plain values. Raises ValueError with every problem, one per line."""
    problems = subscription_problems(topic, format, device, quantity, fields, device_field, time_field)
    if problems:
        raise ValueError("; ".join(problems))
    return Subscription(
        template=parse_template(topic),
        format=format,  # type: ignore[arg-type]  # checked by subscription_problems
        device=device,
        quantity=quantity,
        fields={q: parse_path(p) for q, p in (fields or {}).items()},
        device_field=parse_path(device_field) if device_field else None,
        time_field=parse_path(time_field) if time_field else None,
        qos=qos,
    )
