"""The site file's `mqtt` section and MQTT devices, turned into the driver's plain settings and subscriber."""

from __future__ import annotations

from pathlib import Path

from drivers.mqtt.settings import MqttSettings, TlsSettings, make_subscription
from drivers.mqtt.subscriber import MqttSubscriber
from gateway.config import Site
from gateway.config.mqtt import default_client_id
from gateway.core.bus import Bus
from gateway.core.stats import MqttStats


def mqtt_settings(site: Site) -> MqttSettings | None:
    """None when the site has no mqtt section."""
    cfg = site.config.mqtt
    if cfg is None:
        return None
    base = site.path.parent

    def path(p: Path | None) -> str | None:
        return None if p is None else str(p if p.is_absolute() else base / p)

    tls = None
    if cfg.tls is not None:
        tls = TlsSettings(
            ca_file=path(cfg.tls.ca_file),
            cert_file=path(cfg.tls.cert_file),
            key_file=path(cfg.tls.key_file),
            insecure=cfg.tls.insecure,
        )
    subscriptions = tuple(
        # The config model already ran the same checks (subscription_problems), so this cannot fail.
        make_subscription(
            topic=s.topic,
            format=s.format,
            device=s.device,
            quantity=s.quantity,
            fields=s.fields,
            device_field=s.device_field,
            time_field=s.time_field,
            qos=s.qos if s.qos is not None else cfg.qos,
        )
        for s in cfg.subscriptions
    )
    site_id = site.config.site.id
    return MqttSettings(
        site=site_id,
        client_id=cfg.client_id or default_client_id(site.local_id),  # a shard's own: see Site.local_id
        subscriptions=subscriptions,
        devices={d.id: d.building for d in site.config.devices if d.source == "mqtt"},
        host=cfg.host,
        port=cfg.port,
        username=cfg.username,
        password=cfg.password.get_secret_value() if cfg.password is not None else None,
        tls=tls,
        qos=cfg.qos,
        keepalive=cfg.keepalive,
        reconnect_max=float(cfg.reconnect_max),
        clean_start=cfg.clean_start,
        silence_timeout=float(cfg.silence_timeout),
        max_payload=cfg.max_payload,
        max_values=cfg.max_values,
        max_quantities=cfg.max_quantities,
        receive_maximum=cfg.receive_maximum,
        timezone=site.config.site.timezone,
    )


def build(site: Site, bus: Bus) -> MqttSubscriber | None:
    """The MQTT subscriber, or None when the site has no mqtt section."""
    settings = mqtt_settings(site)
    if settings is None:
        return None
    return MqttSubscriber(settings, bus, MqttStats(source=settings.source))
