"""The sink's storage health: whether the spool takes samples, the first error of each failing episode, and
the samples shed (not stored) while it does not, by reason.

Why shed at all: detection reads the same bus as the sink. A spool that cannot write (a full disk, an I/O
error) must not hold the bus, or every source blocks and the rules get nothing. So the forwarder retries a
failing append for a bounded time, then sheds the batch and counts it; while the episode lasts each new
batch gets one attempt and is shed when it fails. Shed samples were never acknowledged (acknowledged means
committed to the spool), so no acknowledged sample is lost; the counters say how many were not stored.

An episode ends once a spool call succeeded after the last failure and `CLEAR_AFTER` seconds have passed
since that failure: a full disk makes SQLite flap (a small batch fits into WAL space a failed one left
behind, the next one does not), and the log and /readyz must not flap with it. `settle` ends it; the
forwarder calls it from its loops and whenever someone asks whether the spool accepts samples, so an
episode also ends when no sample arrives after the last success.

Reasons: "disk_full" (the spool's disk has no room), "storage_error" (any other spool error) and
"queue_full" (the bus gave up waiting for room in the sink's queue, see gateway/core/bus.py; counted there).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gateway.sink.storage_errors import classify, describe

log = logging.getLogger("meterwatch.sink")

SHED_REASONS = ("disk_full", "storage_error", "queue_full")
CLEAR_AFTER = 10.0  # seconds without a spool failure that end a failing episode


@dataclass
class StorageHealth:
    path: Path | None  # the spool file (None: the in-memory buffer)
    failing: str = ""  # the first error of the current episode, one line; "" while the spool works
    reason: str = ""  # its shed reason: "disk_full" or "storage_error"
    since: float | None = None  # when the episode began (Unix time)
    last_failure: float = 0.0  # time.monotonic() of the latest failure
    last_success: float = 0.0  # time.monotonic() of the latest success
    shed: Counter[str] = field(default_factory=Counter)  # samples not stored, by reason
    _episode_shed: int = 0

    def failed(self, exc: BaseException, during: str) -> None:
        """A spool call failed. The first failure of an episode is logged, with the error as it came."""
        self.last_failure = time.monotonic()
        if self.failing:
            return
        where = self.path or Path(".")
        self.reason = "disk_full" if classify(exc, where) == "disk_full" else "storage_error"
        self.failing = describe(exc, where)
        self.since = time.time()
        self._episode_shed = 0
        log.error(
            "spool cannot store samples: new samples are shed (counted) until it can; detection goes on",
            extra={
                "fields": {
                    "path": str(self.path) if self.path else "memory",
                    "during": during,
                    "error": self.failing,
                }
            },
        )

    def shed_samples(self, n: int, reason: str | None = None) -> None:
        self.shed[reason or self.reason or "storage_error"] += n
        self._episode_shed += n

    def succeeded(self) -> None:
        """A spool call succeeded."""
        self.last_success = time.monotonic()
        self.settle()

    def settle(self) -> None:
        """End the episode once a call succeeded after the last failure, CLEAR_AFTER seconds after it."""
        if not self.failing or self.last_success < self.last_failure:
            return
        if time.monotonic() - self.last_failure < CLEAR_AFTER:
            return
        log.warning(
            "spool stores samples again",
            extra={
                "fields": {
                    "path": str(self.path) if self.path else "memory",
                    "shed": self._episode_shed,
                    "failed_for_s": round(time.time() - (self.since or time.time()), 1),
                }
            },
        )
        self.failing = self.reason = ""
        self.since = None
