"""What the fleet view knows: the latest retained state of every gateway, open incident and KPI snapshot,
merged by company + site (several gateways sharing a site id are one compound, each gateway a shard).

Incidents of different gateways of one compound are linked as one group ("same cause: T1") when they are
on supply domains of the same kind whose supply paths (the domain and its ancestors, from the site file)
share a domain, and they opened within 15 minutes of each other (both are open, so their open periods
overlap; the rule is gateway/fleet/links.py's): a transformer feeding buildings of two shards shows as one
cause, not two unrelated outages.

Fed from paho's thread (`ingest`), read by the web server's (`snapshot`), so one lock guards it. A payload
that is not a version-1 object of the topic's type is counted per topic and logged once per topic; it never
changes what is known (the last good message stands until a good one or an empty retained payload comes).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.fleet.links import Supply, cause
from gateway.fleet.topics import ROOT, VERSION

log = logging.getLogger("meterwatch.fleetview")

RESPONSE_TARGET_S = 1800.0  # the handbook's 30 minutes from dispatch to acknowledgement
OFFLINE_AFTER_S = 90.0  # a heartbeat older than this says a gateway is silent when it names no interval
HEARTBEATS_MISSED = 3  # ... and this many intervals when it does
KPI_NAMES = ("informed", "response", "satisfaction")
SEVERITY_RANK = {"critical": 0, "major": 1, "minor": 2, "warning": 3, "info": 4}
KINDS = ("gateway", "incident", "kpi")
RESYNC_QUIET_S = 3.0  # after a reconnect, the retained burst is over once nothing retained came for this long
# what a linked group says of each of its incidents
LINK_FIELDS = ("gateway", "shard", "id", "kind", "severity", "buildings", "households", "elapsed_s",
               "target_s", "late", "acknowledged", "on_site")  # fmt: skip

Key = tuple[str, str, str, str, str]  # kind, company, site, gateway, incident topic id ("" for the others)


class BadPayload(ValueError):
    """What is wrong with a payload, said for the log."""


@dataclass(slots=True)
class GatewayState:
    gateway: str
    state: str
    at: float
    received: float
    heard: float  # when the gateway last spoke, on the view's clock (see _apply)
    heartbeat: float | None
    devices_up: int
    devices_total: int
    buildings: list[str]
    version: str
    shard: str | None = None  # the shard of the compound it watches (None: the whole site)


@dataclass(slots=True)
class IncidentState:
    gateway: str
    incident_id: int
    title: str
    kind: str
    severity: str
    state: str
    buildings: list[str]
    households: int
    transition: str
    opened_at: float
    dispatched_at: float | None
    acknowledged_at: float | None
    on_site_at: float | None
    drill: bool
    shard: str | None = None
    supply_path: list[str] = field(default_factory=list)  # its domain and the domain's ancestors
    supply_kind: str | None = None  # power | water; None: not on a supply domain (never linked)


@dataclass(slots=True)
class KpiState:
    gateway: str
    at: float
    month: str
    kpis: dict[str, dict[str, Any]]
    response_target_s: float | None


@dataclass(slots=True)
class SiteState:
    company: str
    site: str
    gateways: dict[str, GatewayState] = field(default_factory=dict)
    incidents: dict[tuple[str, str], IncidentState] = field(default_factory=dict)  # (gateway, topic id)
    kpis: dict[str, KpiState] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (self.gateways or self.incidents or self.kpis)


# ------------------------------------------------------------------------------------------------ parsing


def _obj(payload: bytes, kind: str) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadPayload(f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise BadPayload(f"expected a JSON object, got {type(body).__name__}")
    if body.get("v") != VERSION:
        raise BadPayload(f"version {body.get('v')!r}, expected {VERSION}")
    if body.get("type") != kind:
        raise BadPayload(f"type {body.get('type')!r}, expected {kind!r}")
    return body


def _get(body: dict[str, Any], key: str, types: type | tuple[type, ...], where: str = "") -> Any:
    if key not in body:
        raise BadPayload(f"missing field {where}{key}")
    value = body[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        raise BadPayload(f"field {where}{key} is {value!r}, expected {_names(types)}")
    return value


def _opt(body: dict[str, Any], key: str, types: type | tuple[type, ...], where: str = "") -> Any:
    value = body.get(key)
    return None if value is None else _get(body, key, types, where)


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _tuple(types))


NUM = (int, float)


def _strings(body: dict[str, Any], key: str, where: str = "") -> list[str]:
    value = _get(body, key, list, where)
    if not all(isinstance(v, str) for v in value):
        raise BadPayload(f"field {where}{key} holds something other than strings")
    return list(value)


def parse_gateway(payload: bytes, gateway: str, received: float) -> GatewayState:
    b = _obj(payload, "gateway")
    state = _get(b, "state", str)
    if state not in ("online", "offline"):
        raise BadPayload(f"state {state!r}, expected 'online' or 'offline'")
    heartbeat = _opt(b, "heartbeat", NUM)
    return GatewayState(
        gateway=gateway,
        state=state,
        at=float(_get(b, "at", NUM)),
        received=received,
        heard=received,
        heartbeat=float(heartbeat) if heartbeat else None,
        devices_up=int(b.get("devices_up") or 0),
        devices_total=int(b.get("devices_total") or 0),
        buildings=_strings(b, "buildings") if "buildings" in b else [],
        version=str(b.get("version") or ""),
        shard=_opt(b, "shard", str),
    )


def parse_incident(payload: bytes, gateway: str) -> IncidentState:
    b = _obj(payload, "incident")
    inc = _get(b, "incident", dict)
    w = "incident."
    return IncidentState(
        gateway=gateway,
        incident_id=int(_get(inc, "id", int, w)),
        title=str(inc.get("title") or ""),
        kind=_get(inc, "kind", str, w),
        severity=_get(inc, "severity", str, w),
        state=_get(inc, "state", str, w),
        buildings=_strings(inc, "buildings", w),
        households=int(inc.get("households") or 0),
        transition=str(b.get("transition") or ""),
        opened_at=float(_get(inc, "opened_at", NUM, w)),
        dispatched_at=_opt(inc, "dispatched_at", NUM, w),
        acknowledged_at=_opt(inc, "acknowledged_at", NUM, w),
        on_site_at=_opt(inc, "on_site_at", NUM, w),
        drill=bool(inc.get("drill")),
        shard=_opt(inc, "shard", str, w),
        supply_path=_strings(inc, "supply_path", w) if inc.get("supply_path") is not None else [],
        supply_kind=_opt(inc, "supply_kind", str, w),
    )


def parse_kpi(payload: bytes, gateway: str) -> KpiState:
    b = _obj(payload, "kpi")
    kpis = _get(b, "kpis", dict)
    for name, k in kpis.items():
        if not isinstance(k, dict):
            raise BadPayload(f"kpis.{name} is {k!r}, expected an object")
        for key in ("met", "total", "target"):
            _get(k, key, NUM, f"kpis.{name}.")
        _opt(k, "value", NUM, f"kpis.{name}.")
    target = _opt(b, "response_target_s", NUM)
    return KpiState(
        gateway=gateway,
        at=float(_get(b, "at", NUM)),
        month=str(b.get("month") or ""),
        kpis=kpis,
        response_target_s=float(target) if target else None,
    )


# ------------------------------------------------------------------------------------------------ the state


@dataclass(slots=True)
class Malformed:
    count: int
    last_error: str
    last_at: float


class FleetState:
    """The latest retained state, by company + site. `ingest` takes each MQTT message as it comes."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.sites: dict[tuple[str, str], SiteState] = {}
        self.malformed: dict[str, Malformed] = {}
        self.messages = 0
        self.ignored = 0  # events and anything else the view does not keep
        self.resyncs = 0
        # after a reconnect: what was known and has not come again yet (a topic cleared while the view was
        # away sends nothing at all, so what the retained burst leaves out is dropped once it is over)
        self._stale: set[Key] | None = None
        self._last_retained = 0.0

    def begin_resync(self) -> None:
        """Subscribed again (a reconnect): what the broker retains now replaces what is known."""
        now = self.clock()
        with self._lock:
            # a resync cut short by another reconnect starts over with everything known
            self._stale = set(self._keys())
            self._last_retained = now
            self.resyncs += 1

    def _keys(self) -> list[Key]:
        keys: list[Key] = []
        for (company, site_id), site in self.sites.items():
            keys += [("gateway", company, site_id, g, "") for g in site.gateways]
            keys += [("kpi", company, site_id, g, "") for g in site.kpis]
            keys += [("incident", company, site_id, g, i) for g, i in site.incidents]
        return keys

    def _settle(self, now: float) -> None:
        if self._stale is None or now - self._last_retained < RESYNC_QUIET_S:
            return
        stale, self._stale = self._stale, None
        for kind, company, site_id, gateway, incident in stale:
            site = self.sites.get((company, site_id))
            if site is None:
                continue
            if kind == "gateway":
                site.gateways.pop(gateway, None)
            elif kind == "kpi":
                site.kpis.pop(gateway, None)
            else:
                site.incidents.pop((gateway, incident), None)
            if site.empty():
                del self.sites[(company, site_id)]

    def ingest(self, topic: str, payload: bytes, retained: bool = False) -> None:
        now = self.clock()
        parts = topic.split("/")
        with self._lock:
            self.messages += 1
            self._settle(now)
            if len(parts) < 5 or parts[0] != ROOT or parts[3] not in KINDS:
                self.ignored += 1  # events/ (not state) and anything outside the version-1 layout
                return
            _, company, site_id, kind, gateway, *rest = parts
            if (kind == "incident" and len(rest) != 1) or (kind != "incident" and rest):
                self.ignored += 1
                return
            if self._stale is not None:
                if retained:
                    self._last_retained = now
                # a malformed one too: the topic is still there, what was known of it stays
                self._stale.discard((kind, company, site_id, gateway, rest[0] if rest else ""))
            try:
                self._apply(company, site_id, kind, gateway, rest, payload, now, retained)
            except BadPayload as exc:
                self._bad(topic, str(exc), now)

    def _apply(
        self,
        company: str,
        site_id: str,
        kind: str,
        gateway: str,
        rest: list[str],
        payload: bytes,
        now: float,
        retained: bool,
    ) -> None:
        key = (company, site_id)
        site = self.sites.get(key)
        if not payload:  # a retained topic cleared: the incident resolved (or a gateway retired)
            if site is None:
                return
            if kind == "incident":
                site.incidents.pop((gateway, rest[0]), None)
            elif kind == "gateway":
                site.gateways.pop(gateway, None)
            else:
                site.kpis.pop(gateway, None)
            if site.empty():
                del self.sites[key]
            return
        # parsed before the site is made: a bad payload leaves no trace in the state
        if kind == "gateway":
            g = parse_gateway(payload, gateway, now)
            if retained:
                # the broker's stored copy, sent at SUBSCRIBE: said at `at` (the gateway's clock), no later
                # than now; a heartbeat that comes live is judged by the view's clock, so a gateway whose
                # clock is off shows silent at most until its next heartbeat
                g.heard = min(g.at, now)
            self._site(key).gateways[gateway] = g
        elif kind == "incident":
            inc = parse_incident(payload, gateway)
            if inc.state in ("resolved", "merged"):  # a final state left retained: not open
                if site is not None:
                    site.incidents.pop((gateway, rest[0]), None)
                return
            self._site(key).incidents[(gateway, rest[0])] = inc
        else:
            self._site(key).kpis[gateway] = parse_kpi(payload, gateway)

    def _site(self, key: tuple[str, str]) -> SiteState:
        site = self.sites.get(key)
        if site is None:
            site = self.sites[key] = SiteState(*key)
        return site

    def _bad(self, topic: str, error: str, now: float) -> None:
        seen = self.malformed.get(topic)
        if seen is None:
            self.malformed[topic] = Malformed(1, error, now)
            log.warning(
                "malformed fleet payload on %s: %s (ignored; what was known stays; logged once per topic)",
                topic,
                error,
            )
        else:
            seen.count += 1
            seen.last_error, seen.last_at = error, now

    # ---- reading ---------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything known, judged at this moment (offline, past target, KPI met), as plain JSON data."""
        now = self.clock()
        with self._lock:
            self._settle(now)
            sites = [site_view(s, now) for s in self.sites.values()]
            malformed = {t: {"count": m.count, "error": m.last_error} for t, m in self.malformed.items()}
            messages, ignored, resyncs = self.messages, self.ignored, self.resyncs
        sites.sort(key=trouble_first)
        return {
            "at": now,
            "sites": sites,
            "totals": {
                "sites": len(sites),
                "gateways": sum(len(s["gateways"]) for s in sites),
                "gateways_offline": sum(s["gateways_offline"] for s in sites),
                "incidents": sum(len(s["incidents"]) for s in sites),
                "incidents_late": sum(s["incidents_late"] for s in sites),
                "links": sum(len(s["links"]) for s in sites),
            },
            "messages": messages,
            "ignored": ignored,
            "resyncs": resyncs,
            "malformed": malformed,
            "malformed_total": sum(m["count"] for m in malformed.values()),
        }


def trouble_first(site: dict[str, Any]) -> tuple[Any, ...]:
    """Sites needing someone first: late incidents, then offline gateways, open incidents, red KPIs."""
    return (
        -site["incidents_late"],
        -site["gateways_offline"],
        -len(site["incidents"]),
        -site["kpi_red"],
        site["company"],
        site["site"],
    )


def gateway_view(g: GatewayState, now: float) -> dict[str, Any]:
    limit = HEARTBEATS_MISSED * g.heartbeat if g.heartbeat else OFFLINE_AFTER_S
    # the last will's `at` is when the gateway connected: its age counts from when it was received
    age = max(0.0, now - (g.heard if g.state == "online" else g.received))
    silent = g.state == "online" and age > limit
    return {
        "gateway": g.gateway,
        "state": g.state,
        "offline": g.state == "offline" or silent,
        "why": "last_will" if g.state == "offline" else "silent" if silent else None,
        "age_s": round(age, 1),
        "silent_after_s": limit,
        "at": g.at,
        "heartbeat": g.heartbeat,
        "devices_up": g.devices_up,
        "devices_total": g.devices_total,
        "buildings": g.buildings,
        "version": g.version,
        "shard": g.shard or g.gateway,
    }


def incident_view(i: IncidentState, target: float, now: float) -> dict[str, Any]:
    since = i.dispatched_at if i.dispatched_at is not None else i.opened_at
    elapsed = max(0.0, now - since)
    acked = i.acknowledged_at is not None
    return {
        "gateway": i.gateway,
        "id": i.incident_id,
        "title": i.title,
        "kind": i.kind,
        "severity": i.severity,
        "state": i.state,
        "buildings": i.buildings,
        "households": i.households,
        "transition": i.transition,
        "opened_at": i.opened_at,
        "dispatched_at": i.dispatched_at,
        "acknowledged_at": i.acknowledged_at,
        "on_site_at": i.on_site_at,
        "drill": i.drill,
        "elapsed_s": round(elapsed, 1),
        "target_s": target,
        # the response target runs from the dispatch to the acknowledgement
        "late": not acked and elapsed > target,
        "acknowledged": acked,
        "on_site": i.on_site_at is not None,
        "shard": i.shard or i.gateway,
        "supply_path": i.supply_path,
        "supply_kind": i.supply_kind,
        "link": None,  # the cause of its linked group, set by site_view
    }


def merged_kpis(kpis: list[KpiState]) -> dict[str, dict[str, Any]]:
    """A compound's KPIs: every gateway's met and total added up, against the (shared) handbook target."""
    out: dict[str, dict[str, Any]] = {}
    names = [n for n in KPI_NAMES if any(n in k.kpis for k in kpis)]
    names += sorted({n for k in kpis for n in k.kpis} - set(names))
    for name in names:
        parts = [k.kpis[name] for k in kpis if name in k.kpis]
        met = float(sum(float(p["met"]) for p in parts))
        total = float(sum(float(p["total"]) for p in parts))
        target = float(parts[0]["target"])
        value = met / total if total else None
        out[name] = {
            "met": int(met) if met.is_integer() else met,
            "total": int(total) if total.is_integer() else total,
            "value": value,
            "target": target,
            "ok": None if value is None else value >= target,
        }
    return out


def _supply(i: dict[str, Any]) -> Supply:
    return Supply(i["gateway"], i["supply_kind"], i["supply_path"], i["opened_at"])


def linked_groups(incidents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The incidents (incident_view dicts of one compound) linked by a shared supply domain: each group
    with its cause (the nearest domain every member's path holds) and its members; each member's `link`
    is set to the cause. Pairs are linked by _cause, groups are their connected sets (paths run up one
    tree, so a group's members always share a domain). The rule: gateway/fleet/links.py."""
    n = len(incidents)
    supplies = [_supply(i) for i in incidents]
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if cause(supplies[i], supplies[j]) is not None:
                parent[root(i)] = root(j)
    members: dict[int, list[dict[str, Any]]] = {}
    for i in range(n):
        members.setdefault(root(i), []).append(incidents[i])
    groups: list[dict[str, Any]] = []
    for group in members.values():
        if len(group) < 2:
            continue
        common = [d for d in group[0]["supply_path"] if all(d in m["supply_path"] for m in group[1:])]
        if not common:  # cannot happen on a tree; a file with a cycle of parents is left unlinked
            continue
        group.sort(key=lambda m: (m["shard"], m["gateway"], m["opened_at"]))
        for m in group:
            m["link"] = common[0]
        groups.append(
            {
                "cause": common[0],
                "kind": group[0]["supply_kind"],
                "shards": sorted({m["shard"] for m in group}),
                "gateways": sorted({m["gateway"] for m in group}),
                "buildings": sorted({b for m in group for b in m["buildings"]}),
                "opened_at": min(m["opened_at"] for m in group),
                "late": any(m["late"] for m in group),
                "incidents": [{k: m[k] for k in LINK_FIELDS} for m in group],
            }
        )
    groups.sort(key=lambda g: (not g["late"], g["opened_at"]))
    return groups


def shards_view(gateways: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The compound's shards: each with its gateways and buildings, offline when every gateway of it is."""
    shards: dict[str, list[dict[str, Any]]] = {}
    for g in gateways:
        shards.setdefault(g["shard"], []).append(g)
    return [
        {
            "shard": name,
            "gateways": [g["gateway"] for g in gs],
            "buildings": sorted({b for g in gs for b in g["buildings"]}),
            "offline": all(g["offline"] for g in gs),
        }
        for name, gs in sorted(shards.items())
    ]


def site_view(s: SiteState, now: float) -> dict[str, Any]:
    kpis = sorted(s.kpis.values(), key=lambda k: k.gateway)
    target = next((k.response_target_s for k in kpis if k.response_target_s), None) or RESPONSE_TARGET_S
    gateways = [gateway_view(g, now) for g in sorted(s.gateways.values(), key=lambda g: g.gateway)]
    incidents = [incident_view(i, target, now) for i in s.incidents.values()]
    incidents.sort(key=lambda i: (not i["late"], SEVERITY_RANK.get(i["severity"], 9), i["opened_at"]))
    links = linked_groups(incidents)
    kpi = merged_kpis(kpis)
    offline = sum(1 for g in gateways if g["offline"])
    return {
        "company": s.company,
        "site": s.site,
        "gateways": gateways,
        "gateways_offline": offline,
        # a compound: several gateways (shards) under one site id; partly offline when some are
        "compound": len(gateways) > 1,
        "shards": shards_view(gateways),
        "buildings": sorted({b for g in gateways for b in g["buildings"]}),
        "partly_offline": 0 < offline < len(gateways),
        "links": links,
        "incidents": incidents,
        "incidents_late": sum(1 for i in incidents if i["late"]),
        "kpis": kpi,
        "kpi_month": max((k.month for k in kpis), default=None),
        "kpi_red": sum(1 for k in kpi.values() if k["ok"] is False),
        "response_target_s": target,
    }
