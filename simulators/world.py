"""The simulated state of a site: what every device would read, and whether it answers at all.

Pure state plus a clock passed in (virtual time): nothing here does I/O or sleeps, so scenarios and tests
drive it deterministically. The protocol servers (modbus_server, mqtt_publisher) only ask two questions:
`answering(device)` and `value(device, quantity)` (or `text(device, quantity)` for a string point).

Model, in short:
- Every quantity has a nominal default by name (230 V phases, 50 Hz, ~3 bar, ~12 m3/h, ...). A scenario or
  test may override a quantity with a constant, a seeded noisy waveform around a value, or a ramp.
- Electrical quantities are derived from per-phase voltage and current (power = V * I * PF, line-line voltage
  from the phasors), so setting voltage_l2 to 0 also drops power_l2, power_total and the line-line voltages.
- Counters (energy_import, flow_total) integrate their rate over the clock, so they only ever grow.
- Power: a supply domain is powered unless it or an upstream (parent) domain is cut. A meter whose measured
  domain is dead reads 0 V / 0 A / 0 W / 0 Hz. A device that is line_powered (or powered_by a dead domain), or
  that sits on a line whose converter is powered_by a dead domain, does not answer at all.
- Water is not coupled to power: what a power cut does to pressure or flow is up to the scenario.
"""

from __future__ import annotations

import cmath
import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import Device, Site
from gateway.config.profile import Point, Profile

Clock = Callable[[], float]

PHASES = ("l1", "l2", "l3")
ROLE_CURRENT = {"main_power": 40.0, "unit_power": 6.0, "pump": 11.0}
DEFAULT_CURRENT = 5.0
NOMINAL_PF = 0.95
NOMINAL_FREQUENCY = 50.0
DEFAULT_PHASE_VOLTAGE = 230.0
# Plain (not electrical) quantities and their nominal values.
NOMINAL: dict[str, float] = {
    "pressure": 3.0,
    "pressure_decimals": 2.0,
    "flow": 12.0,
    "velocity": 1.2,
    "sound_speed": 1480.0,
    "signal_quality": 85.0,
    "error_code": 0.0,
    "level": 2.5,
    "temperature": 18.0,
    "energy_export": 0.0,
    "reactive_energy_import": 250.0,
    "reactive_energy_export": 0.0,
}
# Counters: quantity -> (rate quantity, factor turning rate * seconds into the counter's unit).
COUNTERS: dict[str, tuple[str, float]] = {
    "energy_import": ("power_total", 1.0 / 3.6e6),  # W * s -> kWh
    "flow_total": ("flow", 1.0 / 3600.0),  # m3/h * s -> m3
}
COUNTER_START = {"energy_import": 12000.0, "flow_total": 5000.0}
# Quantities a mqtt device (no profile) reports, by role.
MQTT_QUANTITIES: dict[str, tuple[str, ...]] = {
    "tank": ("level",),
    "zone_pressure": ("pressure",),
    "flow": ("flow", "flow_total"),
    "pump": ("voltage_l1", "current_l1", "power_total", "apparent_power_total", "reactive_power_total",
             "power_factor", "frequency", "energy_import"),
    "main_power": ("voltage_l1", "current_l1", "power_total", "power_factor", "frequency", "energy_import"),
    "unit_power": ("voltage_l1", "current_l1", "power_total", "power_factor", "frequency", "energy_import"),
    "other": ("value",),
}  # fmt: skip


class ManualClock:
    """A clock that only moves when told: values (and energy counters) hold still between reads in tests."""

    def __init__(self, start: float | None = None) -> None:
        self.t = time.time() if start is None else start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


class WorldError(ValueError):
    """A request to the world names something the site does not have."""


# ---------------------------------------------------------------------------------------------------------
# Signals: what an overridden quantity reads at time t


@dataclass(frozen=True)
class Constant:
    value: float

    def at(self, t: float) -> float:
        return self.value


def _unit_noise(seed: str, n: int) -> float:
    """A reproducible pseudo-random number in [-1, 1] for (seed, n)."""
    digest = hashlib.blake2b(f"{seed}:{n}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**63 - 1.0


@dataclass(frozen=True)
class Noisy:
    """A slow sine of `period` plus seeded per-second jitter, within +-amplitude of `base`.

    A pure function of t and the seed, so a replayed scenario reads the same values at the same times.
    """

    base: float
    amplitude: float
    period: float = 60.0
    seed: str = ""

    def at(self, t: float) -> float:
        phase = (_unit_noise(self.seed, -1) + 1.0) * math.pi
        wave = math.sin(2 * math.pi * t / self.period + phase)
        jitter = _unit_noise(self.seed, math.floor(t))
        return self.base + self.amplitude * (0.6 * wave + 0.4 * jitter)


@dataclass(frozen=True)
class Ramp:
    """Linear from `start` at t0 to `end` at t1, then holds `end`."""

    t0: float
    start: float
    t1: float
    end: float

    def at(self, t: float) -> float:
        if t >= self.t1 or self.t1 <= self.t0:
            return self.end
        if t <= self.t0:
            return self.start
        return self.start + (self.end - self.start) * (t - self.t0) / (self.t1 - self.t0)


Signal = Constant | Noisy | Ramp


# ---------------------------------------------------------------------------------------------------------
# Per-device state


@dataclass
class DeviceState:
    device: Device
    profile: Profile | None
    quantities: tuple[str, ...]
    phases: tuple[str, ...]
    online: bool = True
    running: bool = True  # pumps: the motor load is on
    delay: float = 0.0  # seconds before a Modbus answer (slow devices)
    overrides: dict[str, Signal] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    counted_at: float | None = None
    # Bit points laid over a whole-register point (e.g. TUF pipe_empty = bit 3 of error_code).
    bit_sources: dict[str, tuple[str, int]] = field(default_factory=dict)
    texts: dict[str, str] = field(
        default_factory=dict
    )  # string points (serial number, firmware) set by tests


def _bit_sources(profile: Profile) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for p in profile.points:
        if p.type != "bit" or p.function not in ("holding", "input") or p.bit is None:
            continue
        for q in profile.points:
            if q is not p and q.function == p.function and q.pdu == p.pdu and q.type in ("uint16", "int16"):
                out[p.quantity] = (q.quantity, p.bit)
    return out


class World:
    """The state of every device of a site. Thread-safe: tests may mutate it while servers read it."""

    def __init__(self, site: Site, *, clock: Clock = time.time, seed: int = 0, noise: float = 0.0) -> None:
        """`noise`: relative amplitude of the default jitter on nominal values (0 = steady values)."""
        self.site = site
        self.clock = clock
        self.seed = seed
        self.noise = noise
        self._lock = threading.RLock()
        self._cut: set[str] = set()
        self._domains = site.domains()
        self._lines = {ln.id: ln for ln in site.config.lines}
        self.devices: dict[str, DeviceState] = {}
        for d in site.config.devices:
            profile = site.profiles.get(d.profile) if d.profile else None
            if profile is not None:
                quantities = profile.quantities
            else:
                quantities = MQTT_QUANTITIES.get(d.role, MQTT_QUANTITIES["other"])
            phases = tuple(
                ph for ph in PHASES if f"voltage_{ph}" in quantities or f"current_{ph}" in quantities
            )
            state = DeviceState(
                device=d,
                profile=profile,
                quantities=quantities,
                phases=phases or ("l1",),
                bit_sources=_bit_sources(profile) if profile else {},
            )
            for q, start in COUNTER_START.items():
                state.counters[q] = start + 100.0 * _stable_fraction(f"{seed}:{d.id}:{q}")
            self.devices[d.id] = state

    # ---- time -------------------------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock()

    # ---- topology and power -----------------------------------------------------------------------------

    def _state(self, device: str) -> DeviceState:
        try:
            return self.devices[device]
        except KeyError:
            raise WorldError(f"unknown device {device!r}; known: {sorted(self.devices)}") from None

    def power_domains(self, target: str) -> list[str]:
        """The power supply domains a building id or a power domain id stands for."""
        if target in self._domains:
            _, dom = self._domains[target]
            if dom.kind != "power":
                raise WorldError(f"supply domain {target!r} is a {dom.kind} domain, not a power domain")
            return [target]
        for b in self.site.config.buildings:
            if b.id == target:
                return [d.id for d in b.domains if d.kind == "power"]
        raise WorldError(
            f"unknown building or supply domain {target!r}; known: "
            f"{sorted([b.id for b in self.site.config.buildings] + list(self._domains))}"
        )

    def cut_power(self, target: str) -> None:
        with self._lock:
            doms = self.power_domains(target)
            self._integrate_all()
            self._cut.update(doms)

    def restore_power(self, target: str) -> None:
        with self._lock:
            doms = self.power_domains(target)
            self._integrate_all()
            self._cut.difference_update(doms)

    def powered(self, domain: str | None) -> bool:
        """Whether a supply domain has power (it and every upstream domain uncut). None: always powered."""
        seen: set[str] = set()
        while domain is not None and domain not in seen:
            if domain in self._cut:
                return False
            seen.add(domain)
            entry = self._domains.get(domain)
            domain = entry[1].parent if entry else None
        return True

    def line_powered(self, line_id: str) -> bool:
        line = self._lines.get(line_id)
        return line is None or self.powered(line.powered_by)

    def measured_powered(self, device: str) -> bool:
        """Whether the circuit a meter measures is live (non-power domains count as live)."""
        d = self._state(device).device
        if d.domain is None:
            return True
        entry = self._domains.get(d.domain)
        if entry is None or entry[1].kind != "power":
            return True
        return self.powered(d.domain)

    def answering(self, device: str) -> bool:
        """Whether the device would answer a request (or publish) now."""
        with self._lock:
            st = self._state(device)
            d = st.device
            if not st.online or not self.powered(d.power_domain):
                return False
            return d.line is None or self.line_powered(d.line)

    # ---- device control ---------------------------------------------------------------------------------

    def stop_device(self, device: str) -> None:
        with self._lock:
            self._state(device).online = False

    def restore_device(self, device: str) -> None:
        with self._lock:
            self._state(device).online = True

    def set_pump(self, device: str, on: bool) -> None:
        with self._lock:
            st = self._state(device)
            self._integrate(st, self.now())
            st.running = on

    def set_delay(self, device: str, seconds: float) -> None:
        with self._lock:
            self._state(device).delay = max(0.0, seconds)

    def delay(self, device: str) -> float:
        return self._state(device).delay

    def _check_quantity(self, st: DeviceState, quantity: str) -> None:
        if quantity not in st.quantities and quantity not in COUNTERS:
            raise WorldError(
                f"device {st.device.id} has no quantity {quantity!r}; known: {sorted(st.quantities)}"
            )

    def set_value(
        self, device: str, quantity: str, value: float, *, noise: float = 0.0, period: float = 60.0
    ) -> None:
        """Hold `quantity` at `value`, or wander within +-noise around it (a seeded waveform)."""
        with self._lock:
            st = self._state(device)
            self._check_quantity(st, quantity)
            self._integrate(st, self.now())
            if quantity in COUNTERS:
                st.counters[quantity] = float(value)
                st.overrides.pop(quantity, None)
                return
            st.overrides[quantity] = (
                Noisy(float(value), noise, period, f"{self.seed}:{device}:{quantity}")
                if noise
                else Constant(float(value))
            )

    def ramp(self, device: str, quantity: str, to: float, over: float, start: float | None = None) -> None:
        """Move `quantity` linearly from its current value (or `start`) to `to` over `over` seconds."""
        with self._lock:
            st = self._state(device)
            self._check_quantity(st, quantity)
            now = self.now()
            self._integrate(st, now)
            begin = self.value(device, quantity, now) if start is None else start
            st.overrides[quantity] = Ramp(now, begin, now + max(0.0, over), to)

    def clear(self, device: str, quantity: str | None = None) -> None:
        """Back to the nominal value (of one quantity, or of all)."""
        with self._lock:
            st = self._state(device)
            self._integrate(st, self.now())
            if quantity is None:
                st.overrides.clear()
            else:
                st.overrides.pop(quantity, None)

    def set_error_bit(self, device: str, bit: int, on: bool = True, quantity: str = "error_code") -> None:
        """Set or clear one bit of an error register (TUF-2000M REG72: bit 3 = pipe empty)."""
        if not 0 <= bit <= 15:
            raise WorldError(f"bit must be 0-15, got {bit}")
        with self._lock:
            code = int(self.value(device, quantity))
            code = code | (1 << bit) if on else code & ~(1 << bit)
            self.set_value(device, quantity, float(code))

    def set_text(self, device: str, quantity: str, text: str) -> None:
        """Set what a string point (serial number, firmware version) reads."""
        with self._lock:
            st = self._state(device)
            point = _string_point(st, quantity)
            room = 2 * (point.count or 0)
            if len(text.encode(point.encoding, errors="replace")) > room:
                raise WorldError(f"{device}.{quantity}: {text!r} does not fit {room} bytes")
            st.texts[quantity] = text

    def text(self, device: str, quantity: str) -> str:
        """What a string point reads: as set, else a stable text naming the device (cut to fit)."""
        with self._lock:
            st = self._state(device)
            point = _string_point(st, quantity)
            if quantity in st.texts:
                return st.texts[quantity]
            return f"SIM-{device}"[: 2 * (point.count or 0)]

    # ---- reading ----------------------------------------------------------------------------------------

    def quantities(self, device: str) -> tuple[str, ...]:
        return self._state(device).quantities

    def values(self, device: str, now: float | None = None) -> dict[str, float]:
        with self._lock:
            t = self.now() if now is None else now
            return {q: self.value(device, q, t) for q in self._state(device).quantities}

    def value(self, device: str, quantity: str, now: float | None = None) -> float:
        """What the device reads for `quantity` at `now` (default: the clock)."""
        with self._lock:
            st = self._state(device)
            t = self.now() if now is None else now
            if quantity in COUNTERS and quantity not in st.overrides:
                self._integrate(st, t)
                return st.counters[quantity]
            return self._value(st, quantity, t)

    def _value(self, st: DeviceState, q: str, t: float) -> float:
        sig = st.overrides.get(q)
        if sig is not None:
            return sig.at(t)
        if q in st.bit_sources:
            src, bit = st.bit_sources[q]
            return float((int(self._value(st, src, t)) >> bit) & 1)
        if q in COUNTERS:
            return st.counters[q]
        if q == "serial_number":  # a stable 8-digit number per device, as on a meter's label
            fraction = _stable_fraction(f"{self.seed}:{st.device.id}:serial")
            return float(10_000_000 + int(89_999_999 * fraction))
        electrical = _electrical(self, st, q, t)
        if electrical is not None:
            return electrical
        return self._jitter(st, q, t, NOMINAL.get(q, 0.0))

    def _jitter(self, st: DeviceState, q: str, t: float, base: float) -> float:
        if not self.noise or base == 0.0 or q.endswith(("_decimals", "error_code")):
            return base
        return Noisy(base, abs(base) * self.noise, 60.0, f"{self.seed}:{st.device.id}:{q}").at(t)

    def _integrate(self, st: DeviceState, t: float) -> None:
        last = st.counted_at
        st.counted_at = t if last is None else max(last, t)
        if last is None or t <= last:
            return
        dt = t - last
        for counter, (rate_q, factor) in COUNTERS.items():
            if counter in st.overrides:
                continue
            # The rate at the end of the interval stands for the whole of it: mutations integrate first.
            rate = self._value(st, rate_q, t)
            st.counters[counter] += max(0.0, rate) * dt * factor

    def _integrate_all(self) -> None:
        now = self.now()
        for st in self.devices.values():
            self._integrate(st, now)


def _string_point(st: DeviceState, quantity: str) -> Point:
    point = next((p for p in st.profile.points if p.quantity == quantity), None) if st.profile else None
    if point is None or point.type != "string":
        raise WorldError(f"device {st.device.id} has no string point {quantity!r}")
    return point


def _stable_fraction(key: str) -> float:
    return (_unit_noise(key, 0) + 1.0) / 2.0


# ---------------------------------------------------------------------------------------------------------
# Electrical quantities, derived from per-phase voltage and current


def _phase_voltage(world: World, st: DeviceState, ph: str, t: float) -> float:
    q = f"voltage_{ph}"
    if not world.measured_powered(st.device.id):
        return 0.0
    sig = st.overrides.get(q)
    if sig is not None:
        return sig.at(t)
    d = st.device
    site_un = world.site.config.site
    if d.nominal_voltage is not None:
        nominal = d.nominal_voltage
    elif "nominal_voltage" in site_un.model_fields_set:
        nominal = site_un.nominal_voltage
    else:
        nominal = DEFAULT_PHASE_VOLTAGE
    return world._jitter(st, q, t, nominal)


def _phase_current(world: World, st: DeviceState, ph: str, t: float) -> float:
    q = f"current_{ph}"
    if _phase_voltage(world, st, ph, t) == 0.0:
        return 0.0  # no voltage, no load current
    sig = st.overrides.get(q)
    if sig is not None:
        return sig.at(t)
    if not st.running:
        return 0.0
    return world._jitter(st, q, t, ROLE_CURRENT.get(st.device.role, DEFAULT_CURRENT))


def _pf(world: World, st: DeviceState, t: float) -> float:
    sig = st.overrides.get("power_factor")
    return sig.at(t) if sig is not None else NOMINAL_PF


def _electrical(world: World, st: DeviceState, q: str, t: float) -> float | None:
    """The derived value of an electrical quantity, or None when `q` is not one."""
    for ph in PHASES:
        if q == f"voltage_{ph}":
            return _phase_voltage(world, st, ph, t) if ph in st.phases else 0.0
        if q == f"current_{ph}":
            return _phase_current(world, st, ph, t) if ph in st.phases else 0.0
    if q in ("voltage_l1_l2", "voltage_l2_l3", "voltage_l3_l1"):
        a, b = q[8:10], q[11:13]
        angle = {"l1": 0.0, "l2": -2 * math.pi / 3, "l3": 2 * math.pi / 3}
        va = cmath.rect(_phase_voltage(world, st, a, t), angle[a])
        vb = cmath.rect(_phase_voltage(world, st, b, t), angle[b])
        return round(abs(va - vb), 6)
    if q == "frequency":
        if not world.measured_powered(st.device.id):
            return 0.0
        sig = st.overrides.get(q)
        return sig.at(t) if sig is not None else NOMINAL_FREQUENCY
    pf = _pf(world, st, t)
    sin_phi = math.sqrt(max(0.0, 1.0 - pf * pf))
    kinds = {
        "power": lambda v, i: v * i * pf,
        "apparent_power": lambda v, i: v * i,
        "reactive_power": lambda v, i: v * i * sin_phi,
    }
    for kind, fn in kinds.items():
        for ph in PHASES:
            if q == f"{kind}_{ph}":
                if ph not in st.phases:
                    return 0.0
                return fn(_phase_voltage(world, st, ph, t), _phase_current(world, st, ph, t))
        if q == f"{kind}_total":
            return sum(
                _override_or(st, f"{kind}_{ph}", t)
                if f"{kind}_{ph}" in st.overrides
                else fn(_phase_voltage(world, st, ph, t), _phase_current(world, st, ph, t))
                for ph in st.phases
            )
    if q == "power_factor" or q.startswith("power_factor_l"):
        phases = st.phases if q == "power_factor" else tuple(ph for ph in st.phases if q.endswith(ph))
        live = any(_phase_current(world, st, ph, t) > 0 for ph in phases)
        return pf if live else 0.0
    return None


def _override_or(st: DeviceState, q: str, t: float) -> float:
    return st.overrides[q].at(t)


def point_value_kind(point: Point) -> str:
    """'bit', 'int' or 'float': what kind of number a point carries on the wire (for tests and servers)."""
    if point.type == "bit":
        return "bit"
    if point.type.startswith(("int", "uint")) and point.scale == 1.0 and point.decimals_register is None:
        return "int"
    return "float"
