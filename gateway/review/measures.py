"""The figures of one incident against the handbook's targets, from its record (gateway/review/data.py).

Definitions (the reports and the monthly review say them in words too):

- detect: from the first evidence (the first reading that showed it) to the incident's opening.
- outage: a supply outage that owed its residents a notice (its category has a `notify.confirm_delay`, its
  audiences include residents, it was still out that delay after it opened, and it was not inside a
  planned maintenance window); only these count for "informed in time".
- informed: the first residents' notice (not a maintenance notice, not an update) taken by any target;
  in time when within `review.inform_within` (15 min) of the first evidence.
- dispatched / acknowledged / on site: the first such step of the timeline. The response is in time when
  acknowledged within `oncall.target` (30 min) of the dispatch; one that was over within the target
  before anyone answered is not judged; on site is reported beside it.
- restored: supply back for good (the recovery the resolution ended; the resolution itself waits for the
  rules' `clear_for` of fresh data on top); the outage lasted from the first evidence to then;
  household-minutes are the households affected times those minutes (power or water gone or a phase
  lost, not a bad voltage; a drill cuts nobody's supply).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from gateway.config import Site
from gateway.respond.context import ADVICE, buildings_of
from gateway.respond.model import DeliveryStatus, Stage
from gateway.review.data import IncidentRecord
from rules.model import IncidentEvent

# categories in which households are without supply (an under- or overvoltage is a bad supply, not none)
WITHOUT_SUPPLY = frozenset({"power_outage", "phase_loss", "water_supply", "water_burst"})


@dataclass(frozen=True, slots=True)
class Measures:
    incident_id: int
    category: str
    event_code: str
    severity: str
    scope: str
    buildings: list[str]
    households: int
    manual: bool
    drill: bool
    first_evidence_at: float
    opened_at: float
    resolved_at: float | None
    detect_s: float
    supply: str | None  # power, water, or None for other incidents
    outage: bool  # owed its residents a notice (see the module docstring)
    duration_s: float | None  # first evidence to resolution (None: still open)
    household_minutes: float
    informed_at: float | None
    inform_s: float | None
    informed_in_time: bool | None  # None: not an outage
    dispatched_at: float | None
    acked_at: float | None
    acked_by: str
    on_site_at: float | None
    on_site_by: str
    ack_s: float | None  # from the dispatch
    on_site_s: float | None  # from the dispatch
    response_in_time: bool | None  # None: not dispatched
    escalations: int
    target_missed: bool
    cause: str
    cause_code: str  # gateway/respond/desk_api.CAUSE_CODES key, or ""
    restored_at: float | None  # supply back: the recovery that led to the resolution (None: still open)
    notices: Counter[str] = field(default_factory=Counter)  # "<channel>/<status>" -> targets
    votes: Counter[str] = field(default_factory=Counter)  # rating -> votes


def _who(detail: str) -> str:
    """`by wang` or `by wang via incident 3` -> wang."""
    return detail.removeprefix("by ").split(" ", 1)[0] if detail.startswith("by ") else detail


def restored_at(rec: IncidentRecord) -> float | None:
    """When supply came back for good: the start of the recovery the resolution ended (the resolution
    itself waits `clear_for` of fresh data on top, which is the rules' caution, not the residents' outage);
    the resolution for an incident that never recovered first (a manual one)."""
    inc = rec.incident
    if inc.resolved_at is None:
        return None
    since: float | None = None
    for e in rec.timeline:
        if e.event == IncidentEvent.RECOVERING:
            since = e.ts if since is None else since
        elif e.event in (IncidentEvent.REFIRED, IncidentEvent.REOPENED, IncidentEvent.OPENED):
            since = None
        elif e.event == IncidentEvent.RESOLVED and e.ts >= inc.resolved_at:
            break
    return since if since is not None and since <= inc.resolved_at else inc.resolved_at


def _cause(detail: str) -> tuple[str, str]:
    """`who: [code] text` or `who: text` (gateway/respond/dispatch.cause_detail) -> (code, text)."""
    text = detail.split(": ", 1)[-1]
    if text.startswith("[") and "] " in text:
        code, _, rest = text[1:].partition("] ")
        return code, rest
    return "", text


def measure(rec: IncidentRecord, site: Site) -> Measures:
    inc = rec.incident
    cfg = site.config
    start = inc.first_evidence_at
    supply = ADVICE.get(inc.category)
    back = restored_at(rec)
    duration = None if back is None else max(0.0, back - start)
    delay = cfg.notify.confirm_delay.get(inc.category)
    residents = any(a == "residents" or a.startswith("residents:") for a in inc.audiences)
    # owed its residents a notice: still out `delay` after it opened (the policy's rule), and not planned
    # works (those owe no outage notice)
    still_out = inc.resolved_at is None or (delay is not None and inc.resolved_at > inc.opened_at + delay)
    outage = not inc.drill and not rec.planned and delay is not None and residents and still_out

    notices = [n for n in rec.notices if n.stage == Stage.RESIDENTS_NOTICE and n.key.startswith("incident:")]
    delivered = [t for n in notices if (t := n.delivered_at) is not None]
    informed_at = min(delivered) if delivered else None
    inform_s = None if informed_at is None else informed_at - start
    in_time = None
    if outage:
        in_time = inform_s is not None and inform_s <= cfg.review.inform_within

    dispatched = rec.first(IncidentEvent.DISPATCHED)
    acked = rec.first(IncidentEvent.ACKNOWLEDGED)
    on_site = rec.first(IncidentEvent.ON_SITE)
    d_at = dispatched.ts if dispatched else None
    ack_s = None if d_at is None or acked is None else acked.ts - d_at
    on_site_s = None if d_at is None or on_site is None else on_site.ts - d_at
    response = None
    if d_at is not None:
        response = ack_s is not None and ack_s <= cfg.oncall.target
        if acked is None and inc.resolved_at is not None and inc.resolved_at - d_at <= cfg.oncall.target:
            response = None  # over within the target before anyone answered: nothing to judge
    causes = rec.events(IncidentEvent.CAUSE)
    cause_code, cause = _cause(causes[-1].detail) if causes else ("", "")

    sent: Counter[str] = Counter()
    for n in rec.notices:
        for d in n.deliveries:
            ok = "sent" if d.status == DeliveryStatus.SUCCESS else "failed"
            sent[f"{n.channel}/{ok}"] += 1
    households = inc.households
    return Measures(
        incident_id=inc.id,
        category=inc.category,
        event_code=inc.event_code,
        severity=inc.severity,
        scope=inc.scope,
        buildings=buildings_of(inc, site),
        households=households,
        manual=inc.manual,
        drill=inc.drill,
        first_evidence_at=start,
        opened_at=inc.opened_at,
        resolved_at=inc.resolved_at,
        detect_s=max(0.0, inc.opened_at - start),
        supply=supply,
        outage=outage,
        duration_s=duration,
        household_minutes=(
            households * duration / 60.0
            if inc.category in WITHOUT_SUPPLY and duration is not None and not inc.drill
            else 0.0
        ),
        informed_at=informed_at,
        inform_s=inform_s,
        informed_in_time=in_time,
        dispatched_at=d_at,
        acked_at=acked.ts if acked else None,
        acked_by=_who(acked.detail) if acked else "",
        on_site_at=on_site.ts if on_site else None,
        on_site_by=_who(on_site.detail) if on_site else "",
        ack_s=ack_s,
        on_site_s=on_site_s,
        response_in_time=response,
        escalations=len(rec.events(IncidentEvent.ESCALATED)),
        target_missed=rec.first(IncidentEvent.TARGET_MISSED) is not None,
        cause=cause,
        cause_code=cause_code,
        restored_at=back,
        notices=sent,
        votes=Counter(v.rating for v in rec.votes),
    )
