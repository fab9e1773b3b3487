"""Plan a device's reads: the fewest requests that cover its points, and what a cycle costs on its line.

Merging is per function code (a read never mixes coils with registers), up to 125 registers or 2000 bits
per request, reading through unused registers when the gap is at most `max_gap` (each unread gap costs a
request header, a turnaround and two silences, far more than a few extra registers). Registers that hold
a point's number of decimals are read too, and the requests that contain them come first, so the decimals
are known before the value they qualify is decoded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config.profile import Function, Point

if TYPE_CHECKING:
    from drivers.modbus.spec import DeviceSpec, LineSpec

FUNCTION_CODE: dict[str, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
MAX_REGISTERS = 125  # Modbus limit for FC03/FC04
MAX_BITS = 2000  # Modbus limit for FC01/FC02
DEFAULT_MAX_GAP = 10

# Assumptions of the cycle-time estimate (typical case), stated so `meterwatch plan` can print them.
TCP_RTT = 0.005  # LAN round trip including the device's processing
RTU_TURNAROUND = 0.010  # a meter's time from the end of a request to the start of its answer
RTU_OVER_TCP_RTT = 0.002  # extra network leg to a serial device server


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read on the wire: `count` registers (or bits) from `address` with one function code."""

    unit: int
    function: Function
    address: int
    count: int
    points: tuple[Point, ...]

    @property
    def code(self) -> int:
        return FUNCTION_CODE[self.function]

    @property
    def end(self) -> int:
        return self.address + self.count

    @property
    def is_bits(self) -> bool:
        return self.function in ("coil", "discrete")

    def words(self, point: Point, data: Sequence[int]) -> Sequence[int]:
        """The slice of this request's answer that belongs to `point`."""
        start = point.pdu - self.address
        return data[start : start + point.width]

    def describe(self) -> str:
        quantities = " ".join(p.quantity for p in self.points) or "-"
        return (
            f"unit {self.unit} FC{self.code:02d} addr {self.address} (0x{self.address:04X}) "
            f"count {self.count}: {quantities}"
        )


@dataclass(frozen=True, slots=True)
class _Span:
    function: Function
    address: int
    width: int
    point: Point | None  # None: a decimals register no point exposes

    @property
    def end(self) -> int:
        return self.address + self.width


def _spans(points: Iterable[Point]) -> list[_Span]:
    points = list(points)
    spans = [_Span(p.function or "holding", p.pdu, p.width, p) for p in points]
    covered = {(s.function, s.address) for s in spans if s.width == 1}
    for p in points:
        if p.decimals_register is not None and (p.function, p.decimals_register) not in covered:
            assert p.function is not None
            spans.append(_Span(p.function, p.decimals_register, 1, None))
            covered.add((p.function, p.decimals_register))
    return spans


def plan_reads(
    points: Iterable[Point],
    unit: int,
    max_registers: int = MAX_REGISTERS,
    max_gap: int = DEFAULT_MAX_GAP,
    one_read_per_value: bool = False,
    info: bool = False,
) -> list[ReadRequest]:
    """The requests that read `points` of device `unit`. Raises ValueError when a point cannot fit a read.

    Only the readings are planned (the poll cycle), or with `info=True` only the info points (strings,
    serial numbers: read when the device comes up), never the two mixed.
    """
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    points = [p for p in points if p.info == info]
    spans = sorted(_spans(points), key=lambda s: (s.function, s.address, -s.width))
    decimals_at = {(p.function, p.decimals_register) for s in spans if (p := s.point) and p.decimals_register}
    groups: list[list[_Span]] = []
    for span in spans:
        limit = min(max_registers, MAX_REGISTERS) if span.function in ("holding", "input") else MAX_BITS
        if span.width > limit:
            raise ValueError(f"{span.point and span.point.quantity}: {span.width} registers exceed {limit}")
        if groups:
            group = groups[-1]
            start, end = group[0].address, max(s.end for s in group)
            same = group[0].function == span.function
            if one_read_per_value:
                # Values sharing registers (bits and fields of one register) still come from one read.
                fits = same and span.address >= start and span.end <= end
            else:
                fits = same and span.address - end <= max_gap and max(end, span.end) - start <= limit
            if fits:
                group.append(span)
                continue
        groups.append([span])
    requests = [
        ReadRequest(
            unit=unit,
            function=g[0].function,
            address=g[0].address,
            count=max(s.end for s in g) - g[0].address,
            points=tuple(s.point for s in g if s.point is not None),
        )
        for g in groups
    ]

    def holds_decimals(r: ReadRequest) -> bool:
        return any((r.function, a) in decimals_at for a in range(r.address, r.end))

    # Stable: decimals first, otherwise address order.
    return sorted(requests, key=lambda r: not holds_decimals(r))


# ---------------------------------------------------------------------------------------------------------
# Cycle-time estimate


def char_time(line: LineSpec) -> float:
    bits = 1 + line.bytesize + (0 if line.parity == "N" else 1) + line.stopbits
    return bits / line.baudrate


def silence(line: LineSpec) -> float:
    """The 3.5-character gap that ends an RTU frame (fixed 1.75 ms above 19200 baud, per the spec)."""
    return 0.00175 if line.baudrate > 19200 else 3.5 * char_time(line)


def frame_bytes(request: ReadRequest) -> tuple[int, int]:
    """RTU request and response sizes in bytes: unit, function, payload, CRC."""
    data = math.ceil(request.count / 8) if request.is_bits else 2 * request.count
    return 8, 5 + data


def request_time(line: LineSpec, request: ReadRequest) -> float:
    """Typical time one request holds the line, the pause after it included."""
    if not line.serial_timing:
        return TCP_RTT + line.inter_request_delay
    req, resp = frame_bytes(request)
    t = (req + resp) * char_time(line) + 2 * silence(line) + RTU_TURNAROUND
    if line.transport == "rtu_over_tcp":
        t += RTU_OVER_TCP_RTT
    return t + line.inter_request_delay


@dataclass(frozen=True, slots=True)
class CycleEstimate:
    requests: int
    typical: float  # every device answers
    worst: float  # every device fails its last read (timeout x (1 + retries))
    shortest_interval: float | None
    load: float  # sum over devices of typical time / poll interval (1.0 = the line is always busy)

    @property
    def fits(self) -> bool:
        """The line can poll every device at its interval when they all answer."""
        return self.shortest_interval is None or (self.typical <= self.shortest_interval and self.load <= 1.0)

    @property
    def fits_worst(self) -> bool:
        return self.shortest_interval is None or self.worst <= self.shortest_interval


def device_times(line: LineSpec, device: DeviceSpec) -> tuple[float, float]:
    """(typical, worst) seconds one cycle of `device` holds its line.

    Worst case: its last read fails with every retry after the others answered. A failed read skips the
    device's remaining reads for the cycle, so a failing device costs at most one timeout x (1 + retries).
    """
    per_request = [request_time(line, r) for r in device.requests]
    typical = sum(per_request)
    if not per_request:
        return 0.0, 0.0
    worst = typical - per_request[-1] + line.timeout * (1 + line.retries) + line.inter_request_delay
    return typical, worst


def estimate_cycle(line: LineSpec, devices: Sequence[DeviceSpec]) -> CycleEstimate:
    times = [device_times(line, d) for d in devices]
    typical = sum(t for t, _ in times)
    worst = sum(w for _, w in times)
    load = sum(t / d.poll_interval for (t, _), d in zip(times, devices, strict=True))
    if line.transport == "tcp" and devices:
        # Devices of a TCP endpoint are polled in parallel up to the connection limit.
        lanes = min(line.max_connections, len(devices))
        typical = max(typical / lanes, max(t for t, _ in times))
        worst = max(worst / lanes, max(w for _, w in times))
        load /= lanes
    return CycleEstimate(
        requests=sum(len(d.requests) for d in devices),
        typical=typical,
        worst=worst,
        shortest_interval=min((d.poll_interval for d in devices), default=None),
        load=load,
    )
