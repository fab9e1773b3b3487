"""The line's retries, as both Modbus clients apply them (line.Connection over pymodbus, tcp.TcpConnection).

One request gets 1 + `retries` attempts. Before an attempt a connection that is down is opened; when it
cannot be (refused, backing off) the request fails as `connection` at once, not counted: the line's
reconnect is not a device error. After an attempt every frame it dropped is counted by kind, then its
failure, if any; a failure of kind `connection` ends the request too (the next request reconnects). The
outcome returned carries the frames dropped by every attempt, each counted once.

Both clients share this loop so that the same trouble gives the same outcome kinds and the same counters
through either (tests/drivers/modbus/test_differential.py). The built-in client calls it only off its
common path (one attempt on an open connection without a pause), which it keeps inline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from drivers.modbus.planner import ReadRequest
from drivers.modbus.poller import ReadOutcome
from gateway.core.stats import LineStats


class Retried(Protocol):
    """What the retry loop needs of a connection."""

    stats: LineStats

    @property
    def attempts(self) -> int: ...  # 1 + the line's retries

    @property
    def connected(self) -> bool: ...

    async def _ensure_connected(self) -> str | None: ...  # None when connected, else why not

    @property
    def _attempt(self) -> Callable[[ReadRequest], Awaitable[ReadOutcome]]: ...  # one exchange, classified


async def with_retries(conn: Retried, request: ReadRequest) -> ReadOutcome:
    """`request` with the line's retries; never raises for device or network trouble."""
    outcome: ReadOutcome | None = None
    dropped: list[tuple[str, str]] = []
    errors = conn.stats.errors
    for _attempt in range(conn.attempts):
        if not conn.connected:
            why_not = await conn._ensure_connected()
            if why_not is not None:
                outcome = ReadOutcome(failure="connection", detail=why_not)
                break
        outcome = await conn._attempt(request)
        for kind, _why in outcome.dropped:
            errors[kind] += 1
        dropped += outcome.dropped
        if outcome.failure is None:
            break
        errors[outcome.failure] += 1
        if outcome.failure == "connection":
            break
    assert outcome is not None  # attempts >= 1
    outcome.dropped = dropped  # every attempt's, each counted once
    return outcome
