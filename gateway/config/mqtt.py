"""The `mqtt:` section: the broker and the subscriptions, checked here so a bad topic names its file:line."""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from gateway.config.base import Strict
from gateway.config.fieldpath import parse_steps
from gateway.config.topics import parse_template
from gateway.core.durations import Duration

Format = Literal["number", "json", "tasmota", "shelly"]
FORMATS: tuple[Format, ...] = ("number", "json", "tasmota", "shelly")


class MqttTls(Strict):
    ca_file: Path | None = Field(
        default=None, description="CA certificates (PEM) the broker's certificate is checked against"
    )
    cert_file: Path | None = Field(default=None, description="client certificate (PEM), for brokers that ask")
    key_file: Path | None = Field(default=None, description="private key (PEM) of cert_file")
    insecure: bool = Field(default=False, description="skip certificate host name checks (test benches only)")


class MqttSubscription(Strict):
    topic: str = Field(
        description="topic filter or template: sensors/{building}/{device}/{quantity}; + and # allowed"
    )
    format: Format = Field(
        default="number",
        description="payload: number (one value), json (see fields), tasmota (SENSOR JSON), shelly "
        "(Gen1 or Gen2)",
    )
    device: str | None = Field(default=None, description="fixed device id when the topic does not name it")
    quantity: str | None = Field(default=None, description="fixed quantity for format number")
    fields: dict[str, str] = Field(
        default_factory=dict, description="json: quantity -> field path in the payload, e.g. data.pressure"
    )
    device_field: str | None = Field(default=None, description="json: field path holding the device id")
    time_field: str | None = Field(default=None, description="json: field path of an epoch or ISO timestamp")
    qos: Literal[0, 1, 2] | None = Field(
        default=None, description="QoS of this subscription; default mqtt.qos"
    )

    @model_validator(mode="after")
    def _check(self) -> MqttSubscription:
        problems = subscription_problems(
            self.topic,
            self.format,
            self.device,
            self.quantity,
            self.fields,
            self.device_field,
            self.time_field,
        )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class MqttConfig(Strict):
    host: str = Field(default="localhost", description="broker host name or address")
    port: int = Field(default=1883, ge=1, le=65535, description="broker port (8883 is the usual TLS port)")
    client_id: str | None = Field(
        default=None,
        description="default: meterwatch-<site id>-<host name>, unique per host and stable across restarts "
        "(the persistent session); set it when the host name changes (containers) or a gateway moves host",
    )
    username: str | None = Field(default=None, description="broker user name")
    password: SecretStr | None = Field(default=None, description="broker password")
    tls: MqttTls | None = Field(default=None, description="connect with TLS; absent: plain TCP")
    qos: Literal[0, 1, 2] = Field(default=1, description="QoS of the subscriptions")
    keepalive: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive, in seconds")
    reconnect_max: Duration = Field(
        default=30.0, gt=0, le=30.0, description="cap of the reconnect backoff (at most 30s)"
    )
    clean_start: bool = Field(default=False, description="False keeps a persistent session across restarts")
    silence_timeout: Duration = Field(default=120.0, gt=0, description="reconnect when connected but silent")
    max_payload: int = Field(
        default=65536,
        ge=64,
        le=16 * 1024 * 1024,
        description="largest payload read, in bytes; a larger message is counted (too_large) and "
        "skipped unread",
    )
    max_values: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="readings kept from one message; the rest are counted (too_many_values) and dropped",
    )
    max_quantities: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="distinct quantities one device may have; new ones beyond are counted "
        "(too_many_quantities) and dropped",
    )
    receive_maximum: int = Field(
        default=1000,
        ge=1,
        le=65535,
        description="QoS 1/2 messages the gateway holds unacknowledged; past it the rest of a burst waits at "
        "the broker (size its queue: deploy/mosquitto/mosquitto.conf). Announced to MQTT 5 brokers and kept "
        "by the gateway itself",
    )
    subscriptions: list[MqttSubscription] = Field(
        default_factory=list, description="the topics read, and how each payload becomes readings"
    )


def default_client_id(site_id: str, hostname: str | None = None) -> str:
    """meterwatch-<site id>-<host name>: two gateways of one site on two hosts must not share a client id
    (each would take the broker session from the other on every reconnect), and one gateway must keep its
    id across restarts to find its persistent session. The host name is cut at its first dot and reduced
    to lower-case letters, digits and dashes."""
    host = (hostname if hostname is not None else socket.gethostname()).split(".", 1)[0].lower()
    host = re.sub(r"[^a-z0-9-]+", "-", host).strip("-") or "host"
    return f"meterwatch-{site_id}-{host}"


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
                parse_steps(path)
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
