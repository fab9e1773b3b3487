"""Publishes the MQTT devices of a site (devices with source: mqtt) to a broker, like the real sensors would.

Each device is published through one of the site's mqtt.subscriptions, in that subscription's format:
- number: one plain number per quantity on the topic template (`sensors/{building}/{device}/{quantity}`);
- tasmota: `tele/<device>/SENSOR` JSON with an ENERGY object (Voltage, Current, Power, Total, ...);
- shelly: Gen1 EM topics (`shellies/<id>/emeter/<channel>/<kind>`, one number each) when the template names a
  channel, else a Gen2 `em:0` status JSON (a_voltage, a_current, a_act_power, ..., total_act_power);
- json: an object with each quantity at its configured field path (or at the top level under its own name).
A subscription naming a fixed device serves only that device. Otherwise power devices (pump, main_power,
unit_power) prefer tasmota, then shelly, then json, then number; other devices prefer number, then json.
A device is published every expected_interval (default 10 s) while it answers: a stopped or unpowered device
goes silent, as a real one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from drivers.mqtt.payloads import parse_path
from gateway.config import Device, MqttSubscription, Site
from gateway.config.topics import TemplateError, parse_template
from simulators.world import World

log = logging.getLogger("meterwatch.sim.mqtt")

DEFAULT_INTERVAL = 10.0
POWER_ROLES = ("pump", "main_power", "unit_power")
# Tasmota ENERGY keys and the quantities they carry (single-phase plug/switch).
TASMOTA_KEYS: dict[str, str] = {
    "Voltage": "voltage_l1",
    "Current": "current_l1",
    "Power": "power_total",
    "ApparentPower": "apparent_power_total",
    "ReactivePower": "reactive_power_total",
    "Factor": "power_factor",
    "Frequency": "frequency",
    "Total": "energy_import",
}
# Shelly Gen2 em:0 keys per phase, and the Gen1 emeter kinds.
SHELLY_GEN2_PHASE = {"voltage": "voltage", "current": "current", "act_power": "power", "pf": "power_factor"}
SHELLY_GEN1_KINDS = {"voltage": "voltage", "current": "current", "power": "power", "pf": "power_factor"}


@dataclass(frozen=True)
class Publication:
    """How one device is published: which subscription (format, topic) and which quantities."""

    device: Device
    sub: MqttSubscription
    quantities: tuple[str, ...]
    qos: int


def _fill(template: str, names: dict[str, str]) -> str:
    tpl = parse_template(template)
    parts = []
    for lv in tpl.levels:
        if lv.kind == "name":
            parts.append(names[lv.text])
        elif lv.kind == "plus":
            parts.append(names.get("building", "sim"))
        elif lv.kind == "hash":
            parts.append("sim")
        else:
            parts.append(lv.text)
    return "/".join(parts)


def _candidates(d: Device, quantities: tuple[str, ...], sub: MqttSubscription) -> tuple[str, ...] | None:
    """The quantities `sub` can carry for device `d`, or None when it cannot publish it at all."""
    try:
        names = parse_template(sub.topic).names
    except TemplateError:
        return None
    if sub.device is not None and sub.device != d.id:
        return None
    if sub.device is None and "device" not in names and sub.device_field is None:
        return None
    if sub.format == "number":
        if "quantity" in names:
            return quantities
        return (sub.quantity,) if sub.quantity in quantities else None
    if sub.format == "tasmota":
        carried = tuple(q for q in quantities if q in TASMOTA_KEYS.values())
        return carried or None
    if sub.format == "shelly":
        carried = tuple(
            q for q in quantities if q.startswith(("voltage_l", "current_l", "power_", "power_factor"))
        )
        return carried or None
    # json
    if sub.fields:
        carried = tuple(q for q in quantities if q in sub.fields)
        return carried or None
    return quantities


def plan_publications(site: Site, world: World) -> tuple[list[Publication], list[str]]:
    """A publication per MQTT device, and a warning for each device no subscription can carry."""
    mqtt_cfg = site.config.mqtt
    pubs: list[Publication] = []
    warnings: list[str] = []
    for d in site.config.devices:
        if d.source != "mqtt":
            continue
        if mqtt_cfg is None:
            warnings.append(f"{d.id}: the site has no mqtt section")
            continue
        quantities = world.quantities(d.id)
        order = ("tasmota", "shelly", "json", "number") if d.role in POWER_ROLES else ("number", "json")
        best: tuple[int, MqttSubscription, tuple[str, ...]] | None = None
        for sub in mqtt_cfg.subscriptions:
            carried = _candidates(d, quantities, sub)
            if carried is None or sub.format not in order:
                continue
            rank = -1 if sub.device == d.id else order.index(sub.format)
            if best is None or rank < best[0]:
                best = (rank, sub, carried)
        if best is None:
            warnings.append(f"{d.id}: no mqtt subscription can carry its quantities {list(quantities)}")
            continue
        _, sub, carried = best
        qos = sub.qos if sub.qos is not None else mqtt_cfg.qos
        pubs.append(Publication(device=d, sub=sub, quantities=carried, qos=qos))
    return pubs, warnings


def _set_path(doc: dict[str, Any], path: str, value: object) -> None:
    steps = parse_path(path).steps
    cur: Any = doc
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        nxt: Any = value if last else ([] if isinstance(steps[i + 1], int) else {})
        if isinstance(step, int):
            while len(cur) <= step:
                cur.append(None)
            if last or cur[step] is None:
                cur[step] = nxt
            cur = cur[step]
        else:
            if last or step not in cur:
                cur[step] = nxt
            cur = cur[step]


def _num(v: float) -> float:
    return round(v, 6)


def _per_phase(vals: dict[str, float], phases: list[str]) -> dict[str, float]:
    """Per-phase values; a single-phase device's totals stand for its one phase (a Shelly EM channel)."""
    out = dict(vals)
    if phases == ["l1"]:
        for total, phase in (("power_total", "power_l1"), ("power_factor", "power_factor_l1")):
            if total in vals and phase not in vals:
                out[phase] = vals[total]
    return out


def messages(pub: Publication, values: dict[str, float], now: float) -> list[tuple[str, bytes]]:
    """The (topic, payload) pairs one publication sends for `values` at `now`."""
    d, sub = pub.device, pub.sub
    names = {"building": d.building, "device": d.id}
    vals = {q: values[q] for q in pub.quantities if q in values}
    if sub.format == "number":
        return [(_fill(sub.topic, {**names, "quantity": q}), repr(_num(v)).encode()) for q, v in vals.items()]
    if sub.format == "tasmota":
        energy = {key: _num(vals[q]) for key, q in TASMOTA_KEYS.items() if q in vals}
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return [(_fill(sub.topic, names), json.dumps({"Time": stamp, "ENERGY": energy}).encode())]
    if sub.format == "shelly":
        phases = [ph for ph in ("l1", "l2", "l3") if f"voltage_{ph}" in vals or f"current_{ph}" in vals]
        per_phase = _per_phase(vals, phases)
        if "channel" in parse_template(sub.topic).names:
            out = []
            for i, ph in enumerate(phases):
                for kind, base in SHELLY_GEN1_KINDS.items():
                    q = f"{base}_{ph}"
                    if q in per_phase:
                        topic = _fill(sub.topic, {**names, "channel": str(i), "quantity": kind})
                        out.append((topic, repr(_num(per_phase[q])).encode()))
            return out
        em: dict[str, Any] = {"id": 0}
        for ph, letter in zip(phases, "abc", strict=False):
            for key, base in SHELLY_GEN2_PHASE.items():
                if f"{base}_{ph}" in per_phase:
                    em[f"{letter}_{key}"] = _num(per_phase[f"{base}_{ph}"])
        if "power_total" in vals:
            em["total_act_power"] = _num(vals["power_total"])
        return [(_fill(sub.topic, names), json.dumps(em).encode())]
    doc: dict[str, Any] = {}
    for q, v in vals.items():
        _set_path(doc, sub.fields.get(q, q), _num(v))
    if sub.device_field:
        _set_path(doc, sub.device_field, d.id)
    if sub.time_field:
        _set_path(doc, sub.time_field, round(now, 3))
    return [(_fill(sub.topic, names), json.dumps(doc).encode())]


@dataclass
class PublisherCounters:
    published: int = 0
    failed: int = 0  # not handed to the broker (disconnected): lost, as a real sensor's reading would be
    skipped: int = 0  # device silent (stopped or unpowered)


@dataclass
class MqttPublisher:
    site: Site
    world: World
    client_id: str = ""
    counters: PublisherCounters = field(default_factory=PublisherCounters)
    publications: list[Publication] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _client: mqtt.Client | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.publications, warnings = plan_publications(self.site, self.world)
        for w in warnings:
            log.warning("mqtt simulator: %s", w)
        if not self.client_id:
            self.client_id = f"meterwatch-sim-{self.site.config.site.id}"

    @property
    def endpoint(self) -> str:
        cfg = self.site.config.mqtt
        return f"mqtt {cfg.host}:{cfg.port}" if cfg else "mqtt (none)"

    async def start(self) -> None:
        cfg = self.site.config.mqtt
        if cfg is None or not self.publications:
            return
        loop = asyncio.get_running_loop()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
        if cfg.tls is not None:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(cfg.tls.insecure)
        client.reconnect_delay_set(min_delay=1, max_delay=5)

        def on_connect(c: mqtt.Client, userdata: object, flags: object, rc: Any, props: object) -> None:
            if not rc.is_failure:
                loop.call_soon_threadsafe(self.connected.set)

        def on_disconnect(c: mqtt.Client, userdata: object, flags: object, rc: Any, props: object) -> None:
            loop.call_soon_threadsafe(self.connected.clear)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.connect_async(cfg.host, cfg.port, keepalive=30)
        client.loop_start()
        self._client = client
        for i, pub in enumerate(self.publications):
            offset = (i * 0.137) % 1.0  # spread devices so they do not all publish in the same instant
            self._tasks.append(asyncio.create_task(self._run(pub, offset), name=f"sim-mqtt-{pub.device.id}"))

    async def _run(self, pub: Publication, offset: float) -> None:
        interval = pub.device.expected_interval or DEFAULT_INTERVAL
        await asyncio.sleep(offset)
        next_at = time.monotonic()
        while True:
            self.publish_once(pub)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def publish_once(self, pub: Publication) -> int:
        """Publish one reading of `pub` now; returns the number of messages handed to the broker."""
        assert self._client is not None
        if not self.world.answering(pub.device.id):
            self.counters.skipped += 1
            return 0
        now = self.world.now()
        sent = 0
        for topic, payload in messages(pub, self.world.values(pub.device.id, now), now):
            info = self._client.publish(topic, payload, qos=pub.qos)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                self.counters.published += 1
                sent += 1
            else:
                self.counters.failed += 1
        return sent

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
