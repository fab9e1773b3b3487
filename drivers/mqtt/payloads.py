"""Payload decoders: a plain number, JSON with field paths, Tasmota SENSOR JSON, Shelly EM/3EM (Gen1, Gen2).

Pure functions. A decoder returns the quantities it could read plus the problems it met, so one bad field
of a multi-value payload costs that field, not the whole message (the Sample is then marked
`decode_error`). Quantity names are the common ones of the device profiles (voltage_l1, current_l1,
power_total, energy_import in kWh, ...).

Bounds (the router applies the size, value and per-device ones): JSON deeper than MAX_DEPTH is refused
(too_deep), phase arrays keep their first MAX_PHASES elements (too_many_phases), and a quantity name must
match QUANTITY_NAME and not be reserved (`quality` is the sink's own field).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from drivers.mqtt.errors import (
    BadTimestamp,
    MalformedJson,
    MessageError,
    MissingField,
    NotANumber,
    NotFinite,
    TooDeep,
    TooManyPhases,
    UnknownQuantity,
)
from drivers.mqtt.errors import short as _short
from gateway.config.fieldpath import parse_steps

# Defaults of the bounds (the site file's mqtt section can change the first three).
MAX_PAYLOAD = 65536  # bytes; a larger payload is dropped before any parsing
MAX_VALUES = 64  # readings kept from one message
MAX_QUANTITIES = 64  # distinct quantities one device may have
MAX_DEPTH = 16  # JSON nesting (objects and arrays)
MAX_PHASES = 3  # elements kept from a phase array (Tasmota ENERGY lists)

QUANTITY_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
RESERVED_QUANTITIES = frozenset({"quality"})  # the sink writes the Sample's quality as a field of this name


def quantity_problem(name: str) -> str | None:
    """Why `name` cannot be a quantity (from a payload key or a topic level), or None when it can."""
    if QUANTITY_NAME.fullmatch(name) is None:
        return f"{_short(name)} is not a quantity name ([a-z][a-z0-9_]{{0,63}})"
    if name in RESERVED_QUANTITIES:
        return f"{name!r} is reserved"
    return None


@dataclass
class Decoded:
    values: dict[str, float] = field(default_factory=dict)
    problems: list[MessageError] = field(default_factory=list)

    def put(self, quantity: str, raw: object, where: str, scale: float = 1.0) -> None:
        try:
            self.values[quantity] = to_float(raw, where) * scale
        except MessageError as exc:
            self.problems.append(exc)


# ---------------------------------------------------------------------------------------------------------
# Field paths: data.pressure, values[0], readings[2].value, [0].v (syntax: gateway/config/fieldpath.py)


@dataclass(frozen=True, slots=True)
class FieldPath:
    text: str
    steps: tuple[str | int, ...]

    def get(self, doc: object) -> object:
        """The value at this path. Raises MissingField naming the first step that is not there."""
        cur = doc
        for i, step in enumerate(self.steps):
            if isinstance(step, int):
                if not isinstance(cur, list) or step >= len(cur):
                    raise MissingField(f"field {self.text!r}: no element [{step}] at {self._upto(i)}")
                cur = cur[step]
            else:
                if not isinstance(cur, dict) or step not in cur:
                    raise MissingField(f"field {self.text!r}: no key {step!r} at {self._upto(i)}")
                cur = cur[step]
        return cur

    def _upto(self, i: int) -> str:
        out = ""
        for s in self.steps[:i]:
            out += f"[{s}]" if isinstance(s, int) else (f".{s}" if out else s)
        return out or "the top level"


def parse_path(text: str) -> FieldPath:
    """Parse `a.b[0].c`. Raises ValueError with what is expected."""
    return FieldPath(text=text, steps=parse_steps(text))


# ---------------------------------------------------------------------------------------------------------
# Scalars and timestamps


def to_float(raw: object, where: str) -> float:
    """A JSON value as a reading. Booleans read as 1/0, numeric strings are accepted; NaN/inf are refused."""
    if raw is None:
        raise MissingField(f"{where} is null, expected a number")
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float):
        try:
            value = float(raw)
        except OverflowError:  # an integer literal of hundreds of digits
            raise NotFinite(f"{where} is {_short(raw)}, expected a finite number") from None
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise NotANumber(f"{where} is {_short(raw)}, expected a number") from None
    else:
        raise NotANumber(f"{where} is a JSON {type(raw).__name__}, expected a number")
    if not math.isfinite(value):
        raise NotFinite(f"{where} is {_short(raw)}, expected a finite number")
    return value


def parse_json(payload: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON document, nested at most `max_depth` objects/arrays deep (TooDeep otherwise)."""
    try:
        doc = json.loads(payload)  # UTF-8, or UTF-16/32 by their BOM or zero bytes
    except RecursionError:  # the parser recurses per level: thousands of [ exhaust the stack
        raise TooDeep(f"JSON nested deeper than {max_depth} levels: {_short(payload)}") from None
    except UnicodeDecodeError:
        raise MalformedJson(f"payload is not UTF-8 text: {_short(payload)}") from None
    except json.JSONDecodeError as exc:
        raise MalformedJson(
            f"malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): {_short(payload)}"
        ) from None
    except ValueError as exc:  # e.g. an integer literal over Python's 4300-digit limit
        raise MalformedJson(f"malformed JSON ({_short(str(exc), 80)}): {_short(payload)}") from None
    # No more bracket bytes than the limit (inside strings or not, or parts of other characters in UTF-16/32:
    # counting bytes can only count too many): it cannot nest deeper. The exact check needs the text.
    if payload.count(b"[") + payload.count(b"{") > max_depth:
        text = payload.decode(json.detect_encoding(payload), "surrogatepass")  # as json.loads decoded it
        if _nested_deeper(text, max_depth):
            raise TooDeep(f"JSON nested deeper than {max_depth} levels: {_short(payload)}")
    return doc


# On text json.loads accepted: its strings (to skip), anything but brackets, and innermost bracket pairs.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")


def _nested_deeper(text: str, limit: int) -> bool:
    """Whether valid JSON `text` nests objects/arrays more than `limit` deep.

    No recursion and no walk over the parsed objects (tens of milliseconds for 64 KB of `[[]]`): a few
    regular-expression passes in C, each removing one level of innermost bracket pairs.
    """
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    for _ in range(limit):
        brackets = _INNERMOST.sub("", brackets)
        if not brackets:
            return False
    return True


# Epoch values above this are milliseconds: 1e11 seconds is the year 5138, 1e11 ms is 1973.
_MS_THRESHOLD = 1e11


def parse_timestamp(raw: object, tz: tzinfo, where: str) -> float:
    """Epoch seconds, epoch milliseconds, or ISO 8601 (a time without offset is in the site's zone)."""
    expected = "expected epoch seconds, epoch milliseconds or ISO 8601 such as 2026-05-01T12:00:00Z"
    if isinstance(raw, bool) or raw is None:
        raise BadTimestamp(f"{where} is {_short(raw)}, {expected}")
    if isinstance(raw, str):
        text = raw.strip()
        try:
            raw = float(text)
        except ValueError:
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                raise BadTimestamp(f"{where} is {_short(raw)}, {expected}") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=tz)
            return dt.timestamp()
    if isinstance(raw, int) and raw.bit_length() > 64:  # no epoch; and math.isfinite overflows on huge ints
        raise BadTimestamp(f"{where} is {_short(raw)}, {expected}")
    if isinstance(raw, int | float) and math.isfinite(raw) and raw >= 0:
        return float(raw) / 1000.0 if raw > _MS_THRESHOLD else float(raw)
    raise BadTimestamp(f"{where} is {_short(raw)}, {expected}")


# ---------------------------------------------------------------------------------------------------------
# Formats


def decode_number(payload: bytes, quantity: str) -> Decoded:
    """The whole payload is one number, e.g. b"3.21"."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise NotANumber(f"payload is not UTF-8 text: {_short(payload)}") from None
    if not text:
        raise MissingField("empty payload, expected a number")
    out = Decoded()
    out.put(quantity, text, "payload")
    if out.problems:
        raise out.problems[0]
    return out


def decode_fields(doc: object, fields: Mapping[str, FieldPath]) -> Decoded:
    """Quantities at the configured field paths. Without paths: every numeric top-level key of an object."""
    out = Decoded()
    if fields:
        for quantity, path in fields.items():
            try:
                raw = path.get(doc)
            except MessageError as exc:
                out.problems.append(exc)
                continue
            out.put(quantity, raw, f"field {path.text!r}")
        return out
    if not isinstance(doc, dict):
        out.problems.append(
            MissingField(f"payload is a JSON {type(doc).__name__}; configure fields, or send an object")
        )
        return out
    values = out.values
    for key, raw in doc.items():
        # Without explicit fields, text and nested values are metadata, not readings.
        if type(raw) is float and raw - raw == 0.0:  # the common case, finite (inf - inf and NaN are NaN)
            values[key] = raw
        elif isinstance(raw, int | float) and not isinstance(raw, bool):
            out.put(str(key), raw, f"field {_short(key)}")
    if not out.values and not out.problems:
        out.problems.append(MissingField("the JSON object has no numeric field"))
    return out


# Tasmota tele/<topic>/SENSOR: {"Time": "...", "ENERGY": {"Total": 1.2, "Power": 40, "Voltage": 230, ...}}.
# Multi-phase energy monitors report lists (one element per phase).
_TASMOTA: dict[str, tuple[str, str, bool]] = {
    # key: (single-value name, per-phase name pattern, whether phases sum to the single value)
    "Voltage": ("voltage_l1", "voltage_l{}", False),
    "Current": ("current_l1", "current_l{}", False),
    "Power": ("power_total", "power_l{}", True),
    "ApparentPower": ("apparent_power_total", "apparent_power_l{}", True),
    "ReactivePower": ("reactive_power_total", "reactive_power_l{}", True),
    "Factor": ("power_factor", "power_factor_l{}", False),
    "Frequency": ("frequency", "frequency_l{}", False),
    "Total": ("energy_import", "energy_import_l{}", True),
    "Today": ("energy_import_today", "energy_import_today_l{}", True),
    "ExportActive": ("energy_export", "energy_export_l{}", True),
}


def decode_tasmota(doc: object) -> Decoded:
    out = Decoded()
    energy = doc.get("ENERGY") if isinstance(doc, dict) else None
    if not isinstance(energy, dict):
        out.problems.append(MissingField('no "ENERGY" object in the Tasmota SENSOR payload'))
        return out
    for key, (single, phase, summed) in _TASMOTA.items():
        if key not in energy:
            continue
        raw = energy[key]
        where = f"ENERGY.{key}"
        if not isinstance(raw, list):
            out.put(single, raw, where)
            continue
        before = len(out.problems)
        if len(raw) > MAX_PHASES:
            # Phases beyond l3 are no quantity of any profile; without them a sum would be wrong.
            out.problems.append(
                TooManyPhases(f"{where} has {len(raw)} phases, expected at most {MAX_PHASES}; kept the first")
            )
            raw = raw[:MAX_PHASES]
        for i, item in enumerate(raw, start=1):
            out.put(phase.format(i), item, f"{where}[{i - 1}]")
        phases = [
            out.values[phase.format(i)] for i in range(1, len(raw) + 1) if phase.format(i) in out.values
        ]
        if len(out.problems) == before and phases:
            out.values[single] = sum(phases) if summed else phases[0]
    if not out.values and not out.problems:
        out.problems.append(MissingField("the ENERGY object holds no known reading"))
    return out


# Shelly Gen1 EM/3EM: shellies/<id>/emeter/<i>/<kind>, one number per topic; energy in Wh.
_SHELLY_GEN1: dict[str, tuple[str, float]] = {
    "power": ("power_l{}", 1.0),
    "reactive_power": ("reactive_power_l{}", 1.0),
    "voltage": ("voltage_l{}", 1.0),
    "current": ("current_l{}", 1.0),
    "pf": ("power_factor_l{}", 1.0),
    "total": ("energy_import_l{}", 0.001),
    "total_returned": ("energy_export_l{}", 0.001),
}


def decode_shelly_gen1(kind: str, channel: str, payload: bytes) -> Decoded:
    if kind not in _SHELLY_GEN1:
        raise UnknownQuantity(f"Shelly emeter value {_short(kind)} is not one of {', '.join(_SHELLY_GEN1)}")
    if channel not in ("0", "1", "2"):
        raise UnknownQuantity(f"Shelly emeter channel {_short(channel)} is not 0, 1 or 2")
    pattern, scale = _SHELLY_GEN1[kind]
    out = decode_number(payload, pattern.format(int(channel) + 1))
    if scale != 1.0:
        out.values = {q: v * scale for q, v in out.values.items()}
    return out


# Shelly Gen2 (Pro 3EM, ...): the em:0 status (and emdata:0 energy counters, Wh), sent on
# <id>/status/em:0 or inside a NotifyStatus/NotifyFullStatus RPC on <id>/events/rpc.
_GEN2_PHASE = re.compile(r"^([abc])_(voltage|current|act_power|aprt_power|pf|freq)$")
_GEN2_PHASE_NAMES = {
    "voltage": "voltage_l{}",
    "current": "current_l{}",
    "act_power": "power_l{}",
    "aprt_power": "apparent_power_l{}",
    "pf": "power_factor_l{}",
    "freq": "frequency_l{}",
}
_GEN2_ENERGY_PHASE = re.compile(r"^([abc])_total_act(_ret)?_energy$")
_GEN2_PLAIN: dict[str, tuple[str, float]] = {
    "total_act_power": ("power_total", 1.0),
    "total_aprt_power": ("apparent_power_total", 1.0),
    "total_current": ("current_total", 1.0),
    "n_current": ("current_n", 1.0),
    "total_act": ("energy_import", 0.001),
    "total_act_ret": ("energy_export", 0.001),
}


def _gen2_objects(doc: object) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(doc, dict):
        return []
    if any(k in doc for k in ("a_voltage", "total_act_power", "total_act", "a_total_act_energy")):
        return [("", doc)]
    found: list[tuple[str, dict[str, Any]]] = []
    for holder in (doc, doc.get("params")):
        if isinstance(holder, dict):
            for name in ("em:0", "emdata:0"):
                obj = holder.get(name)
                if isinstance(obj, dict):
                    found.append((name + ".", obj))
    return found


def decode_shelly_gen2(doc: object) -> Decoded:
    out = Decoded()
    objects = _gen2_objects(doc)
    if not objects:
        out.problems.append(MissingField("no Shelly em:0 or emdata:0 status in the payload"))
        return out
    for prefix, obj in objects:
        for key, raw in obj.items():
            if raw is None:  # e.g. n_current on a meter without a neutral CT
                continue
            where = f"{prefix}{key}"
            if m := _GEN2_PHASE.match(key):
                phase = "abc".index(m.group(1)) + 1
                out.put(_GEN2_PHASE_NAMES[m.group(2)].format(phase), raw, where)
                if m.group(2) == "freq" and phase == 1:
                    out.put("frequency", raw, where)
            elif m := _GEN2_ENERGY_PHASE.match(key):
                phase = "abc".index(m.group(1)) + 1
                name = "energy_export_l{}" if m.group(2) else "energy_import_l{}"
                out.put(name.format(phase), raw, where, scale=0.001)
            elif key in _GEN2_PLAIN:
                name, scale = _GEN2_PLAIN[key]
                out.put(name, raw, where, scale=scale)
    if not out.values and not out.problems:
        out.problems.append(MissingField("the Shelly status holds no known reading"))
    return out
