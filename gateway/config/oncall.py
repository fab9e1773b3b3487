"""The `oncall:` section: who is on call when (weekly shifts in the site time zone), and the escalation chain.

People are named once with an id; shifts name them by id for the two rotating roles, `oncall` and `backup`;
`supervisor` and `manager` are fixed. A notice to a role goes to every channel serving that role's
audience (a team's group robot) and to every channel serving `person:<id>` of whoever holds the role at
that moment (one person's SMS or WeCom app account).
"""

from __future__ import annotations

import itertools
import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from gateway.config.base import Id, Strict
from gateway.config.rules import Severity
from gateway.core.durations import Duration

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Role = Literal["oncall", "backup", "supervisor", "manager"]
ROLES: tuple[Role, ...] = ("oncall", "backup", "supervisor", "manager")


_DISPATCHED: tuple[Severity, ...] = ("critical", "major")


class Person(Strict):
    id: Annotated[str, Id] = Field(description="short id: shifts and links name the person by it")
    name: str = Field(default="", max_length=64, description="the name messages and pages show")
    phone: str = Field(default="", max_length=32, description="a number colleagues can call, shown to staff")


class Shift(Strict):
    """Who holds `oncall` and `backup` on some days from `start` to `end` (local time; an end at or before
    the start runs into the next day)."""

    days: list[Day] = Field(default_factory=lambda: list(DAYS), min_length=1, description="days it starts on")
    start: str = Field(default="00:00", description="HH:MM, local time")
    end: str = Field(default="00:00", description="HH:MM, local time; at or before start: the next day")
    oncall: str = Field(description="person id holding the on-call role in this shift")
    backup: str | None = Field(default=None, description="person id of the backup in this shift")

    @model_validator(mode="after")
    def _clock(self) -> Shift:
        for name in ("start", "end"):
            if not _CLOCK.match(getattr(self, name)):
                raise ValueError(f"{name}: expected HH:MM, got {getattr(self, name)!r}")
        return self


class Step(Strict):
    """One step of the escalation chain: whom to call `after` the dispatch if nobody has acknowledged."""

    after: Duration = Field(ge=0, description="time since the dispatch (0: the dispatch itself)")
    notify: list[Role] = Field(min_length=1, description="roles to call: oncall, backup, supervisor, manager")
    target_missed: bool = Field(
        default=False, description="this step also records that the response target was missed"
    )


def default_chain() -> list[Step]:
    return [
        Step(after=0, notify=["oncall"]),
        Step(after=600, notify=["backup"]),
        Step(after=1200, notify=["supervisor"]),
        Step(after=1800, notify=["manager"], target_missed=True),
    ]


class OncallConfig(Strict):
    """The emergency team: the roster, which incidents are dispatched, and the escalation chain."""

    people: list[Person] = Field(default_factory=list, description="everyone the roster names")
    shifts: list[Shift] = Field(
        default_factory=list,
        description="weekly shifts; at a given moment the first shift covering it decides who is on call",
    )
    supervisor: str | None = Field(default=None, description="person id of the supervisor")
    manager: str | None = Field(default=None, description="person id of the manager")
    dispatch_severities: list[Severity] = Field(
        default_factory=lambda: list(_DISPATCHED),
        description="incidents of these severities dispatch the on-call team (manual incidents always do)",
    )
    escalation: list[Step] = Field(
        default_factory=default_chain,
        min_length=1,
        description="the chain, first step at after: 0; default on-call at 0, backup at 10m, supervisor at "
        "20m, manager and the 'target missed' record at 30m",
    )
    repeat_every: Duration = Field(
        default=600.0, ge=0, description="after the last step, call its roles again this often; 0: never"
    )
    repeat_max: int = Field(default=3, ge=0, le=100, description="at most this many repeats of the last step")
    ack_timeout: Duration = Field(
        default=1200.0,
        gt=0,
        description="acknowledged but nobody on site this long after: the chain starts again",
    )
    target: Duration = Field(
        default=1800.0, gt=0, description="the response target the reports measure (the handbook: 30 minutes)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> OncallConfig:
        problems: list[str] = []
        ids = [p.id for p in self.people]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            problems.append(f"duplicate person id(s): {', '.join(dup)}")
        known = set(ids)
        for n, s in enumerate(self.shifts):
            for role in ("oncall", "backup"):
                who = getattr(s, role)
                if who is not None and who not in known:
                    problems.append(
                        f"shifts[{n}].{role}: unknown person {who!r}; expected one of people[].id"
                    )
        for role in ("supervisor", "manager"):
            who = getattr(self, role)
            if who is not None and who not in known:
                problems.append(f"{role}: unknown person {who!r}; expected one of people[].id")
        afters = [s.after for s in self.escalation]
        if afters[0] != 0:
            problems.append("escalation[0].after: the first step is the dispatch itself, expected 0")
        if any(b < a for a, b in itertools.pairwise(afters)):
            problems.append("escalation: the steps' `after` must not decrease")
        if problems:
            raise ValueError("; ".join(problems))
        return self
