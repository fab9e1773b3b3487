"""Plain data the engine works on: rule settings, alert instances, incidents and the transitions it returns.

Every time here is an absolute UTC epoch second, so state can be stored and restored as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

# The rule that watches the gateway's own mains supply (compiled from the site's `mains:`): its alert is the
# site-wide power outage root.
MAINS_RULE = "site.mains"


class AlertState(StrEnum):
    """An alert's life: inactive -> pending -> firing -> recovering -> resolved. Inactive alerts are not
    kept; resolved is reported once and then dropped."""

    PENDING = "pending"
    FIRING = "firing"
    RECOVERING = "recovering"
    RESOLVED = "resolved"
    INACTIVE = "inactive"


class IncidentState(StrEnum):
    FIRING = "firing"
    RECOVERING = "recovering"
    RESOLVED = "resolved"
    MERGED = "merged"  # absorbed into the incident of a root cause found later


OPEN_STATES = (IncidentState.FIRING, IncidentState.RECOVERING)


class IncidentEvent(StrEnum):
    """What an incident's timeline records (IncidentChange.event, the store's timeline.event)."""

    OPENED = "opened"
    SYMPTOM = "symptom"  # a device not seen before joined
    ABSORBED = "absorbed"  # an incident below it was merged into it
    MERGED = "merged"  # it was merged into an incident above it
    RECOVERING = "recovering"
    REFIRED = "refired"
    FLAPPING = "flapping"
    RESOLVED = "resolved"
    REOPENED = "reopened"
    GATEWAY_DOWN = "gateway_down"  # written by the store on a start: the gateway was down meanwhile
    # the response, recorded by the respond side (gateway/respond): who was called, who answered, what
    # staff said; the meters' events above never use these
    DISPATCHED = "dispatched"  # the on-call team was sent (escalation step 0)
    ESCALATED = "escalated"  # nobody acknowledged: the next step of the chain called its roles
    ACKNOWLEDGED = "acknowledged"
    ON_SITE = "on_site"
    RETRIGGERED = "retriggered"  # acknowledged but nobody on site within ack_timeout: the chain restarts
    TARGET_MISSED = "target_missed"  # the response target passed with nobody acknowledging
    NOTE = "note"
    ETA = "eta"  # staff set (or cleared) the expected restoration
    CAUSE = "cause"


class AlertKey(str):
    """Which alert instance: one rule on one device, and a sub-key (e.g. a phase) for a rule that keeps
    several per device. It is its own text, `rule|device` or `rule|device|sub` (ids never contain `|`), so
    it is stored, compared, sorted and hashed as the plain string keys always were."""

    __slots__ = ()

    def __new__(cls, rule: str, device: str, sub: str = "") -> AlertKey:
        return super().__new__(cls, f"{rule}|{device}|{sub}" if sub else f"{rule}|{device}")

    @staticmethod
    def parse(text: str) -> AlertKey:
        rule, device, *sub = text.split("|", 2)
        return AlertKey(rule, device, sub[0] if sub else "")

    def __getnewargs__(self) -> tuple[str, str, str]:  # type: ignore[override]
        return self.rule, self.device, self.sub  # for copy and pickle, which call __new__ with these

    @property
    def rule(self) -> str:
        return self.split("|", 2)[0]

    @property
    def device(self) -> str:
        return self.split("|", 2)[1]

    @property
    def sub(self) -> str:
        parts = self.split("|", 2)
        return parts[2] if len(parts) > 2 else ""


@dataclass(frozen=True, slots=True)
class RuleInfo:
    id: str
    kind: str  # the rule's `kind:` in the site file: polyphase | threshold | absence | rate | ...
    category: str
    event_code: str
    severity: str
    audiences: tuple[str, ...]
    scope: str  # auto | device | domain | building | site
    title: str
    for_: float
    clear_for: float
    confirm_samples: int = 1  # evidence in a row that must show the trigger before the alert fires


@dataclass(frozen=True, slots=True)
class DetectionSettings:
    correlation_window: float = 60.0
    reopen_window: float = 1800.0
    outage_fraction: float = 0.6
    outage_clear_fraction: float = 0.2
    outage_min_devices: int = 2
    line_min_devices: int = 2
    flap_threshold: int = 3
    flap_window: float = 900.0
    outage_severity: str = "critical"
    outage_audiences: tuple[str, ...] = ("staff", "residents", "utility")


@dataclass(slots=True)
class Alert:
    """One rule watching one device (and a sub-key such as a phase), while it is not inactive."""

    key: AlertKey
    rule: str
    device: str
    state: AlertState
    since: float  # entered the current state (for pending and recovering: the running hold's start)
    started: float  # first became pending
    last_evidence: float  # sample time of the latest evidence either way
    value: float | None = None
    fired_at: float | None = None
    flaps: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "key": str(self.key), "rule": self.rule, "device": self.device, "state": str(self.state),
            "since": self.since, "started": self.started, "last_evidence": self.last_evidence,
            "value": self.value, "fired_at": self.fired_at, "flaps": self.flaps,
        }  # fmt: skip

    @staticmethod
    def from_dict(d: dict[str, object]) -> Alert:
        def f(name: str) -> float:
            v = d[name]
            assert isinstance(v, int | float)
            return float(v)

        def fo(name: str) -> float | None:
            v = d.get(name)
            return float(v) if isinstance(v, int | float) else None

        flaps = d.get("flaps", 0)
        return Alert(
            key=AlertKey.parse(str(d["key"])), rule=str(d["rule"]), device=str(d["device"]),
            state=AlertState(str(d["state"])),
            since=f("since"), started=f("started"), last_evidence=f("last_evidence"), value=fo("value"),
            fired_at=fo("fired_at"), flaps=int(flaps) if isinstance(flaps, int) else 0,
        )  # fmt: skip


@dataclass(slots=True)
class Incident:
    """One root cause: the alerts that show it, the devices they came from, and its life so far."""

    id: int
    key: str  # category/scope
    category: str
    scope: str  # site | domain:<id> | line:<id> | building:<id> | device:<id>
    title: str
    severity: str
    event_code: str
    audiences: list[str]
    households: int
    state: IncidentState
    opened_at: float
    first_evidence_at: float
    updated_at: float
    recovering_since: float | None = None
    resolved_at: float | None = None
    flap_count: int = 0
    flap_times: list[float] = field(default_factory=list)
    flapping: bool = False
    reopen_count: int = 0
    merged_into: int | None = None
    absorbed: list[int] = field(default_factory=list)
    alerts: list[AlertKey] = field(default_factory=list)  # attached now, sorted
    symptoms: dict[str, list[str]] = field(default_factory=dict)  # device -> rules seen on it
    # why it was classified as it is (an outage, a communication fault, ...), in words, newest last
    evidence: list[str] = field(default_factory=list)
    # opened by staff (a hotline report: fire, a complaint, ...), not by alerts: the correlator neither
    # resolves nor merges it; staff resolve it
    manual: bool = False
    buildings: list[str] = field(default_factory=list)  # a manual incident's buildings (empty: the site)
    drill: bool = False  # a drill (meterwatch drill): every message says so; reported apart

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id, "key": self.key, "category": self.category, "scope": self.scope,
            "title": self.title, "severity": self.severity, "event_code": self.event_code,
            "audiences": list(self.audiences), "households": self.households, "state": str(self.state),
            "opened_at": self.opened_at, "first_evidence_at": self.first_evidence_at,
            "updated_at": self.updated_at, "recovering_since": self.recovering_since,
            "resolved_at": self.resolved_at, "flap_count": self.flap_count,
            "flap_times": list(self.flap_times), "flapping": self.flapping,
            "reopen_count": self.reopen_count, "merged_into": self.merged_into,
            "absorbed": list(self.absorbed), "alerts": [str(k) for k in self.alerts],
            "symptoms": {k: list(v) for k, v in self.symptoms.items()},
            "evidence": list(self.evidence), "manual": self.manual, "buildings": list(self.buildings),
            "drill": self.drill,
        }  # fmt: skip

    @staticmethod
    def from_dict(d: dict[str, object]) -> Incident:
        inc = Incident(
            id=int(d["id"]),  # type: ignore[call-overload]
            **{k: d[k] for k in ("key", "category", "scope", "title", "severity", "event_code")},  # type: ignore[arg-type]
            audiences=list(d.get("audiences") or []),  # type: ignore[call-overload]
            households=int(d.get("households") or 0),  # type: ignore[call-overload]
            state=IncidentState(str(d["state"])),
            opened_at=float(d["opened_at"]),  # type: ignore[arg-type]
            first_evidence_at=float(d["first_evidence_at"]),  # type: ignore[arg-type]
            updated_at=float(d["updated_at"]),  # type: ignore[arg-type]
        )
        for name in ("recovering_since", "resolved_at", "merged_into"):
            setattr(inc, name, d.get(name))
        inc.flap_count = int(d.get("flap_count") or 0)  # type: ignore[call-overload]
        inc.flap_times = [float(x) for x in d.get("flap_times") or []]  # type: ignore[attr-defined]
        inc.flapping = bool(d.get("flapping"))
        inc.reopen_count = int(d.get("reopen_count") or 0)  # type: ignore[call-overload]
        inc.absorbed = [int(x) for x in d.get("absorbed") or []]  # type: ignore[attr-defined]
        inc.alerts = [AlertKey.parse(str(x)) for x in d.get("alerts") or []]  # type: ignore[attr-defined]
        inc.symptoms = {str(k): list(v) for k, v in (d.get("symptoms") or {}).items()}  # type: ignore[attr-defined]
        inc.evidence = [str(x) for x in d.get("evidence") or []]  # type: ignore[attr-defined]
        inc.manual = bool(d.get("manual"))
        inc.drill = bool(d.get("drill"))
        inc.buildings = [str(x) for x in d.get("buildings") or []]  # type: ignore[attr-defined]
        return inc


@dataclass(frozen=True, slots=True)
class AlertChange:
    ts: float
    key: AlertKey
    rule: str
    device: str
    old: AlertState
    new: AlertState
    value: float | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class IncidentChange:
    """`notify` is the seam for the notification outbox: False for flaps and reopenings."""

    ts: float
    incident: int
    event: IncidentEvent
    notify: bool
    detail: str = ""


Transition = AlertChange | IncidentChange
