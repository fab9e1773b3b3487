"""The `shard:` section: several gateways share one site (a compound), each watching some of its buildings.

    shard: {id: north, buildings: [B1, B2]}

The site file still describes the whole compound (every building, supply domain, line and device), so one
file, or the same topology in every gateway's file, serves every shard. Loading narrows what this gateway
runs to its shard (`narrow`): its buildings, the devices in them, the lines those devices are on, the
maintenance windows that concern them. Devices and lines of other buildings are left out, not polled, and
listed by `meterwatch check` and `meterwatch plan` (`describe`). What the whole compound says is kept on
`Site.shard.compound`, so that an incident's supply path (its domain and that domain's ancestors, e.g.
["B1-power", "T1"]) is told from the whole topology: the fleet view links the incidents of two shards that
share an upstream domain (docs/fleet-topics.md).

Without a `shard:` section nothing is narrowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from gateway.config.base import Id, Strict
from gateway.config.site import Building, SupplyDomain
from gateway.config.yamlsrc import Loc

if TYPE_CHECKING:  # schema.py imports this module for ShardSpec
    from gateway.config.schema import SiteConfig


class ShardSpec(Strict):
    id: Annotated[str, Id] | None = Field(
        default=None,
        description="this gateway's shard of the compound; default: fleet.gateway (required without a fleet "
        "section)",
    )
    buildings: list[str] = Field(
        min_length=1,
        description="the building ids this gateway watches (buildings[].id); the others' devices and lines "
        "are not polled",
    )


@dataclass(frozen=True)
class Shard:
    """This gateway's part of a compound, with what the whole site file says (`compound`: a SiteConfig)."""

    id: str
    buildings: tuple[str, ...]
    compound: SiteConfig  # the whole site file
    left_out_devices: tuple[str, ...]  # devices of other buildings: not polled
    left_out_lines: tuple[str, ...]  # lines with no device of this shard: not opened


def problems(cfg: SiteConfig) -> list[tuple[Loc, str]]:
    """What is wrong with the shard section of a validated SiteConfig (`cfg`), each with its place."""
    spec = cfg.shard
    if spec is None:
        return []
    out: list[tuple[Loc, str]] = []
    known = [b.id for b in cfg.buildings]
    seen: set[str] = set()
    for i, b in enumerate(spec.buildings):
        if b not in known:
            out.append((("shard", "buildings", i), f"unknown building {b!r}; known: {sorted(known)}"))
        elif b in seen:
            out.append((("shard", "buildings", i), f"building {b!r} is listed twice"))
        seen.add(b)
    if spec.id is None and cfg.fleet is None:
        out.append(
            (("shard", "id"), "required without a fleet section (with one it defaults to fleet.gateway)")
        )
    mains = cfg.gateway.mains
    if mains is not None:
        building = next((d.building for d in cfg.devices if d.id == mains.device), None)
        if building is not None and building not in spec.buildings:
            out.append(
                (
                    ("gateway", "mains", "device"),
                    f"the mains sensor {mains.device} is in building {building}, outside this gateway's "
                    f"shard ({', '.join(spec.buildings)}): the gateway's own mains sensing must be one of "
                    "its devices",
                )
            )
    return out


def narrow(cfg: SiteConfig) -> tuple[SiteConfig, Shard | None]:
    """The SiteConfig this gateway runs (its shard's buildings, devices, lines, maintenance windows and
    MQTT subscriptions of fixed devices) and its Shard; `cfg` unchanged and None without a shard section.
    `cfg` is a SiteConfig that passed `problems`."""
    spec = cfg.shard
    if spec is None:
        return cfg, None
    keep = set(spec.buildings)
    c = cfg
    devices = [d for d in c.devices if d.building in keep]
    used_lines = {d.line for d in devices if d.line is not None}
    other_lines = {d.line for d in c.devices if d.line is not None} - used_lines
    lines = [ln for ln in c.lines if ln.id not in other_lines]
    update: dict[str, object] = {
        "buildings": [b for b in c.buildings if b.id in keep],
        "devices": devices,
        "lines": lines,
    }
    notify = c.notify
    if notify.maintenance:
        windows = []
        for w in notify.maintenance:
            if not w.buildings:
                windows.append(w)  # every building: every building of this shard
            elif mine := [b for b in w.buildings if b in keep]:
                windows.append(w.model_copy(update={"buildings": mine}))
        update["notify"] = notify.model_copy(update={"maintenance": windows})
    mqtt = c.mqtt
    if mqtt is not None:
        ids = {d.id for d in devices}
        subs = [s for s in mqtt.subscriptions if s.device is None or s.device in ids]
        update["mqtt"] = mqtt.model_copy(update={"subscriptions": subs})
    fleet = c.fleet
    shard_id = spec.id or (fleet.gateway_id if fleet is not None else "")
    shard = Shard(
        id=shard_id,
        buildings=tuple(spec.buildings),
        compound=cfg,
        left_out_devices=tuple(d.id for d in c.devices if d.building not in keep),
        left_out_lines=tuple(ln.id for ln in c.lines if ln.id in other_lines),
    )
    return c.model_copy(update=update), shard


def compound_domains(buildings: list[Building]) -> dict[str, SupplyDomain]:
    return {d.id: d for b in buildings for d in b.domains}


def supply_path(domains: dict[str, SupplyDomain], domain: str) -> list[str]:
    """`domain` and its ancestors by `parent`, nearest first (e.g. ["B1-power", "T1"]); [] for an unknown
    domain. A cycle (the file's checks do not forbid one) ends the path where it would repeat."""
    out: list[str] = []
    cur = domains.get(domain)
    while cur is not None and cur.id not in out:
        out.append(cur.id)
        cur = domains.get(cur.parent) if cur.parent else None
    return out


def own_domains(shard: Shard) -> list[tuple[Building, SupplyDomain]]:
    """The compound's supply domains this shard can judge: those whose whole subtree (the domain and every
    domain below it by `parent`) is declared under the shard's buildings. A domain that also feeds
    another shard's buildings (transformer T1 over B1-power and B2-power) is left out of the shard's
    engine: seeing only its own part, the shard would take every outage below it for an outage of it.
    Its outages show as the shard's own domains' (B1-power), whose supply path still names it."""
    keep = set(shard.buildings)
    declared = [(b, d) for b in shard.compound.buildings for d in b.domains]
    children: dict[str, list[str]] = {}
    for _, d in declared:
        if d.parent:
            children.setdefault(d.parent, []).append(d.id)
    building_of = {d.id: b.id for b, d in declared}

    def inside(dom: str, seen: set[str]) -> bool:
        if dom in seen:
            return True
        seen.add(dom)
        return building_of.get(dom) in keep and all(inside(c, seen) for c in children.get(dom, []))

    return [(b, d) for b, d in declared if inside(d.id, set())]


def describe(shard: Shard | None) -> list[str]:
    """What `meterwatch check` and `plan` say of the shard: which buildings, and what is left out."""
    if shard is None:
        return []
    total = len(shard.compound.buildings)
    out = [
        f"shard {shard.id}: {len(shard.buildings)} of the compound's {total} building(s) "
        f"({', '.join(shard.buildings)}); the others' devices and lines are not polled"
    ]
    if shard.left_out_devices:
        out.append(
            f"  left out (other shards' buildings): {len(shard.left_out_devices)} device(s): "
            f"{', '.join(shard.left_out_devices)}"
        )
    if shard.left_out_lines:
        out.append(f"  left out: {len(shard.left_out_lines)} line(s): {', '.join(shard.left_out_lines)}")
    domains = compound_domains(shard.compound.buildings)
    own = {d.id for _, d in own_domains(shard)}
    shared = sorted({up for o in own for up in supply_path(domains, o)} - own)
    if shared:
        out.append(
            f"  shared with other shards (not judged here; named in its incidents' supply path): "
            f"{', '.join(shared)}"
        )
    return out
