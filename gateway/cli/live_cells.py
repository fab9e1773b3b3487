"""What the live view writes in a device's readings cell: its headline values, each with its unit.

Units come from the device's profile (a point's `unit:`); an MQTT device has no profile, so a small table of
the common quantity names stands in. Watts become kilowatts and m3 becomes m³ for display only.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config import Device, Site

# Quantities without a profile unit (MQTT devices), by exact name or by the prefix of a per-phase name.
KNOWN_UNITS: dict[str, str] = {
    "voltage": "V",
    "current": "A",
    "power": "W",
    "apparent_power": "VA",
    "reactive_power": "var",
    "power_factor": "",
    "frequency": "Hz",
    "energy_import": "kWh",
    "energy_export": "kWh",
    "pressure": "bar",
    "flow": "m3/h",
    "flow_total": "m3",
    "velocity": "m/s",
    "level": "m",
    "temperature": "°C",
    "humidity": "%",
}

# Display form of a unit: (shown unit, factor applied to the value).
DISPLAY: dict[str, tuple[str, float]] = {
    "W": ("kW", 1e-3),
    "VA": ("kVA", 1e-3),
    "var": ("kvar", 1e-3),
    "m3/h": ("m³/h", 1.0),
    "m3": ("m³", 1.0),
}

# The groups an engineer looks at first, in order: per-phase groups are shown as "230/231/229 V".
PHASED = ("voltage", "current")
SINGLE = ("power_total", "pressure", "flow", "level")
# A device that has none of the headline quantities shows this many of its own.
FALLBACK_COUNT = 2


def known_unit(quantity: str) -> str:
    if quantity in KNOWN_UNITS:
        return KNOWN_UNITS[quantity]
    base = quantity.rsplit("_", 1)[0]  # voltage_l1 -> voltage, power_total -> power
    return KNOWN_UNITS.get(base, "")


def unit_of(site: Site, device: Device, quantity: str) -> str:
    """The engineering unit of a device's quantity: its profile's, else the known table's ("" if neither)."""
    profile = site.profiles.get(device.profile) if device.profile else None
    if profile is not None:
        try:
            unit = profile.point(quantity).unit
        except KeyError:
            unit = ""
        if unit:
            return unit
    return known_unit(quantity)


def _number(value: float, digits: int | None = None) -> str:
    if digits is None:  # enough digits to see a change, few enough to fit: 230, 42.1, 3.12
        size = abs(value)
        digits = 0 if size >= 100 else 1 if size >= 10 else 2
    return f"{value:.{digits}f}"


def quantity_text(value: float, unit: str, digits: int | None = None) -> str:
    shown, factor = DISPLAY.get(unit, (unit, 1.0))
    number = _number(value * factor, digits)
    return f"{number} {shown}" if shown else number


def _phased(site: Site, device: Device, values: Mapping[str, float], base: str) -> str | None:
    names = [f"{base}_l{i}" for i in (1, 2, 3) if f"{base}_l{i}" in values]
    if not names:
        return None
    unit = unit_of(site, device, names[0])
    shown, factor = DISPLAY.get(unit, (unit, 1.0))
    # three phases side by side in whole volts (amps when large) keep the cell short; one phase keeps a digit
    digits = 0 if len(names) > 1 and base == "voltage" else None
    numbers = "/".join(_number(values[n] * factor, digits) for n in names)
    return f"{numbers} {shown}" if shown else numbers


def reading_cells(site: Site, device: Device, values: Mapping[str, float]) -> list[str]:
    """The device's headline values with units, e.g. ["230/231/229 V", "42.0 A", "28.9 kW"]."""
    out = [cell for base in PHASED if (cell := _phased(site, device, values, base)) is not None]
    out += [quantity_text(values[q], unit_of(site, device, q)) for q in SINGLE if q in values]
    if out:
        return out
    own = list(values)[:FALLBACK_COUNT]  # the profile's order, as the first sample brought them
    return [f"{q} {quantity_text(values[q], unit_of(site, device, q))}" for q in own]
