"""Turn one received MQTT message into a Sample: which subscription, which device, which values, what time.

Pure: no network, no clock (the receipt time comes in). The subscriber counts the problems and logs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo

from drivers.mqtt.errors import MessageError, UnknownDevice, UnknownTopic
from drivers.mqtt.payloads import (
    Decoded,
    decode_fields,
    decode_number,
    decode_shelly_gen1,
    decode_shelly_gen2,
    decode_tasmota,
    parse_json,
    parse_timestamp,
)
from drivers.mqtt.settings import Subscription
from gateway.core.types import Quality, Sample


@dataclass
class Routed:
    """The outcome for one message: a Sample (None when nothing usable was in it) and every problem met."""

    sample: Sample | None
    problems: list[MessageError] = field(default_factory=list)
    subscription: Subscription | None = None


class Router:
    def __init__(self, subscriptions: Sequence[Subscription], devices: Mapping[str, str], tz: tzinfo) -> None:
        self.subscriptions = tuple(subscriptions)
        self.devices = devices  # device id -> building id
        self.tz = tz

    def route(self, topic: str, payload: bytes, received: float, retained: bool = False) -> Routed:
        for sub in self.subscriptions:
            names = sub.template.match(topic)
            if names is not None:
                break
        else:
            return Routed(None, [UnknownTopic(f"topic {topic!r} matches no subscription of the site file")])
        try:
            return self._decode(sub, names, topic, payload, received, retained)
        except MessageError as exc:
            return Routed(None, [exc], sub)

    def _decode(
        self,
        sub: Subscription,
        names: dict[str, str],
        topic: str,
        payload: bytes,
        received: float,
        retained: bool,
    ) -> Routed:
        device = names.get("device", sub.device)
        if device is not None:
            self._check_device(device, names.get("building"), topic)
        doc: object = None
        if sub.format != "number" and not sub.shelly_gen1:
            doc = parse_json(payload)
        if device is None and sub.device_field is not None:
            raw = sub.device_field.get(doc)
            if not isinstance(raw, str | int) or isinstance(raw, bool):
                raise UnknownDevice(f"field {sub.device_field.text!r} is {raw!r}, expected a device id")
            device = str(raw)
            self._check_device(device, names.get("building"), topic)
        assert device is not None  # the config check requires a device source for every format

        decoded = self._values(sub, names, payload, doc)
        ts = received
        if sub.time_field is not None:
            try:
                ts = parse_timestamp(sub.time_field.get(doc), self.tz, f"field {sub.time_field.text!r}")
            except MessageError as exc:
                # The readings are still good; they keep the receipt time and say something was off.
                decoded.problems.append(exc)
        if not decoded.values:
            return Routed(None, decoded.problems, sub)
        quality: Quality = "decode_error" if decoded.problems else ("stale" if retained else "good")
        return Routed(
            Sample(device=device, ts=ts, values=decoded.values, quality=quality), decoded.problems, sub
        )

    def _values(self, sub: Subscription, names: dict[str, str], payload: bytes, doc: object) -> Decoded:
        if sub.format == "number":
            quantity = names.get("quantity", sub.quantity)
            assert quantity is not None  # required by the config check
            return decode_number(payload, quantity)
        if sub.shelly_gen1:
            return decode_shelly_gen1(names["quantity"], names["channel"], payload)
        if sub.format == "tasmota":
            decoded = decode_tasmota(doc)
        elif sub.format == "shelly":
            decoded = decode_shelly_gen2(doc)
        else:
            return decode_fields(doc, sub.fields)
        if sub.fields:
            # Extra readings of the same payload (e.g. a temperature probe on a Tasmota plug).
            extra = decode_fields(doc, sub.fields)
            if not decoded.values and extra.values and all(p.cause == "no_value" for p in decoded.problems):
                decoded.problems.clear()  # e.g. no ENERGY object: this payload carries only the extra fields
            decoded.values.update(extra.values)
            decoded.problems.extend(extra.problems)
        return decoded

    def _check_device(self, device: str, building: str | None, topic: str) -> None:
        home = self.devices.get(device)
        if home is None:
            raise UnknownDevice(
                f"device {device!r} (topic {topic!r}) is not an mqtt device of the site file; "
                "add it under devices with source: mqtt"
            )
        if building is not None and building != home:
            raise UnknownDevice(
                f"topic {topic!r} names building {building!r} but device {device!r} is in building {home!r}"
            )
