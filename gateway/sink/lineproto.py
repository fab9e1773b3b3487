"""How a Sample becomes one InfluxDB line-protocol point: the writer's naming rules live here, and only here.

Measurement: the device's kind. A Modbus device takes its profile's kind (power, pressure, flow, level,
other). An MQTT device has no profile, so its site-file role decides: main_power/unit_power/pump -> power,
zone_pressure -> pressure, flow -> flow, tank -> level, anything else -> other.
Tags: site, building, device, profile (the profile name, or "mqtt"), domain (when the device has one).
Fields: one float per quantity (the quantity name unchanged) plus an integer `quality` field:
0 good, 1 stale, 2 comm_error, 3 decode_error. It is a number, not a string, because VictoriaMetrics and
other v2-write-API stores keep numeric fields only.

Timestamps are written in microseconds (PRECISION). A Modbus device's cycle publishes one Sample, and a
read with a decoding fault apart from it with quality decode_error; the two can complete within the same
millisecond: at millisecond precision InfluxDB would merge them into one point whose `quality` is
whichever came last. VictoriaMetrics keeps milliseconds and truncates finer timestamps.

A Prometheus-style store such as VictoriaMetrics names field f of measurement m as the metric `m_f`
(`series_name`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType

import orjson

from gateway.config import Device, Site
from gateway.config.profile import Profile
from gateway.core.types import Quality, Sample

MEASUREMENTS: tuple[str, ...] = ("power", "pressure", "flow", "level", "other")
QUALITY_FIELD = "quality"
PRECISION = "us"  # of the timestamps we write; the writer sends it as the precision parameter
QUALITY_CODES: dict[Quality, int] = {"good": 0, "stale": 1, "comm_error": 2, "decode_error": 3}
MQTT_PROFILE_TAG = "mqtt"
MAX_TEMPLATES = 100_000  # line templates kept (device x quantity set); past it new ones are made per sample


def _load_accelerator() -> ModuleType | None:
    """The C encoder (gateway/sink/_lineenc.c), built by the install when a C compiler is at hand."""
    try:
        from gateway.sink import _lineenc
    except ImportError:
        return None
    return _lineenc


_accelerator = _load_accelerator()
# Which path LineEncoder takes by default: C when built, unless METERWATCH_NO_ACCEL=1 (for comparisons;
# the lines are the same either way).
ACCELERATED: bool = _accelerator is not None and os.environ.get("METERWATCH_NO_ACCEL", "") in ("", "0")

_ROLE_MEASUREMENT: dict[str, str] = {
    "main_power": "power",
    "unit_power": "power",
    "pump": "power",
    "zone_pressure": "pressure",
    "flow": "flow",
    "tank": "level",
    "other": "other",
}


def measurement_for_profile(profile: Profile) -> str:
    return profile.kind if profile.kind in MEASUREMENTS else "other"


def measurement_for(device: Device, profile: Profile | None) -> str:
    """The measurement a device's samples are written to (see the module docstring for the rule)."""
    if device.source == "modbus" and profile is not None:
        return measurement_for_profile(profile)
    return _ROLE_MEASUREMENT.get(device.role, "other")


def field_name(quantity: str) -> str:
    return quantity


def series_name(measurement: str, field: str) -> str:
    """The metric name a Prometheus-style store (VictoriaMetrics) gives field `field` of `measurement`."""
    return f"{measurement}_{field}"


def produced_fields(profiles: Iterable[Profile]) -> dict[str, set[str]]:
    """measurement -> fields the writer produces for devices of these profiles (plus `quality`)."""
    out: dict[str, set[str]] = {}
    for prof in profiles:
        fields = out.setdefault(measurement_for_profile(prof), {QUALITY_FIELD})
        fields.update(field_name(q) for q in prof.quantities)
    return out


def _escape_key(s: str) -> str:
    # tag keys, tag values and field keys: comma, equals sign and space are escaped
    return s.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _escape_measurement(s: str) -> str:
    return s.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


@dataclass(frozen=True, slots=True)
class SeriesKey:
    measurement: str
    tags: tuple[tuple[str, str], ...]

    def prefix(self) -> str:
        tags = ",".join(f"{_escape_key(k)}={_escape_key(v)}" for k, v in sorted(self.tags) if v != "")
        return _escape_measurement(self.measurement) + ("," + tags if tags else "")


class LineEncoder:
    """Encodes Samples of one site. Prefixes (measurement + tags) are computed once per device, and for each
    device and set of quantities one template holds everything constant in a line (prefix, escaped field
    keys, separators) as the parts between its numbers. A batch of samples costs one pass in Python that
    gathers their templates' parts and their numbers, one orjson.dumps for all the numbers (values, quality
    codes, stamps: shortest round-tripping text, in C) and one join of parts and numbers interleaved.

    Float text is orjson's, not repr's: the same digits (both are the shortest text that reads back as the
    same double) and the same text wherever no exponent is needed; with one they differ in spelling only
    (orjson 1.5e-7 and 0.00001, repr 1.5e-07 and 1e-05; both 1e+16). Both are floats to InfluxDB's line
    protocol (Go's strconv.ParseFloat) and to VictoriaMetrics' parser; a float value always keeps its
    point or exponent (230.0, never 230), so no value reads as an integer.

    With the C encoder built (ACCELERATED), a batch is one C call instead (gateway/sink/_lineenc.c): the
    same templates and the same bytes (floats spelt as orjson spells them). Batches it does not handle (NaN,
    infinities, odd values or names) go the Python way, which gives the lines for them as before."""

    def __init__(self, site: Site, accelerated: bool = ACCELERATED) -> None:
        """`accelerated`: encode batches with the C encoder (the default when it is built and not switched
        off); False forces the pure-Python path (the tests compare the two)."""
        if accelerated and _accelerator is None:
            raise RuntimeError("LineEncoder: the C encoder gateway.sink._lineenc is not available")
        self._c_encode: Callable[..., tuple[bytes, int] | int | None] | None = (
            _accelerator.encode if accelerated and _accelerator is not None else None
        )
        self.accelerated = self._c_encode is not None
        self.site_id = site.config.site.id
        self.keys: dict[str, SeriesKey] = {}
        self._prefix: dict[str, str] = {}
        # (device, quantities in the sample's order) -> the parts before each number of its line:
        # ("\n<prefix> k1=", ",k2=", ..., ",quality=", "i "): values, quality code, stamp
        self._templates: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
        for dev in site.config.devices:
            profile = site.profiles.get(dev.profile) if dev.profile else None
            tags = [
                ("site", self.site_id),
                ("building", dev.building),
                ("device", dev.id),
                ("profile", dev.profile if dev.source == "modbus" and dev.profile else MQTT_PROFILE_TAG),
                ("domain", dev.domain or ""),
            ]
            key = SeriesKey(measurement_for(dev, profile), tuple(tags))
            self.keys[dev.id] = key
            self._prefix[dev.id] = key.prefix()
        self.skipped_values = 0  # NaN/inf values that line protocol cannot carry
        self.unknown_devices = 0

    def encode(self, sample: Sample) -> str | None:
        """One line, or None when the sample carries no finite value at all."""
        lines = self.encode_many((sample,))
        return lines[0] if lines else None

    def encode_many(self, samples: Sequence[Sample]) -> list[str]:
        """The samples' lines in order; a sample with no finite value has none."""
        fast = self._encode_c(samples)
        if fast is not None:
            body, lines = fast
            return body.decode("utf-8").split("\n") if lines else []
        out = self._encode(samples)
        if isinstance(out, list):
            return out
        return out[0].split("\n")[1:]

    def encode_body(self, samples: Sequence[Sample]) -> tuple[bytes, int] | None:
        """The samples' lines (as encode_many) joined by "\n", UTF-8, and how many: a request body and a
        spool chunk as they are, with no list of lines made, joined and encoded again on the way. The
        intake's hot path. None when a line holds a newline (a name did; the body could not give the lines
        back): the caller takes encode_many's lines then."""
        fast = self._encode_c(samples)
        if fast is not None:
            return fast
        out = self._encode(samples)
        if not isinstance(out, list):
            return out[0][1:].encode("utf-8"), out[1]
        body = "\n".join(out).encode("utf-8")
        return (body, len(out)) if body.count(b"\n") == max(0, len(out) - 1) else None

    def _encode_c(self, samples: Sequence[Sample]) -> tuple[bytes, int] | None:
        """The body and line count from the C encoder, or None: no accelerator, or a batch it leaves to the
        Python path (a NaN or infinite value, a value not an int, bool or float, a stamp past 64 bits, a
        newline in a name; the Python path gives the same lines for everything the C one writes). A sample
        whose template does not exist yet stops it: the templates are made here and it runs once more."""
        encode = self._c_encode
        if encode is None:
            return None
        out = encode(samples, self._templates, QUALITY_CODES)
        if isinstance(out, int):  # the index of the first sample without a template
            for sample in samples[out:]:
                quantities = tuple(sample.values)
                if quantities and (sample.device, quantities) not in self._templates:
                    self._template(sample.device, quantities)
            out = encode(samples, self._templates, QUALITY_CODES)
            if isinstance(out, int):  # past MAX_TEMPLATES: templates are not kept, Python makes them
                return None
        return out

    def _encode(self, samples: Sequence[Sample]) -> tuple[str, int] | list[str]:
        """The lines, each led by "\n", in one string and how many there are; or, for a batch that
        needs the long way (a NaN or infinite value, a stamp past 64 bits, a name holding a newline), the
        lines as a list."""
        get = self._templates.get
        parts: list[str] = []
        numbers: list[float | int] = []
        add_parts, add_numbers, add_number = parts.extend, numbers.extend, numbers.append
        lines = 0
        for sample in samples:
            values = sample.values
            template = get((sample.device, tuple(values)))
            if template is None:
                if not values:
                    continue  # nothing to write (and no template for an empty set)
                template = self._template(sample.device, tuple(values))
            add_parts(template)
            add_numbers(map(float, values.values()))  # ints and bools are written as floats
            add_number(QUALITY_CODES.get(sample.quality, 0))
            add_number(round(sample.ts * 1_000_000))
            lines += 1
        if not lines:
            return []
        try:
            text = orjson.dumps(numbers)
        except orjson.JSONEncodeError:  # a stamp past 64-bit integers (a bad clock): the long way says so
            return self._encode_skipping(samples)
        if b"null" in text:  # orjson writes NaN and infinities as null: this batch takes the long way
            return self._encode_skipping(samples)
        # each part precedes its number: parts and numbers interleaved are the lines, each led by "\n"
        # (str, not bytes: bytes.join takes a buffer of each piece, twice as slow; the text is ASCII)
        body: list[str] = [""] * (2 * len(parts))
        body[::2] = parts
        body[1::2] = text[1:-1].decode("ascii").split(",")
        out = "".join(body)
        if out.count("\n") != lines:  # a name held a newline (line protocol cannot carry it anyway)
            return [self._format(s) for s in samples if s.values]
        return out, lines

    def _format(self, sample: Sample) -> str:
        """One sample whose values are all finite, on its own."""
        values = sample.values
        template = self._templates.get((sample.device, tuple(values)))
        if template is None:
            template = self._template(sample.device, tuple(values))
        texts = orjson.dumps(list(map(float, values.values())))[1:-1].decode("ascii").split(",")
        numbers = [*texts, str(QUALITY_CODES.get(sample.quality, 0)), str(round(sample.ts * 1_000_000))]
        return "".join(p + n for p, n in zip(template, numbers, strict=True))[1:]

    def _template(self, device: str, quantities: tuple[str, ...]) -> tuple[str, ...]:
        keys = [_escape_key(field_name(q)) for q in quantities]
        template = (
            f"\n{self._device_prefix(device)} {keys[0]}=",
            *(f",{k}=" for k in keys[1:]),
            f",{QUALITY_FIELD}=",
            "i ",
        )
        if len(self._templates) < MAX_TEMPLATES:  # quantity sets come from profiles and payloads: bounded
            self._templates[(device, quantities)] = template
        return template

    def _device_prefix(self, device: str) -> str:
        prefix = self._prefix.get(device)
        if prefix is None:
            # Sources are inventory-driven, so this is a programming error upstream; still store it.
            self.unknown_devices += 1
            key = SeriesKey("other", (("site", self.site_id), ("device", device)))
            prefix = self._prefix[device] = key.prefix()
        return prefix

    def _encode_skipping(self, samples: Sequence[Sample]) -> list[str]:
        """The long way, for a batch with a NaN or infinite value: those values are skipped and counted, and
        a sample left with none has no line."""
        lines = []
        for sample in samples:
            finite = {}
            for quantity, value in sample.values.items():
                v = float(value)
                if math.isfinite(v):
                    finite[quantity] = v
                else:
                    self.skipped_values += 1
            if finite:
                lines.append(self._format(Sample(sample.device, sample.ts, finite, sample.quality)))
        return lines
