"""One device's poll cycle: its planned reads in order, decoded into Samples, failures classified.

The poller does not know how bytes reach the device: it calls `read(request)` (the line actor's), which
returns a ReadOutcome instead of raising. Rules (bad input is counted and skipped; a dead device must not
stall its line):
- a cycle's values become one Sample, stamped when the last read that gave values completed (one event
  per cycle for the bus, the rules and the store, not one per read); a read whose values could not all
  be decoded is published apart with quality decode_error, so a quality always describes all its values;
- a read with no usable answer (timeout, connection, CRC, framing) ends the device's cycle: its remaining
  reads are skipped, so a dead device costs its line at most one timeout (x retries) per cycle;
- a Modbus exception answer (e.g. 02, address out of range) skips that read only: the device is alive;
- NaN/inf values and a point's `not_available` sentinels are dropped and counted (kinds nan, not_available);
  everything is counted in DeviceStats and logged once per cause;
- info points (strings, serial numbers) are read after the cycle in which the device comes up, then at most
  every `info_refresh` seconds, and published as one DeviceInfo (text), never as Sample values.
"""

from __future__ import annotations

import logging
import math
import random
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from drivers.modbus.answer import KINDS as ANSWER_KINDS
from drivers.modbus.codec import NotAvailable, decode, decode_text
from drivers.modbus.decoders import Problem, ReadPlan, plans_for
from drivers.modbus.planner import ReadRequest
from drivers.modbus.spec import DeviceSpec, LineSpec
from gateway.config.profile import Point
from gateway.core.once import OnceLog
from gateway.core.stats import DeviceStats
from gateway.core.types import DeviceInfo, DeviceStatus, Event, Sample

log = logging.getLogger("meterwatch.modbus")

Emit = Callable[[Event], Awaitable[None]]

FAILURES = ("timeout", "connection", "crc", "framing", *(k for k in ANSWER_KINDS if k != "framing"))
INFO_RETRY_CYCLES = 10  # an info read that got no answer is tried again after this many poll intervals


@dataclass(slots=True)
class ReadOutcome:
    """What one read produced. Exactly one of: words or data, exception_code, failure."""

    words: list[int] | None = None  # registers, or bits as 0/1, len == request.count
    exception_code: int | None = None  # the device answered with a Modbus exception
    failure: str | None = None  # one of FAILURES: no usable answer
    detail: str = ""
    rtt: float = 0.0
    # (kind, why) of each frame dropped while waiting, kinds of drivers/modbus/answer.py; the one that made
    # the read fail is its `failure`, not listed here
    dropped: list[tuple[str, str]] = field(default_factory=list)
    # Register reads only: the register payload as on the wire (big-endian within each register, registers
    # in order, len == 2 * request.count). A lean transport fills this instead of `words`, which saves
    # building a list of ints per read; the compiled decoders unpack it directly.
    data: bytes | None = None

    def registers(self) -> list[int] | None:
        """The register (or bit) values: `words` when set, else `data` unpacked; None when neither."""
        if self.words is not None:
            return self.words
        if self.data is not None:
            return list(struct.unpack(f">{len(self.data) // 2}H", self.data))
        return None


class _Gathered:
    """A cycle's good values so far, and when the last of their reads completed."""

    __slots__ = ("ts", "values")

    def __init__(self) -> None:
        self.ts = 0.0
        self.values: dict[str, float] = {}


Read = Callable[[ReadRequest], Awaitable[ReadOutcome]]
# Several reads at once, answered in order; the list ends after the first failure (TcpConnection.read_many)
ReadMany = Callable[[Sequence[ReadRequest]], Awaitable[list[ReadOutcome]]]


class DevicePoller:
    """Polls one device; keeps its liveness (up/down after `line.down_after` unanswered cycles)."""

    def __init__(
        self,
        line: LineSpec,
        device: DeviceSpec,
        read: Read,
        emit: Emit,
        stats: DeviceStats,
        once: OnceLog,
        rng: random.Random | None = None,
        read_many: ReadMany | None = None,
        depth: int = 1,
    ) -> None:
        self.line = line
        self.device = device
        self.read = read
        self.read_many = read_many
        self.emit = emit
        self.stats = stats
        self.once = once
        self.rng = rng or random.Random()
        self.up: bool | None = None  # None until the first answer or the first down verdict
        self.failed_cycles = 0
        self.probe_attempts = 0
        self.last_failure = ""
        self.decimals: dict[tuple[str, int], int] = {}
        self.info_due = 0.0  # monotonic time of the next info read; 0: after the next answered cycle
        requests = (*device.requests, *device.info_requests)
        decimals_keys = {
            (r.function, p.decimals_register)
            for r in requests
            for p in r.points
            if p.decimals_register is not None
        }
        # Compiled once: the decoders of each read (drivers/modbus/decoders.py), in cycle order.
        self._plans = plans_for(requests, decimals_keys)
        self._cycle = tuple((r, self._plans[id(r)]) for r in device.requests)
        # With a pipeline (`depth` requests outstanding) the cycle's reads go out in groups of that many, each
        # group in one send; a group's read that fails ends the cycle as a lone read's failure does.
        self._groups: tuple[tuple[tuple[ReadRequest, ...], tuple[ReadPlan, ...]], ...] = ()
        if read_many is not None and depth > 1 and len(self._cycle) > 1:
            chunks = [self._cycle[i : i + depth] for i in range(0, len(self._cycle), depth)]
            self._groups = tuple((tuple(r for r, _ in c), tuple(p for _, p in c)) for c in chunks)
        # A failure kind was logged for this device since its last answer: the next answer forgets them
        # (set only by _failed, the one place that logs under those keys).
        self._failure_logged = False
        self._failure_keys = tuple((device.id, kind) for kind in FAILURES)
        first = device.requests[0].points[0] if device.requests and device.requests[0].points else None
        self._probe = (
            ReadRequest(device.unit, first.function or "holding", first.pdu, first.width, ())
            if first is not None
            else (device.requests[0] if device.requests else None)
        )

    # ------------------------------------------------------------------------------------------------
    async def cycle(self) -> bool:
        """Run one poll cycle. Returns True when the device answered at least one read."""
        self.stats.cycles += 1
        answered = False
        gathered = _Gathered()
        if self._groups:
            answered = await self._cycle_pipelined(gathered)
        else:
            # _read's two lines, inlined: a coroutine less to resume per request on the hot path
            stats = self.stats
            read = self.read
            for request, plan in self._cycle:
                stats.requests += 1
                outcome = self._checked(request, await read(request))
                if outcome.failure is not None:
                    break  # remaining reads skipped this cycle: the line is shared with other devices
                answered = True
                if outcome.words is not None or outcome.data is not None:
                    await self._take(plan, outcome, gathered)
        if gathered.values:
            self.stats.samples += 1
            await self.emit(Sample(self.device.id, gathered.ts, gathered.values))
        await self._verdict(answered)
        if answered and self.device.info_requests and time.monotonic() >= self.info_due:
            await self.read_info()
        return answered

    async def read_info(self) -> None:
        """Read the info points and publish what could be read as one DeviceInfo."""
        self.info_due = time.monotonic() + self.device.info_refresh
        text: dict[str, str] = {}
        for request in self.device.info_requests:
            outcome = await self._read(request)
            if outcome.failure is not None:
                # Retry soon, but not every cycle: a device that ignores these registers must not cost
                # its line a timeout per cycle. If it went down, coming back up reads them at once.
                retry = min(self.device.info_refresh, INFO_RETRY_CYCLES * self.device.poll_interval)
                self.info_due = time.monotonic() + retry
                break
            words = outcome.registers()
            if words is None:
                continue
            for slot in self._plans[id(request)].slots:
                value = self._decode_info(slot.point, words[slot.start : slot.start + slot.width])
                if value is not None:
                    text[slot.point.quantity] = value
        if text:
            await self.emit(DeviceInfo(self.device.id, time.time(), text))

    async def probe(self) -> bool:
        """One small read of a down device. Returns True (and marks it up) when it answers."""
        assert self._probe is not None
        self.probe_attempts += 1
        outcome = await self._read(self._probe)
        if outcome.failure is None:
            await self._verdict(True)
            return True
        return False

    def backoff(self) -> float:
        """Delay before the next probe of a down device: doubling from the poll interval, capped, jittered."""
        base = min(self.line.backoff_max, self.device.poll_interval * 2 ** min(self.probe_attempts, 30))
        return base / 2 + self.rng.uniform(0, base / 2)

    # ------------------------------------------------------------------------------------------------
    async def _cycle_pipelined(self, gathered: _Gathered) -> bool:
        """The cycle's reads a group at a time (read_many); True when one was answered."""
        assert self.read_many is not None
        answered = False
        for requests, plans in self._groups:
            outcomes = await self.read_many(requests)
            self.stats.requests += len(outcomes)
            for request, plan, outcome in zip(requests, plans, outcomes, strict=False):
                outcome = self._checked(request, outcome)
                if outcome.failure is not None:
                    return answered
                answered = True
                if outcome.words is not None or outcome.data is not None:
                    await self._take(plan, outcome, gathered)
        return answered

    async def _read(self, request: ReadRequest) -> ReadOutcome:
        self.stats.requests += 1
        return self._checked(request, await self.read(request))

    def _checked(self, request: ReadRequest, outcome: ReadOutcome) -> ReadOutcome:
        """A read's outcome counted and logged; a failure, or an answer of the wrong size as one."""
        stats = self.stats
        if outcome.dropped:
            where = _where(request)
            for kind, why in outcome.dropped:
                self.dropped(kind, f"on {where}: {why}")
        if outcome.failure is not None:
            return self._failed(request, outcome)
        stats.rtt.observe(outcome.rtt)
        stats.last_success = time.time()
        if self._failure_logged:
            self._failure_logged = False
            for key in self._failure_keys:
                self.once.forget(key)
        if outcome.exception_code is not None:
            dev = self.device.id
            where = _where(request)
            kind = f"exception_{outcome.exception_code}"
            self.stats.errors[kind] += 1
            self.once.warn(
                (dev, kind, where),
                "%s (unit %d, line %s): Modbus exception %02d on %s (%s), values skipped",
                dev, self.device.unit, self.line.id, outcome.exception_code, where,
                " ".join(p.quantity for p in request.points),
            )  # fmt: skip
        elif outcome.words is not None:
            if len(outcome.words) != request.count:
                # The line's framers refuse such answers; should one get through, it is still no answer.
                return self._failed(
                    request, ReadOutcome(failure="framing", detail=f"{len(outcome.words)} values")
                )
        elif outcome.data is not None and len(outcome.data) != 2 * request.count:
            return self._failed(request, ReadOutcome(failure="framing", detail=f"{len(outcome.data)} bytes"))
        return outcome

    def _failed(self, request: ReadRequest, outcome: ReadOutcome) -> ReadOutcome:
        dev = self.device.id
        where = _where(request)
        assert outcome.failure is not None
        self.stats.errors[outcome.failure] += 1
        self._failure_logged = True
        self.last_failure = f"{outcome.failure}: {outcome.detail}" if outcome.detail else outcome.failure
        self.once.warn(
            (dev, outcome.failure),
            "%s (unit %d, line %s): %s on %s %s",
            dev, self.device.unit, self.line.id, outcome.failure, where, outcome.detail,
        )  # fmt: skip
        return outcome

    def dropped(self, kind: str, detail: str) -> None:
        """A frame from this device that answered nothing (a stale copy, another function or shape)."""
        self.stats.errors[kind] += 1
        # Keyed apart from the failure kinds: a read that succeeds must not make this log again.
        self.once.warn(
            (self.device.id, "dropped", kind),
            "%s (unit %d, line %s): %s answer dropped, %s",
            self.device.id, self.device.unit, self.line.id, kind, detail,
        )  # fmt: skip

    def _decode_info(self, p: Point, words: list[int]) -> str | None:
        try:
            if p.type == "string":
                return decode_text(p, words)
            value = decode(p, words)
        except NotAvailable:
            self._not_available(p)
            return None
        except ValueError as exc:
            self.stats.errors["decode"] += 1
            self.once.warn((self.device.id, "decode", p.quantity), "%s: %s", self.device.id, exc)
            return None
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)

    def _not_available(self, p: Point) -> None:
        self.stats.errors["not_available"] += 1
        self.once.warn(
            (self.device.id, "not_available", p.quantity),
            "%s: %s reads 'not available' (a sentinel of the profile), value skipped",
            self.device.id, p.quantity,
        )  # fmt: skip

    async def _take(self, plan: ReadPlan, outcome: ReadOutcome, gathered: _Gathered) -> None:
        """A read's values into the cycle's sample; values beside a decoding fault go out apart at once."""
        ts = time.time()
        if outcome.words is not None:
            values, problems = plan.decode_words(outcome.words, self.decimals)
        else:
            assert outcome.data is not None
            values, problems = plan.decode(outcome.data, self.decimals)
        bad = bool(problems) and self._report(problems)
        if not values:
            return
        if bad:
            self.stats.samples += 1
            await self.emit(Sample(self.device.id, ts, values, "decode_error"))
            return
        gathered.ts = ts
        if gathered.values:
            gathered.values.update(values)
        else:
            gathered.values = values

    def _report(self, problems: Sequence[Problem]) -> bool:
        """Counts and logs the values a read could not give; True when one makes the sample's quality bad."""
        bad = False
        for p, issue in problems:
            if isinstance(issue, NotAvailable):
                # The meter says it has no reading: not a decoding fault, the sample's quality stays.
                self._not_available(p)
            elif isinstance(issue, Exception):
                bad = True
                self.stats.errors["decode"] += 1
                self.once.warn((self.device.id, "decode", p.quantity), "%s: %s", self.device.id, issue)
            else:
                bad = True
                self.stats.errors["nan"] += 1
                self.once.warn(
                    (self.device.id, "nan", p.quantity),
                    "%s: %s read %s, value dropped",
                    self.device.id, p.quantity, issue,
                )  # fmt: skip
        return bad

    async def _verdict(self, answered: bool) -> None:
        if answered:
            self.failed_cycles = 0
            self.probe_attempts = 0
            if self.up is not True:
                self.up = True
                self.info_due = 0.0  # a device that comes back may be another meter, or updated
                self.stats.up = True
                await self.emit(DeviceStatus(self.device.id, time.time(), True))
                log.info(
                    "device up",
                    extra={
                        "fields": {"device": self.device.id, "line": self.line.id, "unit": self.device.unit}
                    },
                )
            return
        self.failed_cycles += 1
        if self.up is not False and self.failed_cycles >= self.line.down_after:
            self.up = False
            self.stats.up = False
            reason = f"no answer in {self.failed_cycles} cycles ({self.last_failure})"
            await self.emit(DeviceStatus(self.device.id, time.time(), False, reason))
            log.warning(
                "device down",
                extra={"fields": {"device": self.device.id, "line": self.line.id, "reason": reason}},
            )


def _where(request: ReadRequest) -> str:
    return f"FC{request.code:02d} {request.address}+{request.count}"
