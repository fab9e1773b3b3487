"""What the sender needs of the outbox: the rows due on a channel, and a way to record what became of one.

The outbox (gateway/respond/outbox.py, SQLite, one row per (notice, channel) written in the transaction of
the incident transition that owes it) implements `Outbox`; tests use an in-memory fake. The sender never
writes a row any other way, so the rules below are the whole contract between the two.

Targets. A channel's URL may hold several apprise URLs (comma or space separated, as apprise itself
splits them); each is one *target*, named by apprise's privacy form of that URL without its query
(`json://host:8080/hook`, `wecombot://K...Y/`), with ` #2`, ` #3` appended when the same name occurs again
in one channel. Those names are what `failed_targets` and `Delivery.target` hold: never a secret.

Row states, as the sender records them (failed_targets as the row reads back):
  - PENDING, failed_targets None: no target has the notice yet (never tried, or every target failed);
    the next attempt goes to every target of the channel as it is configured then. The sender records
    it with failed_targets [].
  - PARTIAL, failed_targets [names]: some targets have it; only the named ones are tried again.
  - SENT, failed_targets [] (or None): every target has it. Never sent again.
  - FAILED: given up until the site changes (the message could not be rendered, or none of the targets
    the row still owed is configured any more). failed_targets says who never got it ([]: nobody did).
    Setting such a row back to PENDING when the site file changes is the outbox's business.
So an implementation stores an empty failed_targets as None ("every target") and reads it back so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.respond.model import Delivery, NoticeState, Stage


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One notice owed to one channel."""

    key: str  # unique: "<owed key>/<channel>"; sent as X-Meterwatch-Key where a target can take it
    incident_id: int
    stage: Stage
    channel: str
    audience: str
    language: str  # the channel's language when the row was written
    context: dict[str, Any] = field(default_factory=dict)  # what the template says (JSON-able)
    due_at: float = 0.0  # epoch seconds
    attempts: int = 0  # record() calls so far: send rounds (each tries every target still owed once)
    failed_targets: list[str] | None = None  # None: every target; else only these are still owed
    next_attempt_at: float | None = None  # epoch seconds; None: at due_at


class Outbox(Protocol):
    """The outbox as the sender sees it. Both methods are called from a channel's worker thread; an
    implementation must be safe to call from several such threads at once."""

    def due(self, channel: str, now: float, limit: int) -> list[OutboxRow]:
        """PENDING and PARTIAL rows of `channel` with due_at <= now and (next_attempt_at is None or
        next_attempt_at <= now), oldest due_at first, at most `limit`."""
        ...

    def record(
        self,
        row_key: str,
        deliveries: list[Delivery],
        state: NoticeState,
        failed_targets: list[str],
        next_attempt_at: float | None,
    ) -> None:
        """In one transaction: write `deliveries` to the delivery log (each target's latest attempt), set
        the row's state, failed_targets ([] stored as None) and next_attempt_at as given, and add one to its
        attempts. Called once per send round of the row, and once when the row is given up (FAILED)."""
        ...
