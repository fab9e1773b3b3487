"""Register words <-> engineering values, as a profile point describes them.

Byte order (inside each 16-bit register) and word order (which register holds the high word) are separate
settings, because meters mix them (TUF-2000M: big-endian bytes, low word first). Engineering values are
computed in decimal so that decimal factors are exact: raw 2300 x 0.1 gives 230.0, not 230.00000000000003.

A float32 register pair is read as the shortest decimal that maps back to the same float32 (what the meter
displays: 0x43663333 is 230.2, not 230.1999969482422). The bits are the same; only the binary noise that
float32 -> float64 widening adds is dropped, and a later scale factor then stays exact.

Bit points: a coil or discrete input is one bit on the wire, passed as [0|1]. A bit of a holding or input
register (`type: bit, bit: n`) is passed as that register's word; `encode` returns the word with only that bit
set (or 0). Use `encode_into` to update one point inside register words other points share (TUF-2000M REG72
holds error_code and pipe_empty).

Strings (`decode_text` / `encode_text`): two characters per register, the first in the high byte unless
byte_order is little; the text ends at the first NUL, surrounding spaces are dropped, and bytes that are not
printable in the point's encoding (ascii by default) read as U+FFFD, so a garbled register can never put
control characters into a log line or a metric label.

Values are floats (Sample.values is float-only on purpose): an int64/uint64 above 2**53 in magnitude comes out
rounded to the nearest float64; energy counters in Wh stay exact up to 9e15 Wh.

Sentinels: a point's `not_available` raw values make `decode` raise NotAvailable (a ValueError), so a meter's
"no reading" (0xFFFF, NaN) is never published as a number.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import cache
from typing import Literal

from gateway.config.profile import Point

_BITS: dict[str, int] = {
    "int16": 16, "uint16": 16, "int32": 32, "uint32": 32, "int64": 64, "uint64": 64,
    "float32": 32, "float64": 64,
}  # fmt: skip
_REPLACEMENT = "\ufffd"
_ONE = Decimal(1)
_ZERO = Decimal(0)

Order = Literal["big", "little"]


@dataclass(frozen=True, slots=True)
class _Rule:
    """What decode/encode need from a Point, computed once per point."""

    where: str
    type: str
    function: str
    width: int
    swap_bytes: bool
    low_word_first: bool
    bits: int
    signed: bool
    mask: int | None
    shift: int
    bit: int | None
    scale: Decimal
    offset: Decimal
    plain: bool  # scale 1, offset 0: no decimal arithmetic needed
    needs_decimals: bool
    na_raw: frozenset[int]  # integer sentinels, as unsigned raw values of the point's width
    na_real: frozenset[float]  # float types: sentinel raw values (NaN excluded)
    na_nan: bool  # float types: any NaN is a sentinel


class NotAvailable(ValueError):
    """The raw value is one of the point's `not_available` sentinels: the meter has no reading."""


@cache
def _rule(point: Point) -> _Rule:
    scale = Decimal(repr(point.scale))
    offset = Decimal(repr(point.offset))
    bits = _BITS.get(point.type, 0)
    is_float = point.type in ("float32", "float64")
    na_raw = frozenset(
        int(v) & ((1 << bits) - 1) for v in point.not_available if isinstance(v, int) and not is_float
    )
    na_real = frozenset(float(v) for v in point.not_available if is_float and not math.isnan(v))
    return _Rule(
        where=f"{point.quantity} ({point.function} {point.pdu})",
        type=point.type,
        function=point.function or "",
        width=point.width,
        swap_bytes=point.byte_order == "little",
        low_word_first=point.word_order == "little",
        bits=bits,
        signed=point.type.startswith("int"),
        mask=point.mask,
        shift=point.shift,
        bit=point.bit,
        scale=scale,
        offset=offset,
        plain=scale == _ONE and offset == _ZERO,
        needs_decimals=point.decimals_register is not None,
        na_raw=na_raw,
        na_real=na_real,
        na_nan=is_float and any(math.isnan(v) for v in point.not_available),
    )


def words_to_int(regs: Sequence[int], byte_order: Order = "big", word_order: Order = "big") -> int:
    """The unsigned integer that the register words spell in the given orders."""
    words = list(regs)
    if byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    if word_order == "little":
        words.reverse()
    n = 0
    for w in words:
        n = (n << 16) | w
    return n


def int_to_words(n: int, width: int, byte_order: Order = "big", word_order: Order = "big") -> list[int]:
    """The inverse of words_to_int: an unsigned integer of `width` registers as register words."""
    words = [(n >> (16 * (width - 1 - i))) & 0xFFFF for i in range(width)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words


def float32_value(bits: int) -> float:
    """A float32 bit pattern as the shortest decimal that maps back to the same float32."""
    packed = bits.to_bytes(4, "big")
    (wide,) = struct.unpack(">f", packed)
    if not math.isfinite(wide):
        return float(wide)
    # Every decimal of 6 significant digits is a distinct float32, so %.6g is tried first and is the
    # shortest when it round-trips (%g drops trailing zeros); 9 digits always round-trip.
    for digits in (6, 7, 8):
        text = f"{wide:.{digits}g}"
        if struct.pack(">f", float(text)) == packed:
            return float(text)
    return float(f"{wide:.9g}")


def _check_words(rule: _Rule, regs: Sequence[int]) -> None:
    if len(regs) != rule.width:
        raise ValueError(f"{rule.where}: expected {rule.width} register(s), got {len(regs)}")
    for w in regs:
        if not 0 <= w <= 0xFFFF:
            raise ValueError(f"{rule.where}: register word {w} is not 0..65535")


def _scaled(rule: _Rule, raw: int | float, text: str | None, decimals: int | None) -> float:
    if rule.needs_decimals:
        if decimals is None:
            raise ValueError(f"{rule.where}: needs the value of its decimals register")
        if not 0 <= decimals <= 10:
            raise ValueError(f"{rule.where}: decimals register holds {decimals}, expected 0..10")
    if rule.plain and not decimals:
        return float(raw)
    value = Decimal(text) if text is not None else Decimal(raw)
    if decimals:
        value = value.scaleb(-decimals)
    return float(value * rule.scale + rule.offset)


def decode(point: Point, regs: Sequence[int], decimals: int | None = None) -> float:
    """The engineering value of `point` from its own register words (len == point.width).

    For a coil or discrete input pass [0|1]. `decimals` is the value of the point's decimals register,
    required when the point has one. Raises ValueError on a wrong word count, a word out of range or a
    string point (read those with decode_text), NotAvailable when the raw value is a sentinel.
    NaN and infinities of float types are returned as they are (the caller decides to drop them).
    """
    rule = _rule(point)
    _check_words(rule, regs)
    if rule.type == "bit":
        if rule.function in ("coil", "discrete"):
            if regs[0] not in (0, 1):
                raise ValueError(f"{rule.where}: a bit is 0 or 1, got {regs[0]}")
            return float(regs[0])
        assert rule.bit is not None
        return float((regs[0] >> rule.bit) & 1)
    if rule.type == "string":
        raise ValueError(f"{rule.where}: string points have no numeric value (read them with decode_text)")
    n = words_to_int(regs, "little" if rule.swap_bytes else "big", "little" if rule.low_word_first else "big")
    if rule.type == "float32" or rule.type == "float64":
        if rule.type == "float32":
            value = float32_value(n)
        else:
            (value,) = struct.unpack(">d", n.to_bytes(8, "big"))
        if value in rule.na_real or (rule.na_nan and math.isnan(value)):
            raise NotAvailable(f"{rule.where}: raw {value!r} means 'not available'")
        if not math.isfinite(value):
            return float(value)
        return _scaled(rule, value, repr(value), decimals)
    if n in rule.na_raw:
        raise NotAvailable(f"{rule.where}: raw 0x{n:0{rule.bits // 4}X} means 'not available'")
    if rule.signed and n >= 1 << (rule.bits - 1):
        n -= 1 << rule.bits
    if rule.mask is not None:
        n &= rule.mask
    if rule.shift:
        n >>= rule.shift
    return _scaled(rule, n, None, decimals)


def _raw_decimal(rule: _Rule, value: float, decimals: int | None) -> Decimal:
    if rule.needs_decimals and decimals is None:
        raise ValueError(f"{rule.where}: needs the value of its decimals register")
    try:
        raw = Decimal(repr(float(value)))
        if not rule.plain:
            raw = (raw - rule.offset) / rule.scale
        if decimals:
            raw = raw.scaleb(decimals)
    except InvalidOperation as exc:
        raise ValueError(f"{rule.where}: cannot encode {value!r}") from exc
    return raw


def encode(point: Point, value: float, decimals: int | None = None) -> list[int]:
    """The register words that make `decode(point, words, decimals)` return `value`.

    Integer types round to the nearest raw integer (half to even) and raise ValueError when it does not fit
    the type (or its mask). Float types round to the nearest float32/float64. Bits: [0|1] for coils and
    discrete inputs, the register word with only that bit set (or 0) for a bit of a register.
    """
    rule = _rule(point)
    if rule.type == "bit":
        if value not in (0, 1):
            raise ValueError(f"{rule.where}: a bit is 0 or 1, got {value!r}")
        if rule.function in ("coil", "discrete"):
            return [int(value)]
        assert rule.bit is not None
        return [int(value) << rule.bit]
    if rule.type == "string":
        raise ValueError(f"{rule.where}: string points have no numeric value")
    byte_order: Order = "little" if rule.swap_bytes else "big"
    word_order: Order = "little" if rule.low_word_first else "big"
    if rule.type in ("float32", "float64"):
        finite = math.isfinite(value)
        raw_float = float(_raw_decimal(rule, value, decimals)) if finite else float(value)
        fmt = ">f" if rule.type == "float32" else ">d"
        try:
            packed = struct.pack(fmt, raw_float)
        except OverflowError as exc:
            raise ValueError(f"{rule.where}: {value!r} does not fit {rule.type}") from exc
        return int_to_words(int.from_bytes(packed, "big"), rule.width, byte_order, word_order)
    if not math.isfinite(value):
        raise ValueError(f"{rule.where}: {value!r} cannot be stored in {rule.type}")
    raw = int(_raw_decimal(rule, value, decimals).to_integral_value(rounding=ROUND_HALF_EVEN))
    if rule.mask is not None or rule.shift:
        raw <<= rule.shift
        limit = rule.mask if rule.mask is not None else (1 << rule.bits) - 1
        if raw < 0 or raw & ~limit:
            raise ValueError(f"{rule.where}: {value!r} does not fit mask {limit:#x} shift {rule.shift}")
    lo, hi = (
        (-(1 << (rule.bits - 1)), (1 << (rule.bits - 1)) - 1) if rule.signed else (0, (1 << rule.bits) - 1)
    )
    if not lo <= raw <= hi:
        raise ValueError(f"{rule.where}: {value!r} gives raw {raw}, outside {rule.type} range {lo}..{hi}")
    return int_to_words(raw & ((1 << rule.bits) - 1), rule.width, byte_order, word_order)


def encode_into(point: Point, value: float, current: Sequence[int], decimals: int | None = None) -> list[int]:
    """`current` (the point's register words) with `value` written into the point's bits only.

    For whole-register points this is encode(); for a bit or a masked field it keeps the other bits, so points
    sharing a register can be set one at a time.
    """
    rule = _rule(point)
    _check_words(rule, current)
    words = encode(point, value, decimals)
    if rule.type == "bit" and rule.function in ("holding", "input"):
        assert rule.bit is not None
        return [(current[0] & ~(1 << rule.bit) & 0xFFFF) | words[0]]
    if rule.mask is not None:
        byte_order: Order = "little" if rule.swap_bytes else "big"
        word_order: Order = "little" if rule.low_word_first else "big"
        old = words_to_int(current, byte_order, word_order)
        new = words_to_int(words, byte_order, word_order)
        merged = (old & ~rule.mask & ((1 << rule.bits) - 1)) | (new & rule.mask)
        return int_to_words(merged, rule.width, byte_order, word_order)
    return words


def decode_text(point: Point, regs: Sequence[int]) -> str:
    """The text of a string point from its register words (len == point.count)."""
    rule = _rule(point)
    if rule.type != "string":
        raise ValueError(f"{rule.where}: a {rule.type} point has no text (decode it with decode)")
    _check_words(rule, regs)
    raw = bytearray()
    for w in regs:
        hi, lo = w >> 8, w & 0xFF
        raw += bytes((lo, hi)) if rule.swap_bytes else bytes((hi, lo))
    end = raw.find(0)
    if end >= 0:
        del raw[end:]
    limit = 0x80 if point.encoding == "ascii" else 0x100
    chars = [chr(b) if (0x20 <= b < 0x7F or 0xA0 <= b < limit) else _REPLACEMENT for b in raw]
    return "".join(chars).strip(" ")


def encode_text(point: Point, text: str) -> list[int]:
    """The register words a device holds for `text` (NUL-padded): the inverse of decode_text.

    Raises ValueError when the text does not fit the point's registers or its encoding.
    """
    rule = _rule(point)
    if rule.type != "string":
        raise ValueError(f"{rule.where}: a {rule.type} point has no text")
    try:
        raw = text.encode(point.encoding)
    except UnicodeEncodeError as exc:
        raise ValueError(f"{rule.where}: {text!r} is not {point.encoding}") from exc
    if len(raw) > 2 * rule.width:
        raise ValueError(f"{rule.where}: {text!r} is {len(raw)} bytes, the point holds {2 * rule.width}")
    raw = raw.ljust(2 * rule.width, b"\0")
    words = []
    for i in range(0, len(raw), 2):
        first, second = raw[i], raw[i + 1]
        words.append((second << 8) | first if rule.swap_bytes else (first << 8) | second)
    return words
