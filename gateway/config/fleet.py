"""The `fleet:` section: the event bridge to the company's broker (issue 13, item 1); present means enabled.

    fleet:
      company: acme-pm
      broker: mqtts://broker.example.com:8883
      username: gw-north
      password: ${FLEET_PASSWORD}
      tls: {ca_file: fleet-ca.pem}
      kpi_at: "06:00"
      commands: {enabled: true, public_key: fleet-cmd.pub, max_age: 5m}

`commands` (off by default) lets the fleet view acknowledge from afar: signed commands on the gateway's
command topic (gateway/fleet/commands.py). Every event goes to `meterwatch/<company>/<site>/...`
(docs/fleet-topics.md). The password (or a user name) taken from `${ENV}` is masked wherever the config is
printed (gateway/core/secrets.py).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.config.base import Strict
from gateway.core.durations import Duration

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_TOPIC_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
SCHEMES = {"mqtt": (1883, False), "mqtts": (8883, True)}


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool  # mqtts://


def parse_broker(url: str) -> BrokerAddress:
    """mqtt://host[:port] or mqtts://host[:port] (ports 1883 and 8883 by default); a ValueError says what
    is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError("expected mqtt://host[:port] or mqtts://host[:port]")
    if parts.username is not None or parts.password is not None:
        raise ValueError("put the credentials in username and password (from ${ENV}), not in the URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("expected mqtt://host[:port] with no path, query or fragment")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from exc
    if not parts.hostname:
        raise ValueError("the broker URL names no host")
    default_port, tls = SCHEMES[parts.scheme]
    return BrokerAddress(parts.hostname, port or default_port, tls)


def default_gateway_id(hostname: str | None = None) -> str:
    """The host name, cut at its first dot, in lower case letters, digits and dashes."""
    host = (hostname if hostname is not None else socket.gethostname()).split(".", 1)[0].lower()
    return re.sub(r"[^a-z0-9-]+", "-", host).strip("-")[:63] or "gateway"


class FleetTls(Strict):
    ca_file: Path | None = Field(
        default=None, description="CA certificates (PEM) the broker's certificate is checked against"
    )
    cert_file: Path | None = Field(default=None, description="client certificate (PEM), for brokers that ask")
    key_file: Path | None = Field(default=None, description="private key (PEM) of cert_file")
    insecure: bool = Field(default=False, description="skip certificate host name checks (test benches only)")

    @model_validator(mode="after")
    def _pair(self) -> FleetTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self


class FleetCommands(Strict):
    """Acknowledge / on site / note from the fleet view, signed with its Ed25519 key (issue 13, item 2)."""

    enabled: bool = Field(default=False, description="take signed commands on command/<gateway>")
    public_key: Path | None = Field(
        default=None,
        description="the fleet view's Ed25519 public key (PEM; `meterwatch fleet keygen DIR` makes the "
        "pair), relative to the site file",
    )
    max_age: Duration = Field(
        default=300.0, gt=0, le=86400.0, description="a command older than this (by its issued_at) is refused"
    )
    skew: Duration = Field(
        default=30.0,
        ge=0,
        le=3600.0,
        description="how far in the future a command's issued_at may be (the two clocks differ a little)",
    )

    @model_validator(mode="after")
    def _key(self) -> FleetCommands:
        if self.enabled and self.public_key is None:
            raise ValueError("enabled without public_key: give the fleet view's public key file")
        return self


TopicId = Annotated[str, Field(min_length=1, max_length=63)]


class FleetConfig(Strict):
    company: TopicId = Field(
        description="the company's id, the second level of every topic: lower-case letters, digits, dashes"
    )
    broker: str = Field(description="the company's broker: mqtt://host[:port] or mqtts://host[:port] (TLS)")
    username: str | None = Field(default=None, description="broker user name (may come from ${ENV})")
    password: SecretStr | None = Field(default=None, description="broker password, from ${ENV}")
    tls: FleetTls | None = Field(
        default=None, description="TLS settings; mqtts:// alone uses the system's CA certificates"
    )
    gateway: TopicId | None = Field(
        default=None,
        description="this gateway's id under the site (several gateways may share a site); default: the "
        "host name (set it where the host name is not stable, e.g. in a container)",
    )
    keepalive: int = Field(
        default=30, ge=5, le=3600, description="MQTT keepalive in seconds: the broker marks the gateway "
        "offline (its last will) after about 1.5 x this without a word",
    )  # fmt: skip
    heartbeat: Duration = Field(
        default=30.0, gt=0, le=3600, description="how often the gateway's state is published again"
    )
    buffer: int = Field(
        default=100_000,
        ge=100,
        le=10_000_000,
        description="events kept while the broker cannot be reached; past it the oldest are dropped and "
        "counted",
    )
    kpi_at: str = Field(
        default="06:00", description="HH:MM, site time: when the daily KPI snapshot is published"
    )
    reconnect_max: Duration = Field(default=30.0, gt=0, le=300.0, description="cap of the reconnect backoff")
    session_expiry: Duration = Field(
        default=7 * 86400.0,
        ge=0,
        description="how long the broker keeps this gateway's session while it is away (MQTT 5)",
    )
    commands: FleetCommands = Field(
        default_factory=FleetCommands, description="signed commands from the fleet view (off by default)"
    )

    @field_validator("company", "gateway")
    @classmethod
    def _topic_id(cls, v: str | None) -> str | None:
        if v is not None and not _TOPIC_ID.match(v):
            raise ValueError(
                "expected lower-case letters, digits and dashes (one topic level), starting with a letter "
                "or digit, at most 63"
            )
        return v

    @field_validator("broker")
    @classmethod
    def _broker(cls, v: str) -> str:
        parse_broker(v)
        return v

    @field_validator("kpi_at")
    @classmethod
    def _clock(cls, v: str) -> str:
        if not _CLOCK.match(v):
            raise ValueError("expected HH:MM (site time)")
        return v

    @model_validator(mode="after")
    def _credentials(self) -> FleetConfig:
        if self.password is not None and self.username is None:
            raise ValueError("password without username: give the broker user name too")
        if self.tls is not None and not self.address.tls:
            raise ValueError("tls is set but the broker URL is mqtt://: write mqtts:// to connect with TLS")
        return self

    @property
    def address(self) -> BrokerAddress:
        return parse_broker(self.broker)

    @property
    def gateway_id(self) -> str:
        return self.gateway or default_gateway_id()

    @property
    def kpi_clock(self) -> tuple[int, int]:
        h, m = self.kpi_at.split(":")
        return int(h), int(m)
