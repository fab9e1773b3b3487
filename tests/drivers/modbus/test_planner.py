"""Read planner: merging, limits, gaps, functions, decimals registers, and the cycle-time estimate."""

from __future__ import annotations

import pytest

from drivers.modbus.planner import (
    MAX_BITS,
    ReadRequest,
    estimate_cycle,
    frame_bytes,
    plan_reads,
    request_time,
    silence,
)
from drivers.modbus.spec import DeviceSpec, LineSpec
from gateway.config.profile import Point, builtin_profiles


def reg(q: str, address: int, function: str = "holding", type_: str = "float32", **kw: object) -> Point:
    return Point.model_validate(
        {"quantity": q, "function": function, "address": address, "type": type_, **kw}
    )


def covered(requests: list[ReadRequest], points: list[Point]) -> None:
    for p in points:
        holders = [r for r in requests if p in r.points]
        assert len(holders) == 1, p.quantity
        r = holders[0]
        assert r.function == p.function and r.address <= p.pdu and p.pdu + p.width <= r.end


def test_contiguous_points_make_one_read() -> None:
    points = [reg(f"v{i}", 2 * i) for i in range(10)]
    requests = plan_reads(points, unit=7)
    assert [(r.unit, r.code, r.address, r.count) for r in requests] == [(7, 3, 0, 20)]
    covered(requests, points)


def test_gap_is_read_through_up_to_max_gap() -> None:
    points = [reg("a", 0), reg("b", 12), reg("c", 30)]
    assert [(r.address, r.count) for r in plan_reads(points, 1, max_gap=10)] == [(0, 14), (30, 2)]
    assert [(r.address, r.count) for r in plan_reads(points, 1, max_gap=0)] == [(0, 2), (12, 2), (30, 2)]
    assert [(r.address, r.count) for r in plan_reads(points, 1, max_gap=16)] == [(0, 32)]


def test_never_more_than_max_registers() -> None:
    points = [reg(f"v{i}", 2 * i) for i in range(100)]  # 200 registers
    requests = plan_reads(points, 1)
    assert [r.count for r in requests] == [124, 76]  # a float32 is never split across reads
    assert all(r.count <= 125 for r in requests)
    covered(requests, points)
    small = plan_reads(points, 1, max_registers=40)
    assert all(r.count <= 40 for r in small) and len(small) == 5
    covered(small, points)


def test_functions_are_never_mixed() -> None:
    points = [reg("h", 0), reg("i", 2, function="input"), reg("h2", 2)]
    requests = plan_reads(points, 1)
    assert sorted((r.function, r.address, r.count) for r in requests) == [("holding", 0, 4), ("input", 2, 2)]


def test_bits_merge_up_to_2000() -> None:
    coils = [Point(quantity=f"c{i}", function="coil", address=i * 100, type="bit") for i in range(25)]
    requests = plan_reads(coils, 1, max_gap=100)
    # 0..1900 is 1901 bits; adding the coil at 2000 would make 2001 > 2000.
    assert [(r.code, r.address, r.count) for r in requests] == [(1, 0, 1901), (1, 2000, 401)]
    assert all(r.count <= MAX_BITS for r in requests)
    covered(requests, coils)


def test_one_read_per_value_keeps_shared_registers_together() -> None:
    tuf = builtin_profiles()["tuf2000m"]
    requests = plan_reads(tuf.points, 1, one_read_per_value=True)
    assert len(requests) == 5  # error_code and pipe_empty share REG72
    shared = next(r for r in requests if r.address == 71)
    assert {p.quantity for p in shared.points} == {"error_code", "pipe_empty"} and shared.count == 1


def test_decimals_register_is_read_and_first() -> None:
    value = reg("pressure", 40, type_="int16", decimals_register=3)
    requests = plan_reads([value], 1)
    assert [(r.address, r.count, r.points) for r in requests] == [(3, 1, ()), (40, 1, (value,))]
    # Even when the value comes first in address order, the decimals read is sent first.
    later = reg("p2", 1, type_="int16", decimals_register=60)
    assert [r.address for r in plan_reads([later], 1)] == [60, 1]


def test_profiles_need_few_reads() -> None:
    counts = {name: len(plan_reads(p.points, 1)) for name, p in builtin_profiles().items()}
    assert counts["sdm630"] == 3 and counts["dtsu666"] == 3 and counts["rs485-pressure"] == 1
    for name, p in builtin_profiles().items():
        covered(plan_reads(p.points, 1) + plan_reads(p.points, 1, info=True), list(p.points))
        assert counts[name] <= len(plan_reads(p.points, 1, one_read_per_value=True))


def test_rtu_timing_from_baud_rate() -> None:
    line = LineSpec(id="l", transport="rtu", device="/dev/null", baudrate=9600)
    assert silence(line) == pytest.approx(3.5 * 10 / 9600)
    assert silence(LineSpec(id="l", transport="rtu", device="x", baudrate=115200)) == 0.00175
    sdm = plan_reads(builtin_profiles()["sdm630"].points, 1)
    first = sdm[0]
    assert frame_bytes(first) == (8, 5 + 72)
    t = request_time(line, first)
    assert t == pytest.approx((8 + 77) * 10 / 9600 + 2 * 3.5 * 10 / 9600 + 0.010)
    faster = LineSpec(id="l", transport="rtu", device="x", baudrate=19200)
    assert request_time(faster, first) < t


def test_cycle_estimate_flags_lines_that_cannot_fit() -> None:
    sdm = tuple(plan_reads(builtin_profiles()["sdm630"].points, 1))
    slow = LineSpec(id="l", transport="rtu", device="x", baudrate=2400, timeout=0.5, retries=1)
    devices = [DeviceSpec(id=f"d{i}", unit=i + 1, poll_interval=1.0, requests=sdm) for i in range(5)]
    est = estimate_cycle(slow, devices)
    assert est.requests == 15 and not est.fits and est.typical > 1.0
    one = estimate_cycle(slow, devices[:1])
    assert one.fits and one.worst >= slow.timeout * 2
    # A failing device costs at most one timeout x (1 + retries) beyond its answered reads.
    assert one.worst == pytest.approx(one.typical - request_time(slow, sdm[-1]) + 1.0)


def test_tcp_estimate_uses_connection_limit() -> None:
    sdm = tuple(plan_reads(builtin_profiles()["sdm630"].points, 1))
    devices = [DeviceSpec(id=f"d{i}", unit=i + 1, poll_interval=1.0, requests=sdm) for i in range(8)]
    one = estimate_cycle(LineSpec(id="t", transport="tcp", host="h", port=1), devices)
    four = estimate_cycle(LineSpec(id="t", transport="tcp", host="h", port=1, max_connections=4), devices)
    assert four.typical == pytest.approx(one.typical / 4)
