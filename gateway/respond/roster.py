"""Who holds each role at a moment: the weekly shifts of `oncall:` (site time zone), and overrides.

Pure: time comes in as an argument. An override (from the API or CLI) names who holds `oncall` (and
optionally `backup`) from its start to its end and wins over the shifts; the newest override covering a
moment wins over older ones. Overrides that have ended are dropped by `prune`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from gateway.config.oncall import DAYS, OncallConfig, Person, Role, Shift
from gateway.respond.desk_api import OncallOverride, OncallView, PersonView


def _hhmm(text: str) -> time:
    h, _, m = text.partition(":")
    return time(int(h), int(m))


def _covers(shift: Shift, local: datetime) -> bool:
    """Whether a weekly shift covers a local moment (a shift ending at or before its start runs into the
    next day, so it may have started yesterday)."""
    start, end = _hhmm(shift.start), _hhmm(shift.end)
    for back in (0, 1):
        day = local.date() - timedelta(days=back)
        if DAYS[day.weekday()] not in shift.days:
            continue
        begin = datetime.combine(day, start, tzinfo=local.tzinfo)
        finish = datetime.combine(day if end > start else day + timedelta(days=1), end, tzinfo=local.tzinfo)
        if begin <= local < finish:
            return True
    return False


class Roster:
    def __init__(self, cfg: OncallConfig, tz: ZoneInfo) -> None:
        self.cfg = cfg
        self.tz = tz
        self.people: dict[str, Person] = {p.id: p for p in cfg.people}
        self.overrides: list[OncallOverride] = []

    def add_override(self, o: OncallOverride) -> None:
        """ValueError for an unknown person or an empty span (nothing changes then)."""
        for who in (o.oncall, o.backup):
            if who is not None and who not in self.people:
                known = ", ".join(sorted(self.people)) or "none: oncall.people is empty"
                raise ValueError(f"unknown person {who!r}; the roster knows {known}")
        if o.end <= o.start:
            raise ValueError("an override must end after it starts")
        self.overrides.append(o)

    def restore_overrides(self, overrides: Iterable[OncallOverride]) -> None:
        known = self.people
        self.overrides = [o for o in overrides if all(w is None or w in known for w in (o.oncall, o.backup))]

    def prune(self, now: float) -> None:
        self.overrides = [o for o in self.overrides if o.end > now]

    def _override(self, t: float) -> OncallOverride | None:
        return next((o for o in reversed(self.overrides) if o.start <= t < o.end), None)

    def holder(self, role: Role, t: float) -> str | None:
        """The person id holding `role` at `t` (None: nobody is named for it)."""
        if role == "supervisor":
            return self.cfg.supervisor
        if role == "manager":
            return self.cfg.manager
        local = datetime.fromtimestamp(t, self.tz)
        shift = next((s for s in self.cfg.shifts if _covers(s, local)), None)
        o = self._override(t)
        if o is not None:
            if role == "oncall":
                return o.oncall
            if o.backup is not None:
                return o.backup
            # the override's person cannot be their own backup: the one they replace backs them up
            backup = shift.backup if shift is not None else None
            if backup == o.oncall:
                backup = shift.oncall if shift is not None and shift.oncall != o.oncall else None
            return backup
        if shift is None:
            return None
        return shift.oncall if role == "oncall" else shift.backup

    def person(self, person_id: str | None) -> PersonView | None:
        p = self.people.get(person_id) if person_id is not None else None
        return None if p is None else PersonView(p.id, p.name or p.id, p.phone)

    def view(self, t: float) -> OncallView:
        return OncallView(
            at=t,
            oncall=self.person(self.holder("oncall", t)),
            backup=self.person(self.holder("backup", t)),
            supervisor=self.person(self.holder("supervisor", t)),
            manager=self.person(self.holder("manager", t)),
            override=self._override(t) is not None,
        )
