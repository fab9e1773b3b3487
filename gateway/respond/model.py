"""The words of the respond side: the stages of a notice, a notice owed, and what became of each target.

A notice is owed by an incident transition or a timer (the residents' confirmation delay, the all-clear
after `verify_for`, an escalation step); it is written to the outbox in the same SQLite transaction as the
transition that owes it, under an idempotency key, so a crash neither loses nor repeats it. One worker per
channel renders and sends it through apprise and records each target's result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Stage(StrEnum):
    """What a notice is for; each has a template per language: respond/templates/<lang>/<stage>.j2."""

    RESIDENTS_NOTICE = "residents_notice"  # an outage confirmed: what, where, since when, what to do
    RESIDENTS_UPDATE = "residents_update"  # at most once an hour, or when the expected restoration changes
    ALL_CLEAR = "all_clear"  # supply back and stable for verify_for, with the duration
    STAFF_OPEN = "staff_open"  # an incident opened (staff hear at once)
    DISPATCH = "dispatch"  # the on-call team is sent, with acknowledge / on-site links
    ESCALATION = "escalation"  # nobody acknowledged: the next step of the chain
    TARGET_MISSED = "target_missed"  # the 30-minute response target was missed
    FLAPPING = "flapping"  # the incident flaps: supply comes and goes
    RESOLVED = "resolved"  # staff: the incident resolved
    UTILITY_REPORT = "utility_report"  # the water or power utility: a supply-side outage
    DIGEST = "digest"  # several notices to one channel in one message (rate limit, quiet hours)


# Stages whose audience is residents: one notice, one update an hour, one all-clear per outage.
RESIDENT_STAGES = frozenset({Stage.RESIDENTS_NOTICE, Stage.RESIDENTS_UPDATE, Stage.ALL_CLEAR})


class DeliveryStatus(StrEnum):
    """The outcome of one attempt at one target, as apprise reports it (AppriseResult per target)."""

    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"


class NoticeState(StrEnum):
    PENDING = "pending"  # not yet due, or due and not yet tried
    PARTIAL = "partial"  # some targets failed: only those are retried
    SENT = "sent"  # every target succeeded
    FAILED = "failed"  # given up on (the channel was removed from the site file, or the notice expired)


@dataclass(frozen=True, slots=True)
class Owed:
    """A notice an incident owes: which stage, for which audience, when. The policy decides these; the
    outbox turns each into one row per channel serving the audience, keyed `key/<channel>`."""

    key: str  # idempotency key: incident:<id>/<stage>/<audience>[/<n>] (the n-th update, escalation step)
    incident_id: int
    stage: Stage
    audience: str
    due_at: float
    context: dict[str, Any] = field(default_factory=dict)  # what the template says (JSON-able values only)


@dataclass(slots=True)
class Delivery:
    """One target's latest attempt at one notice, as the delivery log keeps it."""

    notice_key: str
    channel: str
    target: str  # apprise's privacy form of the URL: never the secret
    status: DeliveryStatus
    attempts: int
    at: float
    detail: str = ""
