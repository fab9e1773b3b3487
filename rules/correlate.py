"""Alerts -> incidents: one incident per root cause, found from the topology.

Roots, from the top: the site (gateway mains lost), a power supply domain (its main meter reads 0 V on all
phases, or most of the devices that depend on it are dark), a source (the MQTT broker connection), a line
(every device on it silent), and finally the alert's own scope (a device, a water zone, a building). An alert
joins the highest root that explains it; a root found late absorbs the incidents already open below it. A
lone device fault waits `correlation_window` for a root before it opens on its own, so an outage that
silences meters one after another never produces one incident per meter.
"""

from __future__ import annotations

from gateway.config.devices import Role
from gateway.config.rules import SEVERITY_RANK
from rules.model import (
    MAINS_RULE,
    Alert,
    AlertKey,
    AlertState,
    DetectionSettings,
    Incident,
    IncidentChange,
    IncidentEvent,
    IncidentState,
    RuleInfo,
)
from rules.topology import Topology

POWER_CATEGORIES = frozenset({"power_outage", "phase_loss", "undervoltage", "overvoltage", "comm_fault"})
# how a rule's firing alert says its device is dark: the device is silent, or it reads no voltage
SILENT, VOLTS = "silent", "volts"
# A burst is one way a water zone loses supply: once the loss of supply is confirmed on the same scope, the
# burst is a symptom of that one incident, and a burst incident opened earlier is absorbed by it.
CATEGORY_PARENT = {"water_burst": "water_supply"}
_NAMES = {
    "comm_fault": "communication fault",
    "water_supply": "water supply",
    "leak_suspected": "leak suspected",
}


def scope_level(scope: str, topo: Topology) -> int:
    scope_kind, _, ref = scope.partition(":")
    if scope_kind == "site":
        return 0
    if scope_kind == "domain":
        return 1 + topo.depth(ref)
    return {"source": 8, "line": 10, "building": 15}.get(scope_kind, 20)


def key_rank(key: str, topo: Topology) -> tuple[int, int]:
    """Lower ranks are nearer the root cause: by scope first, then a parent category before its child."""
    category, _, scope = key.partition("/")
    return scope_level(scope, topo), 1 if category in CATEGORY_PARENT else 0


class Correlator:
    """Owns the incidents and what it infers between runs; the engine tells it about devices and sources
    through its methods and never writes its fields."""

    def __init__(
        self,
        topo: Topology,
        infos: dict[str, RuleInfo],
        dark_reason: dict[str, str],
        settings: DetectionSettings,
    ) -> None:
        self.topo = topo
        self.infos = infos
        self.dark_reason = dark_reason  # rule id -> SILENT | VOLTS, for the rules whose alert means "dark"
        self.s = settings
        self.incidents: dict[int, Incident] = {}
        self.open_by_key: dict[str, int] = {}
        self.resolved_by_key: dict[str, int] = {}
        self.next_id = 1
        self.held: dict[AlertKey, float] = {}  # alert -> when its hold ends
        self.domain_active: set[str] = set()
        self.source_down: dict[str, frozenset[str]] = {}
        self._root_keys: set[str] = set()
        self.answering: set[str] = set()  # devices with a sample since they were last silent
        self._power_domains = [d.id for d in topo.domains.values() if d.supply == "power"]
        self._mains_of: dict[str, list[str]] = {}
        for dev in topo.devices.values():
            if dev.role == Role.MAIN_POWER and dev.domain:
                self._mains_of.setdefault(dev.domain, []).append(dev.id)
        self._dev_domains: dict[str, list[str]] = {}
        for dom in self._power_domains:
            for dev_id in topo.dependents(dom):
                self._dev_domains.setdefault(dev_id, []).append(dom)
        self._lines = {ln: devs for ln, devs in topo.line_devices().items() if len(devs) >= 1}

    # ---- what the engine tells it ----------------------------------------------------------------------
    def answered(self, device: str) -> bool:
        """A sample came from `device`. True when it was not answering before: the roots may change."""
        if device in self.answering:
            return False
        self.answering.add(device)
        return True

    def went_silent(self, device: str) -> None:
        self.answering.discard(device)

    def source_lost(self, source: str, devices: frozenset[str]) -> None:
        """The connection to `source` (e.g. the MQTT broker) is down: `devices` are silent because of it."""
        self.source_down[source] = devices

    def source_back(self, source: str) -> None:
        self.source_down.pop(source, None)

    def reserve_ids(self, first_free: int) -> None:
        """Never hand out an id below `first_free` (ids of incidents the store holds but memory does not)."""
        self.next_id = max(self.next_id, first_free)

    def restore_incident(self, inc: Incident) -> None:
        """Take back an incident from the store after a restart, with what its state implied."""
        self.incidents[inc.id] = inc
        self.reserve_ids(inc.id + 1)
        if inc.is_open:
            self.open_by_key[inc.key] = inc.id
            scope_kind, _, ref = inc.scope.partition(":")
            if inc.category == "power_outage" and scope_kind == "domain":
                self.domain_active.add(ref)
        elif inc.state == IncidentState.RESOLVED:
            prev = self.resolved_by_key.get(inc.key)
            if prev is None or prev < inc.id:
                self.resolved_by_key[inc.key] = inc.id

    def forget(self, incident_id: int) -> None:
        """Drop a settled incident: a recurrence of its key now opens a new incident."""
        inc = self.incidents.pop(incident_id, None)
        if inc is not None and self.resolved_by_key.get(inc.key) == incident_id:
            del self.resolved_by_key[inc.key]

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
            supply = "water" if info.category.startswith(("water", "leak", "pump")) else "power"
            if (
                dev.domain
                and self.topo.domains.get(dev.domain, None)
                and (self.topo.domains[dev.domain].supply == supply)
            ):
                return f"domain:{dev.domain}"
            for d in self.topo.domains.values():
                if d.building == dev.building and d.supply == supply:
                    return f"domain:{d.id}"
            return f"building:{dev.building}"
        return f"device:{dev.id}"

    def _meta(self, key: str, alerts: list[Alert]) -> dict[str, object]:
        category, _, scope = key.partition("/")
        scope_kind, _, ref = scope.partition(":")
        infos = [self.infos[a.rule] for a in alerts]
        worst = min(infos, key=lambda i: SEVERITY_RANK.get(i.severity, 9))
        audiences = sorted({x for i in infos for x in i.audiences})
        name = _NAMES.get(category, category.replace("_", " "))
        meta: dict[str, object] = {
            "category": category, "scope": scope, "severity": worst.severity,
            "event_code": worst.event_code, "audiences": audiences, "households": 0,
            "title": worst.title or f"{name}: {scope.replace(':', ' ')}",
        }  # fmt: skip
        if scope_kind == "site" and category == "power_outage":
            meta.update(
                title="site power outage",
                severity=self.s.outage_severity,
                audiences=sorted(set(self.s.outage_audiences)),
                households=sum(self.topo.building_households.values()),
            )
        elif scope_kind == "domain" and key in self._root_keys:
            dom = self.topo.domains[ref]
            meta.update(
                title=f"power outage: supply domain {ref} (building {dom.building})",
                severity=self.s.outage_severity,
                audiences=sorted(set(self.s.outage_audiences)),
                households=dom.households,
            )
        elif scope_kind in ("line", "source"):
            meta["title"] = f"communication fault: {scope_kind} {ref}"
        elif category != "comm_fault":
            if scope_kind == "device":
                meta["households"] = self.topo.devices[ref].households
            elif scope_kind == "domain":
                meta["households"] = self.topo.domain_households(ref)
            elif scope_kind == "building":
                meta["households"] = self.topo.building_households.get(ref, 0)
            elif scope_kind == "site":
                meta["households"] = sum(self.topo.building_households.values())
        return meta

    # ---------------------------------------------------------------------------------------------------
    def run(self, alerts: dict[AlertKey, Alert], now: float) -> list[IncidentChange]:
        """Find the roots the active alerts show now, give every alert its incident, and bring the
        incidents in line: open, reopen, update, merge into a root found late, or resolve."""
        active = [a for a in alerts.values() if a.state in (AlertState.FIRING, AlertState.RECOVERING)]
        dark = self._dark_devices(active)
        site = any(a.rule == MAINS_RULE for a in active)
        self.domain_active = self._dark_domains(dark)
        top = {
            d
            for d in self.domain_active
            if not any(up in self.domain_active for up in self.topo.ancestors(d))
        }
        lines = self._silent_lines({d for d, reasons in dark.items() if SILENT in reasons})
        self._root_keys = {f"power_outage/domain:{d}" for d in top}

        desired, assigned = self._assign(active, site, top, lines, now)
        self._fold_into_parent_categories(desired, assigned)

        out: list[IncidentChange] = []
        # roots first, so incidents below them can be merged into them
        for key in sorted(desired, key=lambda k: key_rank(k, self.topo)):
            self._upsert(key, desired[key], now, out)
        self._close_the_rest(desired, assigned, now, out)
        return out

    def _dark_devices(self, active: list[Alert]) -> dict[str, set[str]]:
        """Device -> how its alerts say it is dark. The silence of a device behind a lost source is the
        source's fault, not the supply's, so it is no evidence of an outage."""
        down_devices = {d for devs in self.source_down.values() for d in devs}
        dark: dict[str, set[str]] = {}
        for a in active:
            reason = self.dark_reason.get(a.rule)
            if reason is not None and not (reason == SILENT and a.device in down_devices):
                dark.setdefault(a.device, set()).add(reason)
        return dark

    def _dark_domains(self, dark: dict[str, set[str]]) -> set[str]:
        """The power domains in an outage: their main meter reads no voltage, or enough of the devices
        that depend on them are dark (fewer suffice to keep an outage already found: hysteresis)."""
        domains: set[str] = set()
        for dom in self._power_domains:
            members = self.topo.dependents(dom)
            if not members:
                continue
            n_dark = sum(1 for m in members if m in dark)
            frac = n_dark / len(members)
            mains = self._mains_of.get(dom, ())
            main_dark = any(VOLTS in dark.get(m, ()) for m in mains)
            # a main meter that answers with voltage is direct proof the domain has power: silent devices
            # behind it are a line or device fault, however many they are
            main_alive = any(m not in dark and m in self.answering for m in mains)
            if main_dark or (
                not main_alive
                and (
                    (n_dark >= self.s.outage_min_devices and frac >= self.s.outage_fraction)
                    or (dom in self.domain_active and n_dark > 0 and frac > self.s.outage_clear_fraction)
                )
            ):
                domains.add(dom)
        return domains

    def _silent_lines(self, silent: set[str]) -> set[str]:
        """Lines (converters) whose every device is silent: the line is the fault, not each device."""
        return {
            ln
            for ln, devs in self._lines.items()
            if len(devs) >= self.s.line_min_devices and all(d in silent for d in devs)
        }

    def _assign(
        self, active: list[Alert], site: bool, top: set[str], lines: set[str], now: float
    ) -> tuple[dict[str, list[Alert]], dict[AlertKey, str]]:
        """Each alert's incident key (incident key -> its alerts, alert -> incident key). A dark device's
        alert with no root yet is held for `correlation_window` instead, so that a root found meanwhile
        gets it rather than one incident per device."""
        desired: dict[str, list[Alert]] = {}
        assigned: dict[AlertKey, str] = {}
        self.held = {}
        attached = {k: key for key, i in self.open_by_key.items() for k in self.incidents[i].alerts}
        for a in active:
            info = self.infos[a.rule]
            key = self._root_key(a, info, site, top, lines) or f"{info.category}/{self._own_scope(info, a)}"
            stay = attached.get(a.key)
            # An alert moves up to a root found late, never down: when the root's own evidence clears first
            # (the main meter reads volts again while the unit meters' clear holds run), its symptoms stay
            # with it until they resolve, instead of popping out as one incident each.
            if stay is not None and key_rank(stay, self.topo) < key_rank(key, self.topo):
                key = stay
            elif key.partition("/")[2].startswith("device:"):
                fired = a.fired_at if a.fired_at is not None else a.since
                if (
                    key not in self.open_by_key
                    and a.rule in self.dark_reason
                    and now - fired < self.s.correlation_window
                ):
                    self.held[a.key] = fired + self.s.correlation_window
                    continue
            desired.setdefault(key, []).append(a)
            assigned[a.key] = key
        return desired, assigned

    def _root_key(self, a: Alert, info: RuleInfo, site: bool, top: set[str], lines: set[str]) -> str | None:
        """The incident key of the highest root that explains the alert, if any: the site, its power domain,
        the source or the line its silence comes from."""
        power_ish = info.category in POWER_CATEGORIES or a.rule in self.dark_reason
        if site and (power_ish or a.rule == MAINS_RULE):
            return "power_outage/site"
        if power_ish and (root := next((d for d in self._dev_domains.get(a.device, ()) if d in top), None)):
            return f"power_outage/domain:{root}"
        if info.kind == "absence":
            src = next((s for s, devs in self.source_down.items() if a.device in devs), None)
            if src is not None:
                return f"comm_fault/source:{src}"
            line = self.topo.devices[a.device].line
            if line in lines:
                return f"comm_fault/line:{line}"
        return None

    @staticmethod
    def _fold_into_parent_categories(desired: dict[str, list[Alert]], assigned: dict[AlertKey, str]) -> None:
        """A child category (a burst) joins its parent's incident (supply loss) on the same scope."""
        for key in list(desired):
            category, _, scope = key.partition("/")
            up = f"{CATEGORY_PARENT.get(category)}/{scope}"
            if category in CATEGORY_PARENT and up in desired:
                for a in desired.pop(key):
                    desired[up].append(a)
                    assigned[a.key] = up

    def _close_the_rest(
        self,
        desired: dict[str, list[Alert]],
        assigned: dict[AlertKey, str],
        now: float,
        out: list[IncidentChange],
    ) -> None:
        """Open incidents no alert shows any more: merged into the higher incident their alerts moved to,
        else resolved."""
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
                self._merge(inc, self.incidents[self.open_by_key[target]], now, out)
            else:
                inc.state, inc.resolved_at, inc.updated_at, inc.alerts = IncidentState.RESOLVED, now, now, []
                self.resolved_by_key[key] = inc.id
                out.append(
                    IncidentChange(
                        now, inc.id, IncidentEvent.RESOLVED, True, f"after {now - inc.opened_at:.0f}s"
                    )
                )
        for key in [k for k, i in self.open_by_key.items() if not self.incidents[i].is_open]:
            del self.open_by_key[key]

    @staticmethod
    def _merge(inc: Incident, parent: Incident, now: float, out: list[IncidentChange]) -> None:
        inc.state, inc.merged_into, inc.updated_at = IncidentState.MERGED, parent.id, now
        parent.absorbed.append(inc.id)
        for dev_id, rules in inc.symptoms.items():
            have = parent.symptoms.setdefault(dev_id, [])
            have.extend(r for r in rules if r not in have)
        out.append(IncidentChange(now, inc.id, IncidentEvent.MERGED, False, f"into incident {parent.id}"))
        out.append(
            IncidentChange(now, parent.id, IncidentEvent.ABSORBED, False, f"incident {inc.id} ({inc.title})")
        )

    # ---------------------------------------------------------------------------------------------------
    def _upsert(self, key: str, alerts: list[Alert], now: float, out: list[IncidentChange]) -> None:
        """Bring the incident of `key` in line with the alerts that show it now."""
        firing = any(a.state == AlertState.FIRING for a in alerts)
        state = IncidentState.FIRING if firing else IncidentState.RECOVERING
        inc_id = self.open_by_key.get(key)
        inc = self.incidents.get(inc_id) if inc_id is not None else None
        new = False
        if inc is None:
            inc, new = self._reopen_or_open(key, alerts, now, out)
        for a in alerts:
            rules = inc.symptoms.get(a.device)
            if rules is None:
                inc.symptoms[a.device] = [a.rule]
                if not new:
                    out.append(
                        IncidentChange(now, inc.id, IncidentEvent.SYMPTOM, False, f"{a.device}: {a.rule}")
                    )
            elif a.rule not in rules:
                rules.append(a.rule)
        inc.alerts = sorted(a.key for a in alerts)
        if state != inc.state:
            self._change_state(inc, state, now, out)

    def _reopen_or_open(
        self, key: str, alerts: list[Alert], now: float, out: list[IncidentChange]
    ) -> tuple[Incident, bool]:
        """The incident for a key with none open: the last one of the key when it resolved within the
        reopen window (a recurrence is not news), else a new one. True when new."""
        prev_id = self.resolved_by_key.get(key)
        prev = self.incidents.get(prev_id) if prev_id is not None else None
        new = False
        if (
            prev is not None
            and prev.resolved_at is not None
            and now - prev.resolved_at <= self.s.reopen_window
        ):
            inc = prev
            inc.state, inc.resolved_at, inc.recovering_since = IncidentState.FIRING, None, None
            inc.reopen_count += 1
            out.append(
                IncidentChange(now, inc.id, IncidentEvent.REOPENED, False, f"recurrence #{inc.reopen_count}")
            )
        else:
            meta = self._meta(key, alerts)
            inc = Incident(
                id=self.next_id, key=key, state=IncidentState.FIRING, opened_at=now,
                first_evidence_at=min(a.started for a in alerts), updated_at=now,
                **meta,  # type: ignore[arg-type]
            )  # fmt: skip
            self.next_id += 1
            self.incidents[inc.id] = inc
            new = True
            out.append(IncidentChange(now, inc.id, IncidentEvent.OPENED, True, inc.title))
        self.open_by_key[key] = inc.id
        if self.resolved_by_key.get(key) == inc.id:
            del self.resolved_by_key[key]
        return inc, new

    def _change_state(
        self, inc: Incident, state: IncidentState, now: float, out: list[IncidentChange]
    ) -> None:
        """Firing <-> recovering. Firing again is a flap: counted, and often enough within the flap window
        the incident is marked flapping (once)."""
        if state == IncidentState.FIRING:
            inc.flap_count += 1
            inc.flap_times = [t for t in inc.flap_times if now - t <= self.s.flap_window] + [now]
            inc.recovering_since = None
            out.append(IncidentChange(now, inc.id, IncidentEvent.REFIRED, False, f"flap #{inc.flap_count}"))
            if not inc.flapping and len(inc.flap_times) >= self.s.flap_threshold:
                inc.flapping = True
                out.append(
                    IncidentChange(now, inc.id, IncidentEvent.FLAPPING, False, f"{len(inc.flap_times)} flaps")
                )
        else:
            inc.recovering_since = now
            out.append(
                IncidentChange(
                    now, inc.id, IncidentEvent.RECOVERING, False, "fresh data shows the clear condition"
                )
            )
        inc.state = state
        inc.updated_at = now
