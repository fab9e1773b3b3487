"""One way to make a paho client for the company's broker: MQTT 5, callback API 2, the broker's user and
password, TLS (CA, client certificate, host name check). The gateway's publisher and command client
(gateway/fleet/) and the fleet view (gateway/fleetview/client.py) all connect through it."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

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


def make_client(client_id: str, login: BrokerLogin) -> Client:
    """A client with the credentials and TLS set, not connected yet."""
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
    client.suppress_exceptions = True  # a bug in a callback is logged by paho, never ends its thread
    return client
