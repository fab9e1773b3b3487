"""One way to make a paho client for the company's broker: MQTT 5, callback API 2, the broker's user and
password, TLS (CA, client certificate, host name check), paho's reconnect backoff capped. The gateway's
publisher, command client and peer client (gateway/fleet/) and the fleet view (gateway/fleetview/client.py)
all connect through it, and share the small pieces around it: a refused connection logged, paho's
on_disconnect signature, a clean stop."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, DisconnectFlags
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config.fleet import BrokerAddress, FleetConfig


@dataclass(frozen=True, slots=True)
class BrokerLogin:
    address: BrokerAddress
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False  # no host name check (test benches only)

    @classmethod
    def from_config(cls, cfg: FleetConfig, base: Path) -> BrokerLogin:
        """The site file's `fleet:` section; relative file names are relative to `base` (the site file's
        directory)."""

        def path(p: Path | None) -> Path | None:
            return None if p is None else p if p.is_absolute() else base / p

        tls = cfg.tls
        return cls(
            address=cfg.address,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password is not None else None,
            ca_file=path(tls.ca_file) if tls else None,
            cert_file=path(tls.cert_file) if tls else None,
            key_file=path(tls.key_file) if tls else None,
            insecure=bool(tls and tls.insecure),
        )


def make_client(client_id: str, login: BrokerLogin, *, reconnect_max: float | None = None) -> Client:
    """A client with the credentials and TLS set, not connected yet. With `reconnect_max` (seconds), paho's
    reconnect delay doubles from 1 s up to it (whole seconds, at least 1)."""
    client = Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
    if login.username is not None:
        client.username_pw_set(login.username, login.password)
    if login.address.tls:
        client.tls_set(
            ca_certs=str(login.ca_file) if login.ca_file else None,
            certfile=str(login.cert_file) if login.cert_file else None,
            keyfile=str(login.key_file) if login.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        if login.insecure:
            client.tls_insecure_set(True)
    if reconnect_max is not None:
        client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(reconnect_max)))
    client.suppress_exceptions = True  # a bug in a callback is logged by paho, never ends its thread
    return client


def gateway_client(client_id: str, cfg: FleetConfig, base: Path) -> Client:
    """A gateway's client from its site file's `fleet:` section (`base`: the site file's directory), paho's
    reconnect backoff capped at fleet.reconnect_max."""
    return make_client(client_id, BrokerLogin.from_config(cfg, base), reconnect_max=cfg.reconnect_max)


def refused(reason: ReasonCode, logger: logging.Logger, who: str, broker: str) -> bool:
    """For an on_connect: whether the broker refused the connection, logged as an error each time it does
    (paho tries again with its backoff; a client that must say it once keeps its own flag)."""
    if not reason.is_failure:
        return False
    logger.error(
        "the fleet broker refused the %s", who, extra={"fields": {"broker": broker, "reason": str(reason)}}
    )
    return True


OnDisconnect = Callable[[Client, Any, DisconnectFlags, ReasonCode, Properties | None], None]


def on_disconnect(lost: Callable[[ReasonCode], None]) -> OnDisconnect:
    """paho's on_disconnect (callback API 2) calling `lost(reason)`: the rest is never used here."""

    def callback(
        client: Client, userdata: Any, flags: DisconnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        lost(reason)

    return callback


def stop_client(client: Client | None) -> None:
    """A clean stop: DISCONNECT (so the broker publishes no last will), then end paho's network thread."""
    if client is not None:
        client.disconnect()
        client.loop_stop()
