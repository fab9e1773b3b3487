"""Build the engine's view of a site (rules/topology.py) and a ready engine from a loaded site file."""

from __future__ import annotations

from gateway.config import Site
from gateway.config.default_rules import effective_rules
from gateway.config.shard import own_domains
from rules.compile import compile_rules, settings
from rules.engine import Engine
from rules.topology import DeviceNode, DomainNode, Mains, Topology


def topology_from_site(site: Site) -> Topology:
    cfg = site.config
    lines = {ln.id: ln for ln in cfg.lines}
    buildings = {b.id: b for b in cfg.buildings}
    domains: dict[str, DomainNode] = {}
    # a shard judges only the domains wholly its own (gateway/config/shard.py own_domains)
    declared = (
        own_domains(site.shard)
        if site.shard is not None
        else [(b, d) for b in cfg.buildings for d in b.domains]
    )
    for b, d in declared:
        hh = d.households if d.households is not None else b.households
        domains[d.id] = DomainNode(d.id, d.kind, b.id, hh, d.parent, d.name)
    devices: dict[str, DeviceNode] = {}
    for dev in cfg.devices:
        line = lines.get(dev.line) if dev.line else None
        interval = (dev.expected_interval or 60.0) if dev.source == "mqtt" else dev.poll_interval
        devices[dev.id] = DeviceNode(
            id=dev.id,
            building=dev.building,
            domain=dev.domain,
            role=dev.role,
            households=dev.households,
            power_domain=dev.power_domain,
            line=dev.line,
            line_power=line.powered_by if line else None,
            interval=float(interval),
            nominal_voltage=(
                dev.nominal_voltage if dev.nominal_voltage is not None else cfg.site.nominal_voltage
            ),
            phase=dev.phase,
            source=dev.source,
        )
    mains = None
    if cfg.gateway.mains is not None:
        m = cfg.gateway.mains
        mains = Mains(m.device, m.quantity, m.below)
    return Topology(
        site_id=cfg.site.id,
        timezone=cfg.site.timezone,
        devices=devices,
        domains=domains,
        building_households={b.id: b.households for b in buildings.values()},
        mains=mains,
    )


def build_engine(site: Site, start: float, engine_type: type[Engine] = Engine) -> Engine:
    topo = topology_from_site(site)
    kinds = compile_rules(effective_rules(site.config.rules), topo)
    return engine_type(topo, kinds, settings(site.config.detection), start=start)
