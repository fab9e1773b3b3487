"""When two incidents of different gateways of one site are one cause (issue 13, item 5): the rule the fleet
view links them by (gateway/fleetview/state.py) and a gateway notes its peer shards' incidents by
(gateway/fleet/peers.py), in one place so that both say the same.

Linked: different gateways, both on a supply domain of the same kind (`supply_kind`), supply paths (the
domain and its ancestors, docs/fleet-topics.md) sharing a domain, and opened within LINK_WINDOW_S of each
other. The cause is the nearest shared domain, seen from the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Two shards see one upstream cut within seconds (each after its own `for`); an outage of the same transformer
# that opened much later is another event, even while the first is still open
LINK_WINDOW_S = 900.0


@dataclass(frozen=True, slots=True)
class Supply:
    gateway: str
    kind: str | None  # power | water; None: not on a supply domain, never linked
    path: Sequence[str]
    opened_at: float


def cause(a: Supply, b: Supply) -> str | None:
    """The nearest supply domain `a` shares with `b` when they are to be linked, else None."""
    if a.gateway == b.gateway or a.kind is None or a.kind != b.kind:
        return None
    if abs(a.opened_at - b.opened_at) > LINK_WINDOW_S:
        return None
    return next((d for d in a.path if d in b.path), None)
