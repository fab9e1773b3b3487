"""Compiled decoders (drivers/modbus/decoders.py) against the reference, codec.decode, value for value.

Every point of every shipped profile, planned as the poller plans them, and randomized points (every type,
byte and word order, scales and offsets of both signs, masks, shifts, sentinels, decimals registers, bits),
are decoded from seeded random registers that favour the awkward patterns: sentinels, NaN and infinity in
every word order, sign bits, all-ones, decimals out of range. A value must be bit-identical (the sign of
zero and the NaN payload included); a problem must be the reference's exception, type and message.
hypothesis is not installed in .venv, so the randomness is a seeded random.Random (failures reproduce).
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Sequence
from typing import Any

import pytest

from drivers.modbus.codec import NotAvailable, decode, encode, int_to_words
from drivers.modbus.codec import _rule as codec_rule
from drivers.modbus.decoders import ReadPlan, float32_of
from drivers.modbus.planner import ReadRequest, plan_reads
from gateway.config.profile import Point, builtin_profiles

SPECIAL_WORDS = (0x0000, 0xFFFF, 0x8000, 0x7FFF, 0x0001, 0x7FC0, 0x7F80, 0xFF80, 0xFFC0, 0x7FA0, 0x0080)
Expected = tuple[str, Any]  # ("value", float) | ("nonfinite", float) | (exception type name, message)


def bits_of(x: float) -> bytes:
    return struct.pack(">d", x)


def reference(point: Point, words: Sequence[int], decimals: int | None) -> Expected:
    # codec caches a point's rule by the pydantic model's hash and equality, under which offset 0.0 equals
    # -0.0: a point would get the rule of an equal one decoded before, and the zero's sign with it.
    codec_rule.cache_clear()
    try:
        value = decode(point, words, decimals)
    except ValueError as exc:
        return (type(exc).__name__, str(exc))
    return ("value", value) if math.isfinite(value) else ("nonfinite", value)


def decimals_keys(requests: Sequence[ReadRequest]) -> set[tuple[str, int]]:
    return {
        (r.function, p.decimals_register)
        for r in requests
        for p in r.points
        if p.decimals_register is not None
    }


def random_words(rng: random.Random, request: ReadRequest) -> list[int]:
    """Registers for `request`, each a special pattern, a point's sentinel or encoded value, or random."""
    if request.is_bits:
        return [
            rng.choice((0, 1, 1, 0, 2)) if rng.random() < 0.05 else rng.randint(0, 1)
            for _ in range(request.count)
        ]
    words = [
        rng.choice(SPECIAL_WORDS) if rng.random() < 0.3 else rng.randint(0, 0xFFFF)
        for _ in range(request.count)
    ]
    for p in request.points:
        start = p.pdu - request.address
        roll = rng.random()
        patch: list[int] | None = None
        if roll < 0.15 and p.not_available:
            patch = sentinel_words(p, rng.choice(p.not_available))
        elif roll < 0.45 and p.type not in ("string", "bit"):
            try:
                patch = encode(p, round(rng.uniform(-5000, 5000), rng.randint(0, 4)), rng.randint(0, 4))
            except ValueError:
                patch = None
        if patch is not None:
            words[start : start + p.width] = patch
    for function, address in decimals_keys([request]):
        if function == request.function and request.address <= address < request.end:
            words[address - request.address] = rng.choice((0, 1, 2, 3, 4, 10, 11, 0xFFFF, rng.randint(0, 6)))
    return words


def sentinel_words(p: Point, sentinel: int | float) -> list[int]:
    byte_order = p.byte_order
    word_order = p.word_order
    if p.type in ("float32", "float64"):
        fmt = ">f" if p.type == "float32" else ">d"
        n = int.from_bytes(struct.pack(fmt, float(sentinel)), "big")
        return int_to_words(n, p.width, byte_order, word_order)
    return int_to_words(int(sentinel) & ((1 << (16 * p.width)) - 1), p.width, byte_order, word_order)


def as_data(words: list[int]) -> bytes:
    return struct.pack(f">{len(words)}H", *words)


def check_device(requests: Sequence[ReadRequest], rng: random.Random, rounds: int, via_data: bool) -> int:
    """Decode `rounds` random answers of every request both ways; returns how many values were compared."""
    keys = decimals_keys(requests)
    plans = [ReadPlan(r, keys) for r in requests]
    ref_decimals: dict[tuple[str, int], int] = {}
    plan_decimals: dict[tuple[str, int], int] = {}
    compared = 0
    for _ in range(rounds):
        for request, plan in zip(requests, plans, strict=True):
            words = random_words(rng, request)
            for key in keys:  # what the poller did before decoding: decimals registers of this read first
                function, address = key
                if function == request.function and request.address <= address < request.end:
                    ref_decimals[key] = words[address - request.address]
            expected = {}
            for p in request.points:
                key = (request.function, p.decimals_register) if p.decimals_register is not None else None
                d = ref_decimals.get(key) if key else None
                expected[p.quantity] = reference(p, request.words(p, words), d)
            if via_data and not request.is_bits:
                values, problems = plan.decode(as_data(words), plan_decimals)
            else:
                values, problems = plan.decode_words(words, plan_decimals)
            assert plan_decimals == ref_decimals
            got: dict[str, Expected] = {q: ("value", v) for q, v in values.items()}
            for p, issue in problems:
                assert p.quantity not in got, f"{p.quantity} both decoded and a problem"
                if isinstance(issue, Exception):
                    got[p.quantity] = (type(issue).__name__, str(issue))
                else:
                    got[p.quantity] = ("nonfinite", issue)
            for quantity, want in expected.items():
                have = got[quantity]
                where = f"{quantity} of {request.describe()} words {[f'{w:04X}' for w in words]}"
                assert have[0] == want[0], f"{where}: {have} != {want}"
                if want[0] in ("value", "nonfinite"):
                    assert bits_of(have[1]) == bits_of(want[1]), f"{where}: {have[1]!r} != {want[1]!r}"
                else:
                    assert have[1] == want[1], where
                compared += 1
            assert [p.quantity for p, _ in problems] == [
                p.quantity for p in request.points if expected[p.quantity][0] != "value"
            ], "problems must come in point order"
    return compared


@pytest.mark.parametrize("via_data", [True, False], ids=["data", "words"])
@pytest.mark.parametrize("profile", sorted(builtin_profiles()))
def test_every_profile_point_decodes_as_the_reference(profile: str, via_data: bool) -> None:
    points = builtin_profiles()[profile].points
    rng = random.Random(f"{profile}-{via_data}")
    compared = 0
    for info in (False, True):
        for one in (False, True):
            requests = plan_reads(points, unit=1, one_read_per_value=one, info=info)
            compared += check_device(requests, rng, rounds=300, via_data=via_data)
    assert compared >= 300 * sum(1 for p in points)


def random_point(rng: random.Random, quantity: str, address: int, function: str) -> Point:
    kind = rng.choice(("int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bit"))
    fields: dict[str, Any] = {"quantity": quantity, "function": function, "address": address, "type": kind}
    fields["byte_order"] = rng.choice(("big", "little"))
    fields["word_order"] = rng.choice(("big", "little"))
    if kind == "bit":
        fields["bit"] = rng.randint(0, 15)
        return Point(**fields)
    fields["scale"] = rng.choice(
        (1.0, 1.0, 0.1, 0.01, 0.001, 10.0, 1000.0, -0.1, -1.0, 2.5, 1e-05, 1e25, 3e-30)
    )
    fields["offset"] = rng.choice((0.0, 0.0, -0.0, 273.15, -40.0, 0.5, 1e20, -1e-12))
    bits = 16 * {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4}.get(kind, 0)
    if bits:
        if rng.random() < 0.3:
            fields["mask"] = rng.choice((0x00FF, 0xFF00, 0x7FFF, (1 << bits) - 1, 0x0F0F))
        if rng.random() < 0.2:
            fields["shift"] = rng.randint(1, 8)
        if rng.random() < 0.5:
            top = (1 << bits) - 1
            fields["not_available"] = tuple(
                rng.sample((top, -1, 0, 1 << (bits - 1), 0x7FFF, -(1 << (bits - 1))), 2)
            )
    elif rng.random() < 0.5:
        fields["not_available"] = rng.choice(
            ((float("nan"),), (-1.0,), (float("nan"), 0.0), (3.4e38, -3.4e38))
        )
    if rng.random() < 0.25:
        fields["decimals_register"] = rng.choice((0, 1, 30, 63))
    return Point(**fields)


@pytest.mark.parametrize("via_data", [True, False], ids=["data", "words"])
def test_randomized_points_decode_as_the_reference(via_data: bool) -> None:
    rng = random.Random(f"randomized-{via_data}")
    compared = 0
    for device in range(120):
        function = rng.choice(("holding", "input"))
        points = []
        address = 0
        for i in range(rng.randint(1, 12)):
            p = random_point(rng, f"q{i}", address, function)
            points.append(p)
            # Overlaps on purpose now and then (a float also read as registers, fields sharing a register).
            address = max(0, address + (p.width if rng.random() < 0.8 else rng.randint(-2, 3)))
        requests = plan_reads(points, unit=1, max_gap=rng.choice((0, 10)))
        compared += check_device(requests, rng, rounds=40, via_data=via_data)
        assert device >= 0
    assert compared > 10_000


def test_coils_and_bad_words_fall_back_to_the_reference_errors() -> None:
    coils = [Point(quantity=f"c{i}", function="coil", address=i, type="bit") for i in range(5)]
    (request,) = plan_reads(coils, unit=1)
    values, problems = ReadPlan(request).decode_words([1, 0, 2, 1, 0], {})
    assert values == {"c0": 1.0, "c1": 0.0, "c3": 1.0, "c4": 0.0}
    assert [(p.quantity, str(e)) for p, e in problems] == [("c2", "c2 (coil 2): a bit is 0 or 1, got 2")]
    regs = [
        Point(quantity="a", function="holding", address=0),
        Point(quantity="b", function="holding", address=1),
    ]
    (request,) = plan_reads(regs, unit=1)
    values, problems = ReadPlan(request).decode_words([7, 70000], {})
    assert values == {"a": 7.0}
    assert [(p.quantity, str(e)) for p, e in problems] == [
        ("b", "b (holding 1): register word 70000 is not 0..65535")
    ]


def test_sentinels_and_nan_are_problems_not_values() -> None:
    p = Point(quantity="v", function="input", address=0, type="float32", not_available=(-1.0,))
    q = Point(quantity="w", function="input", address=2, type="uint16", not_available=(0xFFFF,))
    (request,) = plan_reads([p, q], unit=1)
    plan = ReadPlan(request)
    values, problems = plan.decode(struct.pack(">fH", -1.0, 0xFFFF), {})
    assert values == {}
    assert [type(e) for _, e in problems] == [NotAvailable, NotAvailable]
    values, problems = plan.decode(struct.pack(">fH", float("inf"), 5), {})
    assert values == {"w": 5.0}
    assert [(pt.quantity, e) for pt, e in problems] == [("v", float("inf"))]


def test_float32_of_is_the_codec_rule_for_random_patterns() -> None:
    from drivers.modbus.codec import float32_value

    rng = random.Random(32)
    for _ in range(20_000):
        n = rng.getrandbits(32)
        (wide,) = struct.unpack(">f", n.to_bytes(4, "big"))
        if math.isfinite(wide):
            assert bits_of(float32_of(wide)) == bits_of(float32_value(n))


def test_ordinary_values_never_reach_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled path must decide ordinary readings itself (else it would be correct but not faster)."""
    import drivers.modbus.decoders as decoders

    calls: list[str] = []

    def counting(point: Point, words: Sequence[int], decimals: int | None = None) -> float:
        calls.append(point.quantity)
        return decode(point, words, decimals)

    monkeypatch.setattr(decoders, "decode", counting)
    rng = random.Random(7)
    for profile in builtin_profiles().values():
        requests = plan_reads(profile.points, unit=1)
        keys = decimals_keys(requests)
        decimals: dict[tuple[str, int], int] = {}
        for request in requests:
            words = [0] * request.count
            for p in request.points:
                value = round(rng.uniform(0, 500), 1) if p.type != "bit" else 1.0
                d = 2 if p.decimals_register is not None else None
                start = p.pdu - request.address
                words[start : start + p.width] = encode(p, value, d)
            for function, address in keys:  # after the values: a decimals register may be a point too
                if function == request.function and request.address <= address < request.end:
                    words[address - request.address] = 2
            values, problems = ReadPlan(request, keys).decode(as_data(words), decimals)
            assert not problems and len(values) == len(request.points)
    assert calls == []


@pytest.mark.parametrize("kind", ["float32", "float64", "int16", "uint32"])
def test_zeros_keep_the_reference_sign(kind: str) -> None:
    """Decimal's zero signs (-0 x scale, -0 + -0) are easy to get wrong and rare in random registers."""
    for scale in (0.1, -0.1, 2.5, -1.0, 1.0):
        for offset in (0.0, -0.0, 1.5):
            for decimals in (None, 0, 2):
                p = Point(
                    quantity="z", function="holding", address=0, type=kind, scale=scale, offset=offset,
                    decimals_register=9 if decimals is not None else None,
                )  # fmt: skip
                (request,) = plan_reads([p], unit=1)
                plan = ReadPlan(request, decimals_keys([request]))
                for raw in (0.0, -0.0):
                    words = [0] * request.count
                    if kind.startswith("float"):
                        fmt = ">f" if kind == "float32" else ">d"
                        words[: p.width] = struct.unpack(f">{p.width}H", struct.pack(fmt, raw))
                    if decimals is not None:
                        words[9] = decimals
                    want = reference(p, words[: p.width], decimals)
                    values, problems = plan.decode(as_data(words), {})
                    have = ("value", values["z"]) if "z" in values else problems[0]
                    assert have[0] == want[0] and bits_of(have[1]) == bits_of(want[1]), (
                        scale,
                        offset,
                        raw,
                        decimals,
                    )


def test_devices_of_one_profile_share_their_plans() -> None:
    from drivers.modbus.decoders import plans_for

    profile = builtin_profiles()["rs485-pressure"]  # a decimals register: the plans depend on it
    first, second = (plan_reads(profile.points, unit=u) for u in (1, 2))
    keys = decimals_keys(first)
    a, b = plans_for(first, keys), plans_for(second, keys)
    assert [a[id(r)] for r in first] == [b[id(r)] for r in second]  # the same objects, compiled once
    without = plans_for(second, ())  # other decimals registers known: another plan
    assert all(without[id(r)] is not b[id(r)] for r in second if decimals_keys([r]))
    # The plan is stateless: each device's decimals stay in its own dict.
    request = next(r for r in first if decimals_keys([r]))
    (key,) = decimals_keys([request])
    kept: list[dict[tuple[str, int], int]] = []
    for held in (1, 3):
        words = [0] * request.count
        words[key[1] - request.address] = held
        decimals: dict[tuple[str, int], int] = {}
        a[id(request)].decode(as_data(words), decimals)
        kept.append(decimals)
    assert kept == [{key: 1}, {key: 3}]


def test_float32_memo_gives_the_reference_value_every_time_and_keeps_both_zeros() -> None:
    from drivers.modbus import decoders
    from drivers.modbus.codec import float32_value

    rng = random.Random(32)
    words = [rng.getrandbits(32) for _ in range(3000)] + [0x00000000, 0x80000000]
    for _ in range(2):  # the second pass reads the memo
        for bits in words:
            wide = struct.unpack(">f", struct.pack(">I", bits))[0]
            if not math.isfinite(wide):
                continue
            got, want = decoders.float32_of(wide), float32_value(bits)
            assert struct.pack(">d", got) == struct.pack(">d", want), hex(bits)
    assert math.copysign(1.0, decoders.float32_of(-0.0)) == -1.0
    # the memo is bounded: full, it starts afresh
    saved = decoders.F32_MEMO_MAX
    try:
        decoders.F32_MEMO_MAX = 10
        for bits in words[:100]:
            decoders.float32_of(struct.unpack(">f", struct.pack(">I", bits & 0x7F7FFFFF))[0])
            assert len(decoders._F32_MEMO) <= 10
    finally:
        decoders.F32_MEMO_MAX = saved
