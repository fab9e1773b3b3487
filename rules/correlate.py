"""Alerts -> incidents: one incident per root cause, found from the topology.

Roots, from the top: the site (gateway mains lost), a power supply domain (its main meter reads 0 V on all
phases, or most of the devices that depend on it are dark), a phase lost by a domain's main meter (the
line-powered meters fed from it go silent), the site's or a source's or a line's communication (nothing
answers), and finally the alert's own scope (a device, a water zone, a building). An alert joins the highest
root that explains it; a root found late absorbs the incidents already open below it. A lone device fault
waits `correlation_window` for a root before it opens on its own, so an outage that silences meters one
after another never produces one incident per meter.

Silence alone is no proof of an outage: the gateway's own link going down silences every meter at once. An
outage needs positive evidence: a meter reading no voltage, the gateway's mains sensing, or dependents gone
silent while devices that do not depend on the domain (their neighbours on the same line or source first,
else anything of the site) were heard from after the silence began. Without it the silence is a
communication incident at the level that went silent, for staff only. Every incident carries the evidence
it was classified on, in words.
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
# the sub-keys of a phase-loss alert: which phase the main meter lost
_PHASES = frozenset({"L1", "L2", "L3"})
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
    """Lower ranks are nearer the root cause: by scope first, then a parent category before its child. The
    site's communication ranks with the sources, below every supply root: losing the link during an
    outage does not make the outage a symptom of the link."""
    category, _, scope = key.partition("/")
    level = 7 if (category == "comm_fault" and scope == "site") else scope_level(scope, topo)
    return level, 1 if category in CATEGORY_PARENT else 0


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
        self.last_heard: dict[str, float] = {}  # device -> evidence time of its latest sample
        self.answering_since: dict[str, float] = {}  # answering device -> its first sample after silence
        # a domain has enough silent dependents but no device has yet been heard from after the silence:
        # the next sample of any device may be the proof, so each one reruns the correlation until then
        self._awaiting_proof = False
        self._site_silent = False
        self._why: dict[str, str] = {}  # incident key -> why this run put alerts under it
        self._group_of = {d.id: d.line or f"source:{d.source}" for d in topo.devices.values()}
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
    def answered(self, device: str, ts: float) -> bool:
        """A sample came from `device` at `ts`. True when the roots may change: it was not answering before,
        or a domain waits for a sign of life to tell an outage from a loss of communication."""
        if ts > self.last_heard.get(device, -1.0):
            self.last_heard[device] = ts
        if device in self.answering:
            return self._awaiting_proof
        self.answering.add(device)
        self.answering_since[device] = ts
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
        if inc.manual:  # no alert shows it: it is not the correlator's to resolve, merge or reopen
            return
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

    def open_manual(self, proto: Incident, now: float) -> list[IncidentChange]:
        """Open an incident staff reported (`proto` gives what it is; its id and times are set here). No
        alert shows it, so the correlator's runs leave it alone: it is under no key they look up."""
        inc = proto
        inc.id, inc.key = self.next_id, f"manual/{self.next_id}"
        inc.manual, inc.state = True, IncidentState.FIRING
        inc.opened_at = inc.first_evidence_at = inc.updated_at = now
        self.next_id += 1
        self.incidents[inc.id] = inc
        return [IncidentChange(now, inc.id, IncidentEvent.OPENED, True, inc.title)]

    def resolve_manual(self, incident_id: int, now: float, detail: str) -> list[IncidentChange]:
        """Staff resolve an incident they opened. KeyError: no such incident here; ValueError: it is not a
        manual one (the meters say when those end) or not open."""
        inc = self.incidents[incident_id]
        if not inc.manual:
            raise ValueError(
                f"incident {incident_id} was detected by the meters: it resolves when they clear"
            )
        if not inc.is_open:
            raise ValueError(f"incident {incident_id} is {inc.state}, not open")
        inc.state, inc.resolved_at, inc.updated_at = IncidentState.RESOLVED, now, now
        return [IncidentChange(now, inc.id, IncidentEvent.RESOLVED, True, detail)]

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
        self._why = {}
        dark = self._dark_devices(active)
        site = any(a.rule == MAINS_RULE for a in active)
        if site:
            mains = next(a for a in active if a.rule == MAINS_RULE)
            self._why["power_outage/site"] = (
                f"the gateway's mains sensor {mains.device} reads {_num(mains.value)}: "
                "the site's supply is lost"
            )
        silent = {d for d, reasons in dark.items() if SILENT in reasons}
        self._site_silent = bool(silent) and not self.answering
        self.domain_active = self._dark_domains(dark, active)
        top = {
            d
            for d in self.domain_active
            if not any(up in self.domain_active for up in self.topo.ancestors(d))
        }
        lines = self._silent_lines(silent)
        self._root_keys = {f"power_outage/domain:{d}" for d in top}
        phases = self._lost_phases(active)

        desired, assigned = self._assign(active, site, top, lines, phases, now)
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

    def _dark_domains(self, dark: dict[str, set[str]], active: list[Alert]) -> set[str]:
        """The power domains in an outage: their main meter reads no voltage, or enough of the devices
        that depend on them are dark (fewer suffice to keep an outage already found: hysteresis). Silence
        counts towards a new outage only with proof that it is not the gateway's own communication: a
        device that does not depend on the domain was heard from after the silence began."""
        began: dict[str, float] = {}  # device silent now -> when its silence was first judged
        for a in active:
            if self.dark_reason.get(a.rule) == SILENT and a.state == AlertState.FIRING:
                began[a.device] = min(began.get(a.device, a.started), a.started)
        domains: set[str] = set()
        self._awaiting_proof = False
        for dom in self._power_domains:
            members = self.topo.dependents(dom)
            if not members:
                continue
            volts = sorted(m for m in members if VOLTS in dark.get(m, ()))
            quiet = sorted(m for m in members if m in dark and VOLTS not in dark[m])
            mains = self._mains_of.get(dom, ())
            main_dark = [m for m in mains if m in volts]
            # a main meter that answers with voltage is direct proof the domain has power: silent devices
            # behind it are a line or device fault, however many they are
            main_alive = any(m not in dark and m in self.answering for m in mains)
            key = f"power_outage/domain:{dom}"
            if main_dark:
                domains.add(dom)
                self._why[key] = f"main meter {', '.join(main_dark)} reads no voltage on any phase"
                continue
            if main_alive:
                continue
            n_dark = len(volts) + len(quiet)
            frac = n_dark / len(members)
            if dom in self.domain_active and n_dark > 0 and frac > self.s.outage_clear_fraction:
                domains.add(dom)  # keeping an outage needs no new proof: data that stops proves nothing
                self._why[key] = f"{n_dark} of {len(members)} devices that depend on {dom} still dark"
                continue
            if (
                len(volts) >= self.s.outage_min_devices
                and len(volts) / len(members) >= self.s.outage_fraction
            ):
                domains.add(dom)
                self._why[key] = f"{len(volts)} of {len(members)} meters of {dom} read no voltage"
                continue
            # a new outage from silence counts the devices silent now, not those whose clear hold runs
            now_dark = len(volts) + sum(1 for m in quiet if m in began)
            if not (
                now_dark >= self.s.outage_min_devices and now_dark / len(members) >= self.s.outage_fraction
            ):
                continue
            since = min((began[m] for m in quiet if m in began), default=float("inf"))
            witness = self._witness(dom, [m for m in quiet if m in began], since)
            if witness is None:
                self._awaiting_proof = True
                continue
            domains.add(dom)
            self._why[key] = (
                f"{n_dark} of {len(members)} devices that depend on {dom} dark ({len(quiet)} silent) "
                f"while {witness} answers"
            )
        return domains

    def _witness(self, dom: str, quiet: list[str], since: float) -> str | None:
        """Who proves the silence of `quiet` is the domain's and not the gateway's: a device the domain's
        loss would not silence (a main meter on an auxiliary supply, another domain's meters) heard from
        after `since`; its neighbours on the same lines or sources when there are any (they share the silent
        devices' path to the gateway), else any device of the site. Described in words for the evidence,
        or None."""

        def alive(d: str) -> bool:
            # answering since before the silence began, and heard from after it: a neighbour that was
            # silent too and is just back proves nothing (the end of a loss of communication)
            return (
                d in self.answering
                and self.answering_since.get(d, since) < since
                and self.last_heard.get(d, -1.0) >= since
            )

        groups = {self._group_of[m] for m in quiet}
        silenced = self.topo.silenced(dom)
        outside = [d for d in self.topo.devices if d not in silenced]
        neighbours = [d for d in outside if self._group_of[d] in groups]
        pool = neighbours or outside
        heard = [d for d in pool if alive(d)]
        if not heard:
            return None
        where = f"on {', '.join(sorted(groups))}" if neighbours else "elsewhere on the site"
        more = f" and {len(heard) - 1} more" if len(heard) > 1 else ""
        return f"{sorted(heard)[0]}{more} ({where}, not powered from {dom})"

    def _lost_phases(self, active: list[Alert]) -> dict[str, list[Alert]]:
        """Power domain -> the firing phase-loss alerts of its main meters (one alert per lost phase)."""
        out: dict[str, list[Alert]] = {}
        for a in active:
            info = self.infos[a.rule]
            dev = self.topo.devices[a.device]
            if info.kind == "polyphase" and a.key.sub in _PHASES and dev.domain:
                out.setdefault(dev.domain, []).append(a)
        return out

    def _silent_lines(self, silent: set[str]) -> set[str]:
        """Lines (converters) whose every device is silent: the line is the fault, not each device."""
        return {
            ln
            for ln, devs in self._lines.items()
            if len(devs) >= self.s.line_min_devices and all(d in silent for d in devs)
        }

    def _assign(
        self,
        active: list[Alert],
        site: bool,
        top: set[str],
        lines: set[str],
        phases: dict[str, list[Alert]],
        now: float,
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
            root = self._root_key(a, info, site, top, lines, phases)
            key = root or f"{info.category}/{self._own_scope(info, a)}"
            stay = attached.get(a.key)
            # An alert moves up to a root found late, never down: when the root's own evidence clears first
            # (the main meter reads volts again while the unit meters' clear holds run), its symptoms stay
            # with it until they resolve, instead of popping out as one incident each.
            if stay is not None and key_rank(stay, self.topo) < key_rank(key, self.topo):
                key = stay
            elif root is None and key.partition("/")[2].startswith("device:"):
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

    def _root_key(
        self,
        a: Alert,
        info: RuleInfo,
        site: bool,
        top: set[str],
        lines: set[str],
        phases: dict[str, list[Alert]],
    ) -> str | None:
        """The incident key of the highest root that explains the alert, if any: the site, its power domain,
        a phase its domain lost, or the site, source or line its silence comes from."""
        power_ish = info.category in POWER_CATEGORIES or a.rule in self.dark_reason
        if site and (power_ish or a.rule == MAINS_RULE):
            return "power_outage/site"
        if power_ish and (root := next((d for d in self._dev_domains.get(a.device, ()) if d in top), None)):
            return f"power_outage/domain:{root}"
        if info.kind != "absence":
            return None
        if (phase := self._phase_root(a, phases)) is not None:
            return phase
        if self._site_silent:
            self._why["comm_fault/site"] = (
                "no device of the site answers, and no meter reads a loss of supply: the gateway's own "
                "communication is lost, not the supply"
            )
            return "comm_fault/site"
        src = next((s for s, devs in self.source_down.items() if a.device in devs), None)
        if src is not None:
            self._why[f"comm_fault/source:{src}"] = f"the connection to {src} is lost"
            return f"comm_fault/source:{src}"
        line = self.topo.devices[a.device].line
        if line in lines:
            self._why[f"comm_fault/line:{line}"] = (
                f"every device on line {line} is silent while the rest of the site answers"
            )
            return f"comm_fault/line:{line}"
        return None

    def _phase_root(self, a: Alert, phases: dict[str, list[Alert]]) -> str | None:
        """The phase-loss incident key a silent device belongs to: it is powered from a domain whose main
        meter lost a phase, and it is fed from that phase (declared), or, undeclared, it went silent
        within `correlation_window` of the loss."""
        dev = self.topo.devices[a.device]
        for dom in self._dev_domains.get(a.device, ()):
            for loss in phases.get(dom, ()):
                lost = loss.key.sub
                if dev.phase is not None:
                    if dev.phase != lost:
                        continue
                    why = f"declared on phase {lost}"
                else:
                    t_loss = loss.fired_at if loss.fired_at is not None else loss.since
                    t_dark = a.fired_at if a.fired_at is not None else a.since
                    if abs(t_dark - t_loss) > self.s.correlation_window:
                        continue
                    why = "phase not declared, silent within the correlation window"
                info = self.infos[loss.rule]
                key = f"{info.category}/{self._own_scope(info, loss)}"
                self._why[key] = (
                    f"main meter {loss.device} lost phase {lost} ({_num(loss.value)}) while its other phases "
                    f"read voltage; meters of {dom} fed from it are silent ({a.device}: {why})"
                )
                return key
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
        if not inc.evidence:
            inc.evidence.append(self._why.get(key) or self._own_why(alerts))
        if inc.category == "phase_loss" and (fed := [d for d in inc.symptoms if d not in self._meters(inc)]):
            inc.households = sum(self.topo.devices[d].households for d in fed)
        if state != inc.state:
            self._change_state(inc, state, now, out)

    def _own_why(self, alerts: list[Alert]) -> str:
        """The evidence of an incident on the alerts' own scope: what fired where, and for a silent device
        why nothing bigger explains it."""
        a = alerts[0]
        if self.dark_reason.get(a.rule) == SILENT:
            return (
                f"{a.device} is silent while the rest of the site answers: "
                "no outage, phase, line or site loss explains it"
            )
        more = f" and {len(alerts) - 1} more" if len(alerts) > 1 else ""
        return f"rule {a.rule} fired on {a.device} (value {_num(a.value)}){more}"

    def _meters(self, inc: Incident) -> set[str]:
        """The devices whose own alerts make the incident (for a phase loss: the main meter), as opposed to
        the symptoms it explains."""
        return {k.device for k in inc.alerts if self.infos[k.rule].category == inc.category}

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
            if (why := self._why.get(key)) and why not in inc.evidence:
                inc.evidence.append(why)
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


def _num(value: float | None) -> str:
    return "no value" if value is None else f"{value:g}"
