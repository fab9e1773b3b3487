"""Alerts -> incidents: one incident per root cause, found from the topology.

Roots, from the top: the site (gateway mains lost), a power supply domain (its main meter reads 0 V on all
phases, or most of the devices that depend on it are dark), a source (the MQTT broker connection), a line
(every device on it silent), and finally the alert's own scope (a device, a water zone, a building). An alert
joins the highest root that explains it; a root found late absorbs the incidents already open below it. A
lone device fault waits `correlation_window` for a root before it opens on its own, so an outage that
silences meters one after another never produces one incident per meter.
"""

from __future__ import annotations

from gateway.config.rules import SEVERITY_RANK
from rules.model import (
    FIRING,
    RECOVERING,
    Alert,
    DetectionSettings,
    Incident,
    IncidentChange,
    RuleInfo,
)
from rules.topology import Topology

POWER_CATEGORIES = frozenset({"power_outage", "phase_loss", "voltage", "comm_fault"})
SILENT, VOLTS = "silent", "volts"
MAINS_RULE = "site.mains"
# A burst is one way a water zone loses supply: once the loss of supply is confirmed on the same scope, the
# burst is a symptom of that one incident, and a burst incident opened earlier is absorbed by it.
CATEGORY_PARENT = {"water_burst": "water_supply"}
_NAMES = {
    "comm_fault": "communication fault",
    "water_supply": "water supply",
    "leak_suspected": "leak suspected",
}


def scope_level(scope: str, topo: Topology) -> int:
    kind, _, ref = scope.partition(":")
    if kind == "site":
        return 0
    if kind == "domain":
        return 1 + topo.depth(ref)
    return {"source": 8, "line": 10, "building": 15}.get(kind, 20)


def key_rank(key: str, topo: Topology) -> tuple[int, int]:
    """Lower ranks are nearer the root cause: by scope first, then a parent category before its child."""
    category, _, scope = key.partition("/")
    return scope_level(scope, topo), 1 if category in CATEGORY_PARENT else 0


class Correlator:
    def __init__(
        self,
        topo: Topology,
        infos: dict[str, RuleInfo],
        dark_kind: dict[str, str],
        settings: DetectionSettings,
    ) -> None:
        self.topo = topo
        self.infos = infos
        self.dark_kind = dark_kind
        self.s = settings
        self.incidents: dict[int, Incident] = {}
        self.open_by_key: dict[str, int] = {}
        self.resolved_by_key: dict[str, int] = {}
        self.next_id = 1
        self.held: dict[str, float] = {}  # alert key -> when its hold ends
        self.domain_active: set[str] = set()
        self.source_down: dict[str, frozenset[str]] = {}
        self._root_keys: set[str] = set()
        self.answering: set[str] = set()  # devices with a sample since they were last silent (engine-kept)
        self._power_domains = [d.id for d in topo.domains.values() if d.kind == "power"]
        self._mains_of: dict[str, list[str]] = {}
        for dev in topo.devices.values():
            if dev.role == "main_power" and dev.domain:
                self._mains_of.setdefault(dev.domain, []).append(dev.id)
        self._dev_domains: dict[str, list[str]] = {}
        for dom in self._power_domains:
            for dev_id in topo.dependents(dom):
                self._dev_domains.setdefault(dev_id, []).append(dom)
        self._lines = {ln: devs for ln, devs in topo.line_devices().items() if len(devs) >= 1}

    # ---------------------------------------------------------------------------------------------------
    def hold_deadline(self) -> float | None:
        return min(self.held.values(), default=None)

    def _own_scope(self, info: RuleInfo, a: Alert) -> str:
        dev = self.topo.devices[a.device]
        if info.scope == "site":
            return "site"
        if info.scope == "building":
            return f"building:{dev.building}"
        if info.scope == "domain":
            want = "water" if info.category.startswith(("water", "leak", "pump")) else "power"
            if (
                dev.domain
                and self.topo.domains.get(dev.domain, None)
                and (self.topo.domains[dev.domain].kind == want)
            ):
                return f"domain:{dev.domain}"
            for d in self.topo.domains.values():
                if d.building == dev.building and d.kind == want:
                    return f"domain:{d.id}"
            return f"building:{dev.building}"
        return f"device:{dev.id}"

    def _meta(self, key: str, alerts: list[Alert]) -> dict[str, object]:
        category, _, scope = key.partition("/")
        kind, _, ref = scope.partition(":")
        infos = [self.infos[a.rule] for a in alerts]
        worst = min(infos, key=lambda i: SEVERITY_RANK.get(i.severity, 9))
        audiences = sorted({x for i in infos for x in i.audiences})
        name = _NAMES.get(category, category.replace("_", " "))
        meta: dict[str, object] = {
            "category": category, "scope": scope, "severity": worst.severity,
            "event_code": worst.event_code, "audiences": audiences, "households": 0,
            "title": worst.title or f"{name}: {scope.replace(':', ' ')}",
        }  # fmt: skip
        if kind == "site" and category == "power_outage":
            meta.update(
                title="site power outage",
                severity=self.s.outage_severity,
                audiences=sorted(set(self.s.outage_audiences)),
                households=sum(self.topo.building_households.values()),
            )
        elif kind == "domain" and key in self._root_keys:
            dom = self.topo.domains[ref]
            meta.update(
                title=f"power outage: supply domain {ref} (building {dom.building})",
                severity=self.s.outage_severity,
                audiences=sorted(set(self.s.outage_audiences)),
                households=dom.households,
            )
        elif kind in ("line", "source"):
            meta["title"] = f"communication fault: {kind} {ref}"
        elif category != "comm_fault":
            if kind == "device":
                meta["households"] = self.topo.devices[ref].households
            elif kind == "domain":
                meta["households"] = self.topo.domain_households(ref)
            elif kind == "building":
                meta["households"] = self.topo.building_households.get(ref, 0)
            elif kind == "site":
                meta["households"] = sum(self.topo.building_households.values())
        return meta

    # ---------------------------------------------------------------------------------------------------
    def run(self, alerts: dict[str, Alert], now: float) -> list[IncidentChange]:
        active = [a for a in alerts.values() if a.state in (FIRING, RECOVERING)]
        down_devices = {d for devs in self.source_down.values() for d in devs}
        dark: dict[str, set[str]] = {}
        for a in active:
            dk = self.dark_kind.get(a.rule)
            if dk is not None and not (dk == SILENT and a.device in down_devices):
                dark.setdefault(a.device, set()).add(dk)
        silent = {d for d, kinds in dark.items() if SILENT in kinds}
        site = any(a.rule == MAINS_RULE for a in active)

        domains: set[str] = set()
        for dom in self._power_domains:
            members = self.topo.dependents(dom)
            if not members:
                continue
            k = sum(1 for m in members if m in dark)
            frac = k / len(members)
            mains = self._mains_of.get(dom, ())
            main_dark = any(VOLTS in dark.get(m, ()) for m in mains)
            # a main meter that answers with voltage is direct proof the domain has power: silent devices
            # behind it are a line or device fault, however many they are
            main_alive = any(m not in dark and m in self.answering for m in mains)
            if main_dark or (
                not main_alive
                and (
                    (k >= self.s.outage_min_devices and frac >= self.s.outage_fraction)
                    or (dom in self.domain_active and k > 0 and frac > self.s.outage_clear_fraction)
                )
            ):
                domains.add(dom)
        self.domain_active = domains
        top = {d for d in domains if not any(anc in domains for anc in self.topo.ancestors(d))}
        lines = {
            ln
            for ln, devs in self._lines.items()
            if len(devs) >= self.s.line_min_devices and all(d in silent for d in devs)
        }
        self._root_keys = {f"power_outage/domain:{d}" for d in top}

        desired: dict[str, list[Alert]] = {}
        assigned: dict[str, str] = {}
        self.held = {}
        attached = {k: key for key, i in self.open_by_key.items() for k in self.incidents[i].alerts}
        for a in active:
            info = self.infos[a.rule]
            dev = self.topo.devices[a.device]
            power_ish = info.category in POWER_CATEGORIES or a.rule in self.dark_kind
            key: str | None = None
            if site and (power_ish or a.rule == MAINS_RULE):
                key = "power_outage/site"
            elif power_ish and (
                root := next((d for d in self._dev_domains.get(a.device, ()) if d in top), None)
            ):
                key = f"power_outage/domain:{root}"
            elif info.kind == "absence":
                src = next((s for s, devs in self.source_down.items() if a.device in devs), None)
                if src is not None:
                    key = f"comm_fault/source:{src}"
                elif dev.line in lines:
                    key = f"comm_fault/line:{dev.line}"
            stay = attached.get(a.key)
            if key is None:
                scope = self._own_scope(info, a)
                key = f"{info.category}/{scope}"
            # An alert moves up to a root found late, never down: when the root's own evidence clears first
            # (the main meter reads volts again while the unit meters' clear holds run), its symptoms stay
            # with it until they resolve, instead of popping out as one incident each.
            if stay is not None and key_rank(stay, self.topo) < key_rank(key, self.topo):
                key = stay
            elif key.partition("/")[2].startswith("device:"):
                fired = a.fired_at if a.fired_at is not None else a.since
                if (
                    key not in self.open_by_key
                    and a.rule in self.dark_kind
                    and now - fired < self.s.correlation_window
                ):
                    self.held[a.key] = fired + self.s.correlation_window
                    continue
            desired.setdefault(key, []).append(a)
            assigned[a.key] = key
        for key in list(desired):
            category, _, scope = key.partition("/")
            up = f"{CATEGORY_PARENT.get(category)}/{scope}"
            if category in CATEGORY_PARENT and up in desired:
                for a in desired.pop(key):
                    desired[up].append(a)
                    assigned[a.key] = up

        out: list[IncidentChange] = []
        # roots first, so incidents below them can be merged into them
        for key in sorted(desired, key=lambda k: key_rank(k, self.topo)):
            self._upsert(key, desired[key], now, out)
        for key, inc_id in sorted(self.open_by_key.items()):
            if key in desired:
                continue
            inc = self.incidents[inc_id]
            rank = key_rank(key, self.topo)
            higher = sorted(
                {assigned[k] for k in inc.alerts if k in assigned}, key=lambda k: key_rank(k, self.topo)
            )
            target = next((t for t in higher if key_rank(t, self.topo) < rank), None)
            if target is not None and target in self.open_by_key:
                parent = self.incidents[self.open_by_key[target]]
                inc.state, inc.merged_into, inc.updated_at = "merged", parent.id, now
                parent.absorbed.append(inc.id)
                for dev_id, rules in inc.symptoms.items():
                    have = parent.symptoms.setdefault(dev_id, [])
                    have.extend(r for r in rules if r not in have)
                out.append(IncidentChange(now, inc.id, "merged", False, f"into incident {parent.id}"))
                out.append(
                    IncidentChange(now, parent.id, "absorbed", False, f"incident {inc.id} ({inc.title})")
                )
            else:
                inc.state, inc.resolved_at, inc.updated_at, inc.alerts = "resolved", now, now, []
                self.resolved_by_key[key] = inc.id
                out.append(IncidentChange(now, inc.id, "resolved", True, f"after {now - inc.opened_at:.0f}s"))
        for key in [k for k, i in self.open_by_key.items() if not self.incidents[i].is_open]:
            del self.open_by_key[key]
        return out

    def _upsert(self, key: str, alerts: list[Alert], now: float, out: list[IncidentChange]) -> None:
        state = FIRING if any(a.state == FIRING for a in alerts) else RECOVERING
        inc_id = self.open_by_key.get(key)
        inc = self.incidents.get(inc_id) if inc_id is not None else None
        new = False
        if inc is None:
            prev_id = self.resolved_by_key.get(key)
            prev = self.incidents.get(prev_id) if prev_id is not None else None
            if (
                prev is not None
                and prev.resolved_at is not None
                and now - prev.resolved_at <= self.s.reopen_window
            ):
                inc = prev
                inc.state, inc.resolved_at, inc.recovering_since = FIRING, None, None
                inc.reopen_count += 1
                out.append(IncidentChange(now, inc.id, "reopened", False, f"recurrence #{inc.reopen_count}"))
            else:
                meta = self._meta(key, alerts)
                inc = Incident(
                    id=self.next_id, key=key, state=FIRING, opened_at=now,
                    first_evidence_at=min(a.started for a in alerts), updated_at=now,
                    **meta,  # type: ignore[arg-type]
                )  # fmt: skip
                self.next_id += 1
                self.incidents[inc.id] = inc
                new = True
                out.append(IncidentChange(now, inc.id, "opened", True, inc.title))
            self.open_by_key[key] = inc.id
            del_key = self.resolved_by_key.get(key)
            if del_key == inc.id:
                del self.resolved_by_key[key]
        for a in alerts:
            rules = inc.symptoms.get(a.device)
            if rules is None:
                inc.symptoms[a.device] = [a.rule]
                if not new:
                    out.append(IncidentChange(now, inc.id, "symptom", False, f"{a.device}: {a.rule}"))
            elif a.rule not in rules:
                rules.append(a.rule)
        inc.alerts = sorted(a.key for a in alerts)
        if state != inc.state:
            if state == FIRING:
                inc.flap_count += 1
                inc.flap_times = [t for t in inc.flap_times if now - t <= self.s.flap_window] + [now]
                inc.recovering_since = None
                out.append(IncidentChange(now, inc.id, "refired", False, f"flap #{inc.flap_count}"))
                if not inc.flapping and len(inc.flap_times) >= self.s.flap_threshold:
                    inc.flapping = True
                    out.append(IncidentChange(now, inc.id, "flapping", False, f"{len(inc.flap_times)} flaps"))
            else:
                inc.recovering_since = now
                out.append(
                    IncidentChange(now, inc.id, "recovering", False, "fresh data shows the clear condition")
                )
            inc.state = state
            inc.updated_at = now
