"""Decoders compiled once per planned read: the whole answer unpacked by one precompiled struct.

`codec.decode` is the reference (and stays so): it resolves a point's rule through a cache keyed by the
pydantic Point (hashing it costs more than the decoding), builds a list per value and scales in Decimal.
A ReadPlan does that work once, when the device is set up: each point of the request becomes a slot with
its position in the answer and a small closure specialised for its type, orders, sentinels and scaling.
Per read, one `Struct.unpack_from` per byte order ('>' and '<', and another layer only where two fields
overlap, e.g. a float also read as two registers) turns the payload into raw numbers, and each slot maps
its raw numbers to a value by position.

Values are bit-identical to `codec.decode` (tests/drivers/modbus/test_decoders.py checks every profile point
and randomized points against it). Anything unusual goes back to the reference for that one value, so its
result or exception (NotAvailable, ValueError with the same message) is the reference's own:
- a not-available sentinel, a NaN or infinity (the reference returns or raises what the poller expects);
- a decimals register missing or out of 0..10;
- a product or sum beyond the 28 digits the reference's Decimal keeps exactly, an exponent beyond 10**22;
- a register word outside 0..65535 or a bit other than 0/1 (only possible from a `words` list);
- a float reading of -0 that must be scaled (Decimal's zero signs).

Why integer arithmetic matches the reference's Decimal: raw x scale + offset is an exact rational N / 10**k
when the Decimal operations are exact (checked), and both `float(Decimal)` and Python's int / int are
correctly rounded, so they give the same float; the sign of a zero result follows Decimal's rules. A scaled
float enters as the digits of repr(v), which is the Decimal the reference builds.

Cost (bench/decode.py, CPU time on a loaded shared machine): 5.7 us per value for the reference, 1.7 for a
plan; what is left of a float32 value is the reference's own rule (the shortest decimal that maps back to
the same float32), not the unpacking.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal, getcontext

from drivers.modbus.codec import decode
from drivers.modbus.planner import ReadRequest
from gateway.config.profile import Point

DecimalsKey = tuple[str, int]
# A slot's value from the raw numbers of the answer and its decimals (None: no decimals register), or None
# when the reference must decide (see the module docstring).
SlotDecoder = Callable[[tuple[int | float, ...], int | None], float | None]
# (point, what went wrong): a NotAvailable or ValueError the reference raised, or a non-finite value
Problem = tuple[Point, Exception | float]

_F32 = struct.Struct(">f")
_U32 = struct.Struct(">I")
_F64 = struct.Struct(">d")
_U64 = struct.Struct(">Q")
_POW10 = [10**i for i in range(23)]  # 10**22 is the largest power of ten a float64 holds exactly
_NO_PROBLEMS: tuple[Problem, ...] = ()


# float32 values already turned into their shortest decimal: a meter's readings repeat (a voltage moves within
# a few volts at 0.1 V steps), and the format calls below cost 1-2 us a value against ~50 ns for a lookup.
# Keyed by the widened value, which maps one to one to a finite float32 but for the two zeros (equal keys):
# zeros are never memoised.
_F32_MEMO: dict[float, float] = {}
F32_MEMO_MAX = 1 << 16  # entries; the memo starts afresh when full


def float32_of(wide: float) -> float:
    """codec.float32_value for a finite float32 already widened (same digits tried in the same order)."""
    value = _F32_MEMO.get(wide)
    if value is not None:
        return value
    if wide == 0.0:
        return wide  # its own shortest form, sign kept
    value = _float32_shortest(wide)
    if len(_F32_MEMO) >= F32_MEMO_MAX:
        _F32_MEMO.clear()
    _F32_MEMO[wide] = value
    return value


def _float32_shortest(wide: float) -> float:
    packed = _F32.pack(wide)
    value = float(format(wide, ".6g"))  # unrolled: this is the hot path of float32 meters
    if _F32.pack(value) == packed:
        return value
    value = float(format(wide, ".7g"))
    if _F32.pack(value) == packed:
        return value
    value = float(format(wide, ".8g"))
    if _F32.pack(value) == packed:
        return value
    return float(format(wide, ".9g"))


@dataclass(frozen=True, slots=True)
class _Field:
    """One struct field: `code` ('H', 'I', 'Q', 'f', 'd') at byte `offset` of the payload, in one order."""

    order: str  # '>' or '<'
    offset: int
    code: str

    @property
    def size(self) -> int:
        return struct.calcsize(self.code)


class _Layout:
    """The fields of a plan, packed into as few structs as their orders and overlaps allow."""

    def __init__(self) -> None:
        self.fields: dict[_Field, int] = {}

    def add(self, order: str, offset: int, code: str) -> _Field:
        f = _Field(order, offset, code)
        self.fields.setdefault(f, len(self.fields))
        return f

    def compile(self) -> tuple[list[struct.Struct], dict[_Field, int]]:
        """The structs (unpacked in order, results concatenated) and each field's index in the result."""
        layers: list[tuple[str, list[_Field]]] = []
        for f in sorted(self.fields, key=lambda f: (f.order, f.offset, -f.size, f.code)):
            for order, members in layers:
                if order == f.order and members[-1].offset + members[-1].size <= f.offset:
                    members.append(f)
                    break
            else:
                layers.append((f.order, [f]))
        structs: list[struct.Struct] = []
        index: dict[_Field, int] = {}
        for order, members in layers:
            fmt, at = [order], 0
            for f in members:
                if f.offset > at:
                    fmt.append(f"{f.offset - at}x")
                index[f] = len(index)
                fmt.append(f.code)
                at = f.offset + f.size
            structs.append(struct.Struct("".join(fmt)))
        return structs, index


def _int_scaler(point: Point) -> Callable[[int, int | None, int], float | None]:
    """raw n x 10**exp10 -> engineering value as codec._scaled computes it, or None when the reference must.

    Integer points pass exp10 0; float points pass their value's decimal digits (see _float_scaler).
    """
    scale = Decimal(repr(point.scale))
    offset = Decimal(repr(point.offset))
    plain = scale == 1 and offset == 0
    needs_decimals = point.decimals_register is not None
    limit = 10 ** getcontext().prec  # coefficients below this stay exact in the reference's Decimal
    s_sign, s_digits, s_exp = scale.as_tuple()
    o_sign, o_digits, o_exp = offset.as_tuple()
    if not isinstance(s_exp, int) or not isinstance(o_exp, int) or scale == 0:
        return _declines  # not finite, or a zero scale (its sign rules are the reference's)
    m = int("".join(map(str, s_digits))) * (-1 if s_sign else 1)
    om = int("".join(map(str, o_digits))) * (-1 if o_sign else 1)
    # n == 0 and offset zero: Decimal gives 0 x scale (signed like scale) + offset, -0 only if both are
    negative_zero = bool(s_sign) and bool(o_sign) and om == 0

    def scaled(n: int, d: int | None, exp10: int = 0) -> float | None:
        if needs_decimals and (d is None or not 0 <= d <= 10):
            return None
        if plain and not d and not exp10:
            return float(n)
        product = n * m
        if not -limit < product < limit:
            return None
        k = s_exp - (d or 0) + exp10
        if om == 0:
            total, e = product, k
        else:
            e = min(k, o_exp)
            total = product * _POW10[k - e] if k - e < 23 else product * 10 ** (k - e)
            total += om * (_POW10[o_exp - e] if o_exp - e < 23 else 10 ** (o_exp - e))
            if not -limit < total < limit:
                return None
        if total == 0:
            return -0.0 if n == 0 and negative_zero else 0.0
        if e >= 0:
            return float(total * _POW10[e]) if e < 23 else None
        return total / _POW10[-e] if -e < 23 else None

    return scaled


def _int_direct(point: Point) -> tuple[int, int] | None:
    """(M, P) with value == n * M / P (P > 1) or float(n * M) (P == 1) for every raw n of the point.

    Only when no decimals register, no offset and a positive scale: then the reference's Decimal product is
    exact for every n (checked against the type's range) and its zero is +0, and Python's int * int and
    int / int are exact and correctly rounded, so the two agree; the usual profile scales (0.1, 0.001, 1000)
    qualify. None otherwise (the general scaler decides per value).
    """
    scale = Decimal(repr(point.scale))
    offset = Decimal(repr(point.offset))
    sign, digits, exp = scale.as_tuple()
    if point.decimals_register is not None or offset != 0 or sign or scale == 0 or not isinstance(exp, int):
        return None
    m = int("".join(map(str, digits)))
    if m << (16 * point.width) >= 10 ** getcontext().prec or abs(exp) > 22:
        return None
    return (m * 10**exp, 1) if exp >= 0 else (m, 10**-exp)


def _float_scaler(point: Point) -> Callable[[float, int | None], float | None]:
    """raw float -> engineering value as codec._scaled computes it.

    The reference scales Decimal(repr(v)): the digits of repr(v) as an integer and a power of ten go through
    the integer scaler instead, which gives the same float (see the module docstring). A negative zero is
    left to the reference (its sign rules), as is anything the integer scaler declines.
    """
    scale = Decimal(repr(point.scale))
    offset = Decimal(repr(point.offset))
    plain = scale == 1 and offset == 0
    needs_decimals = point.decimals_register is not None
    exact = _int_scaler(point)

    def scaled(v: float, d: int | None) -> float | None:
        if needs_decimals and (d is None or not 0 <= d <= 10):
            return None
        if plain and not d:
            return v
        mantissa, _, exponent = repr(v).partition("e")
        whole, _, fraction = mantissa.partition(".")
        digits = int(whole + fraction)
        if digits == 0 and whole[0] == "-":
            return None
        return exact(digits, d, (int(exponent) if exponent else 0) - len(fraction))

    return scaled


def _words_value(fields: list[int], low_word_first: bool) -> Callable[[tuple[int | float, ...]], int]:
    """The unsigned integer spelled by registers read one by one (orders that no single field expresses)."""
    order = list(reversed(fields)) if low_word_first else list(fields)
    if len(order) == 2:
        hi, lo = order
        return lambda raw: (raw[hi] << 16) | raw[lo]  # type: ignore[operator]

    def value(raw: tuple[int | float, ...]) -> int:
        n = 0
        for i in order:
            n = (n << 16) | raw[i]  # type: ignore[operator]
        return n

    return value


def _register_slot(point: Point, start: int, layout: _Layout) -> Callable[[dict[_Field, int]], SlotDecoder]:
    """Declares the fields `point` needs; returns what builds its decoder once their indices are known."""
    at = 2 * start
    if point.type == "bit":
        reg = layout.add(">", at, "H")
        bit = point.bit
        assert bit is not None

        def build_bit(index: dict[_Field, int]) -> SlotDecoder:
            i = index[reg]
            return lambda raw, d: float((raw[i] >> bit) & 1)  # type: ignore[operator]

        return build_bit
    width = point.width
    swap_bytes = point.byte_order == "little"
    low_word_first = point.word_order == "little"
    is_float = point.type in ("float32", "float64")
    code = {1: "H", 2: "f" if is_float else "I", 4: "d" if is_float else "Q"}[width]
    if point.type.startswith("int") and not point.not_available:
        code = code.lower()  # signed straight from the struct: no sentinel needs the unsigned raw value
    whole: _Field | None = None
    words: list[_Field] = []
    if width == 1 or swap_bytes == low_word_first:
        whole = layout.add("<" if swap_bytes else ">", at, code)
    else:
        words = [layout.add("<" if swap_bytes else ">", at + 2 * j, "H") for j in range(width)]
    if is_float:
        return _float_slot(point, whole, words, low_word_first)
    return _int_slot(point, whole, words, low_word_first, code.islower())


def _float_slot(
    point: Point, whole: _Field | None, words: list[_Field], low_word_first: bool
) -> Callable[[dict[_Field, int]], SlotDecoder]:
    single = point.type == "float32"
    scaler = _float_scaler(point)
    # Sentinels and non-finite values go to the reference: it raises NotAvailable or returns the value.
    na_real = frozenset(float(v) for v in point.not_available if not math.isnan(v))

    def finish(wide: float, d: int | None) -> float | None:
        if wide - wide != 0.0:  # NaN or infinity
            return None
        value = float32_of(wide) if single else wide
        if value in na_real:
            return None
        return scaler(value, d)

    plain = not na_real and point.decimals_register is None and point.scale == 1 and point.offset == 0

    def build(index: dict[_Field, int]) -> SlotDecoder:
        if whole is not None:
            i = index[whole]
            if plain and single:  # the common case (SDM, DDSU: float32 ABCD in engineering units)
                return lambda raw, d: float32_of(w) if (w := raw[i]) - w == 0.0 else None
            if plain:
                return lambda raw, d: w if (w := raw[i]) - w == 0.0 else None
            return lambda raw, d: finish(raw[i], d)
        bits = _words_value([index[f] for f in words], low_word_first)
        as_float = _F32.unpack if single else _F64.unpack
        as_bytes = _U32.pack if single else _U64.pack
        return lambda raw, d: finish(as_float(as_bytes(bits(raw)))[0], d)

    return build


def _int_slot(
    point: Point, whole: _Field | None, words: list[_Field], low_word_first: bool, presigned: bool
) -> Callable[[dict[_Field, int]], SlotDecoder]:
    bits = 16 * point.width
    na_raw = frozenset(int(v) & ((1 << bits) - 1) for v in point.not_available if isinstance(v, int))
    # the whole field's struct code already gives the signed value (see _register_slot)
    signed = point.type.startswith("int") and not (presigned and whole is not None)
    half, full = 1 << (bits - 1), 1 << bits
    mask, shift = point.mask, point.shift
    scaler = _int_scaler(point)
    simple = not signed and mask is None and not shift
    direct = _int_direct(point)

    def finish(n: int, d: int | None) -> float | None:
        if n in na_raw:
            return None
        if not simple:
            if signed and n >= half:
                n -= full
            if mask is not None:
                n &= mask
            if shift:
                n >>= shift
        return scaler(n, d, 0)

    def build(index: dict[_Field, int]) -> SlotDecoder:
        if whole is not None:
            i = index[whole]
            if simple and not na_raw and direct is not None:  # the common case, in one expression
                mul, div = direct
                if div > 1:
                    return lambda raw, d: raw[i] * mul / div
                if mul == 1:
                    return lambda raw, d: float(raw[i])
                return lambda raw, d: float(raw[i] * mul)
            return lambda raw, d: finish(raw[i], d)  # type: ignore[arg-type]
        n_of = _words_value([index[f] for f in words], low_word_first)
        return lambda raw, d: finish(n_of(raw), d)

    return build


@dataclass(frozen=True, slots=True)
class _Slot:
    point: Point
    quantity: str
    start: int  # offset of the point's registers (or bit) in the answer
    width: int
    decimals_key: DecimalsKey | None
    decoder: SlotDecoder


class ReadPlan:
    """How to turn the answer of one planned read into values, compiled once for the request."""

    __slots__ = ("_bits", "_decimals_at", "_pack", "_unpack", "request", "slots")

    def __init__(self, request: ReadRequest, decimals_keys: Iterable[DecimalsKey] = ()) -> None:
        self.request = request
        self._bits = request.is_bits
        self._pack = struct.Struct(f">{request.count}H")
        layout = _Layout()
        builders: list[tuple[Point, int, Callable[[dict[_Field, int]], SlotDecoder]] | None] = []
        for p in request.points:
            start = p.pdu - request.address
            if self._bits or p.type == "string":
                builders.append(None)
                continue
            builders.append((p, start, _register_slot(p, start, layout)))
        decimals_fields: list[tuple[DecimalsKey, _Field]] = []
        if not self._bits:
            for function, address in sorted(set(decimals_keys)):
                if function == request.function and request.address <= address < request.end:
                    at = 2 * (address - request.address)
                    decimals_fields.append(((function, address), layout.add(">", at, "H")))
        structs, index = layout.compile()
        self._decimals_at = tuple((k, index[f]) for k, f in decimals_fields)
        slots: list[_Slot] = []
        for p, built in zip(request.points, builders, strict=True):
            start = p.pdu - request.address
            key: DecimalsKey | None = None
            if p.decimals_register is not None:
                key = (request.function, p.decimals_register)
            if built is None:
                decoder: SlotDecoder = _bit_decoder(start) if self._bits else _reference_only
            else:
                decoder = built[2](index)
            slots.append(_Slot(p, p.quantity, start, p.width, key, decoder))
        self.slots = tuple(slots)
        self._unpack = _unpacker(structs)

    def decode(
        self, data: bytes, decimals: dict[DecimalsKey, int]
    ) -> tuple[dict[str, float], tuple[Problem, ...] | list[Problem]]:
        """Values of a register answer as on the wire (len == 2 * count), by quantity, and the problems.

        Updates `decimals` first with the decimals registers this read holds. Problems (in point order):
        (point, NotAvailable | ValueError) as the reference raised them, or (point, value) for a NaN or
        infinity; those points have no value.
        """
        if self._bits:
            raise ValueError(f"{self.request.describe()}: bits are decoded from words, not data")
        raw = self._unpack(data)
        for key, i in self._decimals_at:
            decimals[key] = raw[i]  # type: ignore[assignment]
        values: dict[str, float] = {}
        problems: tuple[Problem, ...] | list[Problem] = _NO_PROBLEMS
        for slot in self.slots:
            d = decimals.get(slot.decimals_key) if slot.decimals_key is not None else None
            value = slot.decoder(raw, d)
            if value is None:
                words = list(self._pack.unpack(data)[slot.start : slot.start + slot.width])
                issue = _reference(slot.point, words, d)
                if isinstance(issue, float) and math.isfinite(issue):
                    value = issue
                else:
                    if not problems:
                        problems = []
                    problems.append((slot.point, issue))  # type: ignore[union-attr]
                    continue
            values[slot.quantity] = value
        return values, problems

    def decode_words(
        self, words: list[int], decimals: dict[DecimalsKey, int]
    ) -> tuple[dict[str, float], tuple[Problem, ...] | list[Problem]]:
        """As `decode`, from register words (or bits as 0/1 for coils and discrete inputs)."""
        if not self._bits:
            try:
                data = self._pack.pack(*words)
            except struct.error:
                return self._decode_by_reference(words, decimals)
            return self.decode(data, decimals)
        values: dict[str, float] = {}
        problems: tuple[Problem, ...] | list[Problem] = _NO_PROBLEMS
        for slot in self.slots:
            bit = words[slot.start]
            if bit == 0 or bit == 1:
                values[slot.quantity] = float(bit)
                continue
            issue = _reference(slot.point, words[slot.start : slot.start + 1], None)
            if not problems:
                problems = []
            problems.append((slot.point, issue))  # type: ignore[union-attr]
        return values, problems

    def _decode_by_reference(
        self, words: list[int], decimals: dict[DecimalsKey, int]
    ) -> tuple[dict[str, float], list[Problem]]:
        """Words the wire cannot carry (outside 0..65535): the reference decides every value."""
        base = self.request.address
        for key, _ in self._decimals_at:
            decimals[key] = words[key[1] - base]
        values: dict[str, float] = {}
        problems: list[Problem] = []
        for slot in self.slots:
            d = decimals.get(slot.decimals_key) if slot.decimals_key is not None else None
            issue = _reference(slot.point, words[slot.start : slot.start + slot.width], d)
            if isinstance(issue, float) and math.isfinite(issue):
                values[slot.quantity] = issue
            else:
                problems.append((slot.point, issue))
        return values, problems


# Devices of one profile have reads of the same points (the profile's own Point objects): they share a
# plan, compiled once (2 ms a device of 3 reads otherwise, seconds at start-up with 1,000 meters). Keyed by
# the points' ids, which stay unique while the cached plan keeps its request, and so its points, alive.
_PlanKey = tuple[str, int, int, tuple[int, ...], tuple[DecimalsKey, ...]]
_PLANS: dict[_PlanKey, ReadPlan] = {}
PLAN_CACHE_LIMIT = 10_000  # distinct reads of distinct profiles; a bound for processes that build many sites


def plans_for(requests: Iterable[ReadRequest], decimals_keys: Iterable[DecimalsKey]) -> dict[int, ReadPlan]:
    """A plan per request, keyed by id(request) (requests are frozen and live as long as their device)."""
    keys = tuple(sorted(set(decimals_keys)))
    plans: dict[int, ReadPlan] = {}
    for r in requests:
        relevant = tuple(k for k in keys if k[0] == r.function and r.address <= k[1] < r.end)
        key = (r.function, r.address, r.count, tuple(id(p) for p in r.points), relevant)
        plan = _PLANS.get(key)
        if plan is None:
            if len(_PLANS) >= PLAN_CACHE_LIMIT:
                _PLANS.clear()
            plan = _PLANS[key] = ReadPlan(r, relevant)
        plans[id(r)] = plan
    return plans


def _reference(point: Point, words: list[int], decimals: int | None) -> Exception | float:
    try:
        return decode(point, words, decimals)
    except ValueError as exc:  # NotAvailable is a ValueError
        return exc


def _declines(n: int, d: int | None, exp10: int = 0) -> float | None:
    return None


def _reference_only(raw: tuple[int | float, ...], d: int | None) -> float | None:
    return None  # strings: the reference says why they have no number


def _bit_decoder(start: int) -> SlotDecoder:
    return lambda raw, d: None  # bit reads are decoded from words in decode_words


def _unpacker(structs: list[struct.Struct]) -> Callable[[bytes], tuple[int | float, ...]]:
    if not structs:
        return lambda data: ()
    if len(structs) == 1:
        return structs[0].unpack_from
    unpacks = [s.unpack_from for s in structs]

    def unpack(data: bytes) -> tuple[int | float, ...]:
        raw: tuple[int | float, ...] = ()
        for u in unpacks:
            raw += u(data)
        return raw

    return unpack
