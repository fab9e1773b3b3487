"""The rules a site gets without a `rules:` section, and how a site's `rules:` merge into them.

The defaults work for the shipped profiles (quantity names voltage_l1..l3, current_l1, power_total,
pressure in bar, flow in m3/h). A `rules:` list is merged into the defaults by id: an entry with a
default's id changes only the fields it gives (`merge_override`, applied by the loader before the entry is
validated; `enabled: false` drops the rule), other entries add.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import TypeAdapter

from gateway.config.rules import OUTAGE_AUDIENCES, RuleSpec

# Each default rule's fields as written below (by id): an override is merged over these, not over the
# validated model, so a field a validator derives from others (a polyphase rule's pct from its check) is
# derived again from the merged fields.
_WRITTEN: dict[str, dict[str, object]] = {}


def _r(**kw: object) -> RuleSpec:
    rule = TypeAdapter(RuleSpec).validate_python(kw)
    _WRITTEN[rule.id] = copy.deepcopy(kw)
    return rule


DEFAULT_RULES: list[RuleSpec] = [
    _r(
        id="power.outage",
        kind="polyphase",
        check="outage",
        category="power_outage",
        severity="critical",
        audiences=list(OUTAGE_AUDIENCES),
        match={"roles": ["main_power", "unit_power"]},
        **{"for": "5s"},
        clear_for="60s",
    ),
    _r(
        id="power.phase_loss",
        kind="polyphase",
        check="phase_loss",
        category="phase_loss",
        severity="major",
        audiences=["staff"],
        match={"roles": ["main_power"]},
        **{"for": "30s"},
        clear_for="60s",
    ),
    _r(
        id="power.undervoltage",
        kind="polyphase",
        check="undervoltage",
        category="undervoltage",
        severity="warning",
        match={"roles": ["main_power"]},
        **{"for": "5m"},
        clear_for="2m",
    ),
    _r(
        id="power.overvoltage",
        kind="polyphase",
        check="overvoltage",
        category="overvoltage",
        severity="major",
        match={"roles": ["main_power"]},
        **{"for": "1m"},
        clear_for="2m",
    ),
    _r(
        id="comm.absent",
        kind="absence",
        category="comm_fault",
        severity="minor",
        **{"for": "5s"},
        clear_for="30s",
    ),
    _r(
        id="water.low_pressure",
        kind="threshold",
        quantity="pressure",
        below=1.0,
        clear_above=1.5,
        category="water_supply",
        severity="critical",
        audiences=list(OUTAGE_AUDIENCES),
        scope="domain",
        match={"roles": ["zone_pressure"]},
        **{"for": "60s"},
        clear_for="5m",
    ),
    _r(
        id="water.burst",
        kind="rate",
        quantity="pressure",
        falling_faster_than=0.05,
        window="10s",
        category="water_burst",
        severity="critical",
        audiences=["staff"],
        scope="domain",
        match={"roles": ["zone_pressure"]},
        clear_for="2m",
    ),
    _r(
        id="water.night_flow",
        kind="calendar",
        quantity="flow",
        window="02:00-04:00",
        aggregate="min",
        above=0.5,
        consecutive=3,
        category="leak_suspected",
        severity="warning",
        audiences=["staff"],
        match={"roles": ["flow"]},
        clear_for="0s",
    ),
    _r(
        id="pump.no_flow",
        kind="sequence",
        mode="no_response",
        category="water_supply",
        severity="major",
        audiences=["staff"],
        scope="domain",
        match={"roles": ["pump"]},
        running={"quantity": "current_l1", "above": 0.5},
        expect=[{"quantity": "flow", "above": 0.2}, {"quantity": "pressure", "above": 0.5}],
        within="60s",
        clear_for="60s",
    ),
    _r(
        id="pump.short_cycling",
        kind="sequence",
        mode="short_cycling",
        category="pump_fault",
        severity="warning",
        audiences=["staff"],
        match={"roles": ["pump"]},
        running={"quantity": "current_l1", "above": 0.5},
        max_starts=6,
        period="1h",
        clear_for="0s",
    ),
    # A frozen transmitter: the same reading (within one step of rs485-pressure's 0.001 bar) for 30 minutes
    # while the zone's flow moves by over 1 m3/h. Flat while the flow is flat too (a quiet night) is no fault.
    _r(
        id="pressure.stuck",
        kind="stuck",
        quantity="pressure",
        tolerance=0.001,
        after="30m",
        while_varies={"quantity": "flow", "min_range": 1.0},
        category="sensor_fault",
        severity="minor",
        audiences=["staff"],
        scope="device",
        event_code="003",
        match={"roles": ["zone_pressure"]},
        clear_for="5m",
    ),
    # A frozen flow meter: exactly the same non-zero flow for 30 minutes while the zone pressure moves by over
    # 0.1 bar (pressure swings move any flow through open taps). A flow of exactly 0 is the meter's low-flow
    # cut-off with nothing drawn, not a fault, however the supply pressure moves.
    _r(
        id="flow.stuck",
        kind="stuck",
        quantity="flow",
        tolerance=0.0,
        after="30m",
        while_varies={"quantity": "pressure", "min_range": 0.1},
        only_above=0.0,
        category="sensor_fault",
        severity="minor",
        audiences=["staff"],
        scope="device",
        event_code="003",
        match={"roles": ["flow"]},
        clear_for="5m",
    ),
]


def default_entry(rule_id: object) -> dict[str, Any] | None:
    """The default rule `rule_id` as a `rules:` entry (YAML keys, `for` not `for_`); None: no such default."""
    for rule in DEFAULT_RULES:
        if rule.id == rule_id:
            written = _WRITTEN.get(rule.id)
            if written is None:  # not built by _r: its set fields are the nearest thing to "as written"
                return rule.model_dump(by_alias=True, exclude_unset=True)
            return copy.deepcopy(written)
    return None


class KindMismatch(ValueError):
    """An override entry whose `kind` is not its default rule's."""


def merge_override(entry: object) -> dict[str, Any] | None:
    """An entry of a site's `rules:` with a default rule's id, merged over that default: the entry's keys
    replace the default's (a mapping such as `match` is replaced whole, `null` unsets an optional field),
    every other key is the default's. None when the entry is not a mapping with a default rule's id (it is
    a rule of its own). Raises KindMismatch when the entry gives a kind that is not the default's."""
    if not isinstance(entry, dict):
        return None
    default = default_entry(entry.get("id"))
    if default is None:
        return None
    if "kind" in entry and entry["kind"] != default["kind"]:
        raise KindMismatch(
            f"kind {entry['kind']!r} is not the kind of the default rule {default['id']} "
            f"({default['kind']}): leave `kind` out to change only the fields given, or give a new rule "
            "a new id"
        )
    return {**default, **entry}


def effective_rules(configured: list[RuleSpec] | None) -> list[RuleSpec]:
    """Defaults merged with the site's rules by id: a site rule with a default's id takes its place (the
    loader has already merged such an entry over the default, see merge_override); disabled rules removed."""
    by_id: dict[str, RuleSpec] = {r.id: r for r in DEFAULT_RULES}
    for r in configured or []:
        by_id[r.id] = r
    return [r for r in by_id.values() if r.enabled]
