"""The site as the engine sees it: plain data, built from the site file by gateway/incidents/site_model.py.

What fails together matters more than what is where: `dependents(domain)` is every device that goes dark
when that supply domain (or one above it) loses power, because the device itself, or the converter of its
line, is powered from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config.devices import Role

POWER_METER_ROLES = frozenset({Role.MAIN_POWER, Role.UNIT_POWER})


@dataclass(frozen=True, slots=True)
class DeviceNode:
    id: str
    building: str
    domain: str | None
    role: str
    households: int
    power_domain: str | None  # whose loss silences the device itself
    line: str | None
    line_power: str | None  # whose loss silences the device's line converter
    interval: float  # expected seconds between samples
    nominal_voltage: float = 220.0
    source: str = "modbus"
    phase: str | None = None  # L1 | L2 | L3: the phase of its domain a single-phase device is fed from

    @property
    def default_stale_after(self) -> float:
        """How long it may stay silent when no rule says: three missed samples, and never under 10 s."""
        return max(3.0 * self.interval, 10.0)


@dataclass(frozen=True, slots=True)
class DomainNode:
    id: str
    supply: str  # power | water (the site file's domain `kind`)
    building: str
    households: int
    parent: str | None = None
    name: str = ""


@dataclass(frozen=True, slots=True)
class Mains:
    device: str
    quantity: str
    below: float


@dataclass
class Topology:
    site_id: str
    timezone: str
    devices: dict[str, DeviceNode]
    domains: dict[str, DomainNode] = field(default_factory=dict)
    building_households: dict[str, int] = field(default_factory=dict)
    mains: Mains | None = None
    _dependents: dict[str, frozenset[str]] = field(default_factory=dict, init=False, repr=False)
    _silenced: dict[str, frozenset[str]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        children: dict[str, list[str]] = {}
        for d in self.domains.values():
            if d.parent:
                children.setdefault(d.parent, []).append(d.id)
        direct: dict[str, set[str]] = {d: set() for d in self.domains}
        for dev in self.devices.values():
            for dom in (dev.power_domain, dev.line_power):
                if dom in direct:
                    direct[dom].add(dev.id)
        powered = {d: set(devs) for d, devs in direct.items()}
        for dev in self.devices.values():
            # a power meter measuring the domain reads 0 V in its outage even when separately powered
            if dev.role in POWER_METER_ROLES and dev.domain in direct:
                direct[dev.domain].add(dev.id)

        def collect(direct: dict[str, set[str]], dom: str, seen: set[str]) -> set[str]:
            if dom in seen:
                return set()
            seen.add(dom)
            out = set(direct.get(dom, ()))
            for c in children.get(dom, []):
                out |= collect(direct, c, seen)
            return out

        for dom in self.domains:
            self._dependents[dom] = frozenset(collect(direct, dom, set()))
            self._silenced[dom] = frozenset(collect(powered, dom, set()))

    def dependents(self, domain: str) -> frozenset[str]:
        return self._dependents.get(domain, frozenset())

    def silenced(self, domain: str) -> frozenset[str]:
        """The dependents that go silent when the domain loses power (powered from it, themselves or
        through their line's converter); the others, such as a main meter on an auxiliary supply, keep
        answering and read the loss."""
        return self._silenced.get(domain, frozenset())

    def ancestors(self, domain: str) -> list[str]:
        """Domains above `domain`, nearest first."""
        out: list[str] = []
        cur = self.domains.get(domain)
        while cur is not None and cur.parent and cur.parent not in out:
            out.append(cur.parent)
            cur = self.domains.get(cur.parent)
        return out

    def depth(self, domain: str) -> int:
        return len(self.ancestors(domain))

    def line_devices(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for dev in self.devices.values():
            if dev.line:
                out.setdefault(dev.line, []).append(dev.id)
        return out

    def domain_households(self, domain: str) -> int:
        d = self.domains.get(domain)
        return d.households if d else 0
