"""Which incident transitions a consumer has applied already, so that a replay after a restart owes nothing.

The detector hands its consumers (the notice policy, the dispatcher) every transition of a round; after a
restart the rounds since the last commit are fed again. Transitions come in time order, so one older than
the latest applied, or one already applied at that same instant, is a replay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rules.model import IncidentChange


class ReplayGuard:
    def __init__(self) -> None:
        self.fed_until: float | None = None  # the latest transition applied
        self.fed_at_last: set[str] = set()  # those applied at that instant

    def first_time(self, c: IncidentChange) -> bool:
        """Whether `c` is new; if so it counts as applied from now on."""
        sig = f"{c.incident}|{c.event}|{c.detail}"
        last = self.fed_until
        if last is not None and (c.ts < last or (c.ts == last and sig in self.fed_at_last)):
            return False
        if last is None or c.ts > last:
            self.fed_until, self.fed_at_last = c.ts, set()
        self.fed_at_last.add(sig)
        return True

    def export(self) -> dict[str, Any]:
        """The keys a consumer's exported state carries (unchanged since the state's version 1)."""
        return {"fed_until": self.fed_until, "fed_at_last": sorted(self.fed_at_last)}

    def restore(self, state: Mapping[str, Any]) -> None:
        fed = state.get("fed_until")
        self.fed_until = None if fed is None else float(fed)
        self.fed_at_last = {str(s) for s in state.get("fed_at_last", [])}
