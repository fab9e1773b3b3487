"""Turn one received MQTT message into a Sample: which subscription, which device, which values, what time.

Pure: no network, no clock (the receipt time comes in). The subscriber counts the problems and logs them.

Bounds, so one message costs the event loop at most one bounded payload's work: a payload over
max_payload is dropped before it is parsed (too_large); JSON deeper than max_depth is refused (too_deep);
a quantity name that is not [a-z][a-z0-9_]{0,63}, or is `quality`, is dropped (bad_quantity); readings
beyond max_values in one message are dropped (too_many_values); and a device that already has
max_quantities distinct quantities gets no new one (too_many_quantities). The rest of the message is kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo

from drivers.mqtt.errors import (
    BadQuantity,
    MessageError,
    TooLarge,
    TooManyQuantities,
    TooManyValues,
    UnknownDevice,
    UnknownTopic,
    short,
)
from drivers.mqtt.payloads import (
    MAX_DEPTH,
    MAX_PAYLOAD,
    MAX_QUANTITIES,
    MAX_VALUES,
    Decoded,
    decode_fields,
    decode_number,
    decode_shelly_gen1,
    decode_shelly_gen2,
    decode_tasmota,
    parse_json,
    parse_timestamp,
    quantity_problem,
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
    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        devices: Mapping[str, str],
        tz: tzinfo,
        *,
        max_payload: int = MAX_PAYLOAD,
        max_values: int = MAX_VALUES,
        max_quantities: int = MAX_QUANTITIES,
        max_depth: int = MAX_DEPTH,
    ) -> None:
        self.subscriptions = tuple(subscriptions)
        self.devices = devices  # device id -> building id
        self.tz = tz
        self.max_payload = max_payload
        self.max_values = max_values
        self.max_quantities = max_quantities
        self.max_depth = max_depth
        # device -> the quantities it has delivered (at most max_quantities; devices of the site file only)
        self.quantities: dict[str, set[str]] = {}

    def route(
        self, topic: str, payload: bytes, received: float, retained: bool = False, size: int | None = None
    ) -> Routed:
        """`size`: the payload's length when `payload` was cut short on arrival (at max_payload + 1)."""
        for sub in self.subscriptions:
            names = sub.template.match(topic)
            if names is not None:
                break
        else:
            return Routed(
                None, [UnknownTopic(f"topic {short(topic, 200)} matches no subscription of the site file")]
            )
        size = len(payload) if size is None else size
        if size > self.max_payload:
            too_large = TooLarge(
                f"payload of {size} bytes is over max_payload ({self.max_payload}); not read"
            )
            return Routed(None, [too_large], sub)
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
            doc = parse_json(payload, self.max_depth)
        if device is None and sub.device_field is not None:
            raw = sub.device_field.get(doc)
            if not isinstance(raw, str | int) or isinstance(raw, bool):
                raise UnknownDevice(f"field {sub.device_field.text!r} is {short(raw)}, expected a device id")
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
        self._bound(device, decoded)
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

    def _bound(self, device: str, decoded: Decoded) -> None:
        """Drop bad names, readings beyond max_values and new quantities beyond max_quantities, in place."""
        known = self.quantities.setdefault(device, set())
        if len(decoded.values) <= self.max_values and known.issuperset(decoded.values):
            return  # the usual message: the device's known quantities (checked when first seen), not too many
        kept: dict[str, float] = {}
        bad: list[str] = []
        beyond = 0
        refused: list[str] = []
        for q, v in decoded.values.items():
            if quantity_problem(q) is not None:
                bad.append(q)
            elif len(kept) >= self.max_values:
                beyond += 1
            elif q in known or len(known) < self.max_quantities:
                known.add(q)
                kept[q] = v
            else:
                refused.append(q)
        decoded.values = kept
        if bad:
            more = f" (and {len(bad) - 1} more in this message)" if len(bad) > 1 else ""
            decoded.problems.append(BadQuantity(f"{quantity_problem(bad[0])}{more}; dropped"))
        if beyond:
            decoded.problems.append(
                TooManyValues(
                    f"{len(kept) + len(refused) + beyond} readings in one message, over max_values "
                    f"({self.max_values}); the last {beyond} dropped"
                )
            )
        if refused:
            names = ", ".join(short(q) for q in refused[:3]) + (", ..." if len(refused) > 3 else "")
            decoded.problems.append(
                TooManyQuantities(
                    f"device {device!r} already has {len(known)} quantities (max_quantities); "
                    f"{len(refused)} new one(s) dropped: {names}"
                )
            )

    def _check_device(self, device: str, building: str | None, topic: str) -> None:
        home = self.devices.get(device)
        if home is None:
            raise UnknownDevice(
                f"device {short(device)} (topic {short(topic, 200)}) is not an mqtt device of the site file; "
                "add it under devices with source: mqtt"
            )
        if building is not None and building != home:
            raise UnknownDevice(
                f"topic {short(topic, 200)} names building {short(building)} but device {device!r} is in "
                f"building {home!r}"
            )
