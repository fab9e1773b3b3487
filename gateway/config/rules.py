"""The `rules:` section: one model per rule kind, discriminated by `kind`.

The engine never sees these models: rules/compile.py turns them into plain dataclasses. The defaults a
site gets without a `rules:` section are in gateway/config/default_rules.py.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from gateway.config.base import Strict
from gateway.config.devices import Role
from gateway.core.durations import Duration

Severity = Literal["critical", "major", "minor", "warning", "info"]

SEVERITY_RANK: dict[str, int] = {"critical": 0, "major": 1, "minor": 2, "warning": 3, "info": 4}

Scope = Literal["auto", "device", "domain", "building", "site"]

_RuleId = Field(
    pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
    min_length=1,
    max_length=64,
    description="rule id, e.g. water.low_pressure; an entry with a default rule's id changes only the "
    "fields it gives (kind may be left out; enabled: false drops the rule)",
)

_Category = Field(
    default="",
    pattern=r"^$|^[a-z][a-z0-9_]*$",
    max_length=40,
    description="incident category, e.g. water_supply: alerts of one category and scope make one incident; "
    "default by kind (polyphase power_outage, absence comm_fault, sequence equipment_fault, stuck "
    "sensor_fault, else the kind)",
)

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")

_KIND = "the rule kind; it decides which other fields the rule takes"

# Who hears of an outage of supply (the audiences of the outage rules and of correlated outages).
OUTAGE_AUDIENCES: tuple[str, ...] = ("staff", "residents", "utility")


class Match(Strict):
    """Which devices a rule watches; every given criterion must hold. Empty = every device."""

    roles: list[Role] | None = Field(default=None, description="devices with one of these roles")
    devices: list[str] | None = Field(default=None, description="these devices (devices[].id)")
    buildings: list[str] | None = Field(default=None, description="devices in these buildings")
    domains: list[str] | None = Field(
        default=None, description="devices measuring these supply domains (devices[].domain)"
    )


class RuleBase(Strict):
    id: str = _RuleId
    enabled: bool = Field(default=True, description="false turns the rule off (e.g. a default rule)")
    match: Match = Field(
        default_factory=Match, description="which devices the rule watches; every criterion given must hold"
    )
    category: str = _Category
    event_code: str = Field(
        default="003",
        pattern=r"^\d{3}$",
        description="the order-maintenance handbook's event code (001-006): 001 personal safety, 002 fire, "
        "003 equipment failure, 004 property loss, 005 resident complaint, 006 other",
    )
    severity: Severity = Field(
        default="major",
        description="severity of the alert; an incident takes the worst severity of its alerts",
    )
    audiences: list[str] = Field(
        default_factory=lambda: ["staff"],
        description="who the incident concerns, e.g. staff, residents, utility (kept with the incident)",
    )
    scope: Scope = Field(
        default="auto",
        description="what one incident covers: device, domain, building, site; auto: the device",
    )
    title: str = Field(default="", description="incident title; default: the category and the scope")
    for_: Duration = Field(default=0.0, alias="for", description="condition must hold this long to fire")
    clear_for: Duration = Field(default=60.0, description="clear condition must hold this long (fresh data)")
    confirm_samples: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="readings in a row that must show the condition before the alert fires, besides `for`: "
        "a value back to normal on the next reading is a glitch, counted, not an alert; default 2 for "
        "severity critical, else 1 (absence rules are judged by the clock and take 1)",
    )

    def samples_to_fire(self) -> int:
        """confirm_samples, or its default: one reading never opens a critical incident."""
        if self.confirm_samples is not None:
            return self.confirm_samples
        return 2 if self.severity == "critical" else 1

    # No populate_by_name: the YAML key is `for` (the alias), and `for_:` in a site file is an unknown field.
    model_config = ConfigDict(extra="forbid")


class PolyphaseRule(RuleBase):
    """The phase voltages of a power meter against the device's nominal_voltage: outage, phase loss, under-
    and overvoltage. pct and clear_pct default by check (outage 10/85, phase_loss 60/85, undervoltage 90/92,
    overvoltage 110/108)."""

    kind: Literal["polyphase"] = Field(description=_KIND)
    check: Literal["outage", "phase_loss", "undervoltage", "overvoltage"] = Field(
        description="outage: every phase below pct; phase_loss: one below pct, another above "
        "others_above_pct; undervoltage: a phase below pct; overvoltage: a phase above pct"
    )
    phases: list[str] = Field(
        default_factory=lambda: ["voltage_l1", "voltage_l2", "voltage_l3"],
        min_length=1,
        description="the phase-voltage quantities; default voltage_l1, voltage_l2, voltage_l3",
    )
    pct: float | None = Field(default=None, gt=0, le=200, description="threshold, % of the nominal voltage")
    others_above_pct: float = Field(
        default=85.0, gt=0, le=200, description="phase_loss: healthy phases above"
    )
    clear_pct: float | None = Field(default=None, gt=0, le=200, description="clear threshold, % of nominal")

    @model_validator(mode="after")
    def _defaults(self) -> PolyphaseRule:
        trig, clear = {
            "outage": (10.0, 85.0),
            "phase_loss": (60.0, 85.0),
            "undervoltage": (90.0, 92.0),
            "overvoltage": (110.0, 108.0),
        }[self.check]
        if self.pct is None:
            self.pct = trig
        if self.clear_pct is None:
            self.clear_pct = clear
        over = self.check == "overvoltage"
        if (self.clear_pct > self.pct) if over else (self.clear_pct < self.pct):
            raise ValueError(
                f"clear_pct {self.clear_pct:g} must be on the healthy side of pct {self.pct:g} "
                f"({'at most' if over else 'at least'} pct)"
            )
        return self


class ThresholdRule(RuleBase):
    """One quantity below or above a value, with an optional clear band (hysteresis)."""

    kind: Literal["threshold"] = Field(description=_KIND)
    quantity: str = Field(description="quantity watched, e.g. pressure")
    below: float | None = Field(default=None, description="fires when the value is below this; or give above")
    above: float | None = Field(default=None, description="fires when the value is above this; or give below")
    clear_above: float | None = Field(
        default=None, description="a below rule clears at or above this; default: the trigger threshold"
    )
    clear_below: float | None = Field(
        default=None, description="an above rule clears at or below this; default: the trigger threshold"
    )

    @model_validator(mode="after")
    def _one_side(self) -> ThresholdRule:
        if (self.below is None) == (self.above is None):
            raise ValueError("give exactly one of below or above")
        if self.below is not None:
            if self.clear_below is not None:
                raise ValueError("a `below` rule clears with clear_above")
            if self.clear_above is not None and self.clear_above < self.below:
                raise ValueError(f"clear_above {self.clear_above:g} must be >= below {self.below:g}")
        if self.above is not None:
            if self.clear_above is not None:
                raise ValueError("an `above` rule clears with clear_below")
            if self.clear_below is not None and self.clear_below > self.above:
                raise ValueError(f"clear_below {self.clear_below:g} must be <= above {self.above:g}")
        return self


class AbsenceRule(RuleBase):
    """A device that stops answering (Modbus) or publishing (MQTT)."""

    kind: Literal["absence"] = Field(description=_KIND)
    stale_after: Duration | None = Field(
        default=None, gt=0, description="silent after this long without data; default max(3 x interval, 10s)"
    )

    @model_validator(mode="after")
    def _by_the_clock(self) -> AbsenceRule:
        if self.confirm_samples not in (None, 1):
            raise ValueError("confirm_samples: an absence rule is judged by the clock, not by readings")
        return self

    def samples_to_fire(self) -> int:
        return 1


class RateRule(RuleBase):
    """One quantity falling or rising too fast (e.g. pressure dropping on a burst main)."""

    kind: Literal["rate"] = Field(description=_KIND)
    quantity: str = Field(description="quantity watched, e.g. pressure")
    falling_faster_than: float | None = Field(
        default=None, gt=0, description="fires on a fall faster than this, in units per second"
    )
    rising_faster_than: float | None = Field(
        default=None, gt=0, description="fires on a rise faster than this, in units per second"
    )
    window: Duration = Field(default=10.0, gt=0, description="the change is measured over this span")

    @model_validator(mode="after")
    def _one(self) -> RateRule:
        if (self.falling_faster_than is None) == (self.rising_faster_than is None):
            raise ValueError("give exactly one of falling_faster_than or rising_faster_than")
        return self


class CalendarRule(RuleBase):
    """One quantity over a daily window of local time, e.g. the night flow that shows a leak."""

    kind: Literal["calendar"] = Field(description=_KIND)
    quantity: str = Field(description="quantity watched, e.g. flow")
    window: str = Field(
        description="local time span in the site's time zone, HH:MM-HH:MM (may cross midnight)"
    )
    aggregate: Literal["min", "avg", "max"] = Field(
        default="min", description="how a window's readings become one value: min, avg or max"
    )
    above: float = Field(description="a window is bad when the aggregate is above this")
    clear_below: float | None = Field(
        default=None, description="a window clears when at or below; default above"
    )
    consecutive: int = Field(default=3, ge=1, le=60, description="bad windows in a row to fire")

    @field_validator("window")
    @classmethod
    def _window(cls, v: str) -> str:
        parts = v.replace(" ", "").split("-")
        if len(parts) != 2 or not all(_CLOCK.match(p) for p in parts) or parts[0] == parts[1]:
            raise ValueError(f"expected a local time span such as 02:00-04:00, got {v!r}")
        return "-".join(parts)

    @model_validator(mode="after")
    def _clear(self) -> CalendarRule:
        if self.clear_below is not None and self.clear_below > self.above:
            raise ValueError(f"clear_below {self.clear_below:g} must be <= above {self.above:g}")
        return self


class Condition(Strict):
    quantity: str = Field(description="quantity read, e.g. current_l1")
    above: float = Field(description="the condition holds while the value is above this")
    devices: list[str] | None = Field(
        default=None, description="where to read it; default: the same device, else its building"
    )
    over: Duration = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="compare the mean of the readings over this trailing span (a noisy meter, e.g. the flow "
        "of a cavitating pump); 0 = the latest reading",
    )


class SequenceRule(RuleBase):
    """Equipment such as a pump: running without the response it should cause, or starting too often."""

    kind: Literal["sequence"] = Field(description=_KIND)
    mode: Literal["no_response", "short_cycling"] = Field(
        description="no_response: running but no expect holds within; short_cycling: more than max_starts "
        "starts in period"
    )
    running: Condition = Field(description="when the equipment counts as running")
    expect: list[Condition] = Field(
        default_factory=list, description="no_response: at least one must hold while running"
    )
    within: Duration = Field(default=30.0, gt=0, description="no_response: grace after running starts")
    max_starts: int = Field(default=6, ge=1, description="short_cycling: starts allowed per period")
    period: Duration = Field(
        default=3600.0, gt=0, description="short_cycling: starts are counted over this span"
    )
    stopped_below: float | None = Field(
        default=None,
        description="running ends only when the running quantity falls below this (hysteresis, so a value "
        "hovering at running.above is not a new start each time); default half of running.above",
    )

    @model_validator(mode="after")
    def _need(self) -> SequenceRule:
        if self.mode == "no_response" and not self.expect:
            raise ValueError("mode no_response needs expect (e.g. flow above 0.5)")
        if self.stopped_below is not None and self.stopped_below > self.running.above:
            raise ValueError(
                f"stopped_below {self.stopped_below:g} must be <= running.above {self.running.above:g}"
            )
        return self


class Varies(Strict):
    quantity: str = Field(
        description="the related quantity, e.g. flow; read from the devices of the watched device's supply "
        "domain (of its building when it has no domain)"
    )
    min_range: float = Field(
        description="it varied when one device's readings of it (max - min) spread by more than this over "
        "the span the watched reading stayed flat"
    )

    @field_validator("min_range")
    @classmethod
    def _min_range(cls, v: float) -> float:
        if not v >= 0:
            raise ValueError(f"min_range must be >= 0 (a spread of readings), got {v:g}")
        return v


class StuckRule(RuleBase):
    """A sensor whose reading stays flat (no change beyond tolerance) for `after`, optionally while a related
    quantity in its supply domain varies (a pressure transmitter frozen while the zone's flow moves). A gap
    in the data restarts the flat span: silence never makes a sensor stuck. Default category sensor_fault."""

    kind: Literal["stuck"] = Field(description=_KIND)
    quantity: str = Field(description="quantity watched, e.g. pressure")
    tolerance: float = Field(
        default=0.0,
        description="a reading more than this away from the value it stayed at is a change; 0: any change "
        "(readings equal up to float rounding are the same)",
    )
    after: Duration = Field(
        default=1800.0, gt=0, description="flat this long (with readings all along) is stuck"
    )
    while_varies: Varies | None = Field(
        default=None,
        description="stuck only while this related quantity varies (a quiet night is no frozen sensor); "
        "flat while it is flat too is undecided. Omitted: flatness alone fires",
    )
    only_above: float | None = Field(
        default=None,
        description="a reading at or below this is never called stuck, e.g. 0 for flow: a meter reads "
        "exactly 0 while nothing flows; default: any reading",
    )

    @field_validator("tolerance")
    @classmethod
    def _tolerance(cls, v: float) -> float:
        if not v >= 0:
            raise ValueError(f"tolerance must be >= 0 (the change that still counts as none), got {v:g}")
        return v


RuleSpec = Annotated[
    PolyphaseRule | ThresholdRule | AbsenceRule | RateRule | CalendarRule | SequenceRule | StuckRule,
    Field(discriminator="kind"),
]

RULE_KINDS = ("polyphase", "threshold", "absence", "rate", "calendar", "sequence", "stuck")
