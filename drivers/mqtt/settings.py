"""Plain settings of the MQTT source. gateway/mqtt_setup.py builds them from the site file; drivers never
import the config model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from drivers.mqtt.payloads import FieldPath, parse_path
from drivers.mqtt.topics import TopicTemplate, parse_template

Format = Literal["number", "json", "tasmota", "shelly"]
FORMATS: tuple[Format, ...] = ("number", "json", "tasmota", "shelly")


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
    # Broker-side flow control: at most this many unacknowledged QoS>0 messages in flight to us (MQTT 5).
    receive_maximum: int = 1000
    # QoS 0 messages waiting for the bus beyond this are dropped and counted (QoS>0 ones are bounded by
    # receive_maximum and never dropped: they stay unacknowledged until the bus takes them).
    inbox_limit: int = 50_000
    source: str = "mqtt"

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


def subscription_problems(
    topic: str,
    format: str,
    device: str | None = None,
    quantity: str | None = None,
    fields: Mapping[str, str] | None = None,
    device_field: str | None = None,
    time_field: str | None = None,
) -> list[str]:
    """Everything wrong with one subscription, as messages saying what is expected (the config check)."""
    problems: list[str] = []
    if format not in FORMATS:
        return [f"unknown format {format!r}; expected one of {', '.join(FORMATS)}"]
    try:
        names = parse_template(topic).names
    except ValueError as exc:
        return [str(exc)]
    for label, path in [*((f"fields.{q}", p) for q, p in (fields or {}).items()),
                        ("device_field", device_field), ("time_field", time_field)]:  # fmt: skip
        if path is not None:
            try:
                parse_path(path)
            except ValueError as exc:
                problems.append(f"{label}: {exc}")
    if "device" in names and device is not None:
        problems.append("the topic names the device ({device}) and device is set too: keep one")
    if format == "number":
        if device_field or time_field or fields:
            problems.append(
                "format number takes no fields, device_field or time_field (the payload is one number)"
            )
        if "device" not in names and device is None:
            problems.append("format number needs the device: a {device} level in the topic, or device")
        if "quantity" not in names and quantity is None:
            problems.append("format number needs the quantity: a {quantity} level in the topic, or quantity")
        if "quantity" in names and quantity is not None:
            problems.append("the topic names the quantity ({quantity}) and quantity is set too: keep one")
    else:
        if "device" not in names and device is None and device_field is None:
            problems.append(
                f"format {format} needs the device: a {{device}} level in the topic, device or device_field"
            )
        if quantity is not None:
            problems.append(f"quantity applies to format number only; format {format} takes fields")
    if format == "shelly" and ("channel" in names) != ("quantity" in names):
        problems.append(
            "a Shelly Gen1 topic needs both {channel} and {quantity}, "
            "e.g. shellies/{device}/emeter/{channel}/{quantity}"
        )
    if format == "shelly" and "channel" in names and (fields or device_field or time_field):
        problems.append(
            "a Shelly Gen1 topic carries one number: fields, device_field and time_field do not apply"
        )
    if format in ("json", "tasmota") and "quantity" in names:
        problems.append(f"format {format} takes quantities from the payload, not from a {{quantity}} level")
    if "channel" in names and format != "shelly":
        problems.append("{channel} is used by format shelly (Gen1 emeter topics) only")
    return problems
